"""Training the examples' networks as MATLAB's ``trainingOptions``/``trainNetwork`` do (:mod:`~dlqnb.training.train`)
and the examples' trained networks, trained once and cached (:mod:`~dlqnb.training.zoo`).

Exports every name of :mod:`dlqnb.training.train`.
"""

from dlqnb.training.train import *  # noqa: F401,F403  (training's public names)
from dlqnb.training.train import __all__
