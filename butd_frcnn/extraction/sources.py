"""Random access to a feature file by image id, for every format: what `compare` needs to pair up the images of
two files that list them in different orders, without holding either file in memory."""

import logging
from pathlib import Path

from .formats import detect_format
from .hdf5 import require_h5py
from .npz import read_npz_file
from .records import ExtractionError, RegionRecord
from .tsv import TSV_LAYOUTS, TsvLayout

logger = logging.getLogger(__name__)


class FeatureSource:
    """The images of one feature file: `ids` in file order, `get(image_id)` one record. Use it as a context manager."""

    path: Path
    ids: list[str]

    def get(self, image_id: str) -> RegionRecord:
        raise NotImplementedError

    def close(self) -> None:
        """Release the open file, if any."""

    def __enter__(self) -> "FeatureSource":  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _unique(path: Path, ids: list[str]) -> list[str]:
    seen: set[str] = set()
    duplicates = []
    for image_id in ids:
        if image_id in seen:
            duplicates.append(image_id)
        seen.add(image_id)
    if duplicates:
        raise ExtractionError(f"{path}: {len(duplicates)} image ids appear more than once: {duplicates[:10]}")
    return ids


class TsvSource(FeatureSource):
    """One pass notes where each complete row starts; `get` seeks there and parses that row."""

    def __init__(self, path: Path, layout: TsvLayout):
        self.path = path
        self.layout = layout
        self._offsets: dict[str, int] = {}
        offset = 0
        with open(path, "rb") as file:
            for line in file:
                if not line.endswith(b"\n"):
                    logger.warning("%s: ignored a half-written last row", path)
                    break
                image_id = line.split(b"\t", 1)[0].decode()
                if image_id in self._offsets:
                    raise ExtractionError(f"{path}: image {image_id} has more than one row")
                self._offsets[image_id] = offset
                offset += len(line)
        self.ids = list(self._offsets)
        self._file = open(path, "rb")  # noqa: SIM115 (kept open for every `get`)

    def get(self, image_id: str) -> RegionRecord:
        self._file.seek(self._offsets[image_id])
        try:
            return self.layout.parse_line(self._file.readline())
        except (ValueError, UnicodeDecodeError) as error:
            raise ExtractionError(f"{self.path}: the row of image {image_id} is broken: {error}") from None

    def close(self) -> None:
        self._file.close()


class Hdf5Source(FeatureSource):
    def __init__(self, path: Path):
        self.path = path
        try:
            self._file = require_h5py().File(path, "r")
            self.ids = _unique(path, list(self._file["index"].asstr()[()]))
        except (OSError, KeyError) as error:
            raise ExtractionError(f"{path}: cannot read it as an HDF5 feature file: {error}") from error

    def get(self, image_id: str) -> RegionRecord:
        group = self._file["images"][image_id]
        return RegionRecord(
            image_id=image_id,
            image_h=int(group.attrs["image_h"]),
            image_w=int(group.attrs["image_w"]),
            **{key: group[key][()] for key in ("boxes", "features", "objects", "objects_conf", "attrs", "attrs_conf")},
        )

    def close(self) -> None:
        self._file.close()


class NpzSource(FeatureSource):
    """A folder of `<image_id>.npz` files: ours, or golden-style ones whose keys carry a selection `suffix`."""

    def __init__(self, path: Path, suffix: str | None):
        self.path = path
        self.suffix = suffix
        self._files = {file.stem: file for file in sorted(path.glob("*.npz"))}
        self.ids = list(self._files)

    def get(self, image_id: str) -> RegionRecord:
        record = read_npz_file(self._files[image_id], self.suffix)
        record.image_id = image_id
        return record


def open_source(path: Path, format: str | None = None, suffix: str | None = None) -> FeatureSource:
    """Random access to a feature file or folder of any supported format (detected unless given)."""
    format = format or detect_format(path)
    if format in TSV_LAYOUTS:
        return TsvSource(path, TSV_LAYOUTS[format])
    if format == "hdf5":
        return Hdf5Source(path)
    if format == "npz":
        return NpzSource(path, suffix)
    raise ExtractionError(f"unknown format {format!r}")
