"""The end of the Ray pipeline: the model stage's rows into our Parquet feature folder and errors file.

Each write task writes its rows as one hidden part file, named by the task; once the whole write is done, the driver
renames the parts the finished tasks reported into `train-00000.parquet`, `train-00001.parquet`... and gathers their
failures into `OUTPUT.errors.tsv` (`image_id<TAB>where<TAB>reason`, the CLI's errors file). A part left by a task that
died is never reported, so it is deleted, never published: every image is in the output once.
"""

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data.block import BlockAccessor

from .durable import fsync_directory, output_error
from .parquet import ROW_GROUP_MB, SHARD_NAME
from .ray_data import ERROR_COLUMN, ID_COLUMN, WHERE_COLUMN
from .records import ExtractionError
from .sidecars import _one_line, errors_path

PART_PREFIX = ".ray-part-"


class FeatureDatasink(Datasink):
    """Writes `FeaturizeImages` rows: good ones as Parquet shards in `folder`, failed ones to its errors file.

    Args:
        folder: the output folder, on a file system every node of the cluster writes to; it must not exist yet
            unless `overwrite`.
    """

    def __init__(self, folder: str | os.PathLike, overwrite: bool = False):
        self.path = Path(folder)
        self.errors_file = errors_path(self.path)
        if self.path.exists() and any(self.path.iterdir()) and not overwrite:
            raise ExtractionError(f"{self.path} exists: choose another output, or overwrite it")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            for old in [*self.path.glob("*.parquet"), *self.path.glob(f"{PART_PREFIX}*")]:
                old.unlink()
            self.errors_file.unlink(missing_ok=True)
        except OSError as error:
            raise output_error(self.path, error) from None
        self.extracted = self.failed = self.boxes = 0

    def write(self, blocks, ctx) -> list[str]:
        tables = [BlockAccessor.for_block(block).to_arrow() for block in blocks]
        tables = [table for table in tables if table.num_rows]
        if not tables:
            return []
        table = pa.concat_tables(tables)
        failed = pc.is_valid(table.column(ERROR_COLUMN))
        name = f"{PART_PREFIX}{ctx.task_idx:06d}"
        good = table.filter(pc.invert(failed)).drop_columns([WHERE_COLUMN, ERROR_COLUMN])
        bad = table.filter(failed).select([ID_COLUMN, WHERE_COLUMN, ERROR_COLUMN])
        written = []
        if good.num_rows:
            rows_per_group = max(1, int(good.num_rows * ROW_GROUP_MB * 2**20 / max(good.nbytes, 1)))
            written.append(self._write(f"{name}.parquet", lambda path: pq.write_table(good, path, rows_per_group)))
        if bad.num_rows:
            lines = "".join(
                f"{image_id}\t{_one_line(where)}\t{_one_line(reason)}\n"
                for image_id, where, reason in zip(*(bad.column(index).to_pylist() for index in range(3)))
            )
            written.append(self._write(f"{name}.errors.tsv", lambda path: Path(path).write_text(lines, "utf-8")))
        return written

    def _write(self, name: str, write) -> str:
        """Write a part under a temporary name, then give it its name (a retried task replaces it whole)."""
        final = self.path / name
        temporary = final.with_name(f"{name}.tmp-{os.getpid()}")
        try:
            write(str(temporary))
            os.replace(temporary, final)
        except OSError as error:
            raise output_error(final, error) from None
        return name

    def on_write_complete(self, write_result) -> None:
        reported = sorted(name for names in write_result.write_returns for name in names)
        shards = [name for name in reported if name.endswith(".parquet")]
        for number, name in enumerate(shards):
            os.replace(self.path / name, self.path / SHARD_NAME.format(index=number))
        errors = [name for name in reported if name.endswith(".errors.tsv")]
        if errors:
            with open(self.errors_file, "w", encoding="utf-8") as out:
                for name in errors:
                    out.write((self.path / name).read_text("utf-8"))
                    (self.path / name).unlink()
        for leftover in self.path.glob(f"{PART_PREFIX}*"):  # written by tasks that died before reporting them
            leftover.unlink()
        fsync_directory(self.path)
        for shard in self.path.glob("*.parquet"):
            metadata = pq.read_metadata(shard)
            self.extracted += metadata.num_rows
        self.failed = len(self.errors_file.read_text("utf-8").splitlines()) if errors else 0

    def on_write_failed(self, error: Exception) -> None:
        for leftover in self.path.glob(f"{PART_PREFIX}*"):
            leftover.unlink()
