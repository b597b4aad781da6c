"""The output formats by name: which writer writes one, which reader reads one, how to recognise one."""

import shutil
from collections.abc import Iterator
from pathlib import Path

from .hdf5 import Hdf5Writer, read_hdf5, spool_path
from .npz import NpzWriter, read_npz_folder
from .records import ExtractionError, RegionRecord
from .tsv import TSV_LAYOUTS, TsvWriter, detect_tsv_layout, read_tsv

FORMATS = ("butd-tsv", "lxmert-tsv", "hdf5", "npz")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def format_from_path(path: Path) -> str | None:
    """The format an output path implies: `.h5`/`.hdf5` -> hdf5, `.tsv` -> butd-tsv (the original's), none else."""
    if path.suffix.lower() in HDF5_SUFFIXES:
        return "hdf5"
    if path.suffix.lower() == ".tsv":
        return "butd-tsv"
    return None


def detect_format(path: Path) -> str:
    """The format of an existing feature file or folder."""
    if path.is_dir():
        return "npz"
    if not path.is_file():
        raise ExtractionError(f"{path}: no such file or folder")
    with open(path, "rb") as file:
        if file.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
            return "hdf5"
    return detect_tsv_layout(path).name


def open_writer(format: str, path: Path, resume: bool, attributes: dict, checkpoint_images: int):
    """A writer with `completed` (ids already in the output), `write(record)`, `commit()` and `close()`."""
    if format in TSV_LAYOUTS:
        return TsvWriter(path, TSV_LAYOUTS[format], resume)
    if format == "hdf5":
        return Hdf5Writer(path, resume, attributes, checkpoint_images)
    if format == "npz":
        return NpzWriter(path, resume)
    raise ExtractionError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")


def read_features(path: Path, format: str | None = None, suffix: str | None = None) -> Iterator[RegionRecord]:
    """Every record of a feature file or folder of any supported format (detected unless given)."""
    format = format or detect_format(path)
    if format in TSV_LAYOUTS:
        return read_tsv(path, TSV_LAYOUTS[format])
    if format == "hdf5":
        return read_hdf5(path)
    if format == "npz":
        return read_npz_folder(path, suffix)
    raise ExtractionError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")


def output_paths(format: str, path: Path) -> list[Path]:
    """The files and folders a writer of `format` creates at `path` (besides the sidecars)."""
    return [path, spool_path(path)] if format == "hdf5" else [path]


def output_exists(format: str, path: Path) -> bool:
    return any(p.exists() for p in output_paths(format, path))


def remove_output(format: str, path: Path) -> None:
    for p in output_paths(format, path):
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
