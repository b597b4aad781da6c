"""Parquet feature datasets: a folder of shards `train-00000.parquet`, `train-00001.parquet`... that
`datasets.load_dataset("parquet", data_dir=FOLDER)` (or `load_dataset(FOLDER)`) reads as one typed split, and pandas
or pyarrow read as plain tables.

One row per image. Columns: `image_id` (string), `image_h`, `image_w`, `num_boxes` (int64), `boxes` (N x 4 float32),
`features` (N x C float32), `objects`, `attrs` (N int64, 0-based as `records.py` says), `objects_conf`, `attrs_conf`
(N float32), and where the records carry them `cls_prob` (N x 1601) and `attr_prob` (N x 401), float32 or float16.
The per-box rows are Arrow fixed-size lists (`datasets` type `List(List(Value, length=C))`), so that
`.with_format("numpy")` or `"torch"` gives each image's `(N, C)` array. The schema metadata holds the `datasets`
features (key `huggingface`, as `datasets` writes it) and the run's settings (key `butd_frcnn`).

Crash safety is per shard: a shard is written under a hidden temporary name, in row groups (at most `ROW_GROUP_MB`,
at least `ROW_GROUPS_PER_SHARD` per shard, so memory holds one row group), synced and renamed once it holds
`parquet_shard_mb` of arrays (or the run ends), so a visible shard is always complete; a `kill -9` loses at most the
shard in progress, which `--resume` extracts again.
"""

import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .defaults import DATASETS_INSTALL_HINT
from .durable import link_into_new_folder, output_error, publish, remove_temporaries, temporary_path
from .feature_format import FeatureSource, FeatureWriter, OutputFormat, WriterOptions, unique_ids
from .records import ExtractionError, RegionRecord

logger = logging.getLogger(__name__)

SHARD_NAME = "train-{index:05d}.parquet"  # "train" in the name: `load_dataset` calls the split "train"
SHARD_GLOB = "*.parquet"
ROW_GROUP_MB = 16.0  # at most: random access (and the dataset viewer) reads a whole row group
ROW_GROUPS_PER_SHARD = 4  # at least: a shard is on disk (hidden) as it grows, not only in memory
PARQUET_MAGIC = b"PAR1"
METADATA_KEY = b"butd_frcnn"
# column -> (dtype, row width): width None for one value per box, an int for fixed rows, -1 for the features' width
PER_BOX_COLUMNS = {
    "boxes": ("float32", 4),
    "features": ("float32", -1),
    "objects": ("int64", None),
    "objects_conf": ("float32", None),
    "attrs": ("int64", None),
    "attrs_conf": ("float32", None),
}
OPTIONAL_COLUMNS = ("cls_prob", "attr_prob")  # (N, K) rows, float32 or float16, where the records carry them
SCALAR_COLUMNS = ("image_h", "image_w", "num_boxes")


def require_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as error:  # the cause says why, when pyarrow is installed but broken
        raise ExtractionError(f"the parquet format needs pyarrow: {DATASETS_INSTALL_HINT}") from error
    return pyarrow


def _list_feature(dtype: str, width: int | None) -> dict:
    """The `datasets` feature (as `Features.to_dict` writes it) of one row per box."""
    value = {"dtype": dtype, "_type": "Value"}
    if width is None:
        return {"feature": value, "_type": "List"}
    return {"feature": {"feature": value, "length": width, "_type": "List"}, "_type": "List"}


def _columns_of(record: RegionRecord) -> dict[str, tuple[str, int | None]]:
    """The per-box columns a record fills: name -> (dtype, row width or None)."""
    if not record.has_labels:
        raise ExtractionError(f"image {record.image_id}: the parquet format needs object and attribute ids")
    columns = {
        name: (dtype, record.features.shape[1] if width == -1 else width)
        for name, (dtype, width) in PER_BOX_COLUMNS.items()
    }
    for name in OPTIONAL_COLUMNS:
        array = getattr(record, name)
        if array is not None:
            columns[name] = (np.dtype(array.dtype).name, int(array.shape[1]))
    return columns


