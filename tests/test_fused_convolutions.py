"""oneDNN's fused convolutions (ReLU and residual sum as post-ops, weights prepacked once) give the portable path's
float32 bits; where the private ops are missing the portable path runs; half precision pools with a product; the
anchors stay float32 in a half-precision model."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from golden import REPO_ROOT, dtype_keyword, golden_image_path, tiny_config

from butd_frcnn import ButdFrcnnModel
from butd_frcnn import kernels_butd_frcnn as kernels
from butd_frcnn import modeling_butd_frcnn as modeling
from butd_frcnn.kernels_butd_frcnn import onednn_fused_convolutions
from butd_frcnn.modeling_butd_frcnn import ButdFrcnnConvNormActivation
from butd_frcnn.ops_butd_frcnn import generate_cell_anchors, global_average_pool, shift_anchors

# the model runs with gradients off here, as users run it for features (tests about gradients turn them on)
pytestmark = pytest.mark.usefixtures("no_grad")

FIELDS = ("proposals", "proposal_scores", "proposal_features", "class_probs", "attribute_probs", "box_deltas",
          "region_features", "boxes", "object_ids", "object_scores", "attribute_ids", "attribute_scores")  # fmt: skip


def test_the_pinned_torch_runs_onednn_fused_convolutions():
    """The pinned torch on an x86 CPU has these private ops. If the probe said otherwise, every model would quietly
    take the slower portable path and the tests below would compare that path with itself, so it is an error here,
    not a skip (the portable path has its own tests, with the probe patched to False)."""
    assert onednn_fused_convolutions(), f"torch {torch.__version__}: oneDNN's fused convolutions are not usable"


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """A photo-like uint8 RGB image (upsampled noise): the detector sees some structure."""
    small = torch.rand((1, 3, height // 8, width // 8), generator=torch.Generator().manual_seed(seed)) * 255
    image = torch.nn.functional.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)
    return image[0].permute(1, 2, 0).round().to(torch.uint8).numpy()


def derived_variants(model) -> set[str]:
    return {key.variant for store in kernels.derived_weight_stores(model) for key in store._entries}


def run(model, batch, fused: bool, monkeypatch):
    """The model's outputs with the fused path on or off (the portable `F.conv2d` path, as without oneDNN)."""
    with monkeypatch.context() as patch:
        if not fused:
            patch.setattr(kernels, "onednn_fused_convolutions", lambda: False)
        model.clear_derived_weights()
        with torch.inference_mode():
            outputs = model(**batch, output_hidden_states=True)
        variants = derived_variants(model)
    model.clear_derived_weights()
    return outputs, variants


def assert_bit_identical(fused, portable, context):
    for field in FIELDS:
        assert torch.equal(getattr(fused, field), getattr(portable, field)), f"{context}: {field} differs"
    for level, (a, b) in enumerate(zip(fused.hidden_states, portable.hidden_states, strict=True)):
        assert torch.equal(a, b), f"{context}: feature map {level} differs"


@pytest.mark.parametrize("name", ["astronaut", "rocket", "filled_with_255"])
def test_fused_path_gives_the_portable_float32_bits(name, tiny_golden_model, processor, monkeypatch):
    batch = processor(golden_image_path(name), return_tensors="pt")
    fused, variants = run(tiny_golden_model, batch, True, monkeypatch)
    assert "prepacked" in variants, "the fused path did not run (no prepacked weights were built)"
    portable, variants = run(tiny_golden_model, batch, False, monkeypatch)
    assert "prepacked" not in variants
    assert_bit_identical(fused, portable, name)


@pytest.mark.slow
def test_fused_path_gives_the_portable_float32_bits_full_size(full_random_model, processor, monkeypatch):
    """The full-size network's shapes take other oneDNN kernels than TINY's (brgconv 1x1, dilated 3x3 at 512)."""
    model = full_random_model
    image = torch.linspace(0, 255, 3 * 300 * 400).reshape(300, 400, 3).round().to(torch.uint8).numpy()
    batch = processor(image, return_tensors="pt")
    fused, _ = run(model, batch, True, monkeypatch)
    portable, _ = run(model, batch, False, monkeypatch)
    assert_bit_identical(fused, portable, "full size")


