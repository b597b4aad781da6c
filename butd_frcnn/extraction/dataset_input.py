"""Images from a Hugging Face `datasets` dataset: a `save_to_disk` folder, a folder or glob of Parquet / Arrow files, an
`imagefolder` folder, or a Hub dataset id (streamed; offline, from the local cache).

Rows are read at the Arrow level (`with_format("arrow")`): an `Image` column is never decoded by `datasets` (whose
PIL decoding differs from the original's OpenCV one); its encoded bytes, or its file path when it holds no bytes,
travel to the decoding workers, which decode them exactly as image files. Datasets are streamed (a `save_to_disk`
folder is memory-mapped): the listing reads only the id column (or counts the rows), then the images are read a
batch of rows at a time, as far ahead as the workers prefetch, so memory does not grow with the number of rows. A
row without a usable image becomes an entry with a `problem`, which the workers report to the errors file like a
bad file.
"""

import glob
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub import constants as hub_constants

from ..hub_errors import capitalised, hub_failure, one_line
from .defaults import DATASETS_INSTALL_HINT
from .inputs import ImageEntry, ImageSource, check_image_ids
from .model_loading import looks_like_path
from .records import ExtractionError

logger = logging.getLogger(__name__)

ROWS_PER_READ = 64  # rows converted from Arrow at a time: a few MB of encoded images
ID_REMEDY = "Name another --id-column, or none (the ids are then the row numbers)."
# what a file's extension says about how `datasets` reads a glob of such files
FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}


def require_datasets():
    try:
        import datasets
    except ImportError as error:  # the cause says why, when datasets is installed but broken
        raise ExtractionError(f"--dataset needs the `datasets` library: {DATASETS_INSTALL_HINT}") from error
    return datasets


def _pick_split(loaded, name: str, split: str | None):
    """(dataset, split name): the split asked for (or the only one) of a dataset dict; a plain dataset as it is."""
    if not hasattr(loaded, "keys"):
        if split is not None:
            raise ExtractionError(f"--dataset {name}: a single dataset without splits; leave out --split {split}")
        return loaded, None
    splits = list(loaded.keys())
    if split is None:
        if len(splits) != 1:
            raise ExtractionError(f"--dataset {name} has the splits {splits}: choose one with --split")
        split = splits[0]
    if split not in splits:
        raise ExtractionError(f"--dataset {name} has no split {split!r}; it has {splits}")
    return loaded[split], split


def load_dataset_source(name: str, split: str | None = None, config: str | None = None):
    """(dataset, split name): the dataset (a `datasets.Dataset`, or a streaming `IterableDataset`) that `--dataset NAME`
    names, and which of its splits it is (None where it has none).

    Raises:
        ExtractionError: nothing found, the Hub out of reach without a cached copy, or `datasets` missing.
    """
    datasets = require_datasets()
    path = Path(name).expanduser()
    try:
        if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
            return _pick_split(datasets.load_from_disk(str(path)), name, split)
        if path.is_file() or glob.has_magic(name):
            builder = FILE_BUILDERS.get(Path(name).suffix.lower())
            if builder is None:
                raise ExtractionError(
                    f"--dataset {name}: expected a folder, or Parquet / Arrow files (.parquet, .arrow)"
                )
            if not glob.glob(str(path)):
                raise ExtractionError(f"--dataset {name}: no file matches")
            loaded = datasets.load_dataset(builder, data_files=str(path), streaming=True)
            return _pick_split(loaded, name, split)
        if path.is_dir():
            return _pick_split(datasets.load_dataset(str(path), name=config, streaming=True), name, split)
        if looks_like_path(name):
            raise ExtractionError(f"--dataset {name}: no such file or folder")
        return _pick_split(datasets.load_dataset(name, name=config, streaming=True), name, split)
    except ExtractionError:
        raise
    except Exception as error:  # datasets raises many kinds; the user needs the reason, not a traceback
        failure = hub_failure(error)
        if failure is None:
            raise ExtractionError(
                f"--dataset {name}: cannot load it: {type(error).__name__}: {one_line(str(error))}"
            ) from error
        if not failure.unreachable:
            why = f"the Hub answered: {failure.reason()}. {capitalised(failure.remedy)}"
        elif hub_constants.HF_HUB_OFFLINE:
            why = "the Hub is switched off here (HF_HUB_OFFLINE=1)"
        else:
            why = f"the Hub could not be reached ({one_line(str(failure.error))})"
        raise ExtractionError(
            f"--dataset {name}: not a local folder or file, not in the datasets cache, and {why}. Nothing was "
            f'written. Load it once where there is network (python -c "import datasets; '
            f"datasets.load_dataset('{name}')\") so that it is cached, or pass a local folder."
        ) from error


def _image_entry(image_id: str, where: str, value) -> ImageEntry:
    """The entry of one row's image value: an `Image` (bytes, or a path when it holds none), encoded bytes, or a
    path; anything else is a problem for the errors file."""
    if isinstance(value, dict) and set(value) >= {"bytes", "path"}:
        if value["bytes"] is not None:
            shown = f"{where} ({' '.join(value['path'].split())})" if value["path"] else where  # one TSV field
            return ImageEntry(image_id, shown, data=value["bytes"])
        value = value["path"]
    if isinstance(value, bytes):
        return ImageEntry(image_id, where, data=value)
    if isinstance(value, str) and value:
        return ImageEntry(image_id, value)
    if value is None or value == "":
        return ImageEntry(image_id, where, problem="the row has no image")
    return ImageEntry(
        image_id, where, problem=f"the image column holds {type(value).__name__} values, not images (bytes or paths)"
    )


