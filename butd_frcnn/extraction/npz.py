"""Per-image `.npz` feature files: one `<image_id>.npz` per image in a folder.

Keys: image_id (str), image_h, image_w, num_boxes (int64), boxes (float32, N x 4), features (float32, N x C),
objects, attrs (int64, 0-based as `records.py` says), objects_conf, attrs_conf (float32); with
`--save-class-probs`, cls_prob (N x 1601) and attr_prob (N x 401), float32 or float16. Each file is written to a
hidden temporary name, synced and renamed, so a file under its final name is always complete.

The reader also takes the golden-style files of the original's reference runs, whose keys carry a selection suffix
(`boxes_10_100`, `features_36`...).
"""

import io
import logging
import os
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from .durable import atomic_write_bytes, fsync_directory, link_into_new_folder, output_error, remove_temporaries
from .feature_format import FeatureSource, FeatureWriter, OutputFormat, WriterOptions
from .records import ExtractionError, RegionRecord

logger = logging.getLogger(__name__)

ARRAY_KEYS = ("boxes", "features", "objects", "objects_conf", "attrs", "attrs_conf")
NPZ_KEYS = ("image_id", "image_h", "image_w", "num_boxes", *ARRAY_KEYS)
PROBS_KEYS = ("cls_prob", "attr_prob")


def class_distributions(record: RegionRecord) -> dict[str, np.ndarray]:
    """The record's `cls_prob` and `attr_prob` as arrays to store, where it carries them (in their own dtype)."""
    return {key: getattr(record, key) for key in PROBS_KEYS if getattr(record, key) is not None}


def encode_npz(record: RegionRecord) -> bytes:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        image_id=np.array(record.image_id),
        image_h=np.int64(record.image_h),
        image_w=np.int64(record.image_w),
        num_boxes=np.int64(record.num_boxes),
        boxes=np.asarray(record.boxes, dtype=np.float32),
        features=np.asarray(record.features, dtype=np.float32),
        objects=np.asarray(record.objects, dtype=np.int64),
        objects_conf=np.asarray(record.objects_conf, dtype=np.float32),
        attrs=np.asarray(record.attrs, dtype=np.int64),
        attrs_conf=np.asarray(record.attrs_conf, dtype=np.float32),
        **class_distributions(record),
    )
    return buffer.getvalue()


def npz_keys(path: Path) -> set[str] | None:
    """The keys of an npz file, from its zip directory (written last: None when it is unreadable, as in a file cut
    short)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return {name.removesuffix(".npy") for name in archive.namelist()}
    except (OSError, zipfile.BadZipFile):
        return None


class NpzWriter(FeatureWriter):
    """Writes one `<image_id>.npz` per image into `folder`.

    Args:
        folder: the output folder; created if missing.
        resume: keep the complete files already there (incomplete ones and temporaries are deleted).
        encode: a record -> the file's bytes (the format's keys).
        keys: the keys every complete file holds.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        resume: bool,
        encode: Callable[[RegionRecord], bytes] = encode_npz,
        keys: tuple[str, ...] = NPZ_KEYS,
    ):
        self.path = Path(folder)
        self.encode = encode
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise output_error(self.path, error) from None
        self.completed: list[str] = []
        if resume:
            removed = remove_temporaries(self.path)
            if removed:
                logger.warning("%s: removed %d half-written files of an interrupted run", self.path, removed)
            for path in sorted(self.path.glob("*.npz")):
                if set(keys) <= (npz_keys(path) or set()):
                    self.completed.append(path.stem)
                else:
                    logger.warning("%s: incomplete file removed; the image will be extracted again", path)
                    path.unlink()

    def write(self, record: RegionRecord) -> None:
        atomic_write_bytes(self.path / f"{record.image_id}.npz", self.encode(record), sync_directory=False)

    def commit(self) -> None:
        try:
            fsync_directory(self.path)
        except OSError as error:
            raise output_error(self.path, error) from None

    def close(self) -> None:
        self.commit()

    def abort(self) -> None:
        """Nothing to do: every file under its final name is complete."""


