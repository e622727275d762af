"""Shared fixtures: small networks with non-trivial BatchNorm statistics, and deterministic data."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn


def randomize_batchnorm(net: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random running statistics and affine parameters (a fresh one is the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.randn(n, generator=generator))
                module.bias.copy_(torch.randn(n, generator=generator))
    return net


def broken_by_quantization() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A Flatten → Linear(4, 2) network that int8 weights break, 16 4-channel 1×1 images and their labels (all 1).

    Weights [100, 0.3, ...] and [100, 0.35, ...]: a weight scale of 1 (for 100) rounds the small weights
    to 0, so both quantized scores are equal and argmax says class 0, while the float network says 1.
    """
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[100.0, 0.3, 0.3, 0.3], [100.0, 0.35, 0.35, 0.35]]))
        net[1].bias.zero_()
    x = torch.rand(16, 4, 1, 1, generator=torch.Generator().manual_seed(0)) + 0.1
    return net, x, torch.ones(16, dtype=torch.long)


NETWORKS = {
    "squeezenet1_1": lambda: torchvision.models.squeezenet1_1(num_classes=5),
    "resnet18": lambda: torchvision.models.resnet18(num_classes=5),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=5),
    "googlenet": lambda: torchvision.models.googlenet(num_classes=5, aux_logits=False, init_weights=False),
}


@pytest.fixture(params=sorted(NETWORKS))
def named_network(request) -> tuple[str, nn.Module]:
    torch.manual_seed(0)
    return request.param, randomize_batchnorm(NETWORKS[request.param]()).eval()


@pytest.fixture
def squeezenet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.squeezenet1_1(num_classes=5).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def parameterized_notebook(path, parameters: str, *cells: str):
    """Write a Python notebook: a ``parameters``-tagged cell, then one code cell per source; returns ``path``."""
    import nbformat

    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    parameter_cell = nbformat.v4.new_code_cell(parameters)
    parameter_cell.metadata["tags"] = ["parameters"]
    notebook.cells = [parameter_cell, *(nbformat.v4.new_code_cell(source) for source in cells)]
    nbformat.write(notebook, path)
    return path


def _can_write(folder) -> bool:
    probe = folder / ".probe"
    try:
        probe.write_bytes(b"")
    except OSError:
        return False
    probe.unlink()
    return True


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nobody can write into, root included (a read-only tmpfs mount where permission bits do not bind root)."""
    import subprocess

    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    mounted = False
    if _can_write(folder):  # root ignores permission bits
        try:
            result = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True, timeout=30)
            mounted = result.returncode == 0
        except (OSError, subprocess.TimeoutExpired):  # no mount command on a minimal image
            mounted = False
        if not mounted or _can_write(folder):
            pytest.skip("cannot make a read-only folder here: running as root without permission to mount a read-only tmpfs")
    yield folder
    if mounted:
        try:
            subprocess.run(["umount", str(folder)], check=False, capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
    folder.chmod(0o755)
