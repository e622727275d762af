"""Taylor-score filter pruning (MATLAB's ``taylorPrunableNetwork``, ``updateScore``, ``updatePrunables``):
:mod:`~dlqnb.pruning.taylor`.

Exports :class:`TaylorPrunableNetwork`, :func:`conv_layer_table`, :func:`count_flops` and every other name of
:mod:`dlqnb.pruning.taylor`.
"""

from dlqnb.pruning.taylor import *  # noqa: F401,F403  (pruning's public names)
from dlqnb.pruning.taylor import __all__
