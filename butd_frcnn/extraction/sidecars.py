"""The files beside an output: the run manifest (settings and the images the run was given) and the errors file
(images that could not be extracted, with the reason)."""

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .defaults import canonical_precision
from .durable import atomic_write_bytes, output_error
from .inputs import ImageEntry
from .records import ExtractionError

MANIFEST_VERSION = 1


def manifest_path(output: Path) -> Path:
    return output.with_name(output.name + ".manifest.json")


def errors_path(output: Path) -> Path:
    return output.with_name(output.name + ".errors.tsv")


@dataclass
class RunManifest:
    """What a run was asked to do; `merge` uses it to find missing images, `--resume` to refuse mixed settings.

    Attributes:
        format: the output format.
        model: the model as given on the command line.
        selection: `min_boxes`, `max_boxes`, `score_threshold` of the run.
        dtype: the model's precision (`ButdFrcnnConfig.precision`; older manifests: its dtype's name).
        shard_index, shard_count: which share of the listing this output holds (0, 1 for all of it).
        shard_by_units: the share is whole files or row groups of the input (read only by this shard), not every
            `shard_count`-th image of the listing.
        source: where the images came from, in words (files and folders, or a dataset and its split).
        image_ids: the ids of the images of this share.
        boxes_from: with `--boxes-from`, the box file: its `path`, `kind` and `sha256` (of its ids and boxes).
        class_probs: with `--save-class-probs`, the dtype the class distributions are stored in.
    """

    format: str
    model: str
    selection: dict
    dtype: str
    shard_index: int = 0
    shard_count: int = 1
    source: str = ""
    image_ids: list[str] = field(default_factory=list)
    shard_by_units: bool = False
    version: int = MANIFEST_VERSION
    boxes_from: dict | None = None
    class_probs: str | None = None

    def settings(self) -> dict:
        """What must agree between the parts of one output (resumed runs, shards): the boxes by their content (the
        same boxes from a moved or rewritten file are the same work), the options added since version 1 only when
        used (outputs written before them resume as they were)."""
        settings = {"format": self.format, "selection": self.selection, "dtype": canonical_precision(self.dtype)}
        if self.boxes_from is not None:
            settings["boxes_sha256"] = self.boxes_from["sha256"]
        if self.class_probs is not None:
            settings["class_probs"] = self.class_probs
        return settings

    def save(self, output: Path) -> None:
        atomic_write_bytes(manifest_path(output), json.dumps(asdict(self)).encode())

    @classmethod
    def load(cls, output: Path) -> "RunManifest | None":
        path = manifest_path(output)
        if not path.exists():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as error:
            raise ExtractionError(f"{path}: unreadable run manifest ({error}); delete it to go on") from error


def _one_line(text: str) -> str:
    return " ".join(text.split())


class ErrorLog:
    """Appends `image_id<TAB>path<TAB>reason` lines; the file exists only while it has lines."""

    def __init__(self, path: Path):
        self.path = path
        self.count = 0
        self._file = None
        path.unlink(missing_ok=True)  # a resumed run retries every image that failed before

    def add(self, entry: ImageEntry, reason: str) -> None:
        try:
            if self._file is None:
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (open for the whole run)
            self._file.write(f"{entry.image_id}\t{entry.path}\t{_one_line(reason)}\n")
            self._file.flush()
        except OSError as error:
            raise output_error(self.path, error) from None
        self.count += 1

    def commit(self) -> None:
        if self._file is not None:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self.commit()
            self._file.close()
            self._file = None


def read_errors(path: Path) -> list[tuple[str, str, str]]:
    """The (image_id, path, reason) lines of an errors file; none if it does not exist."""
    if not path.exists():
        return []
    return [tuple(line.split("\t", 2)) for line in path.read_text(encoding="utf-8").splitlines() if line]
