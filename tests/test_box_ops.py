"""The box arithmetic of the original, checked against straightforward numpy transcriptions of py-faster-rcnn
(`generate_anchors`, `bbox_transform_inv`, the Cython `cpu_nms`, `generate_tsv.py`'s selection)."""

import numpy as np
import pytest
import torch
from torchvision.ops import roi_pool

from butd_frcnn.ops_butd_frcnn import (
    argmax_last,
    decode_boxes,
    descending_order,
    float32_threshold,
    generate_cell_anchors,
    greedy_nms,
    numpy_float32_exp,
    numpy_quicksort_argsort,
    original_argsort_descending,
    pack_bits,
    per_class_nms_max_scores,
    roi_max_pool,
    select_regions,
    shift_anchors,
)

# golden/README.md: "The 12 anchors as (x1, y1, x2, y2) in float64"
README_ANCHORS = [
    [-38, -16, 53, 31], [-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
    [-24, -24, 39, 39], [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
    [-14, -36, 29, 51], [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359],
]  # fmt: skip


def reference_cpu_nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    """py-faster-rcnn's `cpu_nms`, transcribed: float32 arithmetic, suppress at IoU >= thresh (as a double)."""
    x1, y1, x2, y2 = (boxes[:, i].astype(np.float32) for i in range(4))
    areas = (x2 - x1 + np.float32(1)) * (y2 - y1 + np.float32(1))
    order = numpy_quicksort_argsort(scores)[::-1]  # scores.argsort()[::-1] as numpy 1.x sorted
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    for position, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(int(i))
        for j in order[position + 1 :]:
            if suppressed[j]:
                continue
            w = max(np.float32(0), min(x2[i], x2[j]) - max(x1[i], x1[j]) + np.float32(1))
            h = max(np.float32(0), min(y2[i], y2[j]) - max(y1[i], y1[j]) + np.float32(1))
            inter = np.float32(w * h)
            overlap = np.float32(inter / np.float32(areas[i] + areas[j] - inter))
            if float(overlap) >= thresh:
                suppressed[j] = True
    return keep


def random_boxes(generator: np.random.Generator, count: int, extent: float = 200.0, grid: float | None = None):
    """Random boxes; with `grid`, corners snap to a grid so that exact IoU ties and threshold hits occur."""
    corners = generator.uniform(0, extent, size=(count, 2))
    sizes = generator.uniform(4, extent / 2, size=(count, 2))
    boxes = np.concatenate([corners, corners + sizes], axis=1)
    if grid:
        boxes = np.round(boxes / grid) * grid
    return boxes.astype(np.float32)


def test_cell_anchors_equal_the_originals_table():
    anchors = generate_cell_anchors(16, [0.5, 1.0, 2.0], [4.0, 8.0, 16.0, 32.0])
    assert anchors.dtype == torch.float32
    assert anchors.tolist() == README_ANCHORS


def test_anchors_shift_in_height_width_anchor_order():
    cell = generate_cell_anchors(16, [0.5, 1.0, 2.0], [4.0, 8.0, 16.0, 32.0])
    anchors = shift_anchors(cell, height=3, width=5, stride=16)
    assert anchors.shape == (3 * 5 * 12, 4)
    # anchor a of cell (y, x) sits at row (y * width + x) * A + a, shifted by (16x, 16y)
    y, x, a = 2, 3, 7
    expected = cell[a] + torch.tensor([16.0 * x, 16.0 * y, 16.0 * x, 16.0 * y])
    assert torch.equal(anchors[(y * 5 + x) * 12 + a], expected)


def test_numpy_float32_exp_is_bit_identical_to_numpy():
    generator = np.random.default_rng(0)
    values = np.concatenate(
        [
            generator.standard_normal(200_000).astype(np.float32) * 4,
            generator.uniform(-104, 89, 200_000).astype(np.float32),
            np.array([0.0, -0.0, 1e-30, 88.72, 88.73, -103.9, -104.0, np.inf, -np.inf, np.nan], np.float32),
        ]
    )
    with np.errstate(over="ignore", under="ignore"):
        expected = np.exp(values)
    ours = numpy_float32_exp(torch.from_numpy(values)).numpy()
    same = (ours == expected) | (np.isnan(ours) & np.isnan(expected))
    assert same.all(), f"{(~same).sum()} values differ from np.exp, e.g. at {values[~same][:5]}"


def test_decode_boxes_matches_bbox_transform_inv():
    generator = np.random.default_rng(1)
    anchors = random_boxes(generator, 1000, extent=800)
    deltas = (generator.standard_normal((1000, 4)) * 0.3).astype(np.float32)
    # bbox_transform_inv of py-faster-rcnn, in numpy float32
    widths = anchors[:, 2] - anchors[:, 0] + np.float32(1.0)
    heights = anchors[:, 3] - anchors[:, 1] + np.float32(1.0)
    ctr_x = anchors[:, 0] + np.float32(0.5) * widths
    ctr_y = anchors[:, 1] + np.float32(0.5) * heights
    pred_ctr_x = deltas[:, 0] * widths + ctr_x
    pred_ctr_y = deltas[:, 1] * heights + ctr_y
    pred_w = np.exp(deltas[:, 2]) * widths
    pred_h = np.exp(deltas[:, 3]) * heights
    expected = np.stack(
        [
            pred_ctr_x - np.float32(0.5) * pred_w,
            pred_ctr_y - np.float32(0.5) * pred_h,
            pred_ctr_x + np.float32(0.5) * pred_w,
            pred_ctr_y + np.float32(0.5) * pred_h,
        ],
        axis=1,
    )
    ours = decode_boxes(torch.from_numpy(anchors), torch.from_numpy(deltas)).numpy()
    np.testing.assert_array_equal(ours, expected)


def test_float32_threshold_reproduces_double_comparison():
    for threshold in (0.7, 0.3, 0.5, 0.2, 0.1 + 0.2):
        t32 = np.float32(float32_threshold(threshold))
        below = np.nextafter(t32, np.float32(0))
        assert float(t32) >= threshold and float(below) < threshold


@pytest.mark.parametrize("seed,grid", [(0, None), (1, None), (2, 8.0), (3, 16.0)])
@pytest.mark.parametrize("threshold", [0.7, 0.3])
def test_greedy_nms_equals_sequential_cpu_nms(seed, grid, threshold):
    generator = np.random.default_rng(seed)
    boxes = random_boxes(generator, 700, grid=grid)
    scores = generator.random(700).astype(np.float32)
    if grid:  # exact score ties as well
        scores = np.round(scores * 20) / 20
    expected = reference_cpu_nms(boxes, scores, threshold)
    order = original_argsort_descending(torch.from_numpy(scores))
    sorted_boxes = torch.from_numpy(boxes)[order]
    for block_size in (256, 37, 1000):
        keep = greedy_nms(sorted_boxes, threshold, block_size=block_size)
        assert order[keep].tolist() == expected
    limited = greedy_nms(sorted_boxes, threshold, max_keep=25)
    assert order[limited].tolist() == expected[:25]


def test_greedy_nms_suppresses_at_exactly_the_threshold():
    # two 10x10 boxes (inclusive) overlapping on 5 columns of 10 ... IoU = 50 / 150 = 1/3 exactly representable?
    # use boxes whose IoU is exactly 0.5 in float32: [0,0,9,9] and [0,0,9,19] -> inter 100, union 200
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 19.0]])
    assert greedy_nms(boxes, 0.5).tolist() == [0]  # >=: suppressed (torchvision's > would keep both)
    assert greedy_nms(boxes, 0.5000001).tolist() == [0, 1]


