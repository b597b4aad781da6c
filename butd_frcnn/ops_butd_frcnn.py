"""The arithmetic of the original bottom-up-attention Faster R-CNN (py-faster-rcnn and `tools/generate_tsv.py`),
reproduced operation for operation so that every threshold decision and every tie comes out as it did there.

`modeling_butd_frcnn.py` holds the network and calls these functions; they take and return tensors, hold no
weights, and import nothing from the rest of the package (this file travels with the model files as Hub remote code).

Conventions of the original, stated once here and followed everywhere below:
- boxes are `(x1, y1, x2, y2)` pixels with the *inclusive* py-faster-rcnn convention: width = x2 - x1 + 1;
- box arithmetic runs in float32, in the original's order of operations, so that threshold decisions agree;
- NMS suppresses at IoU **>=** threshold (the Cython `cpu_nms`), the float32 IoU compared with the threshold as a
  double;
- where the original sorted with `argsort()[::-1]`, numpy 1.x's unstable introsort decided the order of exactly tied
  scores (flat image regions; proposals that round to the same RoI-pooling cells). `original_argsort_descending`
  reproduces that order (`config.exact_tie_order`, default); the alternative is a stable device sort, lower index
  first.
"""

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torchvision.ops import roi_pool

# ---------------------------------------------------------------------------------------------------------------
# The original's sort order (numpy 1.x argsort)
# ---------------------------------------------------------------------------------------------------------------


_QUICKSORT_SMALL = 15  # numpy's SMALL_QUICKSORT: partitions this small are insertion-sorted


def _heapsort_indices(values: list, order: list, start: int, count: int) -> None:
    """numpy's `aheapsort_` on `order[start:start + count]` (introsort's fallback when recursion gets too deep)."""

    def less(a: int, b: int) -> bool:
        return values[order[start + a - 1]] < values[order[start + b - 1]]

    def sift_down(node: int, item: int, end: int) -> None:
        child = node << 1
        while child <= end:
            if child < end and less(child, child + 1):
                child += 1
            if values[item] < values[order[start + child - 1]]:
                order[start + node - 1] = order[start + child - 1]
                node, child = child, child << 1
            else:
                break
        order[start + node - 1] = item

    for node in range(count >> 1, 0, -1):
        sift_down(node, order[start + node - 1], count)
    for end in range(count, 1, -1):
        item = order[start + end - 1]
        order[start + end - 1] = order[start]
        sift_down(1, item, end - 1)


def numpy_quicksort_argsort(values: Sequence[float]) -> list[int]:
    """`np.argsort(values, kind="quicksort")` of numpy 1.x, transcribed: median-of-3 quicksort, insertion sort below
    16 elements, heapsort past a depth of 2 log2(n). Its order among equal values is what the original saw."""
    values = list(values)
    order = list(range(len(values)))
    low, high = 0, len(values) - 1
    depth = 2 * (max(len(values), 1).bit_length() - 1)
    pending = []
    while True:
        if depth < 0:
            _heapsort_indices(values, order, low, high - low + 1)
        else:
            while high - low > _QUICKSORT_SMALL:
                middle = low + ((high - low) >> 1)
                if values[order[middle]] < values[order[low]]:
                    order[middle], order[low] = order[low], order[middle]
                if values[order[high]] < values[order[middle]]:
                    order[high], order[middle] = order[middle], order[high]
                if values[order[middle]] < values[order[low]]:
                    order[middle], order[low] = order[low], order[middle]
                pivot = values[order[middle]]
                i, j = low, high - 1
                order[middle], order[j] = order[j], order[middle]
                while True:
                    i += 1
                    while values[order[i]] < pivot:
                        i += 1
                    j -= 1
                    while pivot < values[order[j]]:
                        j -= 1
                    if i >= j:
                        break
                    order[i], order[j] = order[j], order[i]
                order[i], order[high - 1] = order[high - 1], order[i]
                depth -= 1
                if i - low < high - i:  # continue with the smaller partition, keep the larger for later
                    pending.append((i + 1, high, depth))
                    high = i - 1
                else:
                    pending.append((low, i - 1, depth))
                    low = i + 1
            for i in range(low + 1, high + 1):
                item, j = order[i], i
                while j > low and values[item] < values[order[j - 1]]:
                    order[j] = order[j - 1]
                    j -= 1
                order[j] = item
        if not pending:
            return order
        low, high, depth = pending.pop()


