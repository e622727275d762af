"""Faults in the caches of trained networks and of the compiled calibration kernel, and reproducible training.

A cached network with a byte flipped, one without a checksum, an unwritable cache; the kernel library
truncated (which used to end Python with SIGBUS), emptied (which used to fall back to torch for
good, silently) or unsealed; a kernel build that fails; the same recipe trained in two fresh caches.
Tests that damage the kernel run in a subprocess with their own cache: a process loads a library
once under its name, and a damaged one can kill it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from dlqnb.core import cache
from dlqnb.training import zoo
from dlqnb.data.datastores import digits_data_dir, merch_data_dir
from dlqnb.models.networks import digits_net, save_network, set_metadata

KERNEL_LIBRARY = "dlqnb_calibration_kernel.so"


# --------------------------------------------------------------------------- cached trained networks
def _network() -> torch.nn.Module:
    with torch.random.fork_rng():  # the same weights every time, without moving the test's random state
        torch.manual_seed(0)
        return set_metadata(digits_net(), [str(d) for d in range(10)], (28, 28))


class _Trainer:
    """A stand-in for training that counts how often it runs."""

    def __init__(self) -> None:
        self.runs = 0

    def __call__(self) -> torch.nn.Module:
        self.runs += 1
        return _network()


def _cache_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, getattr(cache, "CacheWarning", ()))]


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return a.state_dict().keys() == b.state_dict().keys() and all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values())
    )


def _cached(trainer: _Trainer) -> torch.nn.Module:
    return zoo._cached_network("fault-test", {"recipe": 1}, trainer)


def test_a_cached_network_with_a_byte_flipped_is_retrained_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("DLQNB_CACHE", str(tmp_path))
    trainer = _Trainer()
    first = _cached(trainer)
    [entry] = (tmp_path / "networks").glob("fault-test-*.pt")
    data = bytearray(entry.read_bytes())
    data[-len(data) // 3] ^= 0x10  # inside the weights: the file still loads, with other values
    entry.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = _cached(trainer)
    messages = _cache_warnings(caught)
    assert len(messages) == 1 and str(entry) in messages[0], [str(w.message) for w in caught]
    assert trainer.runs == 2 and _same_weights(again, first)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        third = _cached(trainer)  # the rebuilt entry verifies: loaded, not trained
    assert trainer.runs == 2 and not _cache_warnings(caught) and _same_weights(third, first)


def test_a_cached_network_without_a_checksum_is_retrained_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("DLQNB_CACHE", str(tmp_path))
    trainer = _Trainer()
    _cached(trainer)
    [entry] = (tmp_path / "networks").glob("fault-test-*.pt")
    for item in (tmp_path / "networks").iterdir():
        item.unlink()
    with torch.random.fork_rng():
        torch.manual_seed(1)
        save_network(set_metadata(digits_net(), [str(d) for d in range(10)], (28, 28)), entry)  # another network, no checksum
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = _cached(trainer)
    messages = _cache_warnings(caught)
    assert len(messages) == 1 and str(entry) in messages[0] and "checksum" in messages[0]
    assert trainer.runs == 2 and _same_weights(again, _network())


def test_an_unwritable_cache_trains_and_returns_the_network_uncached(read_only_folder, monkeypatch):
    monkeypatch.setenv("DLQNB_CACHE", str(read_only_folder))
    trainer = _Trainer()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = _cached(trainer)
    messages = _cache_warnings(caught)
    assert trainer.runs == 1 and _same_weights(net, _network()) and net.class_names == [str(d) for d in range(10)]
    assert len(messages) == 1 and str(read_only_folder) in messages[0], messages
    assert list(read_only_folder.iterdir()) == []


# --------------------------------------------------------------------------- reproducible cached networks
def _subset(source: Path, target: Path, per_class: int) -> Path:
    """The first ``per_class`` images of each class of ``source``: the same code path, less training."""
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        (target / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:per_class]:
            shutil.copy(image, target / folder.name / image.name)
    return target


def _train_twice(tmp_path, monkeypatch, build):
    """``build()`` in two fresh caches; before the second, the caller's random state and thread count change."""
    monkeypatch.setenv("DLQNB_CACHE", str(tmp_path / "first"))
    first = build()
    threads = torch.get_num_threads()
    torch.rand(1000)
    torch.set_num_threads(1 if threads != 1 else 2)
    try:
        monkeypatch.setenv("DLQNB_CACHE", str(tmp_path / "second"))
        second = build()
        assert torch.get_num_threads() == (1 if threads != 1 else 2)  # the caller's setting is left alone
    finally:
        torch.set_num_threads(threads)
    keys = [sorted(p.name for p in (tmp_path / run / "networks").glob("*.pt")) for run in ("first", "second")]
    assert keys[0] == keys[1] and len(keys[0]) == 1  # the same cache key ...
    return first, second


def test_digits_custom_trained_in_two_fresh_caches_is_the_same_network(tmp_path, monkeypatch):
    data = _subset(digits_data_dir(), tmp_path / "digits", per_class=20)
    first, second = _train_twice(tmp_path, monkeypatch, lambda: zoo.digits_custom(data))
    assert _same_weights(first, second)  # ... the same network


