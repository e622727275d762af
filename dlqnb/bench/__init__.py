"""Developer tools, not the library: ``python -m dlqnb.bench calibrate|deploy|prune|zoo`` (:mod:`~dlqnb.bench.benchmarks`),
the torchvision zoo check (:mod:`~dlqnb.bench.reach`) and the shipped SqueezeNet's pretraining
(:mod:`~dlqnb.bench.pretrain`).
"""
