"""Evaluation: float against emulated int8 accuracy and memory (:mod:`~dlqnb.evaluation.validation`, MATLAB's
``validate``) and per-layer sensitivity (:mod:`~dlqnb.evaluation.sensitivity`).
"""
