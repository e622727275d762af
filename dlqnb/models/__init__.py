"""The examples' networks and dlqnb's network files: MATLAB-named SqueezeNet and the digits network,
``findLayersToReplace``/``replaceLayer`` for transfer learning, class names and input size kept with a
network, and :func:`save_network`/:func:`load_network` (safe: no pickle).

Exports every name of :mod:`dlqnb.models.networks`.

Example:
    >>> from dlqnb.models import digits_net
    >>> digits_net().conv1.out_channels
    20
"""

from dlqnb.models.networks import *  # noqa: F401,F403  (the networks are this package's public names)
from dlqnb.models.networks import __all__
