"""The quantization plan: the one place that decides what runs in int8 on a target and computes every code
(:mod:`~dlqnb.plan.builder`). The emulation and the ONNX export read only the plan.

Exports :func:`build_plan`, :class:`QuantizationPlan`, :class:`LayerPlan`, :class:`NodePlan`, :class:`TensorType`.
"""

from dlqnb.plan.builder import LayerPlan, NodePlan, QuantizationPlan, TensorType, build_plan

__all__ = ["LayerPlan", "NodePlan", "QuantizationPlan", "TensorType", "build_plan"]
