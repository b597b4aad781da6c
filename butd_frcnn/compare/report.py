"""The comparison of two feature files as a whole: per-image results, pooled numbers, missing images, the verdict
against the user's thresholds, a worst-first table and a JSON report."""

from dataclasses import asdict, dataclass, field

from .metrics import IOU_LEVELS, ImageComparison


@dataclass
class Thresholds:
    """What "agrees" means: at least `min_box_agreement` of all boxes paired with IoU >= `agreement_iou`, a mean
    feature cosine of at least `min_cosine` on matched pairs, and at most `max_missing` images on one side only."""

    agreement_iou: float = 0.9
    min_box_agreement: float = 0.95
    min_cosine: float = 0.99
    max_missing: int = 0

    def __post_init__(self):
        if self.agreement_iou not in IOU_LEVELS:
            raise ValueError(f"agreement_iou must be one of {IOU_LEVELS}, got {self.agreement_iou}")


def _weighted_mean(pairs: list[tuple[float | None, float]]) -> float | None:
    kept = [(value, weight) for value, weight in pairs if value is not None and weight > 0]
    total = sum(weight for _, weight in kept)
    return sum(value * weight for value, weight in kept) / total if total else None


def _share(images: list[ImageComparison], predicate) -> float | None:
    """The fraction of `images` for which `predicate` holds (None without images)."""
    return sum(bool(predicate(image)) for image in images) / len(images) if images else None


def _extreme(values: list[float | None], pick) -> float | None:
    kept = [value for value in values if value is not None]
    return pick(kept) if kept else None