def test_bfloat16_fused_path_stays_close(tiny_golden_model, processor, monkeypatch):
    """In bf16 the fused sum and ReLU act on the float32 accumulator before the one rounding, so bits differ from
    the portable path's (which rounds the convolution, then the sum): the two agree to bf16 rounding."""
    model = ButdFrcnnModel(tiny_golden_model.config).eval()
    model.load_state_dict(tiny_golden_model.state_dict())
    model.to(torch.bfloat16)
    batch = processor(golden_image_path("astronaut"), return_tensors="pt")
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    fused, variants = run(model, batch, True, monkeypatch)
    assert "prepacked" in variants
    portable, _ = run(model, batch, False, monkeypatch)
    for a, b in zip(fused.hidden_states, portable.hidden_states, strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=0.05, atol=0.05 * float(b.float().abs().max()))


def test_without_the_private_ops_the_portable_path_runs(tiny_golden_model, processor, monkeypatch):
    """Another torch version may lack the private ops or `_select_conv_backend`: the check says so once, and the
    model runs (and gives the same float32 results) without them."""
    batch = processor(golden_image_path("astronaut"), return_tensors="pt")
    expected, _ = run(tiny_golden_model, batch, True, monkeypatch)
    onednn_fused_convolutions.cache_clear()
    try:
        with monkeypatch.context() as patch:
            patch.delattr(torch._C, "_select_conv_backend")
            assert not onednn_fused_convolutions()
            outputs, variants = run(tiny_golden_model, batch, True, monkeypatch)
        assert "prepacked" not in variants
        assert_bit_identical(outputs, expected, "without the private ops")
    finally:
        onednn_fused_convolutions.cache_clear()
    assert onednn_fused_convolutions()


def test_fused_path_only_where_conv2d_runs_onednn():
    """`F.conv2d` runs small float32 problems on PyTorch's own kernels (other roundings): the fused path must not
    take them, or results would depend on which path ran."""
    conv = ButdFrcnnConvNormActivation(8, 8, 1).eval()
    with torch.no_grad():
        assert kernels.onednn_runs(torch.zeros(2, 8, 20, 20), conv)
        assert not kernels.onednn_runs(torch.zeros(1, 8, 4, 4), conv), "one tiny map: PyTorch's own kernel"
        assert not kernels.onednn_runs(torch.zeros(2, 8, 20, 20, dtype=torch.float64), conv)
    with torch.enable_grad():
        assert not kernels.onednn_runs(torch.zeros(2, 8, 20, 20), conv), "the fused ops have no backward"


def test_prepacked_weights_are_derived_weights(tiny_random_model_fp32, processor):
    """Prepacked weights live in the derived-weight store: counted, and dropped with it."""
    model = tiny_random_model_fp32
    batch = processor(golden_image_path("camera"), return_tensors="pt")
    with torch.inference_mode():
        model(**batch)
    assert "prepacked" in derived_variants(model)
    convolutions = [m for m in model.modules() if isinstance(m, ButdFrcnnConvNormActivation)]
    assert model.derived_weights_nbytes() == sum((m.weight.numel() + m.out_channels) * 4 for m in convolutions)
    model.clear_derived_weights()
    assert model.derived_weights_nbytes() == 0 and not derived_variants(model)


@pytest.fixture
def tiny_random_model_fp32():
    torch.manual_seed(0)
    return ButdFrcnnModel(tiny_config()).eval()


def test_forward_does_not_import_inductor_passes():
    """The fused ops are registered by torch itself: a forward must not pull in torch.compile's passes (2.4 s)."""
    script = (
        "import sys, torch\n"
        "from butd_frcnn import ButdFrcnnModel, ButdFrcnnConfig\n"
        f"sys.path.insert(0, {str(REPO_ROOT / 'tests')!r})\n"
        "from golden import tiny_config\n"
        "model = ButdFrcnnModel(tiny_config()).eval()\n"
        "with torch.inference_mode():\n"
        "    model(pixel_values=torch.zeros(1, 3, 96, 128))\n"
        "from butd_frcnn.kernels_butd_frcnn import onednn_fused_convolutions\n"
        "assert onednn_fused_convolutions()\n"
        "print(sorted(m for m in sys.modules if m.startswith('torch._inductor.fx_passes')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env={"PYTHONPATH": str(REPO_ROOT)}
    )
    assert result.stdout.strip() == "[]", result.stdout


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_average_pool_is_within_one_ulp_of_mean(dtype):
    torch.manual_seed(0)
    x = torch.rand(5, 64, 14, 14).to(dtype).contiguous(memory_format=torch.channels_last)
    pooled = global_average_pool(x)
    reference = x.float().mean(dim=(2, 3))
    assert pooled.dtype == dtype and pooled.shape == (5, 64)
    ulp = torch.finfo(dtype).eps * reference.abs()
    assert ((pooled.float() - reference).abs() <= ulp).all()