def reference_max_conf(boxes, class_probs, threshold):
    """generate_tsv.py: max_conf over a per-class cpu_nms, class by class."""
    max_conf = np.zeros(len(boxes), dtype=np.float64)
    for cls in range(class_probs.shape[1]):
        scores = class_probs[:, cls]
        keep = reference_cpu_nms(boxes, scores, threshold)
        max_conf[keep] = np.where(scores[keep] > max_conf[keep], scores[keep], max_conf[keep])
    return max_conf


@pytest.mark.parametrize("seed,grid", [(0, None), (5, 8.0)])
def test_per_class_nms_max_scores_equals_class_by_class_loop(seed, grid):
    generator = np.random.default_rng(seed)
    boxes = random_boxes(generator, 120, grid=grid)
    logits = generator.standard_normal((120, 40)) * 3
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    if grid:
        probs = np.round(probs * 50) / 50  # ties inside classes
    expected = reference_max_conf(boxes, probs, 0.3)
    ours = per_class_nms_max_scores(torch.from_numpy(boxes), torch.from_numpy(probs), 0.3).numpy()
    np.testing.assert_array_equal(ours.astype(np.float64), expected)


@pytest.mark.parametrize("exact_ties", [True, False])
def test_per_class_nms_of_a_padded_batch_equals_each_image_alone(exact_ties):
    """Images of a batch share the lanes of one NMS; padding rows (of shorter images) change nothing."""
    generator = np.random.default_rng(3)
    counts = [90, 0, 1, 64, 65]  # empty, single, a whole 64-bit word and one more
    boxes = torch.zeros(len(counts), max(counts), 4)
    probs = torch.zeros(len(counts), max(counts), 30)
    alone = []
    for image, count in enumerate(counts):
        image_boxes = torch.from_numpy(random_boxes(generator, count, grid=8.0))
        image_probs = torch.from_numpy(np.round(generator.dirichlet(np.ones(30), size=count) * 40) / 40).float()
        boxes[image, :count], probs[image, :count] = image_boxes, image_probs
        boxes[image, count:] = image_boxes[:1] if count else 0  # padding overlapping a real box must not matter
        probs[image, count:] = 1.0  # and neither must padding that outscores every real box
        alone.append(per_class_nms_max_scores(image_boxes, image_probs, 0.3, exact_ties))
    batched = per_class_nms_max_scores(boxes, probs, 0.3, exact_ties, num_boxes=counts)
    for image, count in enumerate(counts):
        assert torch.equal(batched[image, :count], alone[image])
        assert torch.equal(batched[image, count:], torch.zeros(max(counts) - count))


