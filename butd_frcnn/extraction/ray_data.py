"""Featurise a dataset on a Ray cluster with Ray Data: read -> decode (CPU tasks) -> the model (an actor pool, one
model per actor, on GPUs or CPUs) -> our Parquet feature folder and errors file.

    ds = read_image_files(["images/"])                  # or read_parquet_images(...), read_webdataset_images(...)
    ds = featurize(ds, MODEL, actors=1, actor_cpus=1)   # decode_images tasks, then FeaturizeImages actors
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

import functools
import logging
import os
import time
from pathlib import Path

import numpy as np

from .decoding import FailedImage, ImageDataset, PreparedImage
from .defaults import DEFAULT_MAX_PIXELS, RAY_INSTALL_HINT
from .inputs import ImageEntry, list_images
from .records import ExtractionError, RegionRecord

logger = logging.getLogger(__name__)

# the columns every reader below gives, the decoding stage reads, and the model stage passes on
ID_COLUMN, IMAGE_COLUMN = "image_id", "image"
# the columns the decoding stage adds and the model stage reads (besides ID_COLUMN); a reader may give `where` (the
# place the errors file names) and `problem` (why a row has no image) too
WHERE_COLUMN, ERROR_COLUMN, PROBLEM_COLUMN = "where", "error", "problem"
PIXEL_COLUMNS = ("pixels", "height", "width", "scale", "original_h", "original_w")


def require_ray():
    try:
        import ray
        import ray.data
    except ImportError as error:  # the cause says why, when ray is installed but broken
        raise ExtractionError(f"--ray needs Ray Data: {RAY_INSTALL_HINT}") from error
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
        _webdataset_rows, fn_kwargs={"image_suffix": image_suffix}, batch_format="pyarrow", zero_copy_batch=True
    )


def _webdataset_rows(batch, image_suffix: str | None):
    """(image_id, image, where, problem) rows of Ray's webdataset rows: the key, its image member's bytes, the tar
    and key (as the CLI names a sample), or why the sample has no image."""
    import pyarrow as pa

    from .webdataset_input import sample_entry

    entries = []
    for row in batch.to_pylist():
        members = {
            name: value for name, value in row.items() if not name.startswith("__") and isinstance(value, bytes)
        }
        key = row["__key__"]
        entries.append(sample_entry(key, f"{row['__url__']} sample {key}", members, image_suffix))
    return pa.table(
        {
            ID_COLUMN: pa.array([entry.image_id for entry in entries], pa.string()),
            IMAGE_COLUMN: pa.array([entry.data for entry in entries], pa.large_binary()),
            WHERE_COLUMN: pa.array([entry.path for entry in entries], pa.string()),
            PROBLEM_COLUMN: pa.array([entry.problem for entry in entries], pa.string()),
        }
    )


# ---------------------------------------------------------------------------------------------------------------
# Decoding: a CPU stage
# ---------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _decoder(model: str, max_pixels: int) -> ImageDataset:
    """The CLI's decoder with the model's image processor, loaded once per worker process."""
    from transformers import AutoImageProcessor

    from .. import ButdFrcnnImageProcessor  # noqa: F401  (registers the class for AutoImageProcessor)

    return ImageDataset(AutoImageProcessor.from_pretrained(model), max_pixels)


def decode_images(batch, model: str, max_pixels: int = DEFAULT_MAX_PIXELS):
    """`map_batches` stage (CPU tasks): (image_id, image) rows -> the model's inputs of each image (its resized,
    mean-subtracted pixels as float32 bytes, their size, the scale, the decoded size), or why there are none.

    Args:
        model: the model folder or Hub id (only its image processor is loaded).
        max_pixels: refuse larger images as decompression bombs (0: no limit), as `--max-pixels`.
    """
    import pyarrow as pa

    from .dataset_input import _image_entry

    decoder = _decoder(model, max_pixels)
    columns = {name: [] for name in (ID_COLUMN, WHERE_COLUMN, *PIXEL_COLUMNS, ERROR_COLUMN)}
    ids = batch.column(ID_COLUMN).to_pylist()
    places = _column_or_nones(batch, WHERE_COLUMN)
    problems = _column_or_nones(batch, PROBLEM_COLUMN)
    for image_id, value, where, problem in zip(ids, batch.column(IMAGE_COLUMN).to_pylist(), places, problems):
        where = where or f"image {image_id}"
        if problem is None:
            entry = _image_entry(str(image_id), where, value)
        else:
            entry = ImageEntry(str(image_id), where, problem=problem)
        item = decoder[entry]
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


def _column_or_nones(batch, name: str) -> list:
    return batch.column(name).to_pylist() if name in batch.column_names else [None] * batch.num_rows


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
        return _output_table(rows, self.schema)

    def _empty(self, image_id: str) -> RegionRecord:
        return _empty_record(image_id, self.model.config, self.probs_dtype)


def feature_attributes(model: str, selection: dict | None, given) -> dict:
    """The run's settings that the CLI records in the Parquet shards' metadata."""
    attributes = {"model": model, **(selection or {})}
    if given is not None:
        attributes.update(boxes_from=str(given.path), boxes_sha256=given.digest)
    return attributes


def _empty_record(image_id: str, config, probs_dtype: str | None) -> RegionRecord:
    """A record without regions of this model's widths: the template of the output's schema."""
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


def _output_table(rows: _Rows, schema):
    """The records, then a row of nulls for each failure, with the `where` and `error` columns."""
    import pyarrow as pa

    from .parquet import records_to_table

    table = records_to_table(rows.records, schema)
    if rows.failed:
        ids = pa.array([entry.image_id for entry, _ in rows.failed], pa.string())
        nulls = [pa.nulls(len(rows.failed), field.type) for field in list(schema)[1:]]
        table = pa.concat_tables([table, pa.Table.from_arrays([ids, *nulls], schema=schema)])
    where = [None] * len(rows.records) + [entry.path for entry, _ in rows.failed]
    errors = [None] * len(rows.records) + [reason for _, reason in rows.failed]
    table = table.append_column(WHERE_COLUMN, pa.array(where, pa.string()))
    return table.append_column(ERROR_COLUMN, pa.array(errors, pa.string()))


# ---------------------------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------------------------

CONNECT_TIMEOUT_S = 10
ROWS_PER_CALL = 16
DECODED_IMAGE_BYTES = (
    3 * 600 * 1000 * 4
)  # images per stage call: a few model batches, a few seconds of a CPU actor's work


def featurize(
    dataset,
    model: str,
    actors: int = 1,
    actor_cpus: float = 1,
    actor_gpus: float = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    rows_per_call: int = ROWS_PER_CALL,
    featurizer: type = FeaturizeImages,
    **model_options,
):
    """The two stages over a dataset of (image_id, image) rows: `decode_images` as CPU tasks (one CPU each), then
    `FeaturizeImages` on `actors` actors of `actor_cpus` CPUs and `actor_gpus` GPUs each (`model_options` are its
    arguments: `device`, `dtype`, `batch_size`, the region selection...; `featurizer` a subclass of it).

    Size the actors to the cluster: they hold their CPUs for the whole run, and reading and decoding need CPUs
    besides (with every CPU held by an actor, nothing feeds them and the run waits forever). On GPUs: one actor
    per GPU (`actor_gpus=1`, `device="cuda"`), a CPU or two each, the other CPUs decode.
    """
    ray = require_ray()
    decoded = dataset.map_batches(
        decode_images,
        fn_kwargs={"model": model, "max_pixels": max_pixels},
        batch_format="pyarrow",
        batch_size=rows_per_call,
        num_cpus=1,
        # what a task holds: the pixels of its images, resized to at most ~600 x 1000 (float32, 3 channels); a
        # reservation of its own also keeps Ray from fusing decoding into the model's actors
        memory=rows_per_call * DECODED_IMAGE_BYTES * 2,
    )
    return decoded.map_batches(
        featurizer,
        fn_constructor_kwargs={"model": model, **model_options},
        batch_format="pyarrow",
        batch_size=rows_per_call,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=actor_cpus,
        num_gpus=actor_gpus,
    )


def write_features(dataset, output: str | os.PathLike, overwrite: bool = False):
    """Run the pipeline into our Parquet feature folder `output` and its errors file (see `FeatureDatasink`);
    returns the sink, which counts what it wrote (`extracted`, `failed`)."""
    from .ray_output import FeatureDatasink

    sink = FeatureDatasink(output, overwrite)
    dataset.write_datasink(sink)
    return sink


# ---------------------------------------------------------------------------------------------------------------
# `butd-frcnn extract --ray [ADDRESS]`
# ---------------------------------------------------------------------------------------------------------------


def _connect(address: str):
    """Ray, connected to `address` (`local`: a new instance on this machine); an unreachable cluster is an
    `ExtractionError` in one line."""
    ray = require_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    options = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    try:
        if address == "local":
            ray.init(**options)
        else:
            _check_reachable(address)
            ray.init(address=address, **options)
    except Exception as error:  # noqa: BLE001 (Ray raises many kinds; the user needs the address and the reason)
        reason = " ".join(str(error).split())[:300]
        raise ExtractionError(
            f"--ray {address}: cannot connect to a Ray cluster there ({type(error).__name__}: {reason}). Start one "
            "(ray start --head) or give its address (host:6379)"
        ) from None
    return ray


def _check_reachable(address: str) -> None:
    """Ray retries an address that does not answer for minutes: try its port once first."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # `auto`, or a form Ray resolves itself
    with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
        pass