def test_squeezenet_merch_trained_in_two_fresh_caches_is_the_same_network(tmp_path, monkeypatch):
    data = _subset(merch_data_dir(), tmp_path / "merch", per_class=4)
    first, second = _train_twice(tmp_path, monkeypatch, lambda: zoo.squeezenet_merch(data))
    assert _same_weights(first, second)


# --------------------------------------------------------------------------- the compiled calibration kernel
_KERNEL_CHECK = """
import json, warnings
import torch
warnings.simplefilter("always")
from dlqnb.calibration import kernel as _kernel
x = torch.randn(300_001, generator=torch.Generator().manual_seed(0)) * 100
x[5], x[6] = float("inf"), 0.0
name = _kernel.kernel_name()
low, high, counts = _kernel.minmax_exponent_counts(x)
ref_low, ref_high, ref_counts = _kernel.torch_minmax_exponent_counts(x)
print(json.dumps({"kernel": name, "same": (low, high) == (ref_low, ref_high) and bool(torch.equal(counts, ref_counts))}))
"""


def _run_kernel_check(cache_folder: Path, **environment: str) -> tuple[dict, str]:
    env = {name: value for name, value in os.environ.items() if name != "DLQNB_KERNEL"}
    env.update(DLQNB_CACHE=str(cache_folder), **environment)
    result = subprocess.run([sys.executable, "-c", _KERNEL_CHECK], env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def _library(cache_folder: Path) -> Path:
    [library] = (cache_folder / "kernels").glob(f"*/{KERNEL_LIBRARY}")
    return library


@pytest.fixture(scope="module")
def built_kernel(tmp_path_factory) -> tuple[Path, Path]:
    """A cache holding a built kernel, and a pristine copy of it (one build for the whole module)."""
    base = tmp_path_factory.mktemp("kernel")
    folder = base / "cache"
    outcome, stderr = _run_kernel_check(folder)
    if outcome["kernel"] != "cpp":
        pytest.skip(f"the C++ calibration kernel cannot be built on this machine: {stderr[-500:]}")
    shutil.copytree(folder, base / "pristine")
    return folder, base / "pristine"


def _fresh_copy(built_kernel: tuple[Path, Path]) -> Path:
    # Restored at the same absolute path each time: the build folder's ninja files name it.
    folder, pristine = built_kernel
    shutil.rmtree(folder)
    shutil.copytree(pristine, folder)
    return folder


def _assert_rebuilt(library: Path, outcome: dict, stderr: str) -> None:
    warned = [line for line in stderr.splitlines() if "CacheWarning" in line]
    assert len(warned) == 1 and str(library) in warned[0], stderr[-3000:]
    assert outcome == {"kernel": "cpp", "same": True}
    sealed = library.with_name(library.name + ".sha256")
    assert sealed.read_text().strip() == hashlib.sha256(library.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated to half", "emptied"])
def test_a_damaged_kernel_library_is_rebuilt_with_one_warning(built_kernel, damage):
    folder = _fresh_copy(built_kernel)
    library = _library(folder)
    data = library.read_bytes()
    library.write_bytes(data[: len(data) // 2] if damage == "truncated to half" else b"")
    outcome, stderr = _run_kernel_check(folder)
    _assert_rebuilt(library, outcome, stderr)


@pytest.mark.parametrize("sealed", [False, True])
def test_an_unsealed_kernel_library_is_removed_with_its_build_folder_and_a_sealed_one_kept(tmp_path, monkeypatch, sealed):
    from dlqnb.calibration import kernel as _kernel

    monkeypatch.setenv("DLQNB_CACHE", str(tmp_path))
    build_dir = _kernel._build_directory()
    build_dir.mkdir(parents=True)
    library = _kernel._library_path(build_dir)
    library.write_bytes(b"\x7fELF half of a library an interrupted build left")
    (build_dir / "main.o").write_bytes(b"object")
    if sealed:
        assert cache.seal_entry(library)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        removed = _kernel._discard_unverified_build(build_dir)
    messages = _cache_warnings(caught)
    if sealed:
        assert not removed and not messages and library.exists()
    else:  # nothing left for ninja to take for up to date
        assert removed and not build_dir.exists()
        assert len(messages) == 1 and str(library) in messages[0]


def test_a_failed_kernel_build_warns_once_and_calibrates_exactly(tmp_path):
    outcome, stderr = _run_kernel_check(tmp_path / "cache", CXX="/bin/false")  # any build fails
    warned = [line for line in stderr.splitlines() if "RuntimeWarning" in line]
    assert len(warned) == 1 and "could not be built" in warned[0] and "DLQNB_KERNEL=torch" in warned[0], stderr[-3000:]
    assert outcome == {"kernel": "torch", "same": True}
    outcome, stderr = _run_kernel_check(tmp_path / "cache", CXX="/bin/false", DLQNB_KERNEL="torch")
    assert "RuntimeWarning" not in stderr and "CacheWarning" not in stderr and outcome == {"kernel": "torch", "same": True}  # asked for: no warning