def test_pack_bits_puts_column_j_at_bit_j_of_its_word():
    generator = np.random.default_rng(0)
    matrix = torch.from_numpy(generator.random((3, 130)) < 0.5)
    packed = pack_bits(matrix)
    assert packed.shape == (3, 3) and packed.dtype == torch.int64
    for row in range(3):
        for column in range(130):
            bit = (int(packed[row, column // 64]) >> (column % 64)) & 1
            assert bit == int(matrix[row, column])


def test_select_regions_follows_generate_tsv_paths():
    scores = torch.tensor([0.1, 0.5, 0.3, 0.05, 0.25, 0.5, 0.15])
    # threshold path: region order
    assert select_regions(scores, 0.2, min_boxes=2, max_boxes=5).tolist() == [1, 2, 4, 5]
    # fewer than MIN: the MIN best, best first; numpy 1.x's argsort()[::-1] puts the later of two ties first here
    assert select_regions(scores, 0.4, min_boxes=3, max_boxes=5).tolist() == [5, 1, 2]
    # more than MAX: the MAX best
    assert select_regions(scores, 0.0, min_boxes=1, max_boxes=3).tolist() == [5, 1, 2]
    # fixed 36-style count
    assert select_regions(scores, 0.2, min_boxes=2, max_boxes=2).tolist() == [5, 1]
    # the stable device sort puts the earlier tie first instead
    assert select_regions(scores, 0.2, min_boxes=2, max_boxes=2, exact_ties=False).tolist() == [1, 5]
    # the threshold compares as a double, like numpy's float64 max_conf
    exact = torch.tensor([0.2], dtype=torch.float32)  # float32(0.2) > 0.2
    assert select_regions(exact, 0.2, 1, 1).tolist() == [0]


def test_argmax_last_breaks_ties_towards_the_highest_index():
    x = torch.tensor([[1.0, 3.0, 3.0, 0.0], [5.0, 1.0, 2.0, 5.0], [0.0, 1.0, 2.0, 3.0]])
    assert argmax_last(x, dim=1).tolist() == [2, 3, 3]


@pytest.mark.parametrize("seed", range(6))
def test_original_argsort_reproduces_numpy_1_introsort(seed):
    """The transcription of numpy 1.x's quicksort and the long-double numpy sort agree on tie-heavy arrays of all
    sizes (insertion-sorted small ones, partitioned large ones, sorted and reversed inputs)."""
    generator = np.random.default_rng(seed)
    for size in (1, 2, 15, 16, 17, 100, 300, 2500):
        values = generator.integers(0, max(size // 10, 2), size).astype(np.float32) / 3
        if seed % 2:
            values = np.sort(values)[::-1].copy()
        transcription = numpy_quicksort_argsort(values)
        assert sorted(transcription) == list(range(size))
        assert np.all(np.diff(values[transcription]) >= 0)
        ours = original_argsort_descending(torch.from_numpy(values))
        assert ours.tolist() == transcription[::-1]
        assert np.argsort(values.astype(np.longdouble), kind="quicksort").tolist() == transcription


def test_descending_order_along_a_dimension():
    values = torch.tensor([[0.5, 0.1], [0.2, 0.1], [0.5, 0.3]])
    exact = descending_order(values, exact_ties=True, dim=0)
    assert exact[:, 0].tolist() == [2, 0, 1] and exact[:, 1].tolist() == [2, 1, 0]
    assert descending_order(values, exact_ties=False, dim=0)[:, 0].tolist() == [0, 2, 1]


def _exact_order_cases():
    generator = np.random.default_rng(0)
    unique = torch.from_numpy(generator.permutation(1000).astype(np.float32) / 7)
    ties_beyond = unique.clone()
    ties_beyond[unique < 10] = 0.5  # ties only among the smallest values: below any top 100
    ties_inside = unique.clone()
    ties_inside[unique > 120] = 200.0  # a tie group at the very top
    boundary = torch.tensor([5.0, 4.0, 3.0, 3.0, 1.0])  # ranks 2 and 3 tie: top 3 depends on the tie order
    with_nans = torch.tensor([0.3, float("nan"), 0.1, float("nan"), 0.2])
    columns = torch.from_numpy(generator.random((300, 40))).double()
    columns[::3, 7] = 0.25  # two of the 40 columns hold ties
    columns[:, 31] = 0.0
    return [
        ("unique", unique, 0, None, False),
        ("unique top 100", unique, 0, 100, False),
        ("ties below the top 100", ties_beyond, 0, 100, False),
        ("ties below, full order", ties_beyond, 0, None, True),
        ("ties at the top", ties_inside, 0, 100, True),
        ("tie on the boundary of the top 3", boundary, 0, 3, True),
        ("tie after the top 2", boundary, 0, 2, False),
        ("NaNs", with_nans, 0, None, True),
        ("columns, dim 0", columns, 0, None, True),
        ("rows, dim 1", columns.T.contiguous(), 1, None, True),
        ("one value", torch.tensor([1.0]), 0, None, False),
        ("no value", torch.zeros(0), 0, None, False),
    ]


@pytest.mark.parametrize(
    "values,dim,top_k,needs_host",
    [case[1:] for case in _exact_order_cases()],
    ids=[c[0] for c in _exact_order_cases()],
)
def test_exact_descending_order_sorts_on_the_device_unless_a_tie_matters(values, dim, top_k, needs_host, monkeypatch):
    """`descending_order(exact_ties=True)` is the original's order (`original_argsort_descending`) in every case,
    but falls back to it only for the rows where a tie can change the first `top_k`, and only for those rows."""
    import butd_frcnn.ops_butd_frcnn as ops

    count = values.shape[dim] if top_k is None else min(top_k, values.shape[dim])
    expected = original_argsort_descending(values, dim).narrow(dim, 0, count)
    host_rows = []

    def spy(rows, dim):
        host_rows.append(rows.shape[0])
        return original_argsort_descending(rows, dim)

    monkeypatch.setattr(ops, "original_argsort_descending", spy)
    ours = descending_order(values, exact_ties=True, dim=dim, top_k=top_k)
    assert ours.tolist() == expected.tolist()
    assert bool(host_rows) == needs_host
    if values.dim() == 2:
        assert host_rows == [2], "only the two columns with ties go to the host"


@pytest.mark.parametrize("height,width", [(38, 50), (5, 3), (1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_roi_max_pool_equals_torchvision_roi_pool(height, width, dtype):
    """Caffe's ROIPooling semantics as torchvision implements them: rounding of the corners, bins, clipping, empty
    bins, malformed boxes; equal bit for bit (a maximum rounds nothing), in any dtype."""
    generator = torch.Generator().manual_seed(height * width)
    features = torch.randn(1, 7, height, width, generator=generator).to(dtype)
    extent = 16 * max(height, width)
    corners = torch.rand(200, 2, generator=generator) * extent * 1.4 - extent * 0.2  # some outside the map
    sizes = torch.rand(200, 2, generator=generator) * extent
    boxes = torch.cat([corners, corners + sizes], dim=1)
    boxes[:10, 2:] = boxes[:10, :2] - 20  # malformed: x2 < x1, y2 < y1
    boxes[10:20] = torch.tensor([7.5, 8.5, 23.5, 24.5])  # halves: rounded away from zero
    boxes[20:30] = torch.tensor([-1e4, -1e4, -5e3, -5e3])  # entirely outside: every bin empty
    expected = roi_pool(features.float(), [boxes], 14, 1 / 16).to(dtype)
    ours = roi_max_pool(features[0], boxes, 14, 1 / 16)
    assert ours.dtype == dtype and ours.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(ours, expected)
    assert roi_max_pool(features[0], boxes[:0], 14, 1 / 16).shape == (0, 7, 14, 14)