@functools.cache
def _numpy_sorts_longdouble_generically() -> bool:
    """numpy 2 sorts float32/float64 with SIMD kernels whose tie order differs from numpy 1.x, but long doubles still
    go through the generic introsort. Checked against the transcription, on values with many ties, on first use (not
    at import: loading the model needs no sort)."""
    if np.finfo(np.longdouble).nmant <= np.finfo(np.float64).nmant:
        return False
    values = np.array([(i * 7919) % 13 for i in range(300)], dtype=np.float64) / 4
    return np.argsort(values.astype(np.longdouble), kind="quicksort").tolist() == numpy_quicksort_argsort(values)


def original_argsort_descending(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """The original's `values.argsort()[::-1]` along `dim`: descending, exact ties in numpy 1.x's order.

    Runs on the CPU (float32 and float64 convert to long double exactly, keeping every tie).
    """
    array = np.moveaxis(values.detach().to("cpu", torch.float64).numpy(), dim, -1)
    if _numpy_sorts_longdouble_generically():
        order = np.argsort(array.astype(np.longdouble), axis=-1, kind="quicksort")
    else:
        rows = array.reshape(-1, array.shape[-1])
        order = np.array([numpy_quicksort_argsort(row) for row in rows], dtype=np.int64).reshape(array.shape)
    order = np.moveaxis(order[..., ::-1], -1, dim).copy()
    return torch.from_numpy(order).to(values.device)


def descending_order(values: torch.Tensor, exact_ties: bool, dim: int = 0, top_k: int | None = None) -> torch.Tensor:
    """Indices sorting `values` best first along `dim` (the first `top_k` of them): ties as the original ordered
    them (`exact_ties`), or stably.

    Either way the values are sorted on their own device. Where the first `top_k` ranks hold no tie (no two equal
    values among the first `top_k + 1`), every correct sort gives the same answer, the original's included; only
    the rows with such a tie are sorted again on the CPU as the original did (`original_argsort_descending`). On a
    GPU that costs one device-to-host sync, instead of copying and sorting everything on the host.
    """
    size = values.shape[dim]
    top_k = size if top_k is None else min(top_k, size)
    order = torch.sort(values, dim=dim, descending=True, stable=True)
    if exact_ties and size > 1:
        pairs = min(top_k, size - 1)  # ranks (i, i + 1), i < top_k: a tie there changes the first top_k
        ranked = order.values.movedim(dim, -1).reshape(-1, size)
        before, after = ranked[:, :pairs], ranked[:, 1 : pairs + 1]
        tied_rows = ((before == after) | (before.isnan() & after.isnan())).any(dim=1)
        if bool(tied_rows.any()):
            indices = order.indices.movedim(dim, -1)
            rows = indices.reshape(-1, size).clone()
            tied = tied_rows.nonzero().flatten()
            rows[tied] = original_argsort_descending(values.movedim(dim, -1).reshape(-1, size)[tied], dim=1)
            return rows.view(indices.shape).movedim(-1, dim).narrow(dim, 0, top_k)
    return order.indices.narrow(dim, 0, top_k)


# ---------------------------------------------------------------------------------------------------------------
# numpy's float32 exp
# ---------------------------------------------------------------------------------------------------------------


# numpy's float32 `exp` kernel (AVX2/AVX512F builds): Cody-Waite reduction, then a P5/Q2 rational approximation.
# numpy's decimal constants, rounded to float32 as its C source does.
def _as_float32(value: float) -> float:
    return torch.tensor(value, dtype=torch.float32).item()


_EXP_LOG2E = _as_float32(1.442695040888963407359924681001892137)
# adding then subtracting it rounds a float32 to the nearest integer
_EXP_ROUND_MAGIC = _as_float32(float.fromhex("0x1.8p23"))
_EXP_LN2_HIGH = _as_float32(-6.93145752e-1)
_EXP_LN2_LOW = _as_float32(-1.42860677e-6)
_EXP_P = tuple(
    _as_float32(v)
    for v in (
        9.999999999980870924916e-01,
        7.257664613233124478488e-01,
        2.473615434895520810817e-01,
        5.114512081637298353406e-02,
        6.757896990527504603057e-03,
        5.082762527590693718096e-04,
    )
)
_EXP_Q = tuple(_as_float32(v) for v in (1.0, -2.742335390411667452936e-01, 2.159509375685829852307e-02))
_EXP_OVERFLOW, _EXP_UNDERFLOW = 88.72283935546875, -103.97208404541015625


def _fma32(a: torch.Tensor, b: torch.Tensor | float, c: torch.Tensor | float) -> torch.Tensor:
    """Float32 fused multiply-add: the product of two float32 values is exact in float64, the sum rounds there."""
    return (a.double() * b + c).float()


def numpy_float32_exp(x: torch.Tensor) -> torch.Tensor:
    """`np.exp` on a float32 array, bit for bit.

    The original decodes proposal sizes with numpy's float32 `exp`, whose SIMD kernel is not correctly rounded:
    `torch.exp` differs from it in the last bit for about a fifth of the inputs, which moves proposal corners by an
    ulp. This replays the kernel's steps (range reduction by rint(x * log2 e), a rational approximation, scaling by
    2^k) with its float32 constants; it matches `np.exp` on every float32 input we tried, on any device.
    """
    x = x.float()
    nan, overflow, underflow = torch.isnan(x), x >= _EXP_OVERFLOW, x <= _EXP_UNDERFLOW
    x = torch.where(nan | overflow | underflow, torch.zeros_like(x), x)
    k = (x * _EXP_LOG2E + _EXP_ROUND_MAGIC) - _EXP_ROUND_MAGIC
    r = _fma32(k, _EXP_LN2_LOW, _fma32(k, _EXP_LN2_HIGH, x))
    numerator = torch.full_like(r, _EXP_P[5])
    for coefficient in reversed(_EXP_P[:5]):
        numerator = _fma32(numerator, r.double(), coefficient)
    denominator = _fma32(torch.full_like(r, _EXP_Q[2]), r.double(), _EXP_Q[1])
    denominator = _fma32(denominator, r.double(), _EXP_Q[0])
    result = torch.ldexp(numerator / denominator, k.to(torch.int32))
    result = torch.where(overflow, torch.full_like(result, math.inf), result)
    result = torch.where(underflow, torch.zeros_like(result), result)
    return torch.where(nan, torch.full_like(result, math.nan), result)


# ---------------------------------------------------------------------------------------------------------------
# Anchors, objectness and box arithmetic (py-faster-rcnn conventions, float32)
# ---------------------------------------------------------------------------------------------------------------


def generate_cell_anchors(base_size: int, ratios: list[float], scales: list[float]) -> torch.Tensor:
    """The anchors of one feature-map cell, as py-faster-rcnn's `generate_anchors` makes them.

    The base anchor `(0, 0, base_size - 1, base_size - 1)` is reshaped to each ratio keeping its area (sides rounded
    half-to-even, as `np.round` does), then scaled; ratio-major, scale-minor order. Computed in float64 like the
    original; the result holds integers or half-integers.

    Returns:
        `torch.Tensor` of shape `(len(ratios) * len(scales), 4)`, float32.
    """
    base = torch.tensor([0.0, 0.0, base_size - 1.0, base_size - 1.0], dtype=torch.float64)

    def width_height_center(anchor):
        w = anchor[2] - anchor[0] + 1
        h = anchor[3] - anchor[1] + 1
        return w, h, anchor[0] + 0.5 * (w - 1), anchor[1] + 0.5 * (h - 1)

    def make_anchors(ws, hs, cx, cy):
        return torch.stack([cx - 0.5 * (ws - 1), cy - 0.5 * (hs - 1), cx + 0.5 * (ws - 1), cy + 0.5 * (hs - 1)], 1)

    w, h, cx, cy = width_height_center(base)
    ratios_t = torch.tensor(ratios, dtype=torch.float64)
    scales_t = torch.tensor(scales, dtype=torch.float64)
    ws = torch.round(torch.sqrt(w * h / ratios_t))
    hs = torch.round(ws * ratios_t)
    anchors = []
    for ratio_anchor in make_anchors(ws, hs, cx, cy):
        rw, rh, rcx, rcy = width_height_center(ratio_anchor)
        anchors.append(make_anchors(rw * scales_t, rh * scales_t, rcx, rcy))
    return torch.cat(anchors).to(torch.float32)


def shift_anchors(cell_anchors: torch.Tensor, height: int, width: int, stride: int) -> torch.Tensor:
    """All anchors of a `height x width` feature map, ordered (y, x, anchor) slowest to fastest.

    Returns:
        `torch.Tensor` of shape `(height * width * num_anchors, 4)`.
    """
    device = cell_anchors.device
    shift_y, shift_x = torch.meshgrid(
        torch.arange(height, device=device) * stride, torch.arange(width, device=device) * stride, indexing="ij"
    )
    shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], dim=-1).reshape(-1, 1, 4).to(cell_anchors.dtype)
    return (shifts + cell_anchors.reshape(1, -1, 4)).reshape(-1, 4)