class DatasetSource(ImageSource):
    """The rows of one split of a `datasets` dataset as images.

    Args:
        dataset: what `--dataset` names (see `load_dataset_source`), or a `datasets.Dataset` / `IterableDataset`
            (or a dict of them) itself.
        split, config: which split, and which configuration of a Hub dataset.
        image_column: the column holding the images (default: the one `Image` column).
        id_column: the column holding the ids (default: the row number).
    """

    def __init__(
        self,
        dataset,
        split: str | None = None,
        image_column: str | None = None,
        id_column: str | None = None,
        config: str | None = None,
    ):
        datasets = require_datasets()
        if isinstance(dataset, str):
            self.name = dataset
            dataset, self.split = load_dataset_source(dataset, split, config)
        else:
            self.name = f"<{type(dataset).__name__}>"
            dataset, self.split = _pick_split(dataset, self.name, split)
        self.streaming = isinstance(dataset, datasets.IterableDataset)
        features = dataset.features
        self.image_column = image_column or self._find_image_column(features)
        self.id_column = id_column
        for role, column in (("--image-column", self.image_column), ("--id-column", id_column)):
            if column is not None and features is not None and column not in features:
                raise ExtractionError(f"{role} {column}: {self.describe()} has the columns {list(features)}")
        if features is not None and not isinstance(features[self.image_column], datasets.Image):
            logger.warning(
                "column %r is a %s, not an Image: its rows must hold encoded images or paths",
                self.image_column,
                features[self.image_column],
            )
        self.dataset = dataset.with_format("arrow")

    def _find_image_column(self, features) -> str:
        import datasets

        if features is None:
            raise ExtractionError(f"{self.describe()} does not declare its columns: name the image column")
        found = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
        if len(found) != 1:
            which = "no Image column" if not found else f"several Image columns {found}"
            raise ExtractionError(f"{self.describe()} has {which}: choose one of {list(features)} with --image-column")
        return found[0]

    def describe(self) -> str:
        return self.name + (f"[{self.split}]" if self.split else "")

    def location(self, index: int) -> str:
        return f"{self.describe()} row {index}"

    def _column_batches(self, column: str, rows: int) -> Iterator:
        """The dataset in order as Arrow tables of `rows` rows holding only `column`."""
        with self._reading():
            yield from self.dataset.select_columns([column]).iter(batch_size=rows)

    @contextmanager
    def _reading(self):
        """Turn a failure to read the data (a damaged file, a lost connection) into an error that says what to do."""
        try:
            yield
        except Exception as error:  # noqa: BLE001 (pyarrow, fsspec and datasets raise many kinds)
            raise ExtractionError(
                f"{self.describe()}: reading the data failed: {type(error).__name__}: {error}. What was extracted "
                "before is kept: repair or replace the data, then rerun with --resume."
            ) from None

    def _list_image_ids(self) -> list[str]:
        if self.id_column is None:
            return [str(index) for index in range(self._row_count())]
        ids = []
        for table in self._column_batches(self.id_column, 1000):
            ids.extend("" if value is None else str(value) for value in table.column(0).to_pylist())
        check_image_ids(ids, self.location, ID_REMEDY)
        return ids

    def _row_count(self) -> int:
        """The split's rows: its length, or for a streamed split its metadata where the dataset has it, else counted
        in one pass."""
        if not self.streaming:
            return len(self.dataset)
        splits = self.dataset.info.splits
        if splits and self.split in splits and splits[self.split].num_examples:
            return splits[self.split].num_examples
        logger.info("counting the rows of %s (one pass over the data)", self.describe())
        return sum(table.num_rows for table in self._column_batches(self.image_column, 1000))

    def images(self, indices: Iterable[int]) -> Iterator[ImageEntry]:
        wanted = list(indices)
        if self.streaming:
            yield from self._stream(wanted)
            return
        images = self.dataset.select_columns([self.image_column])
        for start in range(0, len(wanted), ROWS_PER_READ):
            chunk = wanted[start : start + ROWS_PER_READ]
            with self._reading():
                table = images[chunk]
            yield from self._entries(table, chunk)

    def _stream(self, wanted: list[int]) -> Iterator[ImageEntry]:
        """Read the rows in order, converting only the wanted ones from Arrow, and stop after the last of them."""
        position, offset = 0, 0
        for table in self._column_batches(self.image_column, ROWS_PER_READ):
            end = offset + table.num_rows
            rows = []
            while position < len(wanted) and wanted[position] < end:
                rows.append(wanted[position])
                position += 1
            if rows:
                yield from self._entries(table.take([row - offset for row in rows]), rows)
            if position == len(wanted):
                return
            offset = end
        if position < len(wanted):
            logger.warning("%s ended after %d rows; %d listed rows were not there", self.describe(), offset,
                           len(wanted) - position)  # fmt: skip

    def _entries(self, table, indices: list[int]) -> Iterator[ImageEntry]:
        ids = self.image_ids()  # listed once, whichever is asked first
        for index, value in zip(indices, table.column(0).to_pylist()):
            yield _image_entry(ids[index], self.location(index), value)
