"""Training with MATLAB's options: ``training_options`` and ``train_network``.

MATLAB's defaults apply where an example does not say: SGDM with momentum 0.9, L2 regularization 1e-4 on
weights (not biases), mini-batches of 128, 30 epochs, shuffling once, validation every 50 iterations.
As ``trainNetwork`` does, each epoch drops the last incomplete mini-batch; per-layer learn-rate
factors (``weight_learn_rate_factor`` / ``bias_learn_rate_factor`` attributes of a module, set by
:func:`dlqnb.models.networks.replace_classifier`) multiply the learning rate of that module's parameters.

Training is reproducible: the same data, network, options and ``seed`` give bit-identical weights on
one kind of CPU. :func:`train_network` seeds torch's random numbers with ``seed`` (shuffling, dropout),
turns on torch's deterministic algorithms and runs on a fixed number of intra-op threads (``threads``,
:data:`TRAINING_THREADS` by default), because the thread count decides the order in which gradients
are summed; the caller's random state and settings are restored afterwards. Augmentation is a
function of ``(seed, epoch, index)`` (:mod:`dlqnb.data.datastores`).
``plots="training-progress"`` draws a live Plotly chart in an interactive notebook and a static one
when notebooks run as batch reports (``DLQNB_STATIC_PLOTS=1``, set by the report command).

Example:
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> from dlqnb.models.networks import digits_net
    >>> data = TensorDataset(torch.rand(40, 1, 28, 28), torch.randint(0, 10, (40,)))
    >>> options = training_options("sgdm", mini_batch_size=8, max_epochs=1, progress=False)
    >>> net, info = train_network(data, digits_net(), options)
    >>> len(info)   # 40 images in batches of 8: 5 iterations
    5
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from dlqnb.core.batches import iter_batches
from dlqnb.core.threads import check_threads

__all__ = ["TRAINING_THREADS", "TrainingOptions", "evaluate", "reproducible", "train_network", "training_options"]

#: Intra-op threads :func:`train_network` uses unless ``threads`` says otherwise. Fixed rather than
#: "all cores", so that a 2-core laptop and a 64-core server with the same kind of CPU sum gradients in
#: the same order and train the same network; two threads is what this project's reference machine has.
TRAINING_THREADS = 2

INFO_COLUMNS = ["Iteration", "Epoch", "TrainingLoss", "TrainingAccuracy", "ValidationLoss", "ValidationAccuracy", "LearnRate"]


@dataclass(frozen=True)
class TrainingOptions:
    """Options of :func:`train_network` (MATLAB's ``trainingOptions``); see :func:`training_options`."""

    solver: Literal["sgdm", "adam"] = "sgdm"
    mini_batch_size: int = 128
    max_epochs: int = 30
    initial_learn_rate: float = 0.01
    momentum: float = 0.9
    l2_regularization: float = 1e-4
    shuffle: Literal["once", "every-epoch", "never"] = "once"
    validation_data: Any = None
    validation_frequency: int = 50
    verbose: bool = True
    plots: Literal["none", "training-progress"] = "none"
    seed: int = 0
    progress: bool = True
    threads: int | None = TRAINING_THREADS


def training_options(solver: str = "sgdm", **options: Any) -> TrainingOptions:
    """Training options with MATLAB's names in snake_case and MATLAB's defaults.

    Args:
        solver: ``"sgdm"`` (default) or ``"adam"``.
        **options: Any field of :class:`TrainingOptions`, e.g. ``mini_batch_size=11``,
            ``max_epochs=7``, ``initial_learn_rate=2e-4``, ``shuffle="every-epoch"``,
            ``validation_data=...``, ``validation_frequency=3``, ``verbose=False``,
            ``plots="training-progress"``, ``seed=0``, ``threads=2`` (intra-op threads during
            training, :data:`TRAINING_THREADS` by default; None keeps torch's current setting, so
            the result then depends on it).

    Raises:
        ValueError: For an unknown option or solver, or a value out of range; names it.
    """
    if solver not in ("sgdm", "adam"):
        raise ValueError(f"solver must be 'sgdm' or 'adam', got {solver!r}")
    known = set(TrainingOptions.__dataclass_fields__) - {"solver"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown training options {unknown}; known: {sorted(known)}")
    result = TrainingOptions(solver=solver, **options)  # type: ignore[arg-type]
    if result.shuffle not in ("once", "every-epoch", "never"):
        raise ValueError(f"shuffle must be 'once', 'every-epoch' or 'never', got {result.shuffle!r}")
    if result.plots not in ("none", "training-progress"):
        raise ValueError(f"plots must be 'none' or 'training-progress', got {result.plots!r}")
    for name in ("mini_batch_size", "max_epochs", "validation_frequency"):
        if int(getattr(result, name)) < 1:
            raise ValueError(f"{name} must be a positive integer, got {getattr(result, name)}")
    if result.initial_learn_rate <= 0:
        raise ValueError(f"initial_learn_rate must be positive, got {result.initial_learn_rate}")
    check_threads(result.threads)
    return result


@contextlib.contextmanager
def reproducible(seed: int, threads: int | None = TRAINING_THREADS) -> Iterator[None]:
    """Run a block reproducibly: torch's random numbers seeded, deterministic algorithms, fixed threads.

    Everything is restored on the way out: the caller's random state, thread count and
    deterministic-algorithm settings. :func:`train_network` trains inside this block; build a
    network's starting weights inside it too, so that they do not depend on what ran before.

    Args:
        seed: Seed of torch's global random numbers inside the block.
        threads: Intra-op threads inside the block; None keeps the current count.

    Example:
        >>> with reproducible(0):
        ...     first = torch.rand(2)
        >>> with reproducible(0, threads=1):
        ...     second = torch.rand(2)
        >>> torch.equal(first, second)
        True
    """
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    previous_mkldnn = torch.backends.mkldnn.deterministic
    with torch.random.fork_rng(devices=[]):
        try:
            torch.manual_seed(seed)
            if threads is not None:
                torch.set_num_threads(threads)
            # warn_only: an operation without a deterministic version warns instead of stopping the
            # training; a caller who asked for the strict mode keeps it.
            torch.use_deterministic_algorithms(True, warn_only=previous_warn_only if previous_deterministic else True)
            torch.backends.mkldnn.deterministic = True
            yield
        finally:
            torch.set_num_threads(previous_threads)
            torch.use_deterministic_algorithms(previous_deterministic, warn_only=previous_warn_only)
            torch.backends.mkldnn.deterministic = previous_mkldnn


def _parameter_groups(net: nn.Module, options: TrainingOptions) -> list[dict[str, Any]]:
    groups = []
    for module in net.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad:
                continue
            is_bias = name == "bias"
            factor = float(getattr(module, "bias_learn_rate_factor" if is_bias else "weight_learn_rate_factor", 1.0))
            is_norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
            decay = 0.0 if is_bias or is_norm else options.l2_regularization
            groups.append({"params": [parameter], "lr": options.initial_learn_rate * factor, "weight_decay": decay, "lr_factor": factor})
    return groups


def _samples(data: Any) -> Dataset:
    if isinstance(data, Dataset):
        return data
    raise TypeError(f"train_network needs a Dataset of (image, label) samples, got {type(data).__name__}")


def evaluate(net: nn.Module, data: Any, mini_batch_size: int = 128) -> tuple[float, float]:
    """Mean cross-entropy loss and top-1 accuracy of ``net`` on labelled data (eval mode)."""
    was_training = net.training
    net.eval()
    total_loss, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for images, labels in iter_batches(data, mini_batch_size):
            if labels is None:
                raise ValueError("evaluate needs labelled data: (images, labels) samples or batches")
            scores = net(images)
            total_loss += float(F.cross_entropy(scores, labels, reduction="sum"))
            correct += int((scores.argmax(1) == labels).sum())
            count += len(labels)
    net.train(was_training)
    return total_loss / count, correct / count


def _live_plot_wanted(options: TrainingOptions) -> bool:
    if options.plots != "training-progress" or os.environ.get("DLQNB_STATIC_PLOTS") == "1":
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def train_network(data: Any, net: nn.Module, options: TrainingOptions) -> tuple[nn.Module, pd.DataFrame]:
    """Train a copy of ``net`` on labelled samples (MATLAB's ``trainNetwork``).

    Args:
        data: A Dataset of ``(image, label index)`` samples (an augmented image datastore, say);
            ``set_epoch`` is called on it each epoch when it has one.
        net: The network; it is not modified (a trained copy is returned).
        options: From :func:`training_options`. Training runs inside :func:`reproducible`
            (``options.seed``, ``options.threads``).

    Returns:
        The trained network (eval mode) and a training-info DataFrame with one row per iteration:
        ``Iteration``, ``Epoch``, ``TrainingLoss``, ``TrainingAccuracy``, ``ValidationLoss``,
        ``ValidationAccuracy`` (NaN between validations), ``LearnRate``.
    """
    samples = _samples(data)
    if len(samples) < options.mini_batch_size:
        raise ValueError(f"{len(samples)} training samples is fewer than one mini-batch of {options.mini_batch_size}")
    with reproducible(options.seed, options.threads):
        return _train(samples, net, options)


def _train(samples: Dataset, net: nn.Module, options: TrainingOptions) -> tuple[nn.Module, pd.DataFrame]:
    """The training loop of :func:`train_network` (run inside :func:`reproducible`)."""
    from dlqnb.ui.plotting import training_progress_figure

    model = copy.deepcopy(net).train()
    groups = _parameter_groups(model, options)
    if options.solver == "sgdm":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(groups, lr=options.initial_learn_rate, momentum=options.momentum)
    else:
        optimizer = torch.optim.Adam(groups, lr=options.initial_learn_rate)
    generator = torch.Generator().manual_seed(options.seed)
    order = torch.arange(len(samples))
    if options.shuffle == "once":
        order = torch.randperm(len(samples), generator=generator)
    per_epoch = len(samples) // options.mini_batch_size
    total = per_epoch * options.max_epochs
    rows: list[dict[str, float]] = []
    live = None
    if _live_plot_wanted(options):
        from IPython.display import display

        live = training_progress_figure(pd.DataFrame(columns=INFO_COLUMNS), widget=True)
        display(live)
    bar = tqdm(total=total, desc="Training", unit="iteration", disable=not options.progress)
    iteration = 0
    for epoch in range(options.max_epochs):
        if hasattr(samples, "set_epoch"):
            samples.set_epoch(epoch)
        if options.shuffle == "every-epoch":
            order = torch.randperm(len(samples), generator=generator)
        batches = DataLoader(torch.utils.data.Subset(samples, order[: per_epoch * options.mini_batch_size].tolist()),
                             batch_size=options.mini_batch_size, shuffle=False)
        for images, labels in batches:
            model.train()
            scores = model(images)
            loss = F.cross_entropy(scores, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            iteration += 1
            row = {
                "Iteration": iteration,
                "Epoch": epoch + 1,
                "TrainingLoss": float(loss.detach()),
                "TrainingAccuracy": float((scores.detach().argmax(1) == labels).float().mean()),
                "ValidationLoss": float("nan"),
                "ValidationAccuracy": float("nan"),
                "LearnRate": options.initial_learn_rate,
            }
            if options.validation_data is not None and (iteration % options.validation_frequency == 0 or iteration == total):
                row["ValidationLoss"], row["ValidationAccuracy"] = evaluate(model, options.validation_data)
            rows.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['TrainingLoss']:.3f}")
            if live is not None:
                _update_live(live, pd.DataFrame(rows, columns=INFO_COLUMNS))
    bar.close()
    info = pd.DataFrame(rows, columns=INFO_COLUMNS)
    if options.plots == "training-progress" and live is None:
        try:
            from IPython.display import display

            display(training_progress_figure(info))
        except ImportError:
            pass
    return model.eval(), info


def _update_live(figure: Any, info: pd.DataFrame) -> None:
    from dlqnb.ui.plotting import training_progress_figure

    fresh = training_progress_figure(info)
    with figure.batch_update():
        for target, source in zip(figure.data, fresh.data):
            target.x, target.y = source.x, source.y
