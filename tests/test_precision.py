"""Precision modes (`ButdFrcnnConfig.precision`): fp32 unchanged, bf16 through derived copies of float32 weights,
fp32-screened equal to fp32 (end to end on the golden weights, and its planner on constructed cases, each rule
pinned), the row-invariance facts the screening relies on, tf32's flags set only around the forward."""

import json
import math

import pytest
import torch
from golden import golden_image_path, tiny_config
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoModel

from butd_frcnn import ButdFrcnnConfig, ButdFrcnnModel
from butd_frcnn import kernels_butd_frcnn as kernels
from butd_frcnn import precision_butd_frcnn as precision
from butd_frcnn.modeling_butd_frcnn import ButdFrcnnRoIHeads
from butd_frcnn.ops_butd_frcnn import per_class_nms_max_scores, select_regions
from butd_frcnn.precision_butd_frcnn import (
    SCREENING_MARGIN,
    cuda_float32_math,
    screening_plan,
    settle_screened,
    settlement_batches,
    settlement_granularity,
)

# the model runs with gradients off here, as users run it for features (tests about gradients turn them on)
pytestmark = pytest.mark.usefixtures("no_grad")

SELECTED = ("region_features", "boxes", "object_ids", "object_scores", "attribute_ids", "attribute_scores",
            "num_boxes", "proposals", "num_proposals", "proposal_scores", "proposal_indices",
            "selection_scores")  # fmt: skip
PER_PROPOSAL = ("proposal_features", "class_probs", "attribute_probs", "box_deltas")


def forward(model, batch, precision, **selection):
    model.config.precision = precision
    try:
        with torch.inference_mode():
            return model(**batch, **selection)
    finally:
        model.config.precision = "fp32"


def assert_screened_equals_fp32(model, batch, **selection):
    reference = forward(model, batch, "fp32", **selection)
    screened = forward(model, batch, "fp32-screened", **selection)
    assert reference.settled_proposals is None
    for field in SELECTED:
        assert torch.equal(getattr(screened, field), getattr(reference, field)), f"{field} differs from fp32's"
    settled = screened.settled_proposals[0]
    count = int(reference.num_proposals[0])
    assert settled.shape == (reference.proposals.shape[1],) and not settled[count:].any()
    for field in PER_PROPOSAL:
        ours, theirs = getattr(screened, field)[0], getattr(reference, field)[0]
        assert torch.equal(ours[settled], theirs[settled]), f"{field} of a settled proposal differs"
    assert bool(settled.any())
    return screened


# ---------------------------------------------------------------------------------------------------------------
# Configuration and modes
# ---------------------------------------------------------------------------------------------------------------


