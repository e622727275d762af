"""Graph capture: torch.fx symbolic tracing, with the submodules it cannot trace kept whole.

:func:`capture_network` traces a network with torch.fx at module granularity (every module call a
``call_module`` node, named after its module path). Where tracing stops inside a submodule's
``forward`` (Python control flow on a traced value such as ``if x.shape[-1] % 2:``, iteration over a
tensor, ``len`` of one), that submodule is kept as one ``call_module`` node that runs its own
``forward`` (eagerly, in float) and tracing starts again; this repeats until the network traces. So
a MobileViT block, whose ``forward`` reads its input's height and width to decide whether to resize,
becomes one float layer and the convolutions around it are traced, folded and quantized as usual.
One :class:`CaptureWarning` names the submodules kept whole and why.

Why keep submodules whole rather than specialize the trace to an input shape (``torch.export``, or
``concrete_args``): a whole submodule still runs its own code, so the captured network computes what
the network does on every input size and batch size (calibration's last, smaller batch; validation
at another resolution) and for control flow on values as well as shapes, it needs no example input
when :class:`~dlqnb.DLQuantizer` is made, and every other node keeps the module-level form that the
op table (:mod:`dlqnb.core.ops`), calibration, emulation and ONNX export read. The price: the layers
inside a whole submodule are computed in float.

Where the network's own ``forward`` (the root, which cannot be kept whole) cannot be traced,
:class:`~dlqnb.errors.NetworkGraphError` names the network and the reason.

Example:
    >>> import warnings
    >>> import torch
    >>> from torch import nn
    >>> class PadOdd(nn.Module):
    ...     def forward(self, x):
    ...         return nn.functional.pad(x, (0, 1)) if x.shape[-1] % 2 else x
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), PadOdd(), nn.ReLU())
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     gm = capture_network(net)
    >>> [node.target for node in gm.graph.nodes if node.op == "call_module"]
    ['0', '1', '2']
    >>> float_reason(list(gm.graph.nodes)[2]).split(" (")[0]
    "PadOdd's forward cannot be traced by torch.fx"
    >>> len(caught), issubclass(caught[0].category, CaptureWarning)
    (1, True)
    >>> x = torch.rand(1, 3, 8, 8)
    >>> bool(torch.equal(gm(x), net(x)))
    True
"""

from __future__ import annotations

import contextlib
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from dlqnb.errors import NetworkGraphError

__all__ = ["FLOAT_REASON", "CaptureWarning", "capture_network", "float_reason"]

#: The key of ``node.meta`` holding why a ``call_module`` node was captured whole (and runs in float).
FLOAT_REASON = "dlqnb_float_reason"

# Frames of torch's own code are not where the user's control flow is.
_TORCH_DIR = str(Path(torch.__file__).parent)
_DLQNB_DIR = str(Path(__file__).parents[1])


class CaptureWarning(UserWarning):
    """torch.fx could not trace part of a network: the submodules named are kept whole, computed in float."""


class _Tracer(fx.Tracer):
    """fx's tracer, keeping as one layer the modules that declare ``dlqnb_leaf = True`` (dlqnb's input
    layer) and the modules named in ``whole``; it records the innermost module whose ``forward`` failed."""

    def __init__(self, whole: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.whole = whole
        self.failed_in: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            module_qualified_name in self.whole
            or bool(getattr(m, "dlqnb_leaf", False))
            or super().is_leaf_module(m, module_qualified_name)
        )

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            # handlers run from the innermost call outwards: the first to record is where it failed
            if self.failed_in is None:
                with contextlib.suppress(NameError):  # a module not registered under the root cannot be a leaf
                    self.failed_in = self.path_of_module(m)
            raise


