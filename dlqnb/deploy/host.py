"""The CPU dlqnb runs on, and timing a call on it.

int8 speed-ups are a property of the CPU (VNNI and AMX multiply int8 in one instruction; AVX2 alone
emulates it with 16-bit products), so every speed figure dlqnb prints names the CPU it was measured on
(:func:`cpu_summary`), and cached choices that depend on speed are keyed by it (:func:`cpu_key`).

:func:`time_block` measures one runtime in a block of its own: warm-up calls, then timed calls, with
no other runtime called in between, so that a runtime's idle worker threads cannot compete with the one
being timed.

Example:
    >>> info = cpu_info()
    >>> sorted(info["instruction_sets"]) == sorted(INSTRUCTION_SETS)
    True
    >>> times = time_block(lambda: sum(range(1000)), warmups=1, runs=3)
    >>> len(times)
    3
    >>> import numpy as np
    >>> speed = compare_speed({"sum": np.sum, "sort": np.sort}, (8, 8), batch_sizes=(1, 4), rounds=1, min_seconds=0.01)
    >>> list(speed.columns), list(speed.index)
    (['sum', 'sort'], [1, 4])
"""

from __future__ import annotations

import hashlib
import os
import platform
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "INSTRUCTION_SETS",
    "compare_speed",
    "cpu_info",
    "cpu_key",
    "cpu_summary",
    "file_name_safe",
    "installed_version",
    "parse_cpuinfo",
    "speedup_sentence",
    "time_block",
]

#: Instruction sets that decide int8 speed on x86, and the /proc/cpuinfo flags that announce them.
INSTRUCTION_SETS: dict[str, tuple[str, ...]] = {
    "AVX2": ("avx2",),
    "AVX-512": ("avx512f",),
    "VNNI": ("avx512_vnni", "avx_vnni"),
    "AMX": ("amx_int8",),
}


def parse_cpuinfo(text: str) -> tuple[str | None, dict[str, str], set[str] | None]:
    """Model name, fields and flags of the first processor in a ``/proc/cpuinfo`` text (flags None
    where the text gives none)."""
    fields: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = set(fields["flags"].split()) if "flags" in fields else None
    return fields.get("model name"), fields, flags


