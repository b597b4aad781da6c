"""Featurise a dataset on a Ray cluster with Ray Data: read -> decode (CPU tasks) -> the model (an actor pool, one
model per actor, on GPUs or CPUs) -> our Parquet feature folder and errors file.

    ds = read_image_files(["images/"])                  # or read_parquet_images(...), read_webdataset_images(...)
    ds = ds.map_batches(DecodeImages, fn_constructor_kwargs={"model": MODEL}, concurrency=2, batch_format="pyarrow")
    ds = ds.map_batches(FeaturizeImages, fn_constructor_kwargs={"model": MODEL}, concurrency=1, num_cpus=1,
                        batch_format="pyarrow")
    write_features(ds, "features/")

Every stage does what `butd-frcnn extract` does, with the same code: the inputs as the CLI lists and reads them
(`list_images`, the rows of a dataset), decoding by `ImageDataset` (OpenCV-equal pixels, the same checks and reasons),
the model by the CLI's batch runner (`_Pipeline`: batches of one resized size, a failing batch retried image by image),
the rows by `records_to_table`: the features are the CLI's bit for bit, the columns those of `--format parquet`.

Decoding runs in its own CPU tasks, so it overlaps the model; the decoded pixels travel to the actors through Ray's
object store. A row that cannot be extracted travels on with its reason in an `error` column; `FeatureDatasink` writes
the good rows as `train-NNNNN.parquet` shards and the others to `OUTPUT.errors.tsv`, as the CLI does. Ray retries the
work of a dead worker (its actors restart, their tasks run again) and every write task writes its file under a name
fixed by the task, renamed into place once the whole write is done: a killed worker costs a retry, never a hole or a
duplicate.
"""

import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .decoding import DEFAULT_MAX_PIXELS, FailedImage, ImageDataset, PreparedImage
from .inputs import ImageEntry, list_images
from .records import ExtractionError, RegionRecord
from .sidecars import errors_path

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'butd-frcnn[ray]'"
# the columns every reader below gives, the decoding stage reads, and the model stage passes on
ID_COLUMN, IMAGE_COLUMN = "image_id", "image"
# the columns the decoding stage adds and the model stage reads (besides ID_COLUMN)
WHERE_COLUMN, ERROR_COLUMN = "where", "error"
PIXEL_COLUMNS = ("pixels", "height", "width", "scale", "original_h", "original_w")


def require_ray():
    try:
        import ray
        import ray.data
    except ImportError as error:  # the cause says why, when ray is installed but broken
        raise ExtractionError(f"--ray needs Ray Data: {INSTALL_HINT}") from error
    return ray


# ---------------------------------------------------------------------------------------------------------------
# Reading: datasets of (image_id, image) rows, the image encoded bytes, a path, or a datasets Image struct
# ---------------------------------------------------------------------------------------------------------------


def read_image_files(inputs: list[str], id_style: str = "stem"):
    """Image files, folders and list files as the CLI lists them (same ids, same checks); the files are read by the
    decoding tasks, so on a cluster they must be where every node sees them (a shared file system)."""
    ray = require_ray()
    entries = list_images(list(inputs), id_style)
    return ray.data.from_items([{ID_COLUMN: entry.image_id, IMAGE_COLUMN: entry.path} for entry in entries])


def read_parquet_images(paths, image_column: str = "image", id_column: str | None = None, **read_options):
    """Parquet files with an image column (a `datasets` Image struct, encoded bytes, or paths) and an id column.

    Ray reads the files' row groups in parallel tasks, so rows have no global number: the ids come from `id_column`.
    """
    ray = require_ray()
    if id_column is None:
        raise ExtractionError(
            "Parquet rows read by Ray have no global row number to be their id: name the column of ids (--id-column)"
        )
    dataset = ray.data.read_parquet(paths, columns=[id_column, image_column], **read_options)
    return dataset.rename_columns({id_column: ID_COLUMN, image_column: IMAGE_COLUMN})


def read_webdataset_images(paths, image_suffix: str | None = None, **read_options):
    """WebDataset tar shards (img2dataset's output): one image per key, its id the key (`__key__`); the image is the
    member with `image_suffix` (default: the one member with an image file's extension)."""
    ray = require_ray()
    dataset = ray.data.read_webdataset(paths, decoder=None, **read_options)
    return dataset.map_batches(
        _WebDatasetRows, fn_kwargs={"image_suffix": image_suffix}, batch_format="pyarrow", zero_copy_batch=True
    )


