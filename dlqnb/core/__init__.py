"""The foundation every stage stands on: scaled-integer arithmetic, the one op table, graph capture, batches, caches.

Modules: :mod:`~dlqnb.core.numerics` (MATLAB's scaled 8-bit types, rounding, MSB histograms),
:mod:`~dlqnb.core.ops` (the one table of op traits: what each op does to values, what runs in int8 on which
target, how channels flow through it), :mod:`~dlqnb.core.capture` (torch.fx tracing; a submodule it cannot
trace is kept whole and computed in float), :mod:`~dlqnb.core.graph` (fold BatchNorm, fuse activations),
:mod:`~dlqnb.core.targets` (the one vocabulary of target libraries: cuDNN, TensorRT, ONNX Runtime, OpenVINO),
:mod:`~dlqnb.core.batches` (every data form as checked batches), :mod:`~dlqnb.core.cache` (verified,
atomically written cache entries), :mod:`~dlqnb.core.threads` (the one check of a CPU thread count) and
:mod:`~dlqnb.core.version`. Nothing here imports another stage.
"""
