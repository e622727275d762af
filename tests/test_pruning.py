"""TaylorPrunableNetwork: prunable filters, scores, pruning, and the physically smaller network."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import dlqnb
from dlqnb.models.networks import digits_net
from dlqnb.pruning.taylor import TaylorPrunableNetwork, count_flops

from conftest import randomize_batchnorm


def scored(pn: TaylorPrunableNetwork, x: torch.Tensor, y: torch.Tensor, training: bool = False) -> TaylorPrunableNetwork:
    out, activations = pn.forward(x, training=training)
    gradients = torch.autograd.grad(F.cross_entropy(out, y), activations)
    return pn.update_score(activations, gradients)


@pytest.fixture
def digits():
    torch.manual_seed(0)
    return randomize_batchnorm(digits_net()).eval(), torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))


def test_update_score_page_counts(digits):
    net, x, y = digits
    pn = TaylorPrunableNetwork(net)
    assert pn.num_prunables == 48  # 3 layers × 20 filters, each keeping ceil(0.2 × 20) = 4
    assert len(pn.learnables) == 14 and len(pn.state) == 6  # as the updateScore example prints
    pruned = scored(pn, x, y).update_prunables()
    assert pruned.num_prunables == 40
    assert sum(pruned.filter_counts().values()) == 60 - 8  # exactly max_to_prune removed
    assert pn.num_prunables == 48  # functional style: the original object is unchanged


def test_scores_accumulate_as_a_mean(digits):
    net, x, y = digits
    pn = TaylorPrunableNetwork(net)
    once = scored(pn, x, y)
    twice = scored(once, x, y)
    bright = scored(pn, x * 2, y)
    other = scored(once, x * 2, y)
    for name in pn.layers:
        assert torch.allclose(twice.scores()[name], once.scores()[name])  # same batch twice: same mean
        assert torch.allclose(other.scores()[name], (once.scores()[name] + bright.scores()[name]) / 2)
        assert not torch.allclose(other.scores()[name], once.scores()[name])


def taylor_importance(net: nn.Module, x: torch.Tensor, y: torch.Tensor, masked_module: str) -> torch.Tensor:
    """Molchanov's first-order Taylor importance of each filter of ``masked_module``'s output, from its
    definition: the derivative of each image's loss with respect to a scale on the filter's output,
    ``dC_n/ds_k = sum over positions of activation × gradient``, averaged over the positions, made
    absolute and averaged over the images. The gradients ``update_score`` takes are those of the
    batch's mean loss, hence the ``1 / N``."""
    module = dict(net.named_modules())[masked_module]
    scale = torch.ones(len(x), module.num_features, requires_grad=True)
    positions = []

    def scaled(_module, _inputs, output):
        positions.append(output[0, 0].numel())
        return output * scale[:, :, None, None]

    hook = module.register_forward_hook(scaled)
    try:
        losses = F.cross_entropy(net(x), y, reduction="none")
    finally:
        hook.remove()
    (per_image,) = torch.autograd.grad(losses.sum(), scale)  # row n: dC_n/ds
    return (per_image / (len(x) * positions[0])).abs().mean(0)


def test_scores_are_first_order_taylor_importance(digits):
    net, x, y = digits
    pn = scored(TaylorPrunableNetwork(net), x, y)
    for name, layer in pn.layers.items():
        expected = taylor_importance(net, x, y, layer.mask_node)
        assert torch.allclose(pn.scores()[name].float(), expected, rtol=1e-4, atol=1e-6 * float(expected.max())), name


def test_mask_is_after_batchnorm_and_removes_the_channel(digits):
    net, x, y = digits
    pn = scored(TaylorPrunableNetwork(net), x, y).update_prunables(8)
    out, activations = pn.forward(x)
    for layer, activation in zip(pn.layers.values(), activations):
        assert layer.mask_node.startswith("bn")
        assert torch.all(activation[:, ~layer.mask] == 0)


def test_training_forward_keeps_running_statistics(digits):
    net, x, y = digits
    pn = TaylorPrunableNetwork(net)
    before = copy.deepcopy(pn.graph_module.state_dict())
    eval_out, _ = pn.forward(x)
    train_out, _ = pn.forward(x, training=True)
    assert not torch.allclose(eval_out, train_out)  # batch statistics were used
    assert all(torch.equal(before[k], v) for k, v in pn.graph_module.state_dict().items())


@pytest.mark.parametrize("name", ["digits", "squeezenet1_1", "resnet18"])
def test_extracted_network_equals_masked_and_is_smaller(name):
    torch.manual_seed(0)
    if name == "digits":
        net, shape = digits_net(), (1, 28, 28)
    else:
        net, shape = getattr(torchvision.models, name)(num_classes=5), (3, 64, 64)
    net = randomize_batchnorm(net).eval()
    x, y = torch.randn(4, *shape), torch.randint(0, 5, (4,))
    pn = TaylorPrunableNetwork(net)
    for _ in range(2):
        pn = scored(pn, x, y).update_prunables(8)
    small = pn.to_module()
    with torch.no_grad():
        masked, _ = pn.forward(x)
        assert torch.allclose(small(x), masked, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in net.parameters())
    assert count_flops(small, shape) < count_flops(net, shape)


def test_residual_channels_are_left_whole():
    net = torchvision.models.resnet18(num_classes=5).eval()
    layers = TaylorPrunableNetwork(net).layers
    assert set(layers) == {f"layer{i}_{j}_conv1" for i in range(1, 5) for j in range(2)}  # only inside the blocks


def test_pruned_network_trains_and_quantizes(digits):
    net, x, y = digits
    small = scored(TaylorPrunableNetwork(net), x, y).update_prunables(8).to_module()
    data = torch.utils.data.TensorDataset(torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,)))
    trained, info = dlqnb.training.train_network(data, small, dlqnb.training.training_options(mini_batch_size=8, max_epochs=1, progress=False))
    assert len(info) == 2
    quantizer = dlqnb.DLQuantizer(trained)
    quantizer.calibrate(x, progress=False)
    assert sum(quantizer.calibration_table["Learnables / Activations"] == "Weights") == 4


def test_bad_input(digits):
    net, x, y = digits
    with pytest.raises(ValueError, match="no prunable convolution filters: it has no Conv2d"):
        TaylorPrunableNetwork(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    pn = TaylorPrunableNetwork(net)
    with pytest.raises(ValueError, match="update_score"):
        pn.update_prunables(8)
    pn = scored(pn, x, y)
    with pytest.raises(ValueError, match="exceeds the 48 filters"):
        pn.update_prunables(49)
    with pytest.raises(ValueError, match="positive integer"):
        pn.update_prunables(0)