def capture_network(net: nn.Module) -> fx.GraphModule:
    """Trace ``net`` with torch.fx, keeping whole (as one float layer) each submodule fx cannot trace.

    A network that torch.fx traces is captured exactly as ``fx.Tracer`` captures it (with dlqnb's input
    layer kept whole), with no warning. Otherwise each submodule whose ``forward`` stops the tracer is
    made a leaf, its node's ``meta[FLOAT_REASON]`` says why, and one :class:`CaptureWarning` names
    them all.

    Args:
        net: The network (not modified).

    Returns:
        The traced ``fx.GraphModule``, named after the network's class.

    Raises:
        NetworkGraphError: If the network's own ``forward`` cannot be traced; the message names the
            network and the reason.

    Example:
        >>> import torchvision
        >>> gm = capture_network(torchvision.models.squeezenet1_1())
        >>> [node.target for node in gm.graph.nodes][1:3]
        ['features.0', 'features.1']
    """
    whole: dict[str, str] = {}  # module path -> why fx cannot trace its forward
    while True:
        tracer = _Tracer(frozenset(whole))
        try:
            graph = tracer.trace(net)
            break
        except Exception as error:  # fx raises many types; each means this forward cannot be traced
            path = tracer.failed_in
            if path is None or path in whole:
                layer = f"layer '{path.replace('.', '_')}' of " if path else ""
                raise NetworkGraphError(
                    f"torch.fx cannot trace {layer}{type(net).__name__}: {error}{_where(error)}. dlqnb keeps a submodule "
                    "whose forward fx cannot trace whole (computed in float), but the network's own forward must trace: "
                    "move the control flow into a submodule (see torch.fx's limitations)"
                ) from error
            whole[path] = f"{error}{_where(error)}"
    gm = fx.GraphModule(tracer.root, graph, type(net).__name__)
    # a module kept whole before its parent was is inside the parent's node now, not a layer of its own
    whole = {path: cause for path, cause in whole.items() if not any(path.startswith(f"{other}.") for other in whole)}
    if whole:
        _mark_whole(gm, whole)
        listed = ", ".join(f"'{path.replace('.', '_')}' ({type(gm.get_submodule(path)).__name__})" for path in whole)
        reasons = "; ".join(dict.fromkeys(whole.values()))
        warnings.warn(
            f"torch.fx cannot trace {len(whole)} submodule(s) of {type(net).__name__} ({reasons}): {listed} "
            "captured whole, each one layer computed in float; the rest of the network is traced and quantized",
            CaptureWarning,
            stacklevel=_caller_level(),
        )
    return gm


def float_reason(node: fx.Node) -> str | None:
    """Why a node was captured whole and runs in float (see :func:`capture_network`), else None.

    Example:
        >>> import torchvision
        >>> gm = capture_network(torchvision.models.squeezenet1_1())
        >>> {float_reason(node) for node in gm.graph.nodes}
        {None}
    """
    return node.meta.get(FLOAT_REASON)


def _mark_whole(gm: fx.GraphModule, whole: dict[str, str]) -> None:
    # node.meta travels with a node that is copied into a new graph (the optimized network's rebuild)
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in whole:
            kind = type(gm.get_submodule(node.target)).__name__
            node.meta[FLOAT_REASON] = f"{kind}'s forward cannot be traced by torch.fx ({whole[str(node.target)]}): captured whole, computed in float"


def _caller_level() -> int:
    """The ``stacklevel`` of the first caller outside dlqnb, so that the warning names the user's line
    (``DLQuantizer(net)``) whichever of dlqnb's entry points captured the network."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_DLQNB_DIR):
        frame, level = frame.f_back, level + 1
    return level


def _where(error: BaseException) -> str:
    """`` at file:line (`code`)`` of the last frame outside torch's code where ``error`` was raised, else ""."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__) if not frame.filename.startswith(_TORCH_DIR)]
    if not frames:
        return ""
    frame = frames[-1]
    code = f" (`{frame.line.strip()}`)" if frame.line else ""
    return f" at {Path(frame.filename).name}:{frame.lineno}{code}"