def cpu_info(cpuinfo: str | None = None) -> dict[str, Any]:
    """The CPU's model name, family/model numbers, logical cores and int8-relevant instruction sets.

    Args:
        cpuinfo: A ``/proc/cpuinfo`` text (default: this machine's, where the system has one).

    ``instruction_sets`` maps each of :data:`INSTRUCTION_SETS` to True/False, or None where the
    operating system does not say.
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as stream:
                cpuinfo = stream.read()
        except OSError:
            cpuinfo = ""
    name, fields, flags = parse_cpuinfo(cpuinfo)
    return {
        "model": name or platform.processor() or platform.machine(),
        "family": fields.get("cpu family"),
        "model_number": fields.get("model"),
        "cores": os.cpu_count() or 1,
        "instruction_sets": {
            isa: (None if flags is None else any(flag in flags for flag in names)) for isa, names in INSTRUCTION_SETS.items()
        },
    }


def cpu_summary(info: dict[str, Any] | None = None) -> str:
    """One line naming the CPU, e.g. ``AMD EPYC (family 25, model 1), 2 cores; AVX2 yes, AVX-512 no, VNNI no, AMX no``."""
    info = info or cpu_info()
    numbers = f" (family {info['family']}, model {info['model_number']})" if info.get("family") else ""
    marks = {True: "yes", False: "no", None: "unknown"}
    sets = ", ".join(f"{isa} {marks[present]}" for isa, present in info["instruction_sets"].items())
    return f"{info['model']}{numbers}, {info['cores']} cores; {sets}"


def cpu_key() -> str:
    """A short file-name-safe key of the CPU (model, family, cores, instruction sets) for caches."""
    info = cpu_info()
    digest = hashlib.sha256(cpu_summary(info).encode()).hexdigest()[:10]
    return f"{file_name_safe(info['model'], keep='')[:24]}-{digest}"


def file_name_safe(text: str, keep: str = ".") -> str:
    """``text`` as part of one flat file name: every character other than letters, digits and those
    in ``keep`` becomes ``-`` (version strings such as OpenVINO's hold ``/``).

    Example:
        >>> file_name_safe("2026.4.1-22982-releases/2026/4")
        '2026.4.1-22982-releases-2026-4'
    """
    return "".join(c if c.isalnum() or c in keep else "-" for c in text)


def installed_version(module: str) -> str | None:
    """The version of an installed Python package (e.g. ``"openvino"``), or None where it does not import."""
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def time_block(run: Callable[[], Any], warmups: int = 3, runs: int = 7, min_seconds: float = 0.0) -> list[float]:
    """Seconds taken by each timed call of ``run``, after ``warmups`` untimed calls: at least ``runs``
    calls, and more until ``min_seconds`` have passed (a few milliseconds' call needs hundreds of
    samples before its median stops moving with the machine's load)."""
    for _ in range(warmups):
        run()
    times: list[float] = []
    while len(times) < runs or sum(times) < min_seconds:
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def compare_speed(
    predictors: dict[str, Callable[[Any], Any]],
    input_shape: tuple[int, ...],
    batch_sizes: tuple[int, ...] = (1, 32),
    rounds: int = 2,
    min_seconds: float = 0.5,
) -> pd.DataFrame:
    """Milliseconds per call of each predictor at each batch size, on random float32 input.

    Each predictor is timed in a block of its own (:func:`time_block`: warm-up, then the median of at
    least 3 calls and ``min_seconds``), in turn, ``rounds`` times; the fastest round is kept, as the
    one least disturbed by the rest of the machine. The CPU is in ``result.attrs["cpu"]``.

    Args:
        predictors: Name → a callable taking an N×``input_shape`` float32 array (e.g. ``runner.predict``).
        input_shape: One input's shape, e.g. ``(3, 227, 227)``.
        batch_sizes: The batch sizes to time.
        rounds: How many times each block is repeated.
        min_seconds: The least time spent on the timed calls of one block.

    Returns:
        A table indexed by batch size with one column of milliseconds per predictor.
    """
    import statistics

    import numpy as np
    import pandas as pd

    generator = np.random.default_rng(0)
    inputs = {batch: generator.random((batch, *input_shape), dtype=np.float32) for batch in batch_sizes}
    best = {name: {batch: float("inf") for batch in batch_sizes} for name in predictors}
    for _ in range(rounds):
        for name, predict in predictors.items():
            for batch, x in inputs.items():
                seconds = statistics.median(time_block(lambda: predict(x), warmups=1, runs=3, min_seconds=min_seconds))
                best[name][batch] = min(best[name][batch], seconds)
    table = pd.DataFrame({name: [1000 * by_batch[b] for b in batch_sizes] for name, by_batch in best.items()}, index=list(batch_sizes))
    table.index.name = "batch size"
    table.attrs["cpu"] = cpu_summary()
    return table


def speedup_sentence(speed: pd.DataFrame, candidate: str, baseline: str) -> str:
    """One sentence on how fast ``candidate`` runs against ``baseline`` in a :func:`compare_speed` table,
    phrased from the figures (faster, slower or as fast).

    Example:
        >>> import pandas as pd
        >>> speedup_sentence(pd.DataFrame({"float": [10.0], "int8": [5.0]}, index=[1]), "int8", "float")
        'int8 takes 5 ms per batch of 1 against 10 ms for float: 2.00× faster.'
    """
    parts = []
    for batch, row in speed.iterrows():
        ratio = row[baseline] / row[candidate]
        verdict = f"{ratio:.2f}× faster" if ratio > 1.02 else f"{1 / ratio:.2f}× slower" if ratio < 1 / 1.02 else "about as fast"
        parts.append(f"{row[candidate]:.3g} ms per batch of {batch} against {row[baseline]:.3g} ms for {baseline}: {verdict}")
    return f"{candidate} takes " + "; ".join(parts) + "."
