"""What an output format is: one object that knows how its files are written, read, recognised, found on disk,
scanned for the images they hold and merged. `formats.py` holds the table of them by name; each format lives in its
own module (`tsv.py`, `hdf5.py`, `npz.py`, `parquet.py`, `uniter_npz.py`), so a new format is one new module and one table entry."""

import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .records import ExtractionError, RegionRecord

# Parquet shards are closed once their arrays reach this size: large enough to read efficiently, small enough that
# a shard stays well under the few hundred MB that Hub uploads and dataset viewers handle comfortably
DEFAULT_PARQUET_SHARD_MB = 128.0


@dataclass(frozen=True)
class WriterOptions:
    """The settings of a run that writers use (each format reads the ones it needs).

    Attributes:
        attributes: the run's settings, recorded in the file where the format has room (HDF5 attributes, Parquet
            metadata).
        checkpoint_images: hdf5: new images after which the file is rewritten at the latest.
        parquet_shard_mb: parquet: the size (MB of arrays) at which a shard file is closed and the next begun.
        probs_dtype: the dtype (`float32`, `float16`) of the records' class distributions (`cls_prob`,
            `attr_prob`) when the run keeps them (`--save-class-probs`), else None.
        given_boxes: the records describe given boxes (`--boxes-from`), whose order is their identity (row k is the
            k-th given box): a format that reorders detected regions (uniter-npz) keeps it then.
    """

    attributes: dict = field(default_factory=dict)
    checkpoint_images: int = 1000
    parquet_shard_mb: float = DEFAULT_PARQUET_SHARD_MB
    probs_dtype: str | None = None
    given_boxes: bool = False


class FeatureWriter(ABC):
    """Streams records into an output. `completed` lists the ids it already held when opened with `resume` (after
    repairing what an interrupted run left); `commit` makes what was written durable as far as the format allows;
    `close` finishes the output; `abort` gives up after a failure, leaving only complete records."""

    completed: list[str]

    @abstractmethod
    def write(self, record: RegionRecord) -> None: ...

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def abort(self) -> None: ...


class FeatureSource(ABC):
    """The images of one feature file: `ids` in file order, `get(image_id)` one record. Use it as a context manager."""

    path: Path
    ids: list[str]

    @abstractmethod
    def get(self, image_id: str) -> RegionRecord: ...

    def close(self) -> None:
        """Release the open file, if any."""

    def __enter__(self) -> "FeatureSource":  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def unique_ids(path: Path, ids: list[str]) -> list[str]:
    """`ids`, after checking that none appears twice (a file we wrote never repeats an image)."""
    seen: set[str] = set()
    duplicates = []
    for image_id in ids:
        if image_id in seen:
            duplicates.append(image_id)
        seen.add(image_id)
    if duplicates:
        raise ExtractionError(f"{path}: {len(duplicates)} image ids appear more than once: {duplicates[:10]}")
    return ids


class OutputFormat(ABC):
    """One output format.

    Attributes:
        name: what `--format` calls it.
        is_folder: whether an output is a folder (of per-image or per-shard files) rather than one file.
        suffixes: output-name endings that imply this format when `--format` is not given.
        stores_class_probs: whether it has room for each region's class distributions (`--save-class-probs`).
        needs_class_probs: whether every record must carry them (the format itself holds them).
        writes_max_boxes: whether it holds the MAX best regions of a MIN-MAX selection, sorted by score, for its
            reader to cut with its own threshold (UNITER's converter), rather than the selection itself.
        hub_dataset: whether a finished output is a Hugging Face dataset as it stands (`--push-to-hub` uploads it).
    """

    name: str
    is_folder: bool = False
    suffixes: tuple[str, ...] = ()
    stores_class_probs: bool = False
    needs_class_probs: bool = False
    writes_max_boxes: bool = False
    hub_dataset: bool = False

    def require(self) -> None:
        """Raise an `ExtractionError` saying what to install if a library the format needs is missing."""

    @abstractmethod
    def recognises(self, path: Path) -> bool:
        """Whether the existing file or folder `path` is an output of this format."""

    @abstractmethod
    def open_writer(self, path: Path, resume: bool, options: WriterOptions) -> FeatureWriter:
        """A writer adding records to `path`; with `resume`, what is there is kept (and repaired)."""

    @abstractmethod
    def read(self, path: Path) -> Iterator[RegionRecord]:
        """Every record, in file order."""

    @abstractmethod
    def open_source(self, path: Path) -> FeatureSource:
        """Random access by image id."""

    @abstractmethod
    def stored_ids(self, path: Path) -> list[str]:
        """The ids of the complete records of an output, read without changing it (what `merge` checks)."""

    @abstractmethod
    def merge(self, shards: list[Path], output: Path) -> None:
        """Write `output` (replacing it) from the `shards`, which the caller checked for duplicates."""

    def paths(self, path: Path) -> list[Path]:
        """The files and folders a writer creates at `path` (besides the sidecars)."""
        return [path]

    def exists(self, path: Path) -> bool:
        return any(p.exists() for p in self.paths(path))

    def remove(self, path: Path) -> None:
        for p in self.paths(path):
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
