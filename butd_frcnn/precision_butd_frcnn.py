"""The precision modes' machinery (`ButdFrcnnConfig.precision`): the screened selection of "fp32-screened" (its
policy, which regions need exact float32 scores for the selection to come out as fp32's, and the settlement that
computes them in the RoI heads), and the CUDA float32 math of "fp32" and "tf32".

`modeling_butd_frcnn.py` holds the network and calls these functions; the selection arithmetic they reason about
is the original's, in `ops_butd_frcnn.py`. This file travels with the model files as Hub remote code: it imports
nothing from the rest of the package.
"""

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
from torch import nn
from transformers.utils import logging

from .kernels_butd_frcnn import chunks_without_singletons, convolution_backend, onednn_fused_convolutions
from .ops_butd_frcnn import (
    descending_order,
    float32_threshold,
    pairwise_iou,
    per_class_nms_kept,
    per_class_nms_max_scores,
    select_regions,
)

logger = logging.get_logger(__name__)

# ---------------------------------------------------------------------------------------------------------------
# Screened selection (precision "fp32-screened"): which regions need exact scores
# ---------------------------------------------------------------------------------------------------------------

SCREENING_MARGIN = 0.3
"""First bound on `|log p - log q|`, p a float32 class probability and q its screened (bf16 res5) estimate: twice
the largest seen on the FULL golden weights (0.14-0.19). Raised as settled regions show larger errors."""
SCREENING_MARGIN_SAFETY = 2.0
"""The margin is kept at least this many times the largest error seen on the settled regions."""
SCREENING_MAX_ROUNDS = 6
"""Settlement rounds before the rest is settled at once (each round is a res5 pass; 2-5 are typical)."""
COMPLEMENT_ROUNDING = 2.0**-20
"""Absolute slack on `1 - p` in the complement bound (`probability_intervals`): float32 softmax rounds each
probability by a few ulps (2^-24 near 1), so `1 - p` of a float32 `p` is its other classes' sum only to about that."""
COMPLEMENT_CHECKED_FROM = 2.0**-10
"""The margin's self-check compares `1 - p` with `1 - q` each raised to at least this (below it the float32
rounding of p and q, not the screening, decides their ratio)."""


