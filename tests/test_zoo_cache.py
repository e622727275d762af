"""Cached trained networks: built once (even by parallel processes), then loaded without retraining."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest
import torch

import dlqnb
from dlqnb.training import zoo
from dlqnb.core.cache import atomic_write_bytes
from dlqnb.models.networks import digits_net, set_metadata


def _build_in_process(cache: str, marker: str) -> None:
    os.environ["DLQNB_CACHE"] = cache

    def train():
        with open(marker, "a") as stream:  # one line per training actually run
            stream.write("trained\n")
        torch.manual_seed(0)
        return set_metadata(digits_net(), [str(d) for d in range(10)], (28, 28))

    zoo._cached_network("test-lock", {"recipe": 1}, train)


def test_parallel_builders_train_once(tmp_path):
    marker = tmp_path / "trainings.txt"
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_build_in_process, args=(str(tmp_path / "cache"), str(marker))) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        # a bound against a deadlock, not a speed target: three fresh interpreters import torch on a loaded machine
        process.join(timeout=900)
    still_running = [process for process in processes if process.exitcode is None]
    for process in still_running:
        process.kill()
    assert not still_running, f"{len(still_running)} builders still waiting after 15 minutes: the cache lock deadlocked"
    assert [process.exitcode for process in processes] == [0, 0, 0]
    assert marker.read_text().count("trained") == 1


def test_second_call_loads_without_training(tmp_path, monkeypatch):
    monkeypatch.setenv("DLQNB_CACHE", str(tmp_path))
    first = zoo.digits_custom()
    monkeypatch.setattr(zoo, "train_network", lambda *a, **k: pytest.fail("trained again"))
    second = zoo.digits_custom()
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert second.class_names == [str(d) for d in range(10)]


def test_squeezenet_merch_is_cached_and_transfers(tmp_path, monkeypatch):
    monkeypatch.setenv("DLQNB_CACHE", str(tmp_path))
    net = zoo.squeezenet_merch()
    _, validation = zoo.merch_split()
    data = dlqnb.data.augmented_image_datastore(net.input_size, validation)
    _, accuracy = dlqnb.training.evaluate(net, data)
    assert accuracy >= 0.9
    monkeypatch.setattr(zoo, "train_merch", lambda *a, **k: pytest.fail("trained again"))
    again = zoo.squeezenet_merch()
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "file.bin"
    atomic_write_bytes(path, b"old")


    with pytest.raises(TypeError):
        atomic_write_bytes(path, object())  # type: ignore[arg-type]
    assert path.read_bytes() == b"old" and not [p for p in Path(tmp_path).iterdir() if p.name != "file.bin"]


def test_train_merch_names_an_unknown_recipe_entry():
    with pytest.raises(ValueError, match=r"train_merch: unknown recipe entries \['max_epoch'\]"):
        zoo.train_merch(recipe={"max_epoch": 1})