def test_float32_average_pool_is_mean():
    x = torch.rand(3, 16, 14, 14).contiguous(memory_format=torch.channels_last)
    assert torch.equal(global_average_pool(x), x.mean(dim=(2, 3)))


@pytest.mark.parametrize("how", ["to", "from_pretrained"])
def test_half_precision_models_decode_boxes_on_float32_anchors(how, tmp_path):
    """bf16 cannot hold every anchor (375 -> 376): a model cast to bf16 must still decode on the exact anchors."""
    torch.manual_seed(0)
    model = ButdFrcnnModel(tiny_config()).eval()
    exact = generate_cell_anchors(16, [0.5, 1.0, 2.0], [4.0, 8.0, 16.0, 32.0])
    assert not torch.equal(exact.to(torch.bfloat16).float(), exact), "the anchors must not survive bf16 unharmed"
    if how == "to":
        model.to(torch.bfloat16)
    else:
        model.save_pretrained(tmp_path)
        model = ButdFrcnnModel.from_pretrained(tmp_path, **dtype_keyword(torch.bfloat16))
    assert next(model.parameters()).dtype == torch.bfloat16
    generator = model.proposal_generator.anchor_generator
    assert generator.float32_cell_anchors().dtype == torch.float32
    assert torch.equal(generator.float32_cell_anchors(), exact)
    assert torch.equal(generator(2, 3), shift_anchors(exact, 2, 3, 16))


def test_other_half_precision_anchors_are_used_as_they_are():
    torch.manual_seed(0)
    model = ButdFrcnnModel(tiny_config()).eval().to(torch.bfloat16)
    generator = model.proposal_generator.anchor_generator
    generator.cell_anchors.add_(2)  # not the config's anchors
    assert torch.equal(generator.float32_cell_anchors(), generator.cell_anchors.float())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("size", [(64, 80), (480, 640)], ids=["small", "large"])
def test_same_size_batches_give_each_image_its_own_bits(size, precision, tiny_golden_model, monkeypatch):
    """Batches of 2 and 4 same-size images give each image the bits it gets alone (what lets `extract` batch by
    default). PyTorch runs a small float32 map of one image on its own kernels, and of two images on oneDNN (other
    roundings): the backbone and the RPN head then run the images one at a time. Large maps, and bf16, take oneDNN
    either way, and oneDNN gives each image the same bits in any batch."""
    from butd_frcnn import ButdFrcnnImageProcessor

    processor = ButdFrcnnImageProcessor(size={"shortest_edge": min(size), "longest_edge": max(size)})
    images = [smooth_image(*size, seed) for seed in range(4)]
    tiny_golden_model.config.precision = precision
    try:
        with torch.inference_mode():
            alone = [tiny_golden_model(**processor(image, return_tensors="pt")) for image in images]

            def each_alone(count: int) -> bool:
                batched = tiny_golden_model(**processor(images[:count], return_tensors="pt"))
                same = True
                for index, single in enumerate(alone[:count]):
                    boxes, proposals = int(single.num_boxes[0]), int(single.num_proposals[0])
                    for field, length in (("region_features", boxes), ("boxes", boxes), ("proposals", proposals),
                                          ("class_probs", proposals), ("proposal_features", proposals)):  # fmt: skip
                        same &= torch.equal(
                            getattr(batched, field)[index, :length], getattr(single, field)[0, :length]
                        )
                return same

            assert each_alone(2) and each_alone(4)
            if size == (64, 80) and precision == "fp32":  # the check matters: without it the batch differs
                monkeypatch.setattr(modeling, "batch_changes_kernels", lambda x, conv: False)
                assert not each_alone(2) and not each_alone(4)
    finally:
        tiny_golden_model.config.precision = "fp32"