def schema_for(record: RegionRecord, attributes: dict):
    """The Arrow schema of a shard whose first record is `record`, with the `datasets` features in its metadata."""
    pa = require_pyarrow()
    columns = _columns_of(record)
    fields = [pa.field("image_id", pa.string())] + [pa.field(name, pa.int64()) for name in SCALAR_COLUMNS]
    features = {"image_id": {"dtype": "string", "_type": "Value"}}
    features.update({name: {"dtype": "int64", "_type": "Value"} for name in SCALAR_COLUMNS})
    for name, (dtype, width) in columns.items():
        value_type = pa.from_numpy_dtype(np.dtype(dtype))
        fields.append(pa.field(name, pa.list_(value_type if width is None else pa.list_(value_type, width))))
        features[name] = _list_feature(dtype, width)
    metadata = {
        b"huggingface": json.dumps({"info": {"features": features}}).encode(),
        METADATA_KEY: json.dumps(attributes, default=str).encode(),
    }
    return pa.schema(fields, metadata=metadata)


def _per_box_array(pa, arrays: list[np.ndarray], type_):
    """One list-per-row column from each row's `(N,)` or `(N, C)` array."""
    counts = np.fromiter((len(array) for array in arrays), np.int32, len(arrays))
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts, dtype=np.int32)]), pa.int32())
    value_type = type_.value_type
    flat = np.concatenate([np.asarray(array).reshape(len(array), -1) for array in arrays]) if arrays else []
    if pa.types.is_fixed_size_list(value_type):
        inner = pa.array(np.ascontiguousarray(flat, dtype=value_type.value_type.to_pandas_dtype()).ravel())
        values = pa.FixedSizeListArray.from_arrays(inner, type=value_type)
    else:
        values = pa.array(np.ascontiguousarray(flat, dtype=value_type.to_pandas_dtype()).ravel())
    return pa.ListArray.from_arrays(offsets, values, type=type_)


def schema_columns(schema) -> dict[str, tuple[str, int | None]]:
    """The per-box columns of a schema, as `_columns_of` gives them for a record."""
    import pyarrow as pa

    columns = {}
    for field in schema:
        if field.name in ("image_id", *SCALAR_COLUMNS):
            continue
        value_type, width = field.type.value_type, None
        if pa.types.is_fixed_size_list(value_type):
            value_type, width = value_type.value_type, value_type.list_size
        columns[field.name] = (np.dtype(value_type.to_pandas_dtype()).name, width)
    return columns


def records_to_table(records: list[RegionRecord], schema):
    """The records as one Arrow table of `schema` (an `ExtractionError` if one does not fit it)."""
    pa = require_pyarrow()
    expected = schema_columns(schema)
    for record in records:
        if _columns_of(record) != expected:
            raise ExtractionError(
                f"image {record.image_id}: its arrays {_columns_of(record)} differ from those of the images already "
                f"in this output {expected}; write it to another output"
            )
    columns = [pa.array([record.image_id for record in records], pa.string())]
    columns += [pa.array([getattr(record, name) for record in records], pa.int64()) for name in SCALAR_COLUMNS]
    for name in expected:
        columns.append(_per_box_array(pa, [getattr(record, name) for record in records], schema.field(name).type))
    return pa.Table.from_arrays(columns, schema=schema)