def _actor_resources(ray, options, actors: int | None, actor_cpus: float) -> dict:
    """How many model actors, with which resources: all GPUs, or the CPUs but one (see `featurize`)."""
    resources = ray.cluster_resources()
    if options.device.startswith("cuda"):
        gpus = int(resources.get("GPU", 0))
        if gpus == 0 and not actors:
            raise ExtractionError("--device cuda: the Ray cluster has no GPU")
        return {"actors": actors or gpus, "actor_cpus": actor_cpus, "actor_gpus": 1}
    cpus = int(resources.get("CPU", 1))
    if not actors:
        actors = max(1, int((cpus - 1) // actor_cpus))
    if actors * actor_cpus >= cpus:
        raise ExtractionError(
            f"--ray-actors {actors} x --ray-actor-cpus {actor_cpus:g} hold all {cpus} CPUs of the cluster: nothing "
            "would be left to read and decode the images. Give fewer actors or CPUs per actor"
        )
    return {"actors": actors, "actor_cpus": actor_cpus, "actor_gpus": 0}


def _read(options):
    """The run's images as a Ray dataset of (image_id, image) rows."""
    from .webdataset_input import is_webdataset, tar_files

    if options.dataset is None:
        return read_image_files(options.inputs, options.image_ids)
    if is_webdataset(options.dataset):
        return read_webdataset_images(tar_files(options.dataset), options.image_column)
    from .parquet_shards import parquet_files

    found = parquet_files(options.dataset, options.split)
    if found is None:
        raise ExtractionError(
            f"--ray --dataset {options.dataset}: give Parquet files (a folder or glob) or WebDataset tars; save the "
            "dataset with to_parquet first"
        )
    files, _ = found
    image_column = options.image_column
    if image_column is None:
        import pyarrow.parquet as pq

        from .parquet_shards import _image_column

        image_column = _image_column(pq.read_schema(files[0]), options.dataset)
    return read_parquet_images(files, image_column, options.id_column)


def run_with_ray(options, address: str, actors: int | None = None, actor_cpus: float = 1) -> str:
    """`extract` on Ray (see the module docstring); returns the run's report."""
    started = time.perf_counter()
    ray = _connect(address)
    try:
        sizes = _actor_resources(ray, options, actors, actor_cpus)
        dataset = featurize(
            _read(options),
            options.model,
            max_pixels=options.max_pixels,
            device="cuda" if options.device.startswith("cuda") else options.device,
            dtype=options.dtype,
            batch_size=options.batch_size,
            min_boxes=options.min_boxes,
            max_boxes=options.max_boxes,
            score_threshold=options.score_threshold,
            boxes_from=None if options.boxes_from is None else str(options.boxes_from),
            image_ids=options.image_ids,
            save_class_probs=options.save_class_probs,
            probs_dtype=options.probs_dtype,
            **sizes,
        )
        sink = write_features(dataset, options.output, options.overwrite)
    finally:
        ray.shutdown()
    seconds = time.perf_counter() - started
    lines = [
        (
            f"Done: {sink.extracted} images extracted in {seconds:.1f} s, {sink.extracted / seconds:.2f} images/s on "
            f"Ray ({sizes['actors']} model actors) -> {options.output}"
        )
    ]
    if sink.failed:
        lines.append(f"  {sink.failed} images could not be extracted: see {sink.errors_file}")
    return "\n".join(lines)
