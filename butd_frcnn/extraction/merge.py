"""Combining shard outputs into one, checking that no image is missing or duplicated.

With the shards' run manifests the merge knows every image the run was given: an image is accounted for when it is
in exactly one shard or in a shard's errors file; anything else is missing. Shards written by other tools (the
original's per-GPU TSVs) have no manifest: then only duplicates can be checked, and the merge says so.
"""

import logging
import re
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

from .formats import detect_format
from .records import ExtractionError
from .sidecars import RunManifest, errors_path, manifest_path, read_errors

logger = logging.getLogger(__name__)


@dataclass
class MergeSummary:
    output: Path
    shards: int
    images: int
    failed: int
    missing: list[str] = field(default_factory=list)
    checked_missing: bool = True

    def report(self) -> str:
        lines = [f"Merged {self.shards} shards: {self.images} images -> {self.output}"]
        if self.failed:
            lines.append(f"  {self.failed} images had failed in the shards: see {errors_path(self.output)}")
        if not self.checked_missing:
            lines.append("  the shards have no run manifests: missing images could not be checked")
        elif self.missing:
            lines.append(f"  {len(self.missing)} images are missing: {', '.join(self.missing[:20])}")
        return "\n".join(lines)


def find_shards(output: Path) -> list[Path]:
    """The shard outputs `extract --shard I/N --output OUTPUT` wrote, in shard order."""
    pattern = re.compile(re.escape(output.stem) + r"\.shard-\d{5}-of-\d{5}" + re.escape(output.suffix))
    return sorted(path for path in output.parent.iterdir() if pattern.fullmatch(path.name))


def _expected_ids(shards: list[Path]) -> list[str] | None:
    """The listing the shards were cut from (in listing order), from their manifests; None without manifests."""
    manifests = [RunManifest.load(path) for path in shards]
    if any(m is None for m in manifests):
        if any(m is not None for m in manifests):
            logger.warning("some shards have no run manifest: missing images cannot be checked")
        return None
    settings = {str(m.settings()) for m in manifests}
    if len(settings) > 1:
        raise ExtractionError(f"the shards were written with different settings: {sorted(settings)}")
    counts = {m.shard_count for m in manifests}
    if len(counts) > 1:
        raise ExtractionError(f"the shards come from different splits (of {sorted(counts)}): merge one split")
    count = counts.pop()
    indices = sorted(m.shard_index for m in manifests)
    if indices != list(range(count)):
        absent = sorted(set(range(count)) - set(indices))
        raise ExtractionError(
            f"these are not the {count} shards of one run: shards {absent} are missing"
            if absent
            else f"a shard is given twice: {indices}"
        )
    by_index = {m.shard_index: m.image_ids for m in manifests}
    if any(m.shard_by_units for m in manifests):  # each shard read its own files or row groups
        return [image_id for index in range(count) for image_id in by_index[index]]
    total = sum(len(ids) for ids in by_index.values())
    return [by_index[position % count][position // count] for position in range(total)]


def merge_outputs(
    shards: list[Path],
    output: Path,
    allow_missing: bool = False,
    overwrite: bool = False,
    remove_shards: bool = False,
) -> MergeSummary:
    """Write `output` from `shards` (all of one format), after checking that every image is there exactly once.

    Raises:
        ExtractionError: shards of mixed formats or settings, duplicates, missing shards or (unless
            `allow_missing`) missing images; nothing is written then.
    """
    if not shards:
        raise ExtractionError("no shards to merge")
    formats = {detect_format(path) for path in shards}
    if len(formats) > 1:
        raise ExtractionError(f"the shards have different formats: {sorted(format.name for format in formats)}")
    format = formats.pop()
    if format.exists(output) and not overwrite:
        raise ExtractionError(f"{output} exists: pass --overwrite to replace it")
    ids_per_shard = [format.stored_ids(path) for path in shards]
    seen: dict[str, Path] = {}
    duplicates = []
    for path, ids in zip(shards, ids_per_shard):
        for image_id in ids:
            if image_id in seen:
                duplicates.append(f"{image_id} ({seen[image_id].name}, {path.name})")
            seen[image_id] = path
    if duplicates:
        raise ExtractionError(f"{len(duplicates)} images are in more than one shard: {', '.join(duplicates[:20])}")
    failures = list(chain.from_iterable(read_errors(errors_path(path)) for path in shards))
    failed_ids = {image_id for image_id, _, _ in failures}
    expected = _expected_ids(shards)
    missing = [image_id for image_id in expected or () if image_id not in seen and image_id not in failed_ids]
    if missing and not allow_missing:
        raise ExtractionError(
            f"{len(missing)} images of the run are in no shard and no errors file: {', '.join(missing[:20])}. "
            "Resume the shards that lack them (--resume), or pass --allow-missing."
        )
    format.merge(shards, output)
    first = RunManifest.load(shards[0])
    if first is not None:
        RunManifest(
            **{**first.__dict__, "shard_index": 0, "shard_count": 1, "image_ids": expected or list(seen)}
        ).save(output)
    if failures:
        lines = "".join("\t".join(failure) + "\n" for failure in failures)
        errors_path(output).write_text(lines, encoding="utf-8")
    else:
        errors_path(output).unlink(missing_ok=True)
    if remove_shards:
        for path in shards:
            format.remove(path)
            manifest_path(path).unlink(missing_ok=True)
            errors_path(path).unlink(missing_ok=True)
    return MergeSummary(output, len(shards), len(seen), len(failed_ids), missing, expected is not None)
