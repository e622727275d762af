"""The data sets the MATLAB examples use, as MATLAB's data stores: ``imageDatastore``, ``splitEachLabel``,
``imageDataAugmenter``, ``augmentedImageDatastore``, ``imtile`` and the MerchData and digits sets (generated
offline by :mod:`~dlqnb.data.synthetic` where they cannot be downloaded).

Exports every name of :mod:`dlqnb.data.datastores`.

Example:
    >>> from dlqnb.data import split_each_label
    >>> callable(split_each_label)
    True
"""

from dlqnb.data.datastores import *  # noqa: F401,F403  (the data stores are this package's public names)
from dlqnb.data.datastores import __all__
