"""Model surgery, network files, and training (dlqnb.models.networks, dlqnb.training.train)."""

from __future__ import annotations

import io
import pickle

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dlqnb.models.networks import (
    DigitsNet,
    digits_net,
    find_layers_to_replace,
    load_network,
    network_metadata,
    replace_classifier,
    save_network,
    set_metadata,
    squeezenet,
)
from dlqnb.training.train import _parameter_groups, train_network, training_options


def test_find_layers_to_replace_on_squeezenet():
    path, module = find_layers_to_replace(squeezenet(num_classes=12, weights=None))
    assert path == "conv10" and isinstance(module, nn.Conv2d)


def test_find_layers_to_replace_errors_are_matlabs():
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x):
            return torch.relu(self.a(x) + self.b(x))

    with pytest.raises(ValueError, match="^Layer graph must have a single learnable layer preceding the classification layer.$"):
        find_layers_to_replace(TwoHeads())
    with pytest.raises(TypeError, match="^Argument must be a torch.nn.Module.$"):
        find_layers_to_replace("net")


def test_replace_classifier_shape_names_and_learn_rates():
    net = replace_classifier(squeezenet(num_classes=12, weights=None), 5, list("abcde"))
    assert net(torch.rand(2, 3, 64, 64)).shape == (2, 5)
    assert net.class_names == list("abcde")
    options = training_options(initial_learn_rate=2e-4)
    groups = {id(g["params"][0]): g["lr"] for g in _parameter_groups(net, options)}
    assert groups[id(net.classifier.weight)] == pytest.approx(2e-3)
    assert groups[id(net.classifier.bias)] == pytest.approx(2e-3)
    assert groups[id(net.conv1.weight)] == pytest.approx(2e-4)


def test_network_file_round_trip(tmp_path):
    net = set_metadata(digits_net(mean=0.13), [str(d) for d in range(10)], (28, 28))
    path = tmp_path / "net.pt"
    save_network(net, path)
    loaded = load_network(path)
    assert isinstance(loaded, DigitsNet)
    assert network_metadata(loaded) == network_metadata(net)
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(loaded(x), net.eval()(x))


def test_version_2_digits_files_with_the_input_layer_named_data_still_load(tmp_path):
    torch.manual_seed(0)
    net = DigitsNet(mean=0.25).eval()
    state = {("data." + key[len("input."):] if key.startswith("input.") else key): value for key, value in net.state_dict().items()}
    assert "data.mean" in state  # the layout version 2 wrote
    buffer = io.BytesIO()
    torch.save({"format": "dlqnb-network", "version": 2, "architecture": "digits", "num_classes": 10, "class_names": None,
                "input_size": [28, 28], "mean": [0.25], "std": [1.0], "classifier_name": None, "state_dict": state}, buffer)
    (tmp_path / "v2.pt").write_bytes(buffer.getvalue())
    loaded = load_network(tmp_path / "v2.pt")
    assert dict(loaded.named_children())["input"].mean.item() == 0.25
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(loaded(x), net(x))


class Payload:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_network_files_are_never_unpickled(tmp_path):
    path = tmp_path / "evil.pt"
    buffer = io.BytesIO()
    torch.save({"format": "dlqnb-network", "version": 1, "architecture": "digits", "payload": Payload()}, buffer)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="evil.pt"):
        load_network(path)
    path.write_bytes(pickle.dumps({"format": "dlqnb-network"}))
    with pytest.raises(ValueError, match="not a readable dlqnb network file"):
        load_network(path)


def test_network_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_network(tmp_path / "missing.pt")
    path = tmp_path / "new.pt"
    torch.save({"format": "dlqnb-network", "version": 99}, path)
    with pytest.raises(ValueError, match="version 99"):
        load_network(path)


def tiny_data(n=24):
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(n, 1, 28, 28, generator=generator), torch.randint(0, 10, (n,), generator=generator))


def test_training_is_deterministic_and_learns():
    data = tiny_data()
    options = training_options("sgdm", mini_batch_size=8, max_epochs=3, initial_learn_rate=0.05, shuffle="every-epoch", progress=False, seed=1)
    torch.manual_seed(0)
    start = digits_net()
    first, info = train_network(data, start, options)
    second, _ = train_network(data, start, options)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert len(info) == 9  # 24 samples, batches of 8, 3 epochs
    assert info["TrainingLoss"].iloc[-3:].mean() < info["TrainingLoss"].iloc[:3].mean()
    assert not torch.equal(start.conv1.weight, first.conv1.weight)  # the input network is left alone


def test_last_partial_batch_is_dropped_and_validation_recorded():
    options = training_options(mini_batch_size=10, max_epochs=2, validation_data=tiny_data(12), validation_frequency=3, progress=False)
    _, info = train_network(tiny_data(25), digits_net(), options)
    assert len(info) == 4  # 25 // 10 = 2 per epoch
    assert info["ValidationAccuracy"].notna().tolist() == [False, False, True, True]


def test_bad_options():
    with pytest.raises(ValueError, match="unknown training options \\['mini_batch'\\]"):
        training_options(mini_batch=3)
    with pytest.raises(ValueError, match="shuffle"):
        training_options(shuffle="sometimes")


class _SettingsRecorder(nn.Module):
    """A digits network that notes the thread count and deterministic mode each training step runs with."""

    def __init__(self) -> None:
        super().__init__()
        self.net = digits_net()
        self.seen: list[tuple[int, bool]] = []

    def forward(self, x):
        self.seen.append((torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()))
        return self.net(x)


def test_training_runs_on_fixed_threads_deterministically_and_restores_the_callers_settings():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    net = _SettingsRecorder()
    state = torch.get_rng_state()
    try:
        options = training_options(mini_batch_size=8, max_epochs=1, progress=False, threads=2)
        trained, _ = train_network(tiny_data(16), net, options)
        assert trained.seen == [(2, True), (2, True)]
        assert torch.get_num_threads() == 1 and not torch.are_deterministic_algorithms_enabled()
        assert torch.equal(torch.get_rng_state(), state)  # the caller's random numbers go on as before
    finally:
        torch.set_num_threads(threads)


def test_training_threads_option_is_checked():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"threads must be a positive whole number of CPU threads \(or None for all cores\), got "):
            training_options(threads=bad)
    assert training_options(threads=None).threads is None


def test_network_bytes_that_are_no_network_name_their_source():
    from dlqnb.models.networks import network_from_bytes

    with pytest.raises(ValueError, match="'cache/net.pt' is not a readable dlqnb network file"):
        network_from_bytes(b"not a network", "cache/net.pt")
