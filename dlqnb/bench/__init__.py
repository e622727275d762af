"""Developer tools, not the library: ``python -m dlqnb.bench calibrate|deploy|prune|zoo|accuracy`` (:mod:`~dlqnb.bench.benchmarks`),
the torchvision zoo check (:mod:`~dlqnb.bench.reach`), the trained zoo's accuracy benchmark (:mod:`~dlqnb.bench.accuracy`), the int8 peers both measure
(:mod:`~dlqnb.bench.peers`) and the shipped SqueezeNet's pretraining
(:mod:`~dlqnb.bench.pretrain`).
"""