def probability_intervals(
    values: torch.Tensor, settled: torch.Tensor, margin: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 bounds `low <= p <= high` on the exact probabilities behind `values` (exact on `settled` rows).

    The margin bounds `|log p - log q|` for every class of a region, so it also bounds the log-ratio of the sum of
    the other classes' probabilities, `1 - p`: `p` is within `q e^+-margin` and within `1 - (1 - q) e^+-margin`
    (up to `COMPLEMENT_ROUNDING`). The second bound is the tight one for sharp probabilities (q = 0.99 and
    margin 0.3: `[0.733, 1]` from the first, `[0.9865, 0.9926]` from the second).
    """
    q = values.double()
    up, down = math.exp(margin), math.exp(-margin)
    rest = 1.0 - q
    low = torch.maximum(q * down, 1.0 - rest * up - COMPLEMENT_ROUNDING)
    high = torch.minimum((q * up).clamp(max=1.0), 1.0 - rest * down + COMPLEMENT_ROUNDING)
    settled_rows = settled[:, None]
    return torch.where(settled_rows, q, low), torch.where(settled_rows, q, high)


class ScreeningPlan(NamedTuple):
    """One decision of `screening_plan`: the regions to settle next (none: the selection is certain) and the exact
    float32 ties met, whose order no screening can promise (see `screening_plan`)."""

    to_settle: torch.Tensor
    exact_ties: int


def screening_plan(
    boxes: torch.Tensor,
    values: torch.Tensor,
    settled: torch.Tensor,
    margin: float,
    score_threshold: float,
    min_boxes: int,
    max_boxes: int,
    nms_threshold: float,
    exact_ties: bool = True,
) -> ScreeningPlan:
    """The regions whose exact class probabilities the selection still needs, so that the selection computed on
    `values` (`select_regions` after `per_class_nms_max_scores`) is the one the exact probabilities give.

    `values` `(R, C)` holds, per region, exact float32 probabilities (foreground classes) where `settled`, else a
    screened estimate q, the true p being within `q e^-margin <= p <= q e^margin`. The selection on `values`,
    "V", picks `S`; its cutoff `c` is its lowest `max_conf`. The rules:

    1. Settle `S` first (its features must be exact anyway), and when more than `max_boxes` regions reach the
       threshold, the next-best one too (then more than `max_boxes` certainly reach it).
    2. A floor `tau`: the threshold when V keeps `S` in region order; `c` when V takes the best `min_boxes`; the
       next-best region's `max_conf` when V takes the best `max_boxes`. An entry whose interval stays below
       `tau` can neither be selected nor suppress an entry above it (it ranks below): the rest ignores it.
    3. Pairs: in every class, two overlapping entries (IoU >= the NMS threshold) that can both reach `tau` and
       whose intervals intersect are settled, unless both are: greedy NMS keeps a box iff no kept box ranked above
       it overlaps it, so these orders are all it depends on above the floor.
    4. Doubtful regions: with those orders certain, an unsettled region's `max_conf`, if it reaches `tau`, is at
       most the upper end of its kept entries' intervals. Settled: those that could reach the threshold (V keeps
       `S` in region order) or `c` (V takes the best `min_boxes` or `max_boxes`).

    When nothing is left to settle, the exact probabilities give the same selection, in the same order, except
    where two settled values tie exactly (`exact_ties` counts them): the original orders exact ties by numpy's sort
    of the whole column, which here holds estimates. Every rule runs on all classes at once (no loop over classes).

    Returns:
        [`ScreeningPlan`]: `to_settle` `(R,)` bool, never a settled region.
    """
    num_rows = values.shape[0]
    device = values.device
    nothing = torch.zeros(num_rows, dtype=torch.bool, device=device)
    if num_rows == 0:
        return ScreeningPlan(nothing, 0)
    max_scores = selection_max_scores(boxes, values, score_threshold, min_boxes, max_boxes, nms_threshold, exact_ties)
    selected = select_regions(max_scores, score_threshold, min_boxes, max_boxes, exact_ties)
    must = nothing.clone()
    must[selected] = True
    cutoff = float(max_scores[selected].min())
    reaching = int((max_scores.double() >= score_threshold).sum())
    in_region_order = min_boxes <= reaching <= max_boxes
    if reaching > max_boxes:
        runner_up = descending_order(max_scores.double(), exact_ties, top_k=max_boxes + 1)[-1]
        must[runner_up] = True
        floor = float(max_scores[runner_up])
    else:
        floor = score_threshold if in_region_order else cutoff
    if bool((must & ~settled).any()):  # rule 1
        return ScreeningPlan(must & ~settled, 0)

    # rule 2: intervals, and the entries that can reach the floor (only their classes matter)
    low, high = probability_intervals(values, settled, margin)
    members = high >= floor
    classes = members.any(dim=0).nonzero().flatten()
    members, low, high, values = members[:, classes], low[:, classes], high[:, classes], values[:, classes]

    # rule 3: overlapping pairs of members whose order is uncertain
    overlaps = pairwise_iou(boxes, boxes) >= float32_threshold(nms_threshold)
    active = members.any(dim=1)
    pairs = torch.triu(overlaps & active[:, None] & active[None, :], diagonal=1).nonzero()
    ambiguous = nothing.clone()
    ties = 0
    for block in pairs.split(4096):
        a, b = block[:, 0], block[:, 1]
        both = members[a] & members[b]
        exact = (settled[a] & settled[b])[:, None]
        intersect = (low[a] <= high[b]) & (low[b] <= high[a])
        uncertain = (both & intersect & ~exact).any(dim=1)
        ambiguous[a[uncertain]] = True
        ambiguous[b[uncertain]] = True
        ties += int((both & exact & (values[a] == values[b])).sum())

    # rule 4: the kept members (the NMS on members only: the others rank below every member that matters)
    kept = per_class_nms_kept(boxes[None], torch.where(members, values, -1.0)[None], nms_threshold, False)[0]
    best_possible = torch.where(kept & members, high, torch.full_like(high, -1.0)).amax(dim=1)
    bound = score_threshold if in_region_order else cutoff
    doubtful = best_possible >= bound
    if not in_region_order:
        ties += int((settled & ~must & (max_scores == cutoff)).sum())
    return ScreeningPlan((ambiguous | doubtful) & ~settled, ties)


def selection_max_scores(
    boxes: torch.Tensor,
    class_scores: torch.Tensor,
    score_threshold: float,
    min_boxes: int,
    max_boxes: int,
    nms_threshold: float,
    exact_ties: bool = True,
) -> torch.Tensor:
    """`per_class_nms_max_scores` as far as `select_regions` can tell: exact wherever it reaches the threshold.

    Scores below the threshold rank below every score that reaches it, so they neither reach it nor suppress one
    that does: only the classes where some score reaches it need the NMS (a few dozen of 1600), unless fewer than
    `min_boxes` regions reach it (then the best ones below count too), or the best `max_boxes` must be sorted and
    two of them tie exactly (the original's tie order depends on every value).
    """
    reaching_classes = (class_scores.double() >= score_threshold).any(dim=0)
    if int(reaching_classes.sum()) > 0:
        max_scores = per_class_nms_max_scores(boxes, class_scores[:, reaching_classes], nms_threshold, exact_ties)
        reaching = max_scores[max_scores.double() >= score_threshold]
        tied = exact_ties and reaching.unique().numel() < reaching.numel()
        if reaching.numel() >= min_boxes and not (reaching.numel() > max_boxes and tied):
            return max_scores
    return per_class_nms_max_scores(boxes, class_scores, nms_threshold, exact_ties)


class ScreeningResult(NamedTuple):
    """What `settle_screened` found: the class probabilities (exact on `settled` rows), and how it got there."""

    values: torch.Tensor
    settled: torch.Tensor
    margin: float
    rounds: int
    exact_ties: int


def log_ratio_error(exact: torch.Tensor, estimate: torch.Tensor, rows: torch.Tensor) -> float:
    """The largest `|log p - log q|` over the given rows (entries where both are positive), and the same of `1 - p`
    and `1 - q` (each at least `COMPLEMENT_CHECKED_FROM`): the two bounds `probability_intervals` relies on."""
    p, q = exact[rows].double(), estimate[rows].double()
    positive = (p > 0) & (q > 0)
    rest_p, rest_q = (1 - p).clamp(min=COMPLEMENT_CHECKED_FROM), (1 - q).clamp(min=COMPLEMENT_CHECKED_FROM)
    errors = ((p[positive].log() - q[positive].log()).abs(), (rest_p.log() - rest_q.log()).abs())
    return max((float(error.max()) for error in errors if error.numel()), default=0.0)


def settle_screened(
    estimate: torch.Tensor,
    settle: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    plan: Callable[[torch.Tensor, torch.Tensor, float], ScreeningPlan],
    margin: float = SCREENING_MARGIN,
    max_rounds: int = SCREENING_MAX_ROUNDS,
) -> ScreeningResult:
    """Settle regions until `plan` is certain: the loop of the "fp32-screened" precision.

    Args:
        estimate (`torch.Tensor` of shape `(R, C)`): every region's screened class probabilities.
        settle: `settle(rows)` computes the exact probabilities of `rows` (`(R,)` bool; it may do more rows) and
            returns all rows' probabilities, exact on every row settled so far, and the rows it settled.
        plan: `plan(values, settled, margin)`, e.g. `screening_plan` with the selection's settings.
        margin: the first bound on `|log p - log q|`; after every round it is raised to `SCREENING_MARGIN_SAFETY`
            times the largest error seen on the settled rows, if that is larger (a check, not a proof: rows never
            settled are never seen).
        max_rounds: after this many rounds, every remaining row is settled at once.
    """
    values = estimate
    settled = torch.zeros(estimate.shape[0], dtype=torch.bool, device=estimate.device)
    rounds = 0
    while True:
        decision = plan(values, settled, margin)
        if not bool(decision.to_settle.any()):
            return ScreeningResult(values, settled, margin, rounds, decision.exact_ties)
        to_settle = ~settled if rounds >= max_rounds else decision.to_settle
        values, now_settled = settle(to_settle)
        new_rows = now_settled & ~settled
        settled = settled | now_settled
        rounds += 1
        margin = max(margin, SCREENING_MARGIN_SAFETY * log_ratio_error(values, estimate, new_rows))


# ---------------------------------------------------------------------------------------------------------------
# Settlement in the RoI heads (precision "fp32-screened")
# ---------------------------------------------------------------------------------------------------------------


def screened_roi_heads(
    heads: nn.Module,
    features: torch.Tensor,
    boxes: torch.Tensor,
    plan: Callable[[torch.Tensor, torch.Tensor, float], ScreeningPlan],
) -> tuple[torch.Tensor | None, ...]:
    """`heads(features, boxes)` (the model's `ButdFrcnnRoIHeads`; not imported here: the model file imports this
    one, and transformers 4's `get_relative_import_files` follows even typing-only imports round a cycle forever)
    for precision "fp32-screened" (float32 weights and `features`): the outputs the
    selection `plan` needs, exactly as the heads' `forward` computes them, for much less than `forward` where few
    regions are in doubt.

    res5 runs in bfloat16 on every region (bf16 copies of the folded weights), the class scores in float32 on
    the result; then `settle_screened` asks `plan` which regions need their float32 scores, res5 runs in
    float32 on those, and so on until the selection is certain. The class, box and attribute heads always run
    on all regions at once, as in `forward`: BLAS picks other kernels for fewer rows (other bits).

    Returns:
        [`ButdFrcnnHeadOutputs`]: float32 values on the settled regions and bf16-screened ones elsewhere, and which
        regions are `settled`.
    """
    pooled = heads.pool_regions(features, boxes)
    region_features = heads.region_features(pooled.to(torch.bfloat16)).float()
    granularity = settlement_granularity(heads, pooled)
    settled = torch.zeros(pooled.shape[0], dtype=torch.bool, device=pooled.device)

    def settle(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal settled
        for batch in settlement_batches(heads, rows, settled, granularity):
            region_features[batch] = heads.region_features(pooled[batch], granularity or 2)
            settled[batch] = True
        return heads.class_probabilities(region_features)[:, 1:], settled.clone()

    result = settle_screened(heads.class_probabilities(region_features)[:, 1:], settle, plan)
    logger.debug(
        "fp32-screened: %d of %d regions settled in %d rounds (margin %.3f)",
        int(result.settled.sum()),
        result.settled.numel(),
        result.rounds,
        result.margin,
    )
    if result.exact_ties:
        logger.info(
            "fp32-screened: %d exact float32 ties decide the selection; their order may differ from fp32's",
            result.exact_ties,
        )
    return heads.predict(region_features)._replace(settled=result.settled)


def settlement_granularity(heads: nn.Module, pooled: torch.Tensor) -> int | None:
    """The fewest regions a float32 res5 call of the screened precision may take so that every region gets the
    bits the full pass (`region_features` on all of them) gives it; `None` when only the full pass's own chunks
    promise that.

    oneDNN computes each region's output the same way whatever other regions share the call (2 to 300 of them;
    tested), but `F.conv2d` leaves some problems to PyTorch's own kernels (1x1 convolutions of fewer than 16
    regions on one thread), and on GPUs cuDNN picks kernels by shape: every call of the full pass and of the
    settlement must then take oneDNN for every res5 convolution, or only whole chunks are recomputed.
    """
    if pooled.device.type != "cpu" or not onednn_fused_convolutions():
        return None
    inputs = convolution_inputs(heads.res5, pooled.shape[1:])

    def onednn(rows: int) -> bool:
        return all(
            convolution_backend(torch.empty((1, *shape), dtype=pooled.dtype).expand(rows, *shape), conv)
            == torch._C._ConvBackend.Mkldnn
            for conv, shape in inputs
        )

    if not all(onednn(chunk.shape[0]) for chunk in chunks_without_singletons(pooled, heads.chunk_size)):
        return None
    for rows in range(2, heads.chunk_size + 1):
        if all(onednn(count) for count in range(rows, rows + heads.chunk_size)):
            return rows
    return None


def settlement_batches(
    heads: nn.Module, rows: torch.Tensor, settled: torch.Tensor, granularity: int | None
) -> list[torch.Tensor]:
    """The regions to run through float32 res5 for `rows` (`(K,)` bool): one batch of at least `granularity`
    regions (more unsettled ones taken along if needed), or without a granularity every chunk of the full pass
    that holds one of `rows`, whole."""
    count = rows.shape[0]
    if granularity is None:
        chunk_of = torch.cat(
            [
                torch.full((len(chunk),), index, device=rows.device)
                for index, chunk in enumerate(chunks_without_singletons(torch.arange(count), heads.chunk_size))
            ]
        )
        return [(chunk_of == index).nonzero().flatten() for index in chunk_of[rows].unique().tolist()]
    batch = rows.clone()
    missing = min(granularity, count) - int(batch.sum())
    if missing > 0:  # others along: unsettled ones first (they may be needed next), else settled ones again
        candidates = torch.cat([(~batch & ~settled).nonzero().flatten(), (~batch & settled).nonzero().flatten()])
        batch[candidates[:missing]] = True
    return [batch.nonzero().flatten()]


def convolution_inputs(stage: nn.Module, input_shape: Sequence[int]) -> list[tuple[nn.Conv2d, tuple[int, ...]]]:
    """Every convolution of a ResNet stage with the `(C, H, W)` shape of its input, for an input of `input_shape`."""

    def output_shape(conv: nn.Conv2d, shape: tuple[int, ...]) -> tuple[int, ...]:
        sizes = [
            (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
            for size, padding, dilation, kernel, stride in zip(
                shape[1:], conv.padding, conv.dilation, conv.kernel_size, conv.stride
            )
        ]
        return (conv.out_channels, *sizes)

    inputs = []
    shape = tuple(input_shape)
    for block in stage:
        inputs += [(conv, shape) for conv in (block.shortcut, block.conv1) if conv is not None]
        inner = output_shape(block.conv1, shape)
        inputs.append((block.conv2, inner))
        inner = output_shape(block.conv2, inner)
        inputs.append((block.conv3, inner))
        shape = output_shape(block.conv3, inner)
    return inputs


# ---------------------------------------------------------------------------------------------------------------
# CUDA float32 math ("fp32", "fp32-screened", "tf32")
# ---------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def cuda_float32_math(device: torch.device, precision: str) -> Iterator[None]:
    """On CUDA, float32 convolutions and matrix products in TF32 for precision "tf32", in full float32 otherwise,
    for the duration of the forward only (the process-wide settings are restored after: they are the caller's).

    PyTorch lets cuDNN run float32 convolutions in TF32 by default (about 1e-3 relative): "fp32" must not. For "fp32"
    and "fp32-screened", cuDNN also picks its algorithms deterministically, by shape, so that a region gets the same
    bits in every call. These flags are process-wide: do not run the model concurrently with other CUDA work that
    needs other settings.
    """
    if device.type != "cuda":
        yield
        return
    mode = "tf32" if precision == "tf32" else "ieee"
    cudnn = torch.backends.cudnn
    settings: list[tuple[object, str, object]] = []
    if hasattr(getattr(cudnn, "conv", None), "fp32_precision"):  # torch >= 2.9: do not mix with the legacy flags
        settings += [(torch.backends.cuda.matmul, "fp32_precision", mode), (cudnn.conv, "fp32_precision", mode)]
    else:
        tf32 = mode == "tf32"
        settings += [(torch.backends.cuda.matmul, "allow_tf32", tf32), (cudnn, "allow_tf32", tf32)]
    if precision in ("fp32", "fp32-screened"):
        settings += [(cudnn, "benchmark", False), (cudnn, "deterministic", True)]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in settings]
    try:
        for owner, name, value in settings:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