def _WebDatasetRows(batch, image_suffix: str | None):  # noqa: N802 (a stage of the pipeline, named as one)
    """(image_id, image) rows of a webdataset batch: the key and its image member's bytes."""
    import pyarrow as pa

    from .webdataset_input import image_member

    keys = batch.column("__key__").to_pylist()
    members = [name for name in batch.column_names if not name.startswith("__")]
    images = []
    for row, key in enumerate(keys):
        present = [name for name in members if batch.column(name)[row].is_valid]
        images.append(image_member({name: batch.column(name)[row].as_py() for name in present}, key, image_suffix))
    return pa.table({ID_COLUMN: pa.array(keys, pa.string()), IMAGE_COLUMN: pa.array(images, pa.binary())})


# ---------------------------------------------------------------------------------------------------------------
# Decoding: a CPU stage
# ---------------------------------------------------------------------------------------------------------------


def _load_processor(model: str):
    from transformers import AutoImageProcessor

    from .. import ButdFrcnnImageProcessor  # noqa: F401  (registers the class for AutoImageProcessor)

    return AutoImageProcessor.from_pretrained(model)


class DecodeImages:
    """`map_batches` stage (CPU): (image_id, image) rows -> the model's inputs of each image, or why there are none.

    Args:
        model: the model folder or Hub id (only its image processor is loaded).
        max_pixels: refuse larger images as decompression bombs (0: no limit), as `--max-pixels`.
    """

    def __init__(self, model: str, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.decoder = ImageDataset(_load_processor(model), max_pixels)

    def __call__(self, batch):
        import pyarrow as pa

        from .dataset_input import _image_entry

        columns = {name: [] for name in (ID_COLUMN, WHERE_COLUMN, *PIXEL_COLUMNS, ERROR_COLUMN)}
        ids = batch.column(ID_COLUMN).to_pylist()
        for image_id, value in zip(ids, batch.column(IMAGE_COLUMN).to_pylist()):
            entry = _image_entry(str(image_id), f"image {image_id}", value)
            item = self.decoder[entry]
            columns[ID_COLUMN].append(entry.image_id)
            columns[WHERE_COLUMN].append(entry.path)
            if isinstance(item, FailedImage):
                values = (b"", 0, 0, 0.0, 0, 0, item.reason)
            else:
                pixels = item.pixel_values.numpy()
                values = (pixels.tobytes(), *pixels.shape[1:], item.scale, *item.original_size, None)
            for name, value in zip((*PIXEL_COLUMNS, ERROR_COLUMN), values):
                columns[name].append(value)
        types = {"pixels": pa.large_binary(), "scale": pa.float64(), ERROR_COLUMN: pa.string()}
        return pa.table({name: pa.array(values, types.get(name)) for name, values in columns.items()})


def _prepared(row: dict) -> PreparedImage | FailedImage:
    """The decoding stage's row back as the CLI's decoding workers hand it over."""
    entry = ImageEntry(row[ID_COLUMN], row[WHERE_COLUMN])
    if row[ERROR_COLUMN] is not None:
        return FailedImage(entry, row[ERROR_COLUMN])
    import torch

    shape = (3, row["height"], row["width"])
    pixels = torch.from_numpy(np.frombuffer(row["pixels"], np.float32).reshape(shape).copy())
    return PreparedImage(entry, pixels, row["scale"], (row["original_h"], row["original_w"]), 0.0)


# ---------------------------------------------------------------------------------------------------------------
# The model: an actor stage
# ---------------------------------------------------------------------------------------------------------------


class _Rows:
    """The model stage's output of one batch: what the CLI would write and what it would log as failed."""

    def __init__(self):
        self.records: list[RegionRecord] = []
        self.failed: list[tuple[ImageEntry, str]] = []

    # the writer and error log of `_Pipeline`
    def write(self, record: RegionRecord) -> None:
        self.records.append(record)

    def add(self, entry: ImageEntry, reason: str) -> None:
        self.failed.append((entry, reason))

    def commit(self) -> None:
        pass


class _Progress:
    def update(self, count: int) -> None:
        pass


class FeaturizeImages:
    """`map_batches` stage (an actor: the model is loaded once per actor): decoded rows -> the rows of our Parquet
    output (`image_id`, `image_h`, `image_w`, `num_boxes`, `boxes`, `features`, `objects`, ...), each with `where`
    and `error` (None where the image was extracted).

    Args:
        model: the model folder or Hub id, as `--model`.
        device: `cpu`, `cuda` (the GPU Ray gives the actor: `num_gpus=1`), as `--device`.
        dtype: the precision, as `--dtype`.
        batch_size: images of one resized size per forward (default: as the CLI, 4 on a CPU, 1 elsewhere).
        min_boxes, max_boxes, score_threshold: the region selection (default: the model's), as `--boxes`,
            `--score-threshold`.
        boxes_from: describe the boxes of this box file instead of detecting, as `--boxes-from`.
        image_ids: how the box file's image paths become ids, as `--image-ids`.
        save_class_probs, probs_dtype: keep each region's class distributions, as `--save-class-probs`.
        num_threads: CPU threads of the model (default: what Ray gives the actor, its `num_cpus`).
    """

    def __init__(
        self,
        model: str,
        device: str = "cpu",
        dtype: str = "fp32",
        batch_size: int | None = None,
        min_boxes: int | None = None,
        max_boxes: int | None = None,
        score_threshold: float | None = None,
        boxes_from: str | None = None,
        image_ids: str = "stem",
        save_class_probs: bool = False,
        probs_dtype: str = "float32",
        num_threads: int | None = None,
    ):
        import torch

        from .box_files import read_box_file
        from .extract import DEFAULT_BATCH_SIZES, ExtractOptions, _selection
        from .model_loading import load_model, resolve_device
        from .parquet import schema_for

        if num_threads:
            torch.set_num_threads(num_threads)
        device = resolve_device(device)
        self.model, _ = load_model(model, device, dtype)
        self.batch_size = batch_size or DEFAULT_BATCH_SIZES.get(device.type, 1)
        self.given = read_box_file(boxes_from, image_ids) if boxes_from is not None else None
        options = ExtractOptions(model, Path("."), min_boxes=min_boxes, max_boxes=max_boxes,
                                 score_threshold=score_threshold)  # fmt: skip
        self.selection = None if self.given is not None else _selection(options, self.model.config)
        self.probs_dtype = probs_dtype if save_class_probs else None
        attributes = feature_attributes(model, self.selection, self.given)
        self.schema = schema_for(self._empty(""), attributes)

    def __call__(self, batch):
        from .batching import SizeBatcher
        from .extract import ExtractionSummary, _boxes_with_entries, _Pipeline

        rows = _Rows()
        summary = ExtractionSummary(output=Path("."), errors_file=Path("."))
        pipeline = _Pipeline(self.model, self.selection, rows, rows, summary, _Progress(), self.given,
                             self.probs_dtype)  # fmt: skip
        batcher = SizeBatcher(self.batch_size)
        for item in (_prepared(row) for row in batch.to_pylist()):
            if self.given is not None and isinstance(item, PreparedImage):
                checked = next(_boxes_with_entries([item.entry], self.given))
                item = item if checked.problem is None else FailedImage(item.entry, checked.problem)
            if isinstance(item, FailedImage):
                pipeline.fail(item)
                continue
            for images in batcher.add(item):
                pipeline.run(images)
        for images in batcher.drain():
            pipeline.run(images)
        return _output_table(rows, self.schema, self._empty)

    def _empty(self, image_id: str) -> RegionRecord:
        return _empty_record(image_id, self.model.config, self.probs_dtype)


def feature_attributes(model: str, selection: dict | None, given) -> dict:
    """The run's settings that the CLI records in the Parquet shards' metadata."""
    attributes = {"model": model, **(selection or {})}
    if given is not None:
        attributes.update(boxes_from=str(given.path), boxes_sha256=given.digest)
    return attributes


def _empty_record(image_id: str, config, probs_dtype: str | None) -> RegionRecord:
    """A record without regions of this model's widths: the schema's template, and the row of a failed image."""
    record = RegionRecord(
        image_id=image_id,
        image_h=0,
        image_w=0,
        boxes=np.zeros((0, 4), np.float32),
        features=np.zeros((0, config.hidden_sizes[-1]), np.float32),
        objects=np.zeros(0, np.int64),
        objects_conf=np.zeros(0, np.float32),
        attrs=np.zeros(0, np.int64),
        attrs_conf=np.zeros(0, np.float32),
    )
    if probs_dtype is not None:
        record.cls_prob = np.zeros((0, config.num_labels), probs_dtype)
        record.attr_prob = np.zeros((0, config.num_attributes), probs_dtype)
    return record


def _output_table(rows: _Rows, schema, empty):
    """The records, then a row without regions (`empty(image_id)`) for each failure, with `where` and `error`."""
    import pyarrow as pa

    from .parquet import records_to_table

    failed = [empty(entry.image_id) for entry, _ in rows.failed]
    table = records_to_table(rows.records + failed, schema)
    where = [None] * len(rows.records) + [entry.path for entry, _ in rows.failed]
    errors = [None] * len(rows.records) + [reason for _, reason in rows.failed]
    table = table.append_column(WHERE_COLUMN, pa.array(where, pa.string()))
    return table.append_column(ERROR_COLUMN, pa.array(errors, pa.string()))
