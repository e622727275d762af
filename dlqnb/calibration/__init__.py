"""Calibration: the statistics recorder that runs the network over the data
(:mod:`~dlqnb.calibration.recorder`), the streaming range statistics of every tensor
(:mod:`~dlqnb.calibration.observers`, with the compiled :mod:`~dlqnb.calibration.kernel` that counts
exponents on all cores), the calibration table and its typed rows (:mod:`~dlqnb.calibration.rows`) and
MATLAB's calibration result file (:mod:`~dlqnb.calibration.file`). :class:`~dlqnb.DLQuantizer` drives it.
"""
