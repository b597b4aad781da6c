"""BatchNorm + Scale folded into the convolutions, and the lifetime of the folded weights (`ButdFrcnnDerivedWeights`):
built once, never used stale, never in the way of gradients."""

import pickle
from copy import deepcopy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from golden import tiny_config

from butd_frcnn import ButdFrcnnModel
from butd_frcnn.kernels_butd_frcnn import drop_derived_weights
from butd_frcnn.modeling_butd_frcnn import ButdFrcnnBottleneck, ButdFrcnnConvNormActivation

# the model runs with gradients off here, as users run it for features (tests about gradients turn them on)
pytestmark = pytest.mark.usefixtures("no_grad")


def unfolded(conv: ButdFrcnnConvNormActivation, x: torch.Tensor) -> torch.Tensor:
    """Caffe's order of layers: the convolution, then BatchNorm + Scale as a separate affine map."""
    y = F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation)
    return conv.norm(y)


@pytest.fixture(scope="module")
def tiny_random_model():
    torch.manual_seed(0)
    return ButdFrcnnModel(tiny_config()).eval()


def random_conv(seed: int = 0, dtype=torch.float32) -> ButdFrcnnConvNormActivation:
    torch.manual_seed(seed)
    conv = ButdFrcnnConvNormActivation(6, 5, 3, padding=2, dilation=2, eps=1e-5).to(dtype)
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


def test_fold_is_built_once_and_reused_without_gradients():
    conv = random_conv()
    x = torch.randn(1, 6, 8, 8)
    assert conv.derived_weights.nbytes == 0, "nothing is built before the first forward"
    conv(x)
    weight, bias = conv.folded(torch.float32)
    assert conv.folded(torch.float32)[0] is weight, "a second call must reuse the fold"
    assert conv.derived_weights.nbytes == weight.nbytes + bias.nbytes == (5 * 6 * 9 + 5) * 4
    channels_last = conv.folded(torch.float32, torch.channels_last)[0]
    assert channels_last.is_contiguous(memory_format=torch.channels_last) and torch.equal(channels_last, weight)
    assert conv.folded(torch.float32)[0] is weight, "another memory format is another entry, beside the first"


def test_loading_weights_drops_the_fold():
    conv = random_conv()
    x = torch.randn(1, 6, 8, 8)
    conv(x)
    other = random_conv(seed=1)
    conv.load_state_dict(other.state_dict())
    assert torch.equal(conv(x), other(x))


def test_to_float64_and_back_refolds():
    conv = random_conv()
    x = torch.randn(1, 6, 8, 8)
    first = conv(x)
    conv.to(torch.float64)  # the fold is redone in float64
    assert conv(x.double()).dtype == torch.float64
    torch.testing.assert_close(conv(x.double()), unfolded(conv, x.double()), rtol=1e-12, atol=1e-12)
    conv.to(torch.float32)  # exact both ways: the same float32 fold again, bit for bit
    assert torch.equal(conv(x), first)
    assert conv.derived_weights.nbytes == (5 * 6 * 9 + 5) * 4, "the float64 fold is gone"


def test_a_round_trip_through_bfloat16_refolds_the_rounded_weights():
    conv = random_conv()
    x = torch.randn(1, 6, 8, 8)
    conv(x)
    conv.to(torch.bfloat16).to(torch.float32)  # back in float32, but rounded to bf16 on the way
    fresh = random_conv()
    fresh.load_state_dict(conv.state_dict())
    assert torch.equal(conv(x), fresh(x))


def test_in_place_writes_without_gradients_need_clear_derived_weights():
    conv = random_conv()
    x = torch.randn(1, 6, 8, 8)
    before = conv(x)
    with torch.no_grad():
        conv.norm.running_var.mul_(4)  # PyTorch tells nobody
    conv.weight.data.mul_(2)
    assert torch.equal(conv(x), before), "documented limitation: in-place writes are invisible to the store"
    drop_derived_weights(conv)
    assert conv.derived_weights.nbytes == 0
    # float32 fold vs separate layers: a few ulps of the outputs (|y| ~ 10)
    torch.testing.assert_close(conv(x), unfolded(conv, x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(conv(x), before)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_fold_in_float32(dtype):
    conv = random_conv().to(dtype)
    weight, bias = conv.folded(dtype)
    reference = random_conv().to(dtype).float()  # the same rounded parameters, folded in float32
    expected_weight, expected_bias = reference.fold(torch.float32)
    assert torch.equal(weight, expected_weight.to(dtype)) and torch.equal(bias, expected_bias.to(dtype))


def test_gradients_reach_the_original_parameters_and_nothing_is_stored():
    conv = random_conv()
    x = torch.randn(1, 6, 8, 8)
    with torch.inference_mode():
        conv(x)  # a fold built in inference mode, as extraction builds it
    assert conv.derived_weights.nbytes > 0
    with torch.enable_grad():
        conv(x).sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert conv.derived_weights.nbytes == 0, "a forward with gradients drops the fold: an optimizer step may follow"

    conv.requires_grad_(False)  # frozen parameters, gradients wanted for the input only (attribution)
    with torch.inference_mode():
        expected = conv(x)
    pixels = x.clone().requires_grad_()
    with torch.enable_grad():
        out = conv(pixels)
        out.sum().backward()
    assert torch.equal(out.detach(), expected) and pixels.grad is not None


def test_copies_start_without_derived_weights():
    conv = random_conv()
    x = torch.randn(1, 6, 8, 8)
    expected = conv(x)
    for copy in (pickle.loads(pickle.dumps(conv)), deepcopy(conv)):
        assert copy.derived_weights.nbytes == 0
        assert torch.equal(copy(x), expected)
    assert conv.derived_weights.nbytes > 0, "the original keeps its own"


def test_model_lifetime_train_eval_clear_load(tiny_random_model, processor):
    model = deepcopy(tiny_random_model)
    batch = processor(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8), return_tensors="pt")
    expected = model(**batch)
    convolutions = [m for m in model.modules() if isinstance(m, ButdFrcnnConvNormActivation)]
    folded_bytes = sum((m.weight.numel() + m.out_channels) * 4 for m in convolutions)
    assert model.derived_weights_nbytes() == folded_bytes, "one folded copy of every convolution"
    model.train()
    assert model.derived_weights_nbytes() == 0
    model.eval()
    assert model.derived_weights_nbytes() == 0
    model(**batch)
    model.clear_derived_weights()
    assert model.derived_weights_nbytes() == 0

    model(**batch)
    other = deepcopy(model)
    with torch.no_grad():
        for conv in other.modules():
            if isinstance(conv, ButdFrcnnConvNormActivation):
                conv.norm.weight.mul_(0.5)
    other.clear_derived_weights()
    changed = other(**batch)
    model.load_state_dict(other.state_dict())
    reloaded = model(**batch)
    for field in ("proposals", "class_probs", "region_features"):
        assert not torch.equal(getattr(changed, field), getattr(expected, field))
        assert torch.equal(getattr(reloaded, field), getattr(changed, field)), field


@pytest.mark.parametrize("in_channels", [16, 12], ids=["identity-shortcut", "projection-shortcut"])
def test_bottleneck_in_place_activations_keep_input_and_gradients(in_channels):
    """The bottleneck applies its ReLUs and the residual sum in place on its convolutions' outputs: its input (the
    shortcut itself when there is no projection) must be left as it was, and gradients must equal those of the
    out-of-place Caffe order."""
    torch.manual_seed(0)
    block = ButdFrcnnBottleneck(in_channels, 4, 16, stride=1, dilation=2).double()
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, ButdFrcnnConvNormActivation):
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
