"""BatchNorm + Scale folded into the convolutions, and the cache of the folded weights: it must never go stale."""

import pytest
import torch
import torch.nn.functional as F

from butd_frcnn.modeling_butd_frcnn import ButdFrcnnBottleneck, ButdFrcnnConv2d


def unfolded(conv: ButdFrcnnConv2d, x: torch.Tensor) -> torch.Tensor:
    """Caffe's order of layers: the convolution, then BatchNorm + Scale as a separate affine map."""
    y = F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation)
    return conv.norm(y)


def random_conv(seed: int = 0, dtype=torch.float32) -> ButdFrcnnConv2d:
    torch.manual_seed(seed)
    conv = ButdFrcnnConv2d(6, 5, 3, padding=2, dilation=2, eps=1e-5).to(dtype)
    with torch.no_grad():
        conv.weight.normal_()
        conv.norm.weight.uniform_(0.5, 2)
        conv.norm.bias.normal_()
        conv.norm.running_mean.normal_()
        conv.norm.running_var.uniform_(0.5, 2)
    return conv


def test_folded_convolution_equals_convolution_then_batch_norm():
    conv = random_conv(dtype=torch.float64)
    x = torch.randn(2, 6, 9, 11, dtype=torch.float64)
    # in float64 only the order of the roundings differs: agreement to 1e-12 relative
    torch.testing.assert_close(conv(x), unfolded(conv, x), rtol=1e-12, atol=1e-12)


def test_fold_is_cached_and_follows_every_tracked_change():
    conv = random_conv()
    x = torch.randn(1, 6, 8, 8)
    first = conv(x)
    cached_weight = conv.folded(torch.float32)[0]
    assert conv.folded(torch.float32)[0] is cached_weight, "a second call must reuse the fold"

    with torch.no_grad():  # in-place update, as optimisers and init functions do
        conv.norm.running_var.mul_(4)
    # float32 fold vs separate layers: a few ulps of the outputs (|y| ~ 10)
    torch.testing.assert_close(conv(x), unfolded(conv, x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(conv(x), first)

    other = random_conv(seed=1)
    conv.load_state_dict(other.state_dict())
    assert torch.equal(conv(x), other(x))

    conv.to(torch.float64)  # new tensors: the cache is dropped, the fold redone in float64
    assert conv(x.double()).dtype == torch.float64
    torch.testing.assert_close(conv(x.double()), unfolded(conv, x.double()), rtol=1e-12, atol=1e-12)


def test_a_round_trip_through_bfloat16_refolds_the_rounded_weights():
    conv = random_conv()
    x = torch.randn(1, 6, 8, 8)
    conv(x)
    conv.to(torch.bfloat16).to(torch.float32)  # a fresh float32 tensor may land at the freed address
    fresh = random_conv()
    fresh.load_state_dict(conv.state_dict())
    assert torch.equal(conv(x), fresh(x))


def test_writes_through_data_need_clear_folded():
    conv = random_conv()
    x = torch.randn(1, 6, 8, 8)
    before = conv(x)
    conv.weight.data.mul_(2)  # not tracked by PyTorch
    assert torch.equal(conv(x), before), "documented limitation: .data writes are invisible to the cache"
    conv.apply(ButdFrcnnConv2d.clear_folded)
    torch.testing.assert_close(conv(x), unfolded(conv, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_fold_in_float32(dtype):
    conv = random_conv().to(dtype)
    weight, bias = conv.folded(dtype)
    reference = random_conv().to(dtype).float()  # the same rounded parameters, folded in float32
    expected_weight, expected_bias = reference.fold(torch.float32)
    assert torch.equal(weight, expected_weight.to(dtype)) and torch.equal(bias, expected_bias.to(dtype))


def test_gradients_reach_the_original_parameters():
    conv = random_conv()
    with torch.enable_grad():
        conv(torch.randn(1, 6, 8, 8)).sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert conv._folded is None, "nothing is cached while gradients are on"


@pytest.mark.parametrize("in_channels", [16, 12], ids=["identity-shortcut", "projection-shortcut"])
def test_bottleneck_in_place_activations_keep_input_and_gradients(in_channels):
    """The bottleneck applies its ReLUs and the residual sum in place on its convolutions' outputs: its input (the
    shortcut itself when there is no projection) must be left as it was, and gradients must equal those of the
    out-of-place Caffe order."""
    torch.manual_seed(0)
    block = ButdFrcnnBottleneck(in_channels, 4, 16, stride=1, dilation=2).double()
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, ButdFrcnnConv2d):
                module.norm.weight.uniform_(0.5, 2)
                module.norm.bias.normal_()
                module.norm.running_mean.normal_(0, 0.1)
                module.norm.running_var.uniform_(0.5, 2)

    def out_of_place(x):
        shortcut = x if block.shortcut is None else unfolded(block.shortcut, x)
        out = F.relu(unfolded(block.conv1, x))
        out = F.relu(unfolded(block.conv2, out))
        return F.relu(unfolded(block.conv3, out) + shortcut)

    x = torch.randn(2, in_channels, 9, 7, dtype=torch.float64)
    kept = x.clone()
    with torch.no_grad():
        torch.testing.assert_close(block(x), out_of_place(x), rtol=1e-12, atol=1e-12)
    assert torch.equal(x, kept), "the block wrote into its input"

    with torch.enable_grad():
        grads = []
        for forward in (block, out_of_place):
            block.zero_grad()
            x_grad = x.clone().requires_grad_()
            (forward(x_grad) * torch.linspace(-1, 1, 16 * 9 * 7, dtype=torch.float64).view(16, 9, 7)).sum().backward()
            grads.append([x_grad.grad] + [p.grad.clone() for p in block.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 1
    for ours, reference in zip(*grads, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)
