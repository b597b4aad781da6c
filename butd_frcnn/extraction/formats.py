"""The output formats by name (each one an `OutputFormat`, see `feature_format.py`), and what works on any of them:
choosing one for an output path, recognising an existing output, reading it, random access, writers."""

from collections.abc import Iterator
from pathlib import Path

from .feature_format import FeatureSource, FeatureWriter, OutputFormat, WriterOptions
from .hdf5 import HDF5_FORMAT
from .npz import NPZ_FORMAT, NpzFormat
from .parquet import PARQUET_FORMAT
from .records import ExtractionError, RegionRecord
from .sidecars import RunManifest
from .tsv import BUTD_TSV_FORMAT, LXMERT_TSV_FORMAT, detect_tsv_layout
from .uniter_npz import UNITER_NPZ_FORMAT

# in the order `detect_format` tries them: uniter-npz before npz, whose test (a folder of .npz files) it also passes
FORMATS: dict[str, OutputFormat] = {
    format.name: format
    for format in (BUTD_TSV_FORMAT, LXMERT_TSV_FORMAT, HDF5_FORMAT, UNITER_NPZ_FORMAT, NPZ_FORMAT, PARQUET_FORMAT)
}


def get_format(format: str | OutputFormat) -> OutputFormat:
    """The format a name (what `--format` and the run manifest say) stands for; a format is returned as it is."""
    if isinstance(format, OutputFormat):
        return format
    try:
        return FORMATS[format]
    except KeyError:
        raise ExtractionError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}") from None


def format_from_path(path: Path) -> OutputFormat | None:
    """The format an output path implies (`.h5`/`.hdf5` -> hdf5, `.tsv` -> butd-tsv, the original's), or None."""
    for format in FORMATS.values():
        if path.suffix.lower() in format.suffixes:
            return format
    return None


def resolve_format(format: str | OutputFormat | None, output: Path) -> OutputFormat:
    """The format asked for, else the one the output's name implies."""
    if format is not None:
        return get_format(format)
    implied = format_from_path(output)
    if implied is None:
        raise ExtractionError(f"cannot tell the format from {output}: pass --format ({', '.join(FORMATS)})")
    return implied


def detect_format(path: Path) -> OutputFormat:
    """The format of an existing feature file or folder: from its contents, else (an output that holds no image
    yet) from the run manifest beside it."""
    if not path.exists():
        raise ExtractionError(f"{path}: no such file or folder")
    for format in FORMATS.values():
        if format.recognises(path):
            return format
    manifest = RunManifest.load(path)
    if manifest is not None and manifest.format in FORMATS:
        return FORMATS[manifest.format]
    if path.is_file():
        detect_tsv_layout(path)  # raises, saying what the first row looks like
    raise ExtractionError(f"{path}: not a feature file or folder of any of the formats {', '.join(FORMATS)}")


def open_writer(
    format: str | OutputFormat,
    path: Path,
    resume: bool = False,
    attributes: dict | None = None,
    checkpoint_images: int = 1000,
    **options,
) -> FeatureWriter:
    """A writer of `format` at `path` (see `FeatureWriter`); `options` are further `WriterOptions` fields."""
    settings = WriterOptions(attributes=attributes or {}, checkpoint_images=checkpoint_images, **options)
    return get_format(format).open_writer(Path(path), resume, settings)


def read_features(
    path: Path, format: str | OutputFormat | None = None, suffix: str | None = None
) -> Iterator[RegionRecord]:
    """Every record of a feature file or folder of any supported format (detected unless given); `suffix`: see
    `open_source`."""
    path = Path(path)
    return _reading(path, format, suffix).read(path)


def open_source(path: Path, format: str | OutputFormat | None = None, suffix: str | None = None) -> FeatureSource:
    """Random access to a feature file or folder of any supported format (detected unless given). `suffix` picks
    the selection of golden-style npz folders (keys like `boxes_10_100`: `10_100`); the other formats hold one
    selection per output and read it as they are (so that one `compare --suffix` serves both sides)."""
    path = Path(path)
    return _reading(path, format, suffix).open_source(path)


def _reading(path: Path, format: str | OutputFormat | None, suffix: str | None) -> OutputFormat:
    format = get_format(format) if format is not None else detect_format(path)
    return format.selecting(suffix) if suffix and isinstance(format, NpzFormat) else format
