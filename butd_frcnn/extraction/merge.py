"""Combining shard outputs into one, checking that no image is missing or duplicated.

With the shards' run manifests the merge knows every image the run was given: an image is accounted for when it is
in exactly one shard or in a shard's errors file; anything else is missing. Shards written by other tools (the
original's per-GPU TSVs) have no manifest: then only duplicates can be checked, and the merge says so.
"""

import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

from .durable import fsync_directory, output_error, temporary_path, write_all
from .formats import detect_format, output_exists, remove_output
from .hdf5 import read_attributes, read_hdf5, read_index, spool_path, write_hdf5
from .records import ExtractionError
from .sidecars import RunManifest, errors_path, manifest_path, read_errors
from .tsv import TSV_LAYOUTS

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


def _tsv_row_ids(path: Path) -> list[str]:
    """The id field of every complete row (a half-written last row is left out with a warning)."""
    ids = []
    with open(path, "rb") as file:
        for line in file:
            if not line.endswith(b"\n"):
                logger.warning("%s: leaving out a half-written last row", path)
                break
            ids.append(line.split(b"\t", 1)[0].decode())
    return ids


def _output_ids(format: str, path: Path) -> list[str]:
    if format in TSV_LAYOUTS:
        return _tsv_row_ids(path)
    if format == "hdf5":
        spool = spool_path(path)
        if spool.exists() and spool.stat().st_size:
            logger.warning("%s: images in %s (an interrupted run) are not merged; resume that run first", path, spool)
        return read_index(path)
    return sorted(p.stem for p in path.glob("*.npz"))


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
    total = sum(len(ids) for ids in by_index.values())
    return [by_index[position % count][position // count] for position in range(total)]


def _merge_tsv(shards: list[Path], output: Path, format: str) -> None:
    layout = TSV_LAYOUTS[format]
    temporary = temporary_path(output)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for shard in shards:
            with open(shard, "rb") as file:
                for line in file:
                    if not line.endswith(b"\n"):
                        break
                    try:
                        layout.parse_line(line)
                    except (ValueError, UnicodeDecodeError) as error:
                        raise ExtractionError(f"{shard}: a broken row ({error}); resume that shard first") from None
                    write_all(fd, line)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(temporary, output)
    except OSError as error:
        raise output_error(output, error) from None
    finally:
        if fd >= 0:
            os.close(fd)
        temporary.unlink(missing_ok=True)


def _merge_npz(shards: list[Path], output: Path) -> None:
    temporary = temporary_path(output)
    try:
        temporary.mkdir()
        for shard in shards:
            for path in shard.glob("*.npz"):
                try:
                    os.link(path, temporary / path.name)
                except OSError:
                    shutil.copy2(path, temporary / path.name)
        fsync_directory(temporary)
        os.replace(temporary, output)
    except OSError as error:
        raise output_error(output, error) from None
    finally:
        if temporary.exists():
            shutil.rmtree(temporary)


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
        raise ExtractionError(f"the shards have different formats: {sorted(formats)}")
    format = formats.pop()
    if output_exists(format, output) and not overwrite:
        raise ExtractionError(f"{output} exists: pass --overwrite to replace it")
    ids_per_shard = [_output_ids(format, path) for path in shards]
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
    if format in TSV_LAYOUTS:
        _merge_tsv(shards, output, format)
    elif format == "hdf5":
        spool_path(output).unlink(missing_ok=True)
        write_hdf5(output, chain.from_iterable(read_hdf5(path) for path in shards), read_attributes(shards[0]))
    else:
        if output.exists():
            remove_output(format, output)
        _merge_npz(shards, output)
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
            remove_output(format, path)
            manifest_path(path).unlink(missing_ok=True)
            errors_path(path).unlink(missing_ok=True)
    return MergeSummary(output, len(shards), len(seen), len(failed_ids), missing, expected is not None)