def _rows(column) -> list[np.ndarray]:
    """Each row of a list (of fixed-size lists) column as an `(N,)` or `(N, C)` array of the column's dtype."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    counts = column.value_lengths().to_numpy(zero_copy_only=False)
    values = column.flatten()
    width = None
    if pa.types.is_fixed_size_list(values.type):
        width = values.type.list_size
        values = values.flatten()
    flat = values.to_numpy(zero_copy_only=False)
    if width is not None:
        flat = flat.reshape(-1, width)
    return np.split(flat, np.cumsum(counts)[:-1]) if len(counts) else []


def table_to_records(table) -> Iterator[RegionRecord]:
    """The records of an Arrow table (or record batch) of our schema."""
    per_box = {name: _rows(table.column(name)) for name in schema_columns(table.schema)}
    ids = table.column("image_id").to_pylist()
    heights = table.column("image_h").to_pylist()
    widths = table.column("image_w").to_pylist()
    for row, image_id in enumerate(ids):
        yield RegionRecord(
            image_id=image_id,
            image_h=int(heights[row]),
            image_w=int(widths[row]),
            **{name: rows[row] for name, rows in per_box.items()},
        )


def shard_files(path: Path) -> list[Path]:
    """The complete shards of an output folder in order (or the file itself when given one)."""
    return [path] if path.is_file() else sorted(path.glob(SHARD_GLOB))


def _parquet_file(path: Path):
    require_pyarrow()
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise ExtractionError(f"{path}: cannot read it as a Parquet feature file: {error}") from error


def read_parquet(path: Path) -> Iterator[RegionRecord]:
    """The records of a Parquet feature folder (or one shard), shard by shard, a row group at a time."""
    for file in shard_files(path):
        for batch in _parquet_file(file).iter_batches():
            yield from table_to_records(batch)


def shard_schema(path: Path):
    """The Arrow schema of the first shard of a Parquet feature folder."""
    return _parquet_file(shard_files(path)[0]).schema_arrow


def shard_statistics(path: Path) -> tuple[int, int]:
    """(images, boxes) of a Parquet feature folder, from the shards' metadata and `num_boxes` column."""
    images = boxes = 0
    for file in shard_files(path):
        table = _parquet_file(file).read(columns=["num_boxes"])
        images += table.num_rows
        boxes += sum(table.column("num_boxes").to_pylist())
    return images, boxes


def _shard_ids(path: Path) -> list[str]:
    return _parquet_file(path).read(columns=["image_id"]).column("image_id").to_pylist()


class ParquetSource(FeatureSource):
    """Random access: an index of (shard, row group, row) per id; the last row group read is kept, so reading in
    file order reads every row group once."""

    def __init__(self, path: Path):
        self.path = path
        self._files = [_parquet_file(file) for file in shard_files(path)]
        self._where: dict[str, tuple[int, int, int]] = {}
        ids = []
        for number, file in enumerate(self._files):
            group_ids = file.read(columns=["image_id"]).column("image_id").to_pylist()
            start = 0
            for group in range(file.metadata.num_row_groups):
                rows = file.metadata.row_group(group).num_rows
                for row, image_id in enumerate(group_ids[start : start + rows]):
                    self._where[image_id] = (number, group, row)
                ids.extend(group_ids[start : start + rows])
                start += rows
        self.ids = unique_ids(path, ids)
        self._cached: tuple[tuple[int, int], list[RegionRecord]] | None = None

    def get(self, image_id: str) -> RegionRecord:
        number, group, row = self._where[image_id]
        if self._cached is None or self._cached[0] != (number, group):
            self._cached = ((number, group), list(table_to_records(self._files[number].read_row_group(group))))
        return self._cached[1][row]

    def close(self) -> None:
        for file in self._files:
            file.close()


def _record_bytes(record: RegionRecord) -> int:
    arrays = (getattr(record, name) for name in (*PER_BOX_COLUMNS, *OPTIONAL_COLUMNS))
    return sum(array.nbytes for array in arrays if array is not None)


