"""A share of a Parquet dataset that reads only its own files, or row groups: `--shard I/N` (or torchrun) over
`--dataset` Parquet files.

The units are split as `datasets.distributed.split_dataset_by_node` splits a streamed dataset: by files where their
number is a multiple of N, else by row groups where there are at least N (every N-th from I), else (fewer row groups
than shards) every N-th row read from every file, as before. The files are the ones `datasets` resolves for the
dataset (same order, so the same row numbers), and only their footers are read to place the units: no shard lists
the whole dataset's rows, and N shards read the images about once between them.

Rows are read with pyarrow, a few at a time, only the image column (and the id column): the same values `datasets`
gives at the Arrow level, so the entries, ids and errors are those of a 1-shard run.
"""

import bisect
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .dataset_input import ID_REMEDY, ROWS_PER_READ, _image_entry, require_datasets
from .inputs import ImageEntry, ImageSource, check_image_ids
from .records import ExtractionError
from .sharding import Shard

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unit:
    """A file, or one row group of it (`row_group` None: the whole file); `first_row` is its first row's number in
    the dataset, `rows` its row count."""

    file: int
    row_group: int | None
    first_row: int
    rows: int


def parquet_files(name: str, split: str | None) -> tuple[list[str], str] | None:
    """(files, split): the Parquet files of `--dataset NAME` as `datasets` resolves them (a local folder or glob of
    Parquet files), in its order, and their split; None where the dataset is something else (a save_to_disk folder,
    an imagefolder, a Hub id, a `datasets` object)."""
    if not isinstance(name, str):
        return None
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return None
        if not any(path.rglob("*.parquet")):
            return None
    elif path.suffix.lower() != ".parquet":
        return None
    datasets = require_datasets()
    try:
        if path.is_dir():
            builder = datasets.load_dataset_builder(str(path))
        else:
            builder = datasets.load_dataset_builder("parquet", data_files=str(path))
    except Exception as error:  # noqa: BLE001 (datasets raises many kinds; the user needs the reason)
        raise ExtractionError(f"--dataset {name}: cannot list its files: {type(error).__name__}: {error}") from None
    files = builder.config.data_files
    if builder.config.name != "parquet" and builder.name != "parquet" or not files:
        return None
    splits = list(files)
    if split is None and len(splits) != 1:
        raise ExtractionError(f"--dataset {name} has the splits {splits}: choose one with --split")
    chosen = split or splits[0]
    if chosen not in files:
        raise ExtractionError(f"--dataset {name} has no split {chosen!r}; it has {splits}")
    return [str(file) for file in files[chosen]], chosen


class ParquetShardSource(ImageSource):
    """This shard's files or row groups of a Parquet dataset (see the module docstring).

    Args:
        name: what `--dataset` named, with its split (for messages).
        files: the dataset's Parquet files, in order (`parquet_files`).
        shard: which share to read.
        image_column, id_column: as `--image-column` (default: the one Image column) and `--id-column` (default:
            the row numbers of the whole dataset).
    """

    sharded = True

    def __init__(self, name: str, files: list[str], shard: Shard, image_column: str | None, id_column: str | None):
        import pyarrow.parquet as pq

        self.name, self.files, self.shard = name, files, shard
        try:
            self._metadata = [pq.read_metadata(file) for file in files]  # the footers only
            schema = pq.read_schema(files[0])
        except (OSError, ValueError) as error:
            raise ExtractionError(f"--dataset {name}: cannot read its Parquet footers: {error}") from None
        self.image_column = image_column or _image_column(schema, name)
        self.id_column = id_column
        for role, column in (("--image-column", self.image_column), ("--id-column", id_column)):
            if column is not None and column not in schema.names:
                raise ExtractionError(f"{role} {column}: {name} has the columns {schema.names}")
        self.units, self.by_rows = self._my_units()
        self._ids: list[str] = []
        self._rows: list[int] = []

    def describe(self) -> str:
        return self.name

    def _my_units(self) -> tuple[list[Unit], bool]:
        """This shard's units, and whether it must keep every N-th row of them instead (too few units)."""
        files, groups, first = [], [], 0
        for number, metadata in enumerate(self._metadata):
            files.append(Unit(number, None, first, metadata.num_rows))
            for group in range(metadata.num_row_groups):
                rows = metadata.row_group(group).num_rows
                groups.append(Unit(number, group, first, rows))
                first += rows
        count = self.shard.count
        if len(files) % count == 0:
            return self.shard.select(files), False
        if len(groups) >= count:
            return self.shard.select(groups), False
        logger.warning(
            "%s: %d row groups for %d shards: every shard reads every row (write it in more files or row groups)",
            self.name, len(groups), count,
        )  # fmt: skip
        return files, True

    def _read(self, unit: Unit, columns: list[str]) -> Iterator:
        """The unit's rows as Arrow record batches of `columns`, a few rows at a time."""
        import pyarrow.parquet as pq

        groups = None if unit.row_group is None else [unit.row_group]
        try:
            with pq.ParquetFile(self.files[unit.file]) as file:
                yield from file.iter_batches(batch_size=ROWS_PER_READ, row_groups=groups, columns=columns)
        except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise ExtractionError(
                f"{self.files[unit.file]}: reading the data failed: {type(error).__name__}: {error}. What was "
                "extracted before is kept: repair or replace the data, then rerun with --resume."
            ) from None

    def _mine(self, row: int) -> bool:
        return not self.by_rows or row % self.shard.count == self.shard.index

    def _list_image_ids(self) -> list[str]:
        ids, rows = [], []
        for unit in self.units:
            numbers = [row for row in range(unit.first_row, unit.first_row + unit.rows) if self._mine(row)]
            rows.extend(numbers)
            if self.id_column is None:
                ids.extend(str(row) for row in numbers)
                continue
            row = unit.first_row
            for batch in self._read(unit, [self.id_column]):
                for value in batch.column(0).to_pylist():
                    if self._mine(row):
                        ids.append("" if value is None else str(value))
                    row += 1
        self._ids, self._rows = ids, rows
        check_image_ids(ids, lambda index: self.location(self._rows[index]), ID_REMEDY)
        return ids

    def location(self, row: int) -> str:
        return f"{self.name} row {row}"

    def images(self, indices: Iterable[int]) -> Iterator[ImageEntry]:
        self.image_ids()  # lists the images once, if not yet done
        wanted = {self._rows[index]: index for index in indices}
        rows = sorted(wanted)
        for unit in self.units:
            row = unit.first_row
            following = bisect.bisect_left(rows, row)
            if following == len(rows) or rows[following] >= row + unit.rows:
                continue  # nothing wanted in this unit: not read
            for batch in self._read(unit, [self.image_column]):
                for value in batch.column(0).to_pylist():
                    if row in wanted:
                        yield _image_entry(self._ids[wanted[row]], self.location(row), value)
                    row += 1


def _image_column(schema, name: str) -> str:
    """The one column the schema's `datasets` features call an Image."""
    datasets = require_datasets()
    features = datasets.Features.from_arrow_schema(schema)
    found = [column for column, feature in features.items() if isinstance(feature, datasets.Image)]
    if len(found) != 1:
        which = "no Image column" if not found else f"several Image columns {found}"
        raise ExtractionError(f"{name} has {which}: choose one of {list(features)} with --image-column")
    return found[0]
