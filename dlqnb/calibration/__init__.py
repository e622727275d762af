"""Calibration: the streaming range statistics of every tensor (:mod:`~dlqnb.calibration.observers`, with
the compiled :mod:`~dlqnb.calibration.kernel` that counts exponents on all cores) and MATLAB's calibration
result file (:mod:`~dlqnb.calibration.file`). :class:`~dlqnb.DLQuantizer` drives it.
"""