class ParquetWriter(FeatureWriter):
    """Writes records into Parquet shards of at most `parquet_shard_mb` (see the module docstring).

    Args:
        folder: the output folder; created if missing.
        resume: keep the complete shards already there (temporaries of an interrupted run are deleted).
        options: `attributes` (recorded in every shard's metadata) and `parquet_shard_mb`.
    """

    def __init__(self, folder: str | os.PathLike, resume: bool, options: WriterOptions):
        require_pyarrow()
        self.path = Path(folder)
        self.attributes = options.attributes
        self.shard_bytes = max(1, int(options.parquet_shard_mb * 2**20))
        self.row_group_bytes = max(1, min(int(ROW_GROUP_MB * 2**20), self.shard_bytes // ROW_GROUPS_PER_SHARD))
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise output_error(self.path, error) from None
        self.completed: list[str] = []
        self._schema = None
        existing = shard_files(self.path)
        if resume:
            removed = remove_temporaries(self.path)
            if removed:
                logger.warning("%s: removed %d unfinished shards of an interrupted run", self.path, removed)
            for shard in existing:
                self.completed.extend(_shard_ids(shard))
                self._schema = self._schema or _parquet_file(shard).schema_arrow
        numbers = [int(match[1]) for shard in existing if (match := re.fullmatch(r"train-(\d+)\.parquet", shard.name))]
        self._next_number = max(numbers, default=-1) + 1
        self._pending: list[RegionRecord] = []
        self._pending_bytes = 0
        self._file_writer = None
        self._file_bytes = 0

    @property
    def _current(self) -> Path:
        return self.path / SHARD_NAME.format(index=self._next_number)

    def write(self, record: RegionRecord) -> None:
        if self._schema is None:
            self._schema = schema_for(record, self.attributes)
        self._pending.append(record)
        self._pending_bytes += _record_bytes(record)
        if self._pending_bytes >= self.row_group_bytes:
            self._write_row_group()
        if self._file_bytes >= self.shard_bytes:
            self._finish_shard()

    def _write_row_group(self) -> None:
        import pyarrow.parquet as pq

        if not self._pending:
            return
        table = records_to_table(self._pending, self._schema)
        temporary = temporary_path(self._current)
        try:
            if self._file_writer is None:
                self._file_writer = pq.ParquetWriter(temporary, self._schema)
            self._file_writer.write_table(table, row_group_size=len(self._pending))
        except OSError as error:
            raise output_error(self._current, error) from None
        self._file_bytes += self._pending_bytes
        self._pending, self._pending_bytes = [], 0

    def _finish_shard(self) -> None:
        """Close the shard in progress, sync it and give it its final name."""
        self._write_row_group()
        if self._file_writer is None:
            return
        temporary, final = temporary_path(self._current), self._current
        try:
            self._file_writer.close()
            self._file_writer = None
            publish(temporary, final)
        except OSError as error:
            raise output_error(final, error) from None
        logger.debug("%s: shard complete (%.1f MB of arrays)", final, self._file_bytes / 2**20)
        self._next_number += 1
        self._file_bytes = 0

    def commit(self) -> None:
        """Nothing to do: records become durable when their shard is complete."""

    def close(self) -> None:
        self._finish_shard()

    def abort(self) -> None:
        """Give up the shard in progress (a later `--resume` extracts its images again)."""
        if self._file_writer is not None:
            try:
                self._file_writer.close()
            except OSError:
                pass
            self._file_writer = None
        temporary_path(self._current).unlink(missing_ok=True)
        self._pending = []


class ParquetFormat(OutputFormat):
    name = "parquet"
    is_folder = True
    stores_class_probs = True
    hub_dataset = True

    def require(self) -> None:
        require_pyarrow()

    def recognises(self, path: Path) -> bool:
        if path.is_dir():
            return any(path.glob(SHARD_GLOB))
        if path.is_file():
            with open(path, "rb") as file:
                return file.read(len(PARQUET_MAGIC)) == PARQUET_MAGIC
        return False

    def open_writer(self, path: Path, resume: bool, options: WriterOptions) -> ParquetWriter:
        return ParquetWriter(path, resume, options)

    def read(self, path: Path) -> Iterator[RegionRecord]:
        return read_parquet(path)

    def open_source(self, path: Path) -> ParquetSource:
        return ParquetSource(path)

    def stored_ids(self, path: Path) -> list[str]:
        return [image_id for shard in shard_files(path) for image_id in _shard_ids(shard)]

    def merge(self, shards: list[Path], output: Path) -> None:
        files = [file for shard in shards for file in shard_files(shard)]
        self.remove(output)
        link_into_new_folder([(file, SHARD_NAME.format(index=number)) for number, file in enumerate(files)], output)


PARQUET_FORMAT = ParquetFormat()
