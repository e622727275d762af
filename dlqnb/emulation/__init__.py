"""The emulated int8 network (:meth:`DLQuantizer.quantize`): a torch module that computes, from the plan,
what the target computes (:mod:`~dlqnb.emulation.network`), and ``quantizationDetails``.
"""
