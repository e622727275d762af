"""The quantization plan: the one place that decides what runs in int8 on a target and computes every code
(:mod:`~dlqnb.plan.builder`), from the type of every tensor (:mod:`~dlqnb.plan.types`). A pure function of
the optimized network, the calibrated statistics and the options; the emulation and the ONNX export read
only the plan.

Exports :func:`build_plan`, :class:`PlanOptions`, :class:`QuantizationPlan`, :class:`LayerPlan`,
:class:`PoolPlan`, :class:`NodePlan`, :func:`choose_types`, :class:`TypeChoice` and :class:`TensorType`
(:class:`dlqnb.core.numerics.FixedPointType`).
"""

from dlqnb.plan.builder import LayerPlan, NodePlan, PoolPlan, QuantizationPlan, TensorType, build_plan
from dlqnb.plan.types import PlanOptions, TypeChoice, choose_types

__all__ = ["LayerPlan", "NodePlan", "PlanOptions", "PoolPlan", "QuantizationPlan", "TensorType", "TypeChoice", "build_plan", "choose_types"]
