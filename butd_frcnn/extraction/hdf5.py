"""One HDF5 file: a group per image plus an index.

Layout:
- `/images/<image_id>/features` (float32, N x C), `boxes` (float32, N x 4), `objects`, `attrs` (int64, 0-based as
  `records.py` says), `objects_conf`, `attrs_conf` (float32); with `--save-class-probs`, `cls_prob` (N x 1601)
  and `attr_prob` (N x 401), float32 or float16; the group's attributes `image_h`, `image_w`, `num_boxes`;
- `/index`: the image ids (UTF-8 strings) in the order they were added;
- file attributes: `format` ("butd-frcnn-hdf5"), `version`, and the selection settings of the run.

HDF5 cannot survive a crash in the middle of a write (its metadata would be left inconsistent), so the file is never
written in place: new images are appended to a spool (an LXMERT-layout TSV beside it, `<file>.spool`, which only
ever grows by whole rows; two more fields per row when the class distributions are kept), and a checkpoint copies the file, adds the spooled images, syncs the copy and renames it
over the file. After a crash the file is the last checkpoint, readable, and the spool holds the rest; resuming folds
the spool in. Checkpoints come after `checkpoint_images` new images and, beyond that, whenever the spool has as many
images as the file, so the copying costs at most about twice the final size.
"""

import logging
import os
import shutil
from collections.abc import Iterator
from itertools import chain
from pathlib import Path

import numpy as np

from .durable import output_error, publish, temporary_path
from .feature_format import FeatureSource, FeatureWriter, OutputFormat, WriterOptions, unique_ids
from .npz import PROBS_KEYS, class_distributions
from .records import ExtractionError, RegionRecord
from .tsv import LXMERT_TSV, LxmertTsvLayout, TsvLayout, TsvWriter, decode_array, encode_array, read_tsv

logger = logging.getLogger(__name__)

FORMAT_NAME = "butd-frcnn-hdf5"
FORMAT_VERSION = 1
SIGNATURE = b"\x89HDF\r\n\x1a\n"
ARRAY_KEYS = ("boxes", "features", "objects", "objects_conf", "attrs", "attrs_conf")


def require_h5py():
    try:
        import h5py
    except ImportError as error:  # the cause says why, when h5py is installed but broken
        raise ExtractionError("the hdf5 format needs h5py: pip install 'butd-frcnn[hdf5]'") from error
    return h5py


def spool_path(path: Path) -> Path:
    return path.with_name(path.name + ".spool")


class SpoolWithProbsLayout(LxmertTsvLayout):
    """The spool's rows when the run keeps class distributions: an LXMERT row plus `cls_prob` and `attr_prob`."""

    def __init__(self, probs_dtype: str):
        self.dtype = np.dtype(probs_dtype).newbyteorder("<").str
        self.name = f"lxmert-tsv with {probs_dtype} class distributions"
        self.fields = (*LxmertTsvLayout.fields, *PROBS_KEYS)

    def encode(self, record: RegionRecord) -> bytes:
        probs = [encode_array(getattr(record, key), self.dtype) for key in PROBS_KEYS]
        return b"\t".join([super().encode(record).rstrip(b"\r\n"), *probs]) + b"\r\n"

    def decode(self, fields: list[bytes]) -> RegionRecord:
        record = super().decode(fields[: len(LxmertTsvLayout.fields)])
        probs = fields[len(LxmertTsvLayout.fields) :]
        for key, field in zip(PROBS_KEYS, probs):
            setattr(record, key, decode_array(field, self.dtype, record.num_boxes, -1, key))
        return record


def spool_layout(probs_dtype: str | None) -> TsvLayout:
    return LXMERT_TSV if probs_dtype is None else SpoolWithProbsLayout(probs_dtype)


def read_index(path: Path) -> list[str]:
    h5py = require_h5py()
    try:
        with h5py.File(path, "r") as file:
            return list(file["index"].asstr()[()]) if "index" in file else []
    except OSError as error:
        raise ExtractionError(f"{path}: cannot read it as an HDF5 feature file: {error}") from error