def test_precision_is_a_config_field_and_a_from_pretrained_argument_kept_by_save_pretrained(tmp_path):
    assert ButdFrcnnConfig().precision == "fp32"
    with pytest.raises(StrictDataclassClassValidationError, match="precision='fast'"):
        ButdFrcnnConfig(precision="fast")
    torch.manual_seed(0)
    ButdFrcnnModel(tiny_config(precision="bf16")).save_pretrained(tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["precision"] == "bf16"
    model = ButdFrcnnModel.from_pretrained(tmp_path / "bf16")
    assert model.config.precision == "bf16" and model.dtype == torch.float32  # float32 weights, bf16 compute
    model = ButdFrcnnModel.from_pretrained(tmp_path / "bf16", precision="fp32-screened")
    assert model.config.precision == "fp32-screened" and model.dtype == torch.float32
    model.save_pretrained(tmp_path / "screened")
    assert AutoModel.from_pretrained(tmp_path / "screened").config.precision == "fp32-screened"


def test_invalid_combinations_are_refused(tiny_golden_model, processor):
    batch = processor(golden_image_path("camera"), return_tensors="pt")
    with pytest.raises(ValueError, match="CUDA"):
        forward(tiny_golden_model, batch, "tf32")
    model = ButdFrcnnModel(tiny_golden_model.config).eval().to(torch.bfloat16)
    with pytest.raises(ValueError, match="needs float32 weights"):
        forward(model, batch, "fp32-screened")
    tiny_golden_model.config.precision = "quick"
    try:
        with pytest.raises(ValueError, match="expected one of"):
            tiny_golden_model(**batch)
    finally:
        tiny_golden_model.config.precision = "fp32"


def test_bf16_precision_computes_in_bf16_from_float32_weights(tiny_golden_model, processor):
    """precision "bf16" keeps the float32 weights (fp32 stays one setting away) and computes from bf16 copies, held
    as derived weights."""
    model = ButdFrcnnModel(tiny_golden_model.config).eval()
    model.load_state_dict(tiny_golden_model.state_dict())
    batch = processor(golden_image_path("astronaut"), return_tensors="pt")
    fp32 = forward(model, batch, "fp32", output_hidden_states=True)
    model.clear_derived_weights()
    bf16 = forward(model, batch, "bf16", output_hidden_states=True)
    assert model.dtype == torch.float32
    assert all(level.dtype == torch.bfloat16 for level in bf16.hidden_states)
    assert bf16.region_features.dtype == torch.bfloat16 and bf16.class_probs.dtype == torch.float32
    stores = list(kernels.derived_weight_stores(model))
    variants = {(key.variant, key.dtype) for store in stores for key in store._entries}
    assert ("cast", torch.bfloat16) in variants and all(dtype == torch.bfloat16 for _, dtype in variants)
    res4, reference = bf16.hidden_states[-1].float(), fp32.hidden_states[-1]
    assert float((res4 - reference).norm() / reference.norm()) < 0.02  # bf16 rounding through 7 bottlenecks


def test_cuda_math_flags_are_set_only_around_the_forward():
    """The flags themselves need no GPU: set inside, restored after, never left changed."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = (matmul.fp32_precision, conv.fp32_precision, torch.backends.cudnn.benchmark)
    with cuda_float32_math(torch.device("cuda"), "tf32"):
        assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
    assert (matmul.fp32_precision, conv.fp32_precision, torch.backends.cudnn.benchmark) == before
    with cuda_float32_math(torch.device("cuda"), "fp32"):
        assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert (matmul.fp32_precision, conv.fp32_precision, torch.backends.cudnn.benchmark) == before
    with pytest.raises(RuntimeError), cuda_float32_math(torch.device("cuda"), "bf16"):
        raise RuntimeError("the forward failed")
    assert (matmul.fp32_precision, conv.fp32_precision, torch.backends.cudnn.benchmark) == before
    with cuda_float32_math(torch.device("cpu"), "tf32"):
        assert (matmul.fp32_precision, conv.fp32_precision) == before[:2]


# ---------------------------------------------------------------------------------------------------------------
# fp32-screened, end to end
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("boxes", [(10, 100), (36, 36)], ids=["10-100", "36"])
@pytest.mark.parametrize("name", ["astronaut", "rocket", "camera", "noise_333x500", "filled_with_0"])
def test_screened_equals_fp32_on_the_tiny_golden_network(name, boxes, tiny_golden_model, processor):
    batch = processor(golden_image_path(name), return_tensors="pt")
    assert_screened_equals_fp32(tiny_golden_model, batch, min_boxes=boxes[0], max_boxes=boxes[1])


@pytest.mark.parametrize("precision", ["fp32-screened", "bf16"])
def test_given_boxes_in_every_precision(precision, tiny_golden_model, processor):
    """Given boxes are not selected, so there is nothing to screen: fp32-screened describes them in float32, bit for
    bit as fp32 does; bf16 describes them with its bf16 heads, close to fp32 (measured here: worst feature cosine
    0.99998, worst class-probability error 0.020 absolute on astronaut's 10-100 regions; asserted at 0.9999 and 0.05)."""
    batch = processor(golden_image_path("astronaut"), return_tensors="pt")
    detected = forward(tiny_golden_model, batch, "fp32")
    boxes = [detected.boxes[0, : int(detected.num_boxes[0])]]
    reference = forward(tiny_golden_model, batch, "fp32", boxes=boxes)
    described = forward(tiny_golden_model, batch, precision, boxes=boxes)
    assert described.settled_proposals is None and described.num_boxes.tolist() == [boxes[0].shape[0]]
    assert torch.equal(described.boxes, reference.boxes)
    if precision == "fp32-screened":
        for field in (*PER_PROPOSAL, "region_features", "object_ids", "object_scores", "selection_scores"):
            assert torch.equal(getattr(described, field), getattr(reference, field)), field
        return
    ours, theirs = described.region_features[0].float(), reference.region_features[0]
    assert torch.nn.functional.cosine_similarity(ours, theirs, dim=1).min() > 0.9999
    assert (described.class_probs.float() - reference.class_probs).abs().max() < 0.05


def test_screened_batches_equal_one_by_one(tiny_golden_model, processor):
    images = [golden_image_path(name) for name in ("astronaut", "gradient_500x375", "rocket")]
    batch = processor(images, return_tensors="pt")
    together = forward(tiny_golden_model, batch, "fp32-screened")
    reference = forward(tiny_golden_model, batch, "fp32")
    for field in SELECTED:
        assert torch.equal(getattr(together, field), getattr(reference, field)), field
    assert together.settled_proposals.shape == together.proposals.shape[:2]


def test_screened_heads_always_run_on_every_proposal(tiny_golden_model, processor, monkeypatch):
    """MKL runs fewer than 12 rows (M in 1-3, 5-7, 9-11 here) through other kernels, with other bits: the screened
    mode must never run the heads on the settled subset alone."""
    rows = []
    heads = tiny_golden_model.roi_heads.box_predictor
    hook = heads.cls_score.register_forward_hook(lambda module, inputs, output: rows.append(inputs[0].shape[0]))
    try:
        batch = processor(golden_image_path("camera"), return_tensors="pt")
        outputs = forward(tiny_golden_model, batch, "fp32-screened")
    finally:
        hook.remove()
    assert len(rows) > 2 and set(rows) == {int(outputs.num_proposals[0])}, rows


@pytest.mark.slow
@pytest.mark.parametrize(("name", "boxes"), [("astronaut", (10, 100)), ("rocket", (36, 36))])
def test_screened_equals_fp32_on_the_full_golden_network(name, boxes, full_golden_model, processor):
    from golden import GOLDEN, load_golden

    if name == "rocket":  # the pixels the original decoded with OpenCV
        golden = load_golden("tiny", "rocket")
        batch = processor(golden["image_bgr"], input_channel_order="bgr", return_tensors="pt")
    else:
        batch = processor(GOLDEN / "images" / "astronaut.png", return_tensors="pt")
    assert_screened_equals_fp32(full_golden_model, batch, min_boxes=boxes[0], max_boxes=boxes[1])


# ---------------------------------------------------------------------------------------------------------------
# Row invariance: what lets the screened mode settle a subset
# ---------------------------------------------------------------------------------------------------------------


def pooled_regions(count: int, channels: int, size: int = 14, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((count, channels, size, size), generator=generator)
    return x.contiguous(memory_format=torch.channels_last)


def assert_rows_invariant(heads: ButdFrcnnRoIHeads, pooled: torch.Tensor, subsets, chunk_sizes):
    with torch.inference_mode():
        full = heads.region_features(pooled)
        for size in subsets:
            index = torch.randperm(pooled.shape[0], generator=torch.Generator().manual_seed(size))[:size].sort().values
            assert torch.equal(heads.region_features(pooled[index]), full[index]), f"a subset of {size} rows"
        chunk_size = heads.chunk_size
        try:
            for heads.chunk_size in chunk_sizes:
                assert torch.equal(heads.region_features(pooled), full), f"chunks of {heads.chunk_size}"
        finally:
            heads.chunk_size = chunk_size


def test_res5_rows_do_not_depend_on_the_other_rows_tiny(tiny_golden_model):
    heads = tiny_golden_model.roi_heads
    granularity = settlement_granularity(heads, pooled_regions(300, 128))
    assert granularity is not None
    subsets = sorted({max(granularity, size) for size in (2, 3, 7, 33, 65, 128)})
    assert_rows_invariant(heads, pooled_regions(300, 128), subsets, [2, 16, 100, 300])


@pytest.mark.slow
def test_res5_rows_do_not_depend_on_the_other_rows_full_size(full_random_model):
    heads = full_random_model.roi_heads
    pooled = pooled_regions(150, 1024)
    granularity = settlement_granularity(heads, pooled)
    assert granularity is not None
    assert_rows_invariant(heads, pooled, sorted({max(granularity, size) for size in (2, 7, 33, 65)}), [16, 150])


def test_heads_rows_do_not_depend_on_the_other_rows(tiny_golden_model):
    """For a given number of rows, a row's class probabilities depend on that row only: the screened mode may
    replace other rows (settle them) and keep this one's bits."""
    heads = tiny_golden_model.roi_heads
    features = torch.rand((300, 256), generator=torch.Generator().manual_seed(0))
    changed = features.clone()
    changed[::3] = torch.rand((100, 256), generator=torch.Generator().manual_seed(1))
    keep = torch.ones(300, dtype=torch.bool)
    keep[::3] = False
    with torch.inference_mode():
        a, b = heads.class_probabilities(features), heads.class_probabilities(changed)
        assert torch.equal(a[keep], b[keep])
        assert torch.equal(a, heads.predict(features).class_probs)


def test_without_onednn_whole_chunks_are_settled(tiny_golden_model, processor, monkeypatch):
    """Where oneDNN's row invariance cannot be counted on (other backends, GPUs), the settlement recomputes whole
    chunks of the full pass: the same shapes, the same bits."""
    monkeypatch.setattr(kernels, "onednn_fused_convolutions", lambda: False)
    monkeypatch.setattr(precision, "onednn_fused_convolutions", lambda: False)
    heads = tiny_golden_model.roi_heads
    assert settlement_granularity(heads, pooled_regions(300, 128)) is None
    rows = torch.zeros(300, dtype=torch.bool)
    rows[[5, 70, 299]] = True
    batches = settlement_batches(heads, rows, torch.zeros(300, dtype=torch.bool), None)
    assert [batch.tolist() for batch in batches] == [list(range(64)), list(range(64, 128)), list(range(256, 300))]
    tiny_golden_model.clear_derived_weights()
    assert_screened_equals_fp32(tiny_golden_model, processor(golden_image_path("rocket"), return_tensors="pt"))


# ---------------------------------------------------------------------------------------------------------------
# The planner, on constructed cases: each rule is needed
# ---------------------------------------------------------------------------------------------------------------


def square(x: float, y: float, side: float = 10.0) -> list[float]:
    return [x, y, x + side - 1, y + side - 1]


def run_planner(boxes, exact, estimate, threshold=0.2, min_boxes=1, max_boxes=100, margin=SCREENING_MARGIN):
    """The screened selection on constructed probabilities: settling a row reveals its exact values."""
    boxes = torch.tensor(boxes, dtype=torch.float32)
    exact, estimate = torch.tensor(exact, dtype=torch.float32), torch.tensor(estimate, dtype=torch.float32)

    def settle(rows):
        settled_rows[:] |= rows
        return torch.where(settled_rows[:, None], exact, estimate), settled_rows.clone()

    settled_rows = torch.zeros(exact.shape[0], dtype=torch.bool)
    selection = {"score_threshold": threshold, "min_boxes": min_boxes, "max_boxes": max_boxes}

    def plan(values, settled, margin):
        return screening_plan(boxes, values, settled, margin, **selection, nms_threshold=0.3)

    result = settle_screened(estimate, settle, plan, margin=margin)
    chosen = select_regions(per_class_nms_max_scores(boxes, result.values, 0.3), **selection)
    expected = select_regions(per_class_nms_max_scores(boxes, exact, 0.3), **selection)
    return chosen.tolist(), expected.tolist(), result


def test_planner_settles_an_overlapping_pair_whose_order_is_in_doubt():
    """Rows 0 and 1 overlap; exact 0.50 > 0.48, screened 0.47 < 0.49: the estimate keeps the wrong one."""
    boxes = [square(0, 0), square(1, 0), square(50, 50)]
    exact = [[0.50, 0.01], [0.48, 0.01], [0.05, 0.9]]
    estimate = [[0.47, 0.01], [0.49, 0.01], [0.05, 0.9]]
    chosen, expected, result = run_planner(boxes, exact, estimate)
    assert expected == [0, 2] and chosen == expected
    assert result.settled[:2].all()


def test_planner_settles_regions_that_may_reach_the_threshold():
    """Row 1 alone in its place: exact 0.21 reaches the threshold 0.2, its estimate 0.19 does not."""
    boxes = [square(0, 0), square(40, 0), square(80, 0)]
    exact = [[0.9, 0.0], [0.21, 0.0], [0.05, 0.0]]
    estimate = [[0.9, 0.0], [0.19, 0.0], [0.05, 0.0]]
    chosen, expected, result = run_planner(boxes, exact, estimate)
    assert expected == [0, 1] and chosen == expected
    assert not result.settled[2], "0.05 cannot reach 0.2 within the margin"


def test_planner_settles_the_top_k_boundary():
    """Best two of four (max_boxes 2, all above the threshold): row 1 ranks 2nd exactly, 4th screened."""
    boxes = [square(0, 0), square(40, 0), square(80, 0), square(120, 0)]
    exact = [[0.9], [0.8], [0.7], [0.65]]
    estimate = [[0.9], [0.62], [0.75], [0.7]]
    chosen, expected, _ = run_planner(boxes, exact, estimate, max_boxes=2)
    assert expected == [0, 1] and chosen == expected


def test_planner_settles_the_runner_up_when_more_regions_reach_the_threshold():
    """Three regions may reach 0.2 with max_boxes 2: the third (screened 0.21, exact 0.19) decides whether the
    top-2 (best first) or region order (all reaching) applies."""
    boxes = [square(0, 0), square(40, 0), square(80, 0)]
    exact = [[0.3], [0.9], [0.19]]
    estimate = [[0.3], [0.9], [0.21]]
    chosen, expected, _ = run_planner(boxes, exact, estimate, max_boxes=2)
    assert expected == [0, 1] and chosen == expected


def test_planner_settles_the_selected_regions():
    boxes = [square(0, 0), square(40, 0), square(80, 0)]
    exact = [[0.9], [0.5], [0.05]]
    _, _, result = run_planner(boxes, exact, exact)
    assert result.settled[:2].all() and not result.settled[2]


def test_planner_margin_grows_with_the_errors_it_sees():
    """Row 1's estimate is off by e^0.65 (beyond the first margin 0.3): only the margin's self-check, raised by the
    error seen on row 2 (also off by 0.65, and selected), catches that rows 0 and 1 may swap."""
    boxes = [square(0, 0), square(1, 0), square(50, 50)]
    exact = [[0.50], [0.49], [0.60]]
    estimate = [[0.50 * math.exp(-0.65)], [0.49], [0.60 * math.exp(-0.65)]]
    chosen, expected, result = run_planner(boxes, exact, estimate)
    assert expected == [0, 2] and chosen == expected
    assert result.margin >= 1.3 - 1e-6


def test_planner_leaves_certainly_suppressed_regions_alone():
    """Row 1 overlaps row 0 and scores certainly less (0.5 within the margin stays below 0.9): its class NMS
    suppresses it whatever its exact score, so it is not settled although it could reach the threshold."""
    boxes = [square(0, 0), square(1, 0), square(50, 50)]
    exact = [[0.9], [0.5], [0.05]]
    chosen, expected, result = run_planner(boxes, exact, exact)
    assert chosen == expected == [0]
    assert result.settled.tolist() == [True, False, False]


def test_planner_reports_exact_ties():
    boxes = [square(0, 0), square(1, 0), square(50, 50)]
    exact = [[0.5], [0.5], [0.9]]
    _, _, result = run_planner(boxes, exact, exact)
    assert result.exact_ties == 1


@pytest.mark.parametrize("seed", range(12))
def test_planner_on_random_near_duplicates(seed):
    """Clusters of near-duplicate boxes with close, peaked scores, estimates off by up to the margin's half: the
    screened selection equals the exact one in every case."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand((8, 2), generator=generator) * 300
    rows = 60
    offsets = torch.randn((rows, 2), generator=generator) * 4
    corners = centres[torch.arange(rows) % 8] + offsets
    sides = 20 + torch.rand((rows, 2), generator=generator) * 10
    boxes = torch.cat([corners, corners + sides], dim=1).tolist()
    logits = torch.randn((rows, 30), generator=generator) * 3
    exact = torch.softmax(logits, dim=1)
    error = (torch.rand(exact.shape, generator=generator) * 2 - 1) * SCREENING_MARGIN / 2
    estimate = exact * error.exp()
    for min_boxes, max_boxes in ((10, 100), (12, 12), (3, 5)):
        chosen, expected, result = run_planner(boxes, exact.tolist(), estimate.tolist(), 0.2, min_boxes, max_boxes)
        assert chosen == expected, (min_boxes, max_boxes)
        assert result.settled[torch.tensor(expected)].all()


def test_planner_bounds_sharp_probabilities_by_their_complement():
    """Row 1 overlaps the selected row 0 in its class, screened 0.95 against row 0's exact 0.99. The log bound alone
    ([0.70, 1]) would let row 1 outrank row 0; the complement bound (1 - p within e^+-0.3 of 0.05: [0.9325, 0.963])
    cannot, so row 1 is certainly suppressed and stays unsettled."""
    boxes = [square(0, 0), square(1, 0), square(50, 50)]
    exact = [[0.99, 0.005], [0.96, 0.03], [0.01, 0.9]]
    estimate = [[0.99, 0.005], [0.95, 0.03], [0.01, 0.9]]
    chosen, expected, result = run_planner(boxes, exact, estimate)
    assert chosen == expected == [0, 2]
    assert result.settled.tolist() == [True, False, True]


def test_planner_margin_checks_the_complement_bound():
    """Row 0 (selected, settled first) shows a complement error of log(0.04 / 0.005) = 2.1 while its log error is
    0.04: the margin must grow from it, else row 1 (screened 0.9, exact 0.999: its complement interval at margin
    0.3 is [0.865, 0.926]) would stay suppressed below row 0's exact 0.995."""
    boxes = [square(0, 0), square(1, 0), square(50, 50)]
    exact = [[0.995], [0.999], [0.6]]
    estimate = [[0.96], [0.9], [0.6]]
    chosen, expected, result = run_planner(boxes, exact, estimate)
    assert expected == [1, 2] and chosen == expected
    assert result.margin >= 2 * math.log(0.04 / 0.005) - 1e-6