def _suffix_for(path: Path, keys: set[str], suffix: str | None) -> str:
    """The key suffix to read: "" for our files, `_<suffix>` for golden-style ones (asked for or the only one)."""
    if suffix:
        suffix = suffix if suffix.startswith("_") else f"_{suffix}"
        if f"boxes{suffix}" not in keys:
            raise ExtractionError(f"{path}: no key boxes{suffix}; it has {sorted(keys)}")
        return suffix
    if "boxes" in keys:
        return ""
    found = sorted(key[len("boxes") :] for key in keys if key.startswith("boxes_"))
    if len(found) == 1:
        return found[0]
    raise ExtractionError(
        f"{path}: no 'boxes' key; pick one of the selections it holds with --suffix: "
        + ", ".join(s.lstrip("_") for s in found)
    )


def read_npz_file(path: str | os.PathLike, suffix: str | None = None) -> RegionRecord:
    """One `.npz` (ours or golden-style) as a record; the id is the stored `image_id`, else the file name."""
    path = Path(path)
    try:
        with np.load(path) as data:
            keys = set(data.files)
            chosen = _suffix_for(path, keys, suffix)

            def optional(key):
                name = f"{key}{chosen}"
                return data[name] if name in keys else None

            boxes = data[f"boxes{chosen}"].astype(np.float32).reshape(-1, 4)
            return RegionRecord(
                image_id=str(data["image_id"]) if "image_id" in keys else path.stem,
                image_h=int(data["image_h"]),
                image_w=int(data["image_w"]),
                boxes=boxes,
                features=data[f"features{chosen}"].astype(np.float32).reshape(boxes.shape[0], -1),
                objects=optional("objects"),
                objects_conf=optional("objects_conf"),
                attrs=optional("attrs"),
                attrs_conf=optional("attrs_conf"),
                cls_prob=optional("cls_prob"),
                attr_prob=optional("attr_prob"),
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise ExtractionError(f"{path}: cannot read it as a feature file: {error}") from error


def read_npz_folder(folder: str | os.PathLike, suffix: str | None = None) -> Iterator[RegionRecord]:
    """The records of every `*.npz` in `folder`, by file name."""
    for path in sorted(Path(folder).glob("*.npz")):
        yield read_npz_file(path, suffix)


class NpzSource(FeatureSource):
    """A folder of `<image_id>.npz` files; `read` reads one file of the folder's format."""

    def __init__(self, path: Path, read: Callable[[Path], RegionRecord] = read_npz_file):
        self.path = path
        self.read = read
        self._files = {file.stem: file for file in sorted(path.glob("*.npz"))}
        self.ids = list(self._files)

    def get(self, image_id: str) -> RegionRecord:
        record = self.read(self._files[image_id])
        record.image_id = image_id
        return record


class NpzFormat(OutputFormat):
    """Folders of `<image_id>.npz` files: ours, or golden-style ones whose keys carry a selection suffix
    (`boxes_10_100`); `selecting(suffix)` reads that selection, else the keys without one (or the only selection)."""

    name = "npz"
    is_folder = True
    stores_class_probs = True

    def __init__(self, suffix: str | None = None):
        self.suffix = suffix

    def selecting(self, suffix: str) -> "NpzFormat":
        """This format reading the golden-style selection `suffix` (e.g. `10_100`)."""
        return type(self)(suffix)

    def recognises(self, path: Path) -> bool:
        return path.is_dir() and any(path.glob("*.npz"))

    def open_writer(self, path: Path, resume: bool, options: WriterOptions) -> NpzWriter:
        return NpzWriter(path, resume)

    def read(self, path: Path) -> Iterator[RegionRecord]:
        return read_npz_folder(path, self.suffix)

    def open_source(self, path: Path) -> NpzSource:
        return NpzSource(path, lambda file: read_npz_file(file, self.suffix))

    def stored_ids(self, path: Path) -> list[str]:
        return sorted(p.stem for p in path.glob("*.npz"))

    def merge(self, shards: list[Path], output: Path) -> None:
        self.remove(output)
        link_into_new_folder([(path, path.name) for shard in shards for path in shard.glob("*.npz")], output)


NPZ_FORMAT = NpzFormat()
