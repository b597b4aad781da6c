"""The output formats by name (each one an `OutputFormat`, see `feature_format.py`), and what works on any of them:
choosing one for an output path, recognising an existing output, reading it, random access, writers."""

from collections.abc import Iterator
from pathlib import Path

from .feature_format import FeatureSource, FeatureWriter, OutputFormat, WriterOptions
from .hdf5 import HDF5_FORMAT
from .npz import NPZ_FORMAT
from .parquet import PARQUET_FORMAT
from .records import ExtractionError, RegionRecord
from .sidecars import RunManifest
from .tsv import BUTD_TSV_FORMAT, LXMERT_TSV_FORMAT, detect_tsv_layout

FORMATS: dict[str, OutputFormat] = {
    format.name: format for format in (BUTD_TSV_FORMAT, LXMERT_TSV_FORMAT, HDF5_FORMAT, NPZ_FORMAT, PARQUET_FORMAT)
}


def get_format(name: str) -> OutputFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ExtractionError(f"unknown format {name!r}; choose one of {', '.join(FORMATS)}") from None


def format_from_path(path: Path) -> str | None:
    """The format an output path implies (`.h5`/`.hdf5` -> hdf5, `.tsv` -> butd-tsv, the original's), or None."""
    for format in FORMATS.values():
        if path.suffix.lower() in format.suffixes:
            return format.name
    return None


def resolve_format(format: str | None, output: Path) -> str:
    """The format asked for, else the one the output's name implies."""
    format = format or format_from_path(output)
    if format is None:
        raise ExtractionError(f"cannot tell the format from {output}: pass --format ({', '.join(FORMATS)})")
    get_format(format)
    return format


def detect_format(path: Path) -> str:
    """The format of an existing feature file or folder: from its contents, else (an output that holds no image
    yet) from the run manifest beside it."""
    if not path.exists():
        raise ExtractionError(f"{path}: no such file or folder")
    for format in FORMATS.values():
        if format.recognises(path):
            return format.name
    manifest = RunManifest.load(path)
    if manifest is not None and manifest.format in FORMATS:
        return manifest.format
    if path.is_file():
        detect_tsv_layout(path)  # raises, saying what the first row looks like
    raise ExtractionError(f"{path}: not a feature file or folder of any of the formats {', '.join(FORMATS)}")


def open_writer(
    format: str,
    path: Path,
    resume: bool = False,
    attributes: dict | None = None,
    checkpoint_images: int = 1000,
    **options,
) -> FeatureWriter:
    """A writer of `format` at `path` (see `FeatureWriter`); `options` are further `WriterOptions` fields."""
    settings = WriterOptions(attributes=attributes or {}, checkpoint_images=checkpoint_images, **options)
    return get_format(format).open_writer(Path(path), resume, settings)


def read_features(path: Path, format: str | None = None, suffix: str | None = None) -> Iterator[RegionRecord]:
    """Every record of a feature file or folder of any supported format (detected unless given)."""
    path = Path(path)
    return get_format(format or detect_format(path)).read(path, suffix)


def open_source(path: Path, format: str | None = None, suffix: str | None = None) -> FeatureSource:
    """Random access to a feature file or folder of any supported format (detected unless given)."""
    path = Path(path)
    return get_format(format or detect_format(path)).open_source(path, suffix)
