"""Pair up the images of two feature files and compare each pair."""

from pathlib import Path

from tqdm import tqdm

from ..extraction.formats import open_source
from ..extraction.inputs import image_id_from_path
from ..extraction.records import ExtractionError
from .metrics import compare_images
from .report import ComparisonReport

ID_MATCHING = ("exact", "number")


def _ids_by_key(path: Path, ids: list[str], id_matching: str) -> dict[str, str]:
    """key -> id: the id itself, or (`number`) its last run of digits, so that `COCO_val2014_000000000042` in one
    file meets `42` in the other."""
    if id_matching == "exact":
        return {image_id: image_id for image_id in ids}
    keyed: dict[str, str] = {}
    for image_id in ids:
        key = image_id_from_path(image_id, "number")
        if key in keyed:
            raise ExtractionError(f"{path}: ids {keyed[key]!r} and {image_id!r} both end in the number {key}")
        keyed[key] = image_id
    return keyed


def compare_files(
    path_a: Path,
    path_b: Path,
    format_a: str | None = None,
    format_b: str | None = None,
    suffix_a: str | None = None,
    suffix_b: str | None = None,
    max_images: int | None = None,
    matching: str = "hungarian",
    match_iou: float = 0.5,
    id_matching: str = "exact",
    progress: bool = False,
) -> ComparisonReport:
    """Compare every image present in both files (the first `max_images` of them, in A's order), listing the
    images that only one file has.

    Args:
        format_a, format_b: the files' formats, detected when not given.
        suffix_a, suffix_b: for golden-style npz folders, the selection whose keys to read (e.g. `10_100`).
        matching: `hungarian` (optimal one-to-one) or `greedy` pairing of regions.
        match_iou: pairs of boxes overlapping at least this much are "matched" for the feature and label numbers.
        id_matching: `exact` ids, or `number`: the last number in each id.
    """
    with open_source(path_a, format_a, suffix_a) as source_a, open_source(path_b, format_b, suffix_b) as source_b:
        keys_a = _ids_by_key(path_a, source_a.ids, id_matching)
        keys_b = _ids_by_key(path_b, source_b.ids, id_matching)
        common = [key for key in keys_a if key in keys_b]
        if max_images is not None:
            common = common[:max_images]
        images = []
        for key in tqdm(common, unit="img", desc="compare", disable=not progress):
            comparison = compare_images(source_a.get(keys_a[key]), source_b.get(keys_b[key]), matching, match_iou)
            comparison.image_id = key
            images.append(comparison)
        return ComparisonReport(
            source_a=str(path_a),
            source_b=str(path_b),
            images_a=len(keys_a),
            images_b=len(keys_b),
            images=images,
            only_in_a=[key for key in keys_a if key not in keys_b],
            only_in_b=[key for key in keys_b if key not in keys_a],
            settings={"matching": matching, "match_iou": match_iou, "id_matching": id_matching},
        )
