"""Preparation of a float network for quantization, before :class:`~dlqnb.DLQuantizer` sees it: MATLAB's
``prepareNetwork`` (:func:`prepare_network`, from :mod:`dlqnb.preparation.prepare`: fold batch norms,
replace layers with no int8 form by exact equivalents, equalize, report what changed) and
``equalizeLayers`` (:func:`equalize_layers`, from :mod:`dlqnb.preparation.equalization`: cross-layer
equalization of consecutive layers, the float output unchanged unless clipped ReLUs are replaced
with ``relu6="relu"``).
"""

from dlqnb.preparation.equalization import equalize_layers
from dlqnb.preparation.prepare import prepare_network

__all__ = ["equalize_layers", "prepare_network"]