def decode_boxes(anchors: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Apply `(dx, dy, dw, dh)` deltas to anchors: py-faster-rcnn's `bbox_transform_inv`, in float32.

    Note the asymmetry of the original: widths count the +1, but the decoded corners are `center -/+ 0.5 * width`
    with no -1 on the right edge.
    """
    widths = anchors[:, 2] - anchors[:, 0] + 1.0
    heights = anchors[:, 3] - anchors[:, 1] + 1.0
    center_x = anchors[:, 0] + 0.5 * widths
    center_y = anchors[:, 1] + 0.5 * heights
    pred_center_x = deltas[:, 0] * widths + center_x
    pred_center_y = deltas[:, 1] * heights + center_y
    pred_w = numpy_float32_exp(deltas[:, 2]) * widths
    pred_h = numpy_float32_exp(deltas[:, 3]) * heights
    return torch.stack(
        [
            pred_center_x - 0.5 * pred_w,
            pred_center_y - 0.5 * pred_h,
            pred_center_x + 0.5 * pred_w,
            pred_center_y + 0.5 * pred_h,
        ],
        dim=1,
    )


def clip_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Clip to `[0, width - 1] x [0, height - 1]` (the last pixel is inclusive)."""
    x = boxes[:, 0::2].clamp(min=0, max=width - 1)
    y = boxes[:, 1::2].clamp(min=0, max=height - 1)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


def box_sizes_at_least(boxes: torch.Tensor, min_size: torch.Tensor) -> torch.Tensor:
    """Mask of boxes whose inclusive width and height both reach `min_size` (`_filter_boxes`)."""
    widths = boxes[:, 2] - boxes[:, 0] + 1
    heights = boxes[:, 3] - boxes[:, 1] + 1
    return (widths >= min_size) & (heights >= min_size)


def objectness_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Caffe's softmax over the (bg, fg) pair of each anchor: `(B, 2A, H, W)` logits -> `(B, 2A, H, W)` probabilities
    in the same channel layout (`rpn_cls_prob_reshape`)."""
    batch, channels, height, width = logits.shape
    pairs = logits.float().reshape(batch, 2, channels // 2, height, width)
    return torch.softmax(pairs, dim=1).reshape(batch, channels, height, width)


# ---------------------------------------------------------------------------------------------------------------
# Non-maximum suppression (`cpu_nms` and the per-class NMS of `generate_tsv.py`)
# ---------------------------------------------------------------------------------------------------------------


def float32_threshold(threshold: float) -> float:
    """The smallest float32 `t32` with `t32 >= threshold`.

    The original compares a float32 IoU with a Python (double) threshold; for a float32 `x`, `x >= threshold` holds
    exactly when `x >= t32`, so the comparison can stay in float32.
    """
    t32 = torch.tensor(threshold, dtype=torch.float32)
    if t32.double().item() < threshold:
        t32 = torch.nextafter(t32, torch.tensor(math.inf))
    return t32.item()


def pairwise_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """IoU of every box of `boxes_a` (the suppressors) with every box of `boxes_b`, as `cpu_nms` computes it.

    Float32, +1 areas, `inter / (area_a + area_b - inter)` in that order of operations. Leading batch dimensions
    broadcast: `(..., M, 4)` and `(..., N, 4)` give `(..., M, N)`.
    """
    area_a = (boxes_a[..., 2] - boxes_a[..., 0] + 1) * (boxes_a[..., 3] - boxes_a[..., 1] + 1)
    area_b = (boxes_b[..., 2] - boxes_b[..., 0] + 1) * (boxes_b[..., 3] - boxes_b[..., 1] + 1)
    xx1 = torch.maximum(boxes_a[..., :, None, 0], boxes_b[..., None, :, 0])
    yy1 = torch.maximum(boxes_a[..., :, None, 1], boxes_b[..., None, :, 1])
    xx2 = torch.minimum(boxes_a[..., :, None, 2], boxes_b[..., None, :, 2])
    yy2 = torch.minimum(boxes_a[..., :, None, 3], boxes_b[..., None, :, 3])
    inter = (xx2 - xx1 + 1).clamp(min=0) * (yy2 - yy1 + 1).clamp(min=0)
    return inter / (area_a[..., :, None] + area_b[..., None, :] - inter)


def greedy_nms(
    boxes: torch.Tensor, threshold: float, max_keep: int | None = None, block_size: int = 256
) -> torch.Tensor:
    """Greedy NMS over boxes given in the order to visit them (best score first); the `cpu_nms` of the original.

    A box is kept unless a kept box before it overlaps it with IoU >= `threshold`. The boxes are processed in
    blocks: a block is first thinned by the boxes kept so far, then resolved internally as the fixed point of
    `kept = alive & ~any(kept_before & overlaps)`, which is unique and reached in at most one pass per link of the
    longest suppression chain. No Python loop runs over single boxes.

    Returns:
        `torch.Tensor`: indices of the kept boxes, in order, at most `max_keep` of them.
    """
    t32 = float32_threshold(threshold)
    kept_chunks = []
    kept_boxes = boxes.new_zeros((0, 4))
    num_kept = 0
    for start in range(0, boxes.shape[0], block_size):
        block = boxes[start : start + block_size]
        alive = torch.ones(block.shape[0], dtype=torch.bool, device=boxes.device)
        if kept_boxes.shape[0]:
            alive &= ~(pairwise_iou(kept_boxes, block) >= t32).any(dim=0)
        overlaps = torch.triu(pairwise_iou(block, block) >= t32, diagonal=1)
        kept = alive
        while True:
            updated = alive & ~(kept[:, None] & overlaps).any(dim=0)
            if torch.equal(updated, kept):
                break
            kept = updated
        kept_index = torch.nonzero(kept).flatten() + start
        kept_chunks.append(kept_index)
        kept_boxes = torch.cat([kept_boxes, boxes[kept_index]])
        num_kept += kept_index.numel()
        if max_keep is not None and num_kept >= max_keep:
            break
    keep = torch.cat(kept_chunks) if kept_chunks else torch.zeros(0, dtype=torch.long, device=boxes.device)
    return keep[:max_keep] if max_keep is not None else keep


def pack_bits(matrix: torch.Tensor) -> torch.Tensor:
    """Pack a boolean `(..., N)` tensor into int64 words `(..., ceil(N / 64))`: bit j of word w is column 64 w + j."""
    *leading, n = matrix.shape
    num_words = (n + 63) // 64
    padded = torch.zeros((*leading, num_words * 64), dtype=torch.int64, device=matrix.device)
    padded[..., :n] = matrix
    weights = torch.ones(64, dtype=torch.int64, device=matrix.device) << torch.arange(64, device=matrix.device)
    # distinct bits never carry, so their sum is their bitwise or (bit 63 wraps to the sign, as it should)
    return (padded.view(*leading, num_words, 64) * weights).sum(dim=-1)


def per_class_nms_max_scores(
    boxes: torch.Tensor,
    class_scores: torch.Tensor,
    threshold: float,
    exact_ties: bool = True,
    num_boxes: torch.Tensor | list[int] | None = None,
) -> torch.Tensor:
    """For each box, the highest score it keeps through a per-class NMS (`max_conf` of `generate_tsv.py`).

    For every class j, the original runs `cpu_nms` over (boxes, class_scores[:, j]) and each kept box records
    `max(max_conf, score)` (see `per_class_nms_kept`).

    Args:
        boxes (`torch.Tensor` of shape `(R, 4)` or `(B, R, 4)`): the regions, float32.
        class_scores (`torch.Tensor` of shape `(R, C)` or `(B, R, C)`): the scores of the classes taking part
            (background left out).
        exact_ties (`bool`): visit tied scores in the original's order (see `descending_order`).
        num_boxes (*optional*, `(B,)`): real boxes per image of a batch; rows beyond are padding and get 0.

    Returns:
        `torch.Tensor` of shape `(R,)` or `(B, R)`: the score each box keeps (0 when no class keeps it).
    """
    if boxes.dim() == 2:
        return per_class_nms_max_scores(boxes[None], class_scores[None], threshold, exact_ties)[0]
    batch_size, num_rows, _ = class_scores.shape
    if num_rows == 0:
        return class_scores.new_zeros((batch_size, 0))
    counts = [num_rows] * batch_size if num_boxes is None else [int(n) for n in num_boxes]
    kept = per_class_nms_kept(boxes, class_scores, threshold, exact_ties, counts)
    max_scores = torch.where(kept, class_scores, torch.zeros_like(class_scores)).amax(dim=2)
    real = torch.arange(num_rows, device=boxes.device)[None, :] < torch.tensor(counts, device=boxes.device)[:, None]
    return max_scores * real


def per_class_nms_kept(
    boxes: torch.Tensor,
    class_scores: torch.Tensor,
    threshold: float,
    exact_ties: bool = True,
    num_boxes: torch.Tensor | list[int] | None = None,
) -> torch.Tensor:
    """Which (box, class) entries a per-class greedy NMS keeps: for every class, the boxes visited best score first,
    a box kept unless a kept box overlaps it with IoU >= `threshold` (the original's `cpu_nms`).

    Every (image, class) pair is a lane, and all lanes run at once: step t visits, in every lane, the box of rank t;
    it is kept unless a kept box suppressed it, and then suppresses its overlaps. This equals the sequential
    per-class NMS. A lane's suppressed boxes are a bit set (one int64 word per 64 boxes), so a step costs a few
    operations on `lanes x words` integers: the loop runs over ranks (at most R steps per batch), never over classes,
    boxes or images.

    Args: as `per_class_nms_max_scores`, with `boxes` `(B, R, 4)` and `class_scores` `(B, R, C)`.

    Returns:
        `torch.Tensor` of shape `(B, R, C)`, bool.
    """
    batch_size, num_rows, num_classes = class_scores.shape
    device = class_scores.device
    counts = [num_rows] * batch_size if num_boxes is None else [int(n) for n in num_boxes]
    overlaps = pairwise_iou(boxes, boxes) >= float32_threshold(threshold)  # (B, R, R)
    packed = pack_bits(overlaps).view(batch_size * num_rows, -1)  # row b * R + i: the boxes box i suppresses
    num_words = packed.shape[1]
    # each image's boxes in each class's visiting order, ranked on its real boxes only (padding would move the
    # original's tie order); the padding rows come last and, coming last, never suppress a real box
    order = torch.empty((batch_size, num_rows, num_classes), dtype=torch.long, device=device)
    for image, count in enumerate(counts):
        order[image, :count] = descending_order(class_scores[image, :count], exact_ties, dim=0)
        order[image, count:] = torch.arange(count, num_rows, device=device)[:, None]
    order = order.permute(1, 0, 2).reshape(num_rows, batch_size * num_classes)  # (rank, lane) -> box
    lanes = torch.arange(batch_size * num_classes, device=device)
    images = lanes // num_classes
    word_of = lanes * num_words + (order >> 6)  # (rank, lane): the word of `suppressed` holding the visited box
    bit_of = torch.ones_like(order) << (order & 63)
    row_of = images * num_rows + order  # (rank, lane): the row of `packed` of the visited box
    suppressed = torch.zeros(batch_size * num_classes * num_words, dtype=torch.int64, device=device)
    kept_by_rank = torch.empty((num_rows, batch_size * num_classes), dtype=torch.bool, device=device)
    for rank in range(num_rows):
        is_kept = (suppressed.index_select(0, word_of[rank]) & bit_of[rank]) == 0
        kept_by_rank[rank] = is_kept
        suppressed.view(-1, num_words).bitwise_or_(packed.index_select(0, row_of[rank]) * is_kept[:, None])
    kept = torch.empty_like(kept_by_rank).scatter_(0, order, kept_by_rank)  # (box, lane)
    return kept.view(num_rows, batch_size, num_classes).transpose(0, 1)


# ---------------------------------------------------------------------------------------------------------------
# Region selection (`generate_tsv.py`), Caffe's ArgMax, rows for BLAS
# ---------------------------------------------------------------------------------------------------------------


def select_regions(
    max_scores: torch.Tensor, score_threshold: float, min_boxes: int, max_boxes: int, exact_ties: bool = True
) -> torch.Tensor:
    """The regions `generate_tsv.py` emits, in its order.

    Those with `max_score >= score_threshold`, in region order; if fewer than `min_boxes`, the `min_boxes` best
    instead, and if more than `max_boxes`, the `max_boxes` best (best first; ties as `descending_order` puts them).
    """
    keep = torch.nonzero(max_scores.double() >= score_threshold).flatten()
    if min_boxes <= keep.numel() <= max_boxes:
        return keep
    count = min_boxes if keep.numel() < min_boxes else max_boxes
    return descending_order(max_scores.double(), exact_ties, top_k=count)


def argmax_last(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Argmax that resolves exact ties to the highest index, as Caffe's ArgMax layer does."""
    size = x.shape[dim]
    return size - 1 - torch.argmax(torch.flip(x, dims=[dim]), dim=dim)


def at_least_two_rows(x: torch.Tensor) -> torch.Tensor:
    """`x`, a single row doubled: BLAS runs one row through other kernels (other roundings) than several."""
    return x if x.shape[0] != 1 else torch.cat([x] * 2)


# ---------------------------------------------------------------------------------------------------------------
# RoI pooling (Caffe's ROIPooling) and the global average pool (`pool5_flat`)
# ---------------------------------------------------------------------------------------------------------------


def _round_half_away_from_zero(x: torch.Tensor) -> torch.Tensor:
    """C's `round` (torch.round rounds half to even)."""
    return torch.where(x >= 0, torch.floor(x + 0.5), torch.ceil(x - 0.5))


def roi_pool_bins(
    boxes: torch.Tensor, pool_size: int, spatial_scale: float, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The bins of Caffe's ROIPooling (and `torchvision.ops.roi_pool`), computed with the same float32 operations.

    Returns:
        `(row_start, row_end, column_start, column_end)`, each `(K, pool_size)` int64: bin i of a box spans
        rows `[row_start[i], row_end[i])` of the feature map (clipped to it; empty when `end <= start`).
    """
    corners = _round_half_away_from_zero(boxes.float() * torch.tensor(spatial_scale, dtype=torch.float32))
    x1, y1, x2, y2 = corners.unbind(dim=1)
    bins = torch.arange(pool_size, dtype=torch.float32, device=boxes.device)

    def spans(start, end, limit):
        size = (end - start + 1).clamp(min=1)  # malformed boxes are 1 x 1
        bin_size = size / pool_size
        low = torch.floor(bins * bin_size[:, None]) + start[:, None]
        high = torch.ceil((bins + 1) * bin_size[:, None]) + start[:, None]
        return low.clamp(0, limit).long(), high.clamp(0, limit).long()

    row_start, row_end = spans(y1, y2, height)
    column_start, column_end = spans(x1, x2, width)
    return row_start, row_end, column_start, column_end


def roi_max_pool(features: torch.Tensor, boxes: torch.Tensor, pool_size: int, spatial_scale: float) -> torch.Tensor:
    """Caffe ROIPooling of one image: the maximum of each bin, 0 for an empty bin; equal to
    `torchvision.ops.roi_pool` for finite features, in any dtype (a maximum rounds nothing).

    torchvision's CPU kernel runs one thread, visiting bins channel by channel. Here a table holds the maximum of
    every window size the bins use at every position, `T[h, w][y, x, :] = max(features[:, y:y+h, x:x+w])`, built with
    a few elementwise maxima; then every bin is one gather of `C` contiguous values. The table has
    `max_bin_height x max_bin_width` maps (about `(H / P + 2) x (W / P + 2)`, e.g. 20 for 38 x 50 and P = 14). When
    gradients must reach `features`, `torchvision.ops.roi_pool` computes the same maxima instead.

    Args:
        features (`torch.Tensor` of shape `(C, H, W)`): one image's feature map.
        boxes (`torch.Tensor` of shape `(K, 4)`): `(x1, y1, x2, y2)` in input-image pixels.

    Returns:
        `torch.Tensor` of shape `(K, C, P, P)`, in channels_last memory format.
    """
    channels, height, width = features.shape
    num_boxes = boxes.shape[0]
    if num_boxes == 0:
        return features.new_zeros((0, channels, pool_size, pool_size))
    if torch.is_grad_enabled() and features.requires_grad:
        # the table is written in place, which autograd cannot follow; torchvision's kernel takes the same maxima
        # (in float32: it has no bf16 kernel, and a maximum rounds nothing) and has a backward
        pooled = roi_pool(features[None].float(), [boxes.float()], pool_size, spatial_scale).to(features.dtype)
        return pooled.contiguous(memory_format=torch.channels_last)
    row_start, row_end, column_start, column_end = roi_pool_bins(boxes, pool_size, spatial_scale, height, width)
    bin_heights = (row_end - row_start)[:, :, None]  # (K, P, 1)
    bin_widths = (column_end - column_start)[:, None, :]  # (K, 1, P)
    max_height = max(int(bin_heights.max()), 1)
    max_width = max(int(bin_widths.max()), 1)

    # table[h - 1, w - 1, y, x] = max(features[:, y:y+h, x:x+w]), grown one row, then one column, at a time; windows
    # that would cross the map's edge are never read and stay unwritten. One extra row of zeros serves empty bins.
    pixels = features.permute(1, 2, 0)  # (H, W, C)
    storage = features.new_empty((max_height * max_width * height * width + 1, channels))
    storage[-1] = 0
    table = storage[:-1].view(max_height, max_width, height, width, channels)
    table[0, 0] = pixels
    for h in range(1, max_height):
        torch.maximum(table[h - 1, 0, : height - h], pixels[h:], out=table[h, 0, : height - h])
    for h in range(max_height):
        rows = height - h
        for w in range(1, max_width):
            torch.maximum(
                table[h, w - 1, :rows, : width - w], table[h, 0, :rows, w:], out=table[h, w, :rows, : width - w]
            )

    empty = (bin_heights <= 0) | (bin_widths <= 0)
    window = (bin_heights - 1).clamp(min=0) * max_width + (bin_widths - 1).clamp(min=0)
    index = (window * height + row_start[:, :, None]) * width + column_start[:, None, :]  # (K, P, P)
    index = torch.where(empty, storage.shape[0] - 1, index)
    pooled = storage.index_select(0, index.flatten()).view(num_boxes, pool_size, pool_size, channels)
    return pooled.permute(0, 3, 1, 2)  # (K, C, P, P), channels_last


def global_average_pool(x: torch.Tensor) -> torch.Tensor:
    """The mean of each channel over its map: `(N, C, H, W)` -> `(N, C)`.

    float32 keeps `mean`, whose sums are today's bits. In half precision, `mean` of a channels_last map casts it to
    float32 through a strided copy (150 ms for 64 regions of res5, more than a convolution); a batched product with a
    vector of ones sums the same values in float32 accumulators (one rounding of the sum to the half type, so within
    one ulp of `mean`) at memory speed.
    """
    if x.dtype in (torch.float32, torch.float64):
        return x.mean(dim=(2, 3))
    count, channels, height, width = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(count, height * width, channels)  # a view for channels_last maps
    sums = torch.bmm(x.new_ones((count, 1, height * width)), rows).squeeze(1)
    return (sums.float() / (height * width)).to(x.dtype)
