"""Evaluation: float against emulated int8 accuracy and memory (:mod:`~dlqnb.evaluation.validation`, MATLAB's
``validate``), per-layer sensitivity (:mod:`~dlqnb.evaluation.sensitivity`) and per-layer network metrics
(:mod:`~dlqnb.evaluation.metrics`, MATLAB's ``estimateNetworkMetrics``); recovery and diagnosis beyond MATLAB:
empirical bias correction (:mod:`~dlqnb.evaluation.bias_correction`), the accuracy-driven choice of float layers
(:func:`~dlqnb.evaluation.sensitivity.choose_float_layers`) and the clipping/rounding split of each tensor's
quantization error (:mod:`~dlqnb.evaluation.quantization_error`).
"""