def _add_records(file, records: list[RegionRecord]) -> None:
    h5py = require_h5py()
    images = file.require_group("images")
    for record in records:
        group = images.create_group(record.image_id)
        group.attrs["image_h"] = record.image_h
        group.attrs["image_w"] = record.image_w
        group.attrs["num_boxes"] = record.num_boxes
        group.create_dataset("features", data=np.asarray(record.features, dtype=np.float32))
        group.create_dataset("boxes", data=np.asarray(record.boxes, dtype=np.float32))
        group.create_dataset("objects", data=np.asarray(record.objects, dtype=np.int64))
        group.create_dataset("objects_conf", data=np.asarray(record.objects_conf, dtype=np.float32))
        group.create_dataset("attrs", data=np.asarray(record.attrs, dtype=np.int64))
        group.create_dataset("attrs_conf", data=np.asarray(record.attrs_conf, dtype=np.float32))
        for key, array in class_distributions(record).items():
            group.create_dataset(key, data=array)
    if "index" not in file:
        file.create_dataset("index", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype(), chunks=(4096,))
    index = file["index"]
    start = index.shape[0]
    index.resize((start + len(records),))
    index[start:] = [record.image_id for record in records]


def write_hdf5(path: Path, records: Iterator[RegionRecord], attributes: dict, base: Path | None = None) -> None:
    """Write `path` atomically: a copy of `base` (if given) plus `records`, synced, then renamed into place."""
    h5py = require_h5py()
    temporary = temporary_path(path)
    try:
        if base is not None:
            shutil.copyfile(base, temporary)
        with h5py.File(temporary, "a" if base is not None else "w") as file:
            file.attrs["format"] = FORMAT_NAME
            file.attrs["version"] = FORMAT_VERSION
            for key, value in attributes.items():
                file.attrs[key] = value
            batch: list[RegionRecord] = []
            for record in records:
                batch.append(record)
                if len(batch) == 256:
                    _add_records(file, batch)
                    batch = []
            _add_records(file, batch)
        publish(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise output_error(path, error) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def read_attributes(path: Path) -> dict:
    """The file attributes (run settings) of an HDF5 feature file."""
    h5py = require_h5py()
    with h5py.File(path, "r") as file:
        return {key: value for key, value in file.attrs.items() if key not in ("format", "version")}


class Hdf5Writer(FeatureWriter):
    """Adds images to an HDF5 feature file through a spool and atomic checkpoints (see the module docstring).

    Args:
        path: the `.h5` file.
        resume: keep what the file and its spool already hold; otherwise start empty.
        attributes: file attributes to record (the run's settings).
        checkpoint_images: new images after which the file is rewritten at the latest (the interval grows with
            the file, see the module docstring).
        probs_dtype: the dtype of the records' class distributions, if the run keeps them (the spool carries them).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        resume: bool,
        attributes: dict,
        checkpoint_images: int = 1000,
        probs_dtype: str | None = None,
    ):
        require_h5py()
        self.path = Path(path)
        self.attributes = attributes
        self.checkpoint_images = checkpoint_images
        if not resume:
            self.path.unlink(missing_ok=True)
        self._committed: list[str] = read_index(self.path) if resume and self.path.exists() else []
        self._spool = TsvWriter(spool_path(self.path), spool_layout(probs_dtype), resume=resume)
        self._spooled = len(self._spool.completed)
        if self._spooled:
            self.checkpoint()

    @property
    def completed(self) -> list[str]:
        return self._committed

    def write(self, record: RegionRecord) -> None:
        self._spool.write(record)
        self._spooled += 1

    def commit(self) -> None:
        self._spool.commit()
        if self._spooled >= max(self.checkpoint_images, len(self._committed)):
            self.checkpoint()

    def checkpoint(self) -> None:
        """Fold the spool into the file (atomically), then empty the spool."""
        self._spool.commit()
        committed = set(self._committed)
        added: list[str] = []

        def new_records() -> Iterator[RegionRecord]:
            """The spooled images the file lacks, streamed (the spool can be as large as the file)."""
            for record in read_tsv(self._spool.path, self._spool.layout):
                if record.image_id not in committed:
                    committed.add(record.image_id)
                    added.append(record.image_id)
                    yield record

        if self._spool.size or not self.path.exists():
            write_hdf5(self.path, new_records(), self.attributes, base=self.path if self.path.exists() else None)
            logger.debug("%s: checkpoint with %d new images", self.path, len(added))
        self._committed.extend(added)
        self._spool.truncate()
        self._spooled = 0

    def close(self) -> None:
        self.checkpoint()
        self._spool.close()
        self._spool.path.unlink(missing_ok=True)

    def abort(self) -> None:
        """Close after a failure without a checkpoint: the spool keeps the images for --resume."""
        self._spool.abort()


def _record(image_id: str, group) -> RegionRecord:
    return RegionRecord(
        image_id=image_id,
        image_h=int(group.attrs["image_h"]),
        image_w=int(group.attrs["image_w"]),
        **{key: group[key][()] for key in (*ARRAY_KEYS, *PROBS_KEYS) if key in group},
    )


def _warn_if_spooled(path: Path, action: str) -> None:
    spool = spool_path(path)
    if spool.exists() and spool.stat().st_size:
        logger.warning(
            "%s: images in %s (an interrupted run) are %s; rerun it with --resume first", path, spool, action
        )


def read_hdf5(path: str | os.PathLike) -> Iterator[RegionRecord]:
    """The records of an HDF5 feature file in index order (images still in a spool beside it are not included)."""
    h5py = require_h5py()
    path = Path(path)
    _warn_if_spooled(path, "not read")
    try:
        with h5py.File(path, "r") as file:
            for image_id in file["index"].asstr()[()]:
                yield _record(image_id, file["images"][image_id])
    except (OSError, KeyError) as error:
        raise ExtractionError(f"{path}: cannot read it as an HDF5 feature file: {error}") from error


class Hdf5Source(FeatureSource):
    def __init__(self, path: Path):
        self.path = path
        try:
            self._file = require_h5py().File(path, "r")
            self.ids = unique_ids(path, list(self._file["index"].asstr()[()]))
        except (OSError, KeyError) as error:
            raise ExtractionError(f"{path}: cannot read it as an HDF5 feature file: {error}") from error

    def get(self, image_id: str) -> RegionRecord:
        return _record(image_id, self._file["images"][image_id])

    def close(self) -> None:
        self._file.close()


class Hdf5Format(OutputFormat):
    name = "hdf5"
    suffixes = (".h5", ".hdf5", ".hdf")
    stores_class_probs = True

    def require(self) -> None:
        require_h5py()

    def recognises(self, path: Path) -> bool:
        if not path.is_file():
            return False
        with open(path, "rb") as file:
            return file.read(len(SIGNATURE)) == SIGNATURE

    def open_writer(self, path: Path, resume: bool, options: WriterOptions) -> Hdf5Writer:
        return Hdf5Writer(path, resume, options.attributes, options.checkpoint_images, options.probs_dtype)

    def read(self, path: Path) -> Iterator[RegionRecord]:
        return read_hdf5(path)

    def open_source(self, path: Path) -> Hdf5Source:
        return Hdf5Source(path)

    def stored_ids(self, path: Path) -> list[str]:
        _warn_if_spooled(path, "not merged")
        return read_index(path)

    def merge(self, shards: list[Path], output: Path) -> None:
        spool_path(output).unlink(missing_ok=True)
        write_hdf5(output, chain.from_iterable(read_hdf5(path) for path in shards), read_attributes(shards[0]))

    def paths(self, path: Path) -> list[Path]:
        return [path, spool_path(path)]


HDF5_FORMAT = Hdf5Format()