@dataclass
class ComparisonReport:
    source_a: str
    source_b: str
    images_a: int
    images_b: int
    images: list[ImageComparison]
    only_in_a: list[str]
    only_in_b: list[str]
    settings: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """Numbers pooled over all compared images (boxes weigh by count, features by matched pairs)."""
        images = self.images
        totals = [max(image.boxes_a, image.boxes_b) for image in images]
        matched = [image.matched for image in images]
        return {
            "images_compared": len(images),
            "images_identical": sum(image.identical for image in images),
            "images_same_box_count": _share(images, lambda image: image.boxes_a == image.boxes_b),
            "images_same_order": _share(images, lambda image: image.same_order),
            "images_same_size": _share(images, lambda image: image.same_size),
            "boxes_a": sum(image.boxes_a for image in images),
            "boxes_b": sum(image.boxes_b for image in images),
            "boxes_iou_at_least": {
                str(level): _weighted_mean([(i.iou_at_least[str(level)], t) for i, t in zip(images, totals)])
                for level in IOU_LEVELS
            },
            "boxes_exact": _weighted_mean([(i.exact_boxes, t) for i, t in zip(images, totals)]),
            "matched_pairs": sum(matched),
            "cosine_mean": _weighted_mean([(i.cosine_mean, m) for i, m in zip(images, matched)]),
            "cosine_min": _extreme([i.cosine_min for i in images], min),
            "relative_l2_mean": _weighted_mean([(i.relative_l2_mean, m) for i, m in zip(images, matched)]),
            "relative_l2_max": _extreme([i.relative_l2_max for i in images], max),
            "features_exact": _weighted_mean([(i.exact_features, t) for i, t in zip(images, totals)]),
            "feature_matched_cosine_mean": _weighted_mean(
                [(i.feature_matched_cosine_mean, min(i.boxes_a, i.boxes_b)) for i in images]
            ),
            "feature_matched_cosine_min": _extreme([i.feature_matched_cosine_min for i in images], min),
            "objects_agree": _weighted_mean([(i.objects_agree, m) for i, m in zip(images, matched)]),
            "attrs_agree": _weighted_mean([(i.attrs_agree, m) for i, m in zip(images, matched)]),
            "only_in_a": len(self.only_in_a),
            "only_in_b": len(self.only_in_b),
        }

    def failures(self, thresholds: Thresholds) -> list[str]:
        """Why the files do not agree (empty: they do)."""
        summary = self.summary()
        problems = []
        if not self.images:
            problems.append("no image is in both files")
        missing = len(self.only_in_a) + len(self.only_in_b)
        if missing > thresholds.max_missing:
            problems.append(f"{missing} images are in one file only (allowed: {thresholds.max_missing})")
        level = str(thresholds.agreement_iou)
        boxes = summary["boxes_iou_at_least"][level]
        if boxes is not None and boxes < thresholds.min_box_agreement:
            problems.append(
                f"{boxes:.4f} of the boxes agree at IoU >= {level} (required: {thresholds.min_box_agreement})"
            )
        cosine = summary["cosine_mean"]
        if self.images and (cosine is None or cosine < thresholds.min_cosine):
            shown = "no matched pairs" if cosine is None else f"{cosine:.6f}"
            problems.append(f"mean feature cosine on matched boxes is {shown} (required: {thresholds.min_cosine})")
        return problems

    def to_json(self, thresholds: Thresholds) -> dict:
        failures = self.failures(thresholds)
        return {
            "a": self.source_a,
            "b": self.source_b,
            "images_a": self.images_a,
            "images_b": self.images_b,
            "settings": self.settings,
            "thresholds": asdict(thresholds),
            "passed": not failures,
            "failures": failures,
            "summary": self.summary(),
            "only_in_a": self.only_in_a,
            "only_in_b": self.only_in_b,
            "images": [image.to_dict() for image in self.worst_first()],
        }

    def worst_first(self) -> list[ImageComparison]:
        return sorted(self.images, key=lambda image: (*image.badness(), image.image_id))

    def table(self, rows: int) -> str:
        """The `rows` worst images, one line each."""
        header = (
            f"{'image':<24} {'boxes A/B':>10} {'IoU>=.5':>8} {'>=.9':>6} {'>=.99':>6} {'exact':>6} {'order':>5} "
            f"{'cos mean':>9} {'cos min':>9} {'rel L2':>8} {'feat cos':>9} {'obj':>5} {'attr':>5}"
        )
        lines = [header, "-" * len(header)]
        for image in self.worst_first()[:rows]:
            ious = image.iou_at_least
            lines.append(
                f"{image.image_id[:24]:<24} {f'{image.boxes_a}/{image.boxes_b}':>10} {ious['0.5']:>8.3f} "
                f"{ious['0.9']:>6.3f} {ious['0.99']:>6.3f} {image.exact_boxes:>6.3f} {'yes' if image.same_order else 'no':>5} "
                f"{_number(image.cosine_mean, 9, 6)} {_number(image.cosine_min, 9, 6)} "
                f"{_number(image.relative_l2_mean, 8, 5)} {_number(image.feature_matched_cosine_mean, 9, 6)} "
                f"{_number(image.objects_agree, 5, 2)} {_number(image.attrs_agree, 5, 2)}"
            )
        return "\n".join(lines)

    def text(self, thresholds: Thresholds, rows: int = 20) -> str:
        summary = self.summary()
        failures = self.failures(thresholds)
        ious = summary["boxes_iou_at_least"]
        lines = [
            f"A: {self.source_a} ({self.images_a} images)",
            f"B: {self.source_b} ({self.images_b} images)",
            f"compared {summary['images_compared']} images; {summary['images_identical']} identical",
            "",
            self.table(rows),
            "",
            (
                f"boxes: {summary['boxes_a']} in A, {summary['boxes_b']} in B; same count in "
                f"{_percent(summary['images_same_box_count'])} of the images, same order in "
                f"{_percent(summary['images_same_order'])}"
            ),
            (
                f"  paired with IoU >= 0.5 / 0.9 / 0.99: {_percent(ious['0.5'])} / {_percent(ious['0.9'])} / "
                f"{_percent(ious['0.99'])}; bit-identical: {_percent(summary['boxes_exact'])}"
            ),
            (
                f"features on {summary['matched_pairs']} box-matched pairs: cosine mean {_plain(summary['cosine_mean'])}, "
                f"min {_plain(summary['cosine_min'])}; relative L2 mean {_plain(summary['relative_l2_mean'])}, "
                f"max {_plain(summary['relative_l2_max'])}; bit-identical {_percent(summary['features_exact'])}"
            ),
            (
                f"  matched by feature similarity alone: cosine mean {_plain(summary['feature_matched_cosine_mean'])}, "
                f"min {_plain(summary['feature_matched_cosine_min'])}"
            ),
            (
                f"labels on matched pairs: objects agree {_percent(summary['objects_agree'])}, "
                f"attributes {_percent(summary['attrs_agree'])}"
            ),
        ]
        for side, missing in (("A", self.only_in_a), ("B", self.only_in_b)):
            if missing:
                shown = ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
                lines.append(f"only in {side}: {len(missing)} images: {shown}")
        lines.append("")
        lines.append("PASS" if not failures else "FAIL: " + "; ".join(failures))
        return "\n".join(lines)


def _number(value: float | None, width: int, digits: int) -> str:
    return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def _plain(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"
