"""How well two extractions of one image agree: boxes, features, labels."""

from dataclasses import asdict, dataclass

import numpy as np

from ..extraction.records import RegionRecord
from .matching import ASSIGNMENTS, box_iou, cosine_similarity

IOU_LEVELS = (0.5, 0.9, 0.99)


@dataclass
class ImageComparison:
    """The agreement of one image's regions in A and B.

    Box fractions count over `max(boxes_a, boxes_b)`, so a box that one side lacks is a disagreement. Feature and
    label numbers are over the `matched` pairs: boxes paired one-to-one by IoU with an IoU of at least the
    comparison's `match_iou`. `feature_matched_*` pair the regions by feature cosine alone, ignoring the boxes.
    """

    image_id: str
    boxes_a: int
    boxes_b: int
    same_size: bool
    matched: int
    iou_at_least: dict[str, float]
    exact_boxes: float
    same_order: bool
    identical: bool
    cosine_mean: float | None
    cosine_min: float | None
    relative_l2_mean: float | None
    relative_l2_max: float | None
    exact_features: float | None
    feature_matched_cosine_mean: float | None
    feature_matched_cosine_min: float | None
    objects_agree: float | None
    attrs_agree: float | None

    def to_dict(self) -> dict:
        return asdict(self)

    def badness(self) -> tuple:
        """Sort key, worst first: fewest boxes agreeing at IoU 0.9, then lowest feature cosine."""
        return (self.iou_at_least["0.9"], self.cosine_mean if self.cosine_mean is not None else -1.0, self.exact_boxes)


def _fraction(count: int, total: int) -> float:
    return count / total if total else 1.0


def _agreement(labels_a: np.ndarray | None, labels_b: np.ndarray | None, pairs: list) -> float | None:
    if labels_a is None or labels_b is None:
        return None
    if not pairs:
        return 0.0
    return float(np.mean([labels_a[i] == labels_b[j] for i, j in pairs]))


def compare_images(
    a: RegionRecord, b: RegionRecord, matching: str = "hungarian", match_iou: float = 0.5
) -> ImageComparison:
    """Compare one image's regions in A and B (see `ImageComparison`)."""
    assign = ASSIGNMENTS[matching]
    count_a, count_b = a.num_boxes, b.num_boxes
    total = max(count_a, count_b)
    iou = box_iou(a.boxes, b.boxes)
    pairs = assign(iou)
    ious = np.array([iou[i, j] for i, j in pairs])
    matched = [pair for pair, value in zip(pairs, ious) if value >= match_iou]
    exact_boxes = sum(np.array_equal(a.boxes[i], b.boxes[j]) for i, j in pairs)
    # in order: pairing box i with box i overlaps as much as the best pairing does (robust to duplicate boxes)
    same_order = count_a == count_b and bool(np.trace(iou) >= ious.sum() - 1e-9)

    cosine_mean = cosine_min = l2_mean = l2_max = exact_features = None
    if matched:
        rows_a = np.asarray(a.features, np.float64)[[i for i, _ in matched]]
        rows_b = np.asarray(b.features, np.float64)[[j for _, j in matched]]
        cosines = np.diag(cosine_similarity(rows_a, rows_b))
        norms_b = np.linalg.norm(rows_b, axis=1)
        relative = np.linalg.norm(rows_a - rows_b, axis=1) / np.where(norms_b > 0, norms_b, 1.0)
        cosine_mean, cosine_min = float(cosines.mean()), float(cosines.min())
        l2_mean, l2_max = float(relative.mean()), float(relative.max())
        exact_features = _fraction(sum(np.array_equal(a.features[i], b.features[j]) for i, j in matched), total)

    feature_mean = feature_min = None
    if count_a and count_b and a.features.shape[1] == b.features.shape[1]:
        similarity = cosine_similarity(a.features, b.features)
        feature_pairs = assign(similarity + 1.0)  # shifted to be positive: every region gets a partner
        values = np.array([similarity[i, j] for i, j in feature_pairs])
        feature_mean, feature_min = float(values.mean()), float(values.min())

    identical = np.array_equal(a.boxes, b.boxes) and np.array_equal(a.features, b.features)
    return ImageComparison(
        image_id=a.image_id,
        boxes_a=count_a,
        boxes_b=count_b,
        same_size=(a.image_h, a.image_w) == (b.image_h, b.image_w),
        matched=len(matched),
        iou_at_least={str(level): _fraction(int((ious >= level).sum()), total) for level in IOU_LEVELS},
        exact_boxes=_fraction(exact_boxes, total),
        same_order=same_order,
        identical=bool(identical),
        cosine_mean=cosine_mean,
        cosine_min=cosine_min,
        relative_l2_mean=l2_mean,
        relative_l2_max=l2_max,
        exact_features=exact_features,
        feature_matched_cosine_mean=feature_mean,
        feature_matched_cosine_min=feature_min,
        objects_agree=_agreement(a.objects, b.objects, matched),
        attrs_agree=_agreement(a.attrs, b.attrs, matched),
    )
