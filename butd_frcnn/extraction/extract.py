"""The extraction run: list the images, decode them in workers, run the model on same-size batches, stream the
records to the output, log what failed, and stop cleanly when asked."""

import logging
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .batching import SizeBatcher, collate
from .box_files import GivenBoxes, read_box_file
from .dataset_input import DatasetSource
from .decoding import FailedImage, ImageDataset, PreparedImage, image_loader
from .defaults import DEFAULT_MAX_PIXELS, PROBS_DTYPES, canonical_precision, default_num_workers
from .feature_format import DEFAULT_PARQUET_SHARD_MB, OutputFormat, WriterOptions
from .formats import FORMATS, resolve_format
from .inputs import FileSource, ImageEntry, ImageSource
from .model_loading import load_model, resolve_device
from .parquet_shards import ParquetShardSource, parquet_files
from .records import ExtractionError, records_from_model_output
from .sharding import Shard
from .sidecars import ErrorLog, RunManifest, errors_path, manifest_path
from .webdataset_input import WebDatasetSource, is_webdataset

logger = logging.getLogger(__name__)


# The original drops proposals under RPN_MIN_SIZE (16 px) in original pixels: an image with a side under 16 px keeps
# none. Such a row would hold empty arrays, which LXMERT's and the original's readers cannot reshape.
NO_REGIONS = "no region survives the proposal size filter (a side under 16 pixels?): nothing to write"
# ids of box-file entries for images the run was not given, named in the summary
UNLISTED_SHOWN = 10


DEFAULT_BATCH_SIZES = {"cpu": 4}
"""Images per forward by device when not asked: on a CPU a batch gives each image the bits it gets alone (the model
runs the images one at a time where PyTorch would give a batch other kernels) and is faster (its backbone's small
maps use the cores better); elsewhere 1, bit-identical to one image at a time."""


@dataclass
class ExtractOptions:
    """What `butd-frcnn extract` was asked to do (see its `--help` for each option)."""

    model: str
    output: Path
    inputs: list[str] = field(default_factory=list)
    dataset: Any = None  # a `--dataset` name or path, or a `datasets.Dataset` / `IterableDataset` (or a dict of them)
    split: str | None = None
    dataset_config: str | None = None
    image_column: str | None = None
    id_column: str | None = None
    format: str | None = None
    min_boxes: int | None = None
    max_boxes: int | None = None
    score_threshold: float | None = None
    batch_size: int | None = None  # None: DEFAULT_BATCH_SIZES by device
    num_workers: int = field(default_factory=default_num_workers)
    device: str = "cpu"
    dtype: str = "fp32"
    resume: bool = False
    overwrite: bool = False
    shard: Shard = field(default_factory=Shard)
    image_ids: str = "stem"
    max_pixels: int = DEFAULT_MAX_PIXELS
    checkpoint_images: int = 1000
    parquet_shard_mb: float = DEFAULT_PARQUET_SHARD_MB
    progress: bool = True
    boxes_from: str | Path | None = None
    save_class_probs: bool = False
    probs_dtype: str = "float32"

    def __post_init__(self):
        self.output = Path(self.output)


@dataclass
class ExtractionSummary:
    """Counts and times of a run (or, combined, of all ranks of a distributed run)."""

    output: Path
    errors_file: Path
    listed: int = 0
    assigned: int = 0
    already_done: int = 0
    extracted: int = 0
    failed: int = 0
    boxes: int = 0
    seconds: float = 0.0
    setup_seconds: float = 0.0
    decode_seconds: float = 0.0
    model_seconds: float = 0.0
    write_seconds: float = 0.0
    interrupted: bool = False
    boxes_file: str = ""
    unlisted_boxes: list[str] = field(default_factory=list)

    @property
    def not_attempted(self) -> int:
        return self.assigned - self.already_done - self.extracted - self.failed

    @property
    def images_per_second(self) -> float:
        """Throughput once running (listing the inputs and loading the model left out)."""
        running = self.seconds - self.setup_seconds
        return self.extracted / running if running > 0 else 0.0

    @property
    def complete(self) -> bool:
        return not self.interrupted and self.not_attempted == 0

    @classmethod
    def combine(cls, summaries: list["ExtractionSummary"], output: Path) -> "ExtractionSummary":
        first = summaries[0]
        total = cls(
            output=output,
            errors_file=errors_path(output),
            listed=first.listed,
            boxes_file=first.boxes_file,
            unlisted_boxes=first.unlisted_boxes,
        )
        for part in summaries:
            for name in ("assigned", "already_done", "extracted", "failed", "boxes"):
                setattr(total, name, getattr(total, name) + getattr(part, name))
            for name in ("decode_seconds", "model_seconds", "write_seconds"):
                setattr(total, name, getattr(total, name) + getattr(part, name))
            total.seconds = max(total.seconds, part.seconds)
            total.setup_seconds = max(total.setup_seconds, part.setup_seconds)
            total.interrupted |= part.interrupted
        return total

    def report(self) -> str:
        lines = [
            (
                f"{'Interrupted' if self.interrupted else 'Done'}: {self.extracted} images extracted "
                f"({self.boxes} boxes) in {self.seconds:.1f} s, {self.images_per_second:.2f} images/s -> {self.output}"
            ),
            (
                f"  listed {self.listed}, to do here {self.assigned}, already done {self.already_done}, "
                f"failed {self.failed}, not attempted {self.not_attempted}"
            ),
            (
                f"  time: setup {self.setup_seconds:.1f} s (listing, model loading), decoding "
                f"{self.decode_seconds:.1f} s (summed over workers), model {self.model_seconds:.1f} s, "
                f"writing {self.write_seconds:.1f} s"
            ),
        ]
        if self.failed:
            lines.append(f"  {self.failed} images could not be extracted: see {self.errors_file}")
        if self.not_attempted:
            lines.append("  rerun the same command with --resume to extract the rest")
        if self.unlisted_boxes:
            shown = ", ".join(self.unlisted_boxes[:UNLISTED_SHOWN])
            more = ", ..." if len(self.unlisted_boxes) > UNLISTED_SHOWN else ""
            lines.append(
                f"  {len(self.unlisted_boxes)} images of {self.boxes_file} are not among the images given, so their "
                f"boxes were not used: {shown}{more}"
            )
        return "\n".join(lines)


class GracefulStop:
    """First Ctrl-C (or SIGTERM): finish and write the current batch, then stop; a second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self) -> "GracefulStop":  # noqa: PYI034 (typing.Self needs Python 3.11)
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("stopping after the current batch (Ctrl-C again to stop at once); --resume continues")


def image_source(options: ExtractOptions) -> ImageSource:
    """Where the run's images come from: image files and folders, or a dataset."""
    if options.dataset is None:
        if not options.inputs:
            raise ExtractionError("nothing to extract: give image files, folders or list files, or --dataset")
        return FileSource(options.inputs, options.image_ids)
    if options.inputs:
        raise ExtractionError("give either image files and folders or --dataset, not both")
    if is_webdataset(options.dataset):
        if options.id_column is not None:
            raise ExtractionError("--id-column: the samples of WebDataset tars are named by their keys; leave it out")
        return WebDatasetSource(options.dataset, options.shard, options.image_column)
    found = parquet_files(options.dataset, options.split) if options.shard.count > 1 else None
    if found is not None:  # a share that reads only its files or row groups
        files, split = found
        name = f"{options.dataset}[{split}]"
        return ParquetShardSource(name, files, options.shard, options.image_column, options.id_column)
    return DatasetSource(
        options.dataset, options.split, options.image_column, options.id_column, options.dataset_config
    )


def _boxes_with_entries(entries: Iterable[ImageEntry], given: GivenBoxes) -> Iterator[ImageEntry]:
    """The entries, those that the box file gives no box marked as failures (never decoded, never written with zero
    regions)."""
    for entry in entries:
        boxes = given.boxes.get(entry.image_id)
        if entry.problem is None and (boxes is None or len(boxes) == 0):
            why = "has no entry for this image" if boxes is None else "gives this image no box"
            yield replace(entry, data=None, problem=f"the box file {given.path} {why}: nothing to write")
        else:
            yield entry


def _settings_conflict(output: Path, previous: RunManifest, manifest: RunManifest) -> str:
    """Why an output cannot be resumed with this run's settings, in words."""
    remedy = "choose another --output, or --overwrite"
    if previous.settings().get("boxes_sha256") != manifest.settings().get("boxes_sha256"):

        def described(run: RunManifest) -> str:
            if run.boxes_from is None:
                return "detected regions"
            return f"the boxes of {run.boxes_from['path']} (sha256 {run.boxes_from['sha256'][:16]}...)"

        return (
            f"{output} was written with {described(previous)}, this run gives {described(manifest)}: resume it "
            f"with the box file it was written with, or {remedy}"
        )
    return f"{output} was written with {previous.settings()}, this run asks for {manifest.settings()}: {remedy}"


def _prepare_output(format: OutputFormat, output: Path, options: ExtractOptions, manifest: RunManifest) -> None:
    """Refuse to clobber an output by accident, and to resume one written with other settings."""
    if format.exists(output):
        if options.overwrite:
            format.remove(output)
            manifest_path(output).unlink(missing_ok=True)
        elif not options.resume:
            raise ExtractionError(
                f"{output} exists: pass --resume to add what it lacks, or --overwrite to start again"
            )
        else:
            previous = RunManifest.load(output)
            if previous is None:
                logger.warning("%s has no run manifest: cannot check that it was written with these settings", output)
            elif previous.settings() != manifest.settings():
                raise ExtractionError(_settings_conflict(output, previous, manifest))
            elif previous.model != manifest.model:
                logger.warning(
                    "%s was written with the model %s, resumed with %s", output, previous.model, manifest.model
                )
    output.parent.mkdir(parents=True, exist_ok=True)


class _Pipeline:
    """Runs batches through the model and hands the records to the writer, keeping the summary.

    Args:
        selection: the model's selection arguments (detection), or None with `given` boxes.
        given: image id -> the boxes to describe instead of detecting (`--boxes-from`).
        probs_dtype: keep each region's class distributions in this dtype (None: not kept).
    """

    def __init__(
        self,
        model,
        selection: dict | None,
        writer,
        errors: ErrorLog,
        summary: ExtractionSummary,
        progress,
        given: GivenBoxes | None = None,
        probs_dtype: str | None = None,
    ):
        self.model = model
        self.selection = selection
        self.given = given
        self.probs_dtype = probs_dtype
        self.writer = writer
        self.errors = errors
        self.summary = summary
        self.progress = progress
        self.device = next(model.parameters()).device

    def fail(self, failure: FailedImage) -> None:
        self.errors.add(failure.entry, failure.reason)
        self.summary.failed += 1
        self.summary.decode_seconds += failure.seconds
        self.progress.update(1)

    def run(self, images: list[PreparedImage]) -> None:
        inputs = collate(images)
        ids = [image.entry.image_id for image in images]
        if self.given is None:
            regions = self.selection
        else:  # the original sizes are what the model checks that each box has a pixel inside its image against
            regions = {
                "boxes": [torch.from_numpy(self.given.boxes[image_id]) for image_id in ids],
                "original_sizes": inputs["original_sizes"],
            }
        start = time.perf_counter()
        try:
            with torch.inference_mode():  # the outputs only go to numpy: no autograd bookkeeping at all
                outputs = self.model(
                    pixel_values=inputs["pixel_values"].to(self.device),  # the model casts to its precision
                    image_sizes=inputs["image_sizes"].to(self.device),
                    scales=inputs["scales"].to(self.device),
                    **regions,
                )
            records = records_from_model_output(outputs, ids, inputs["original_sizes"], self.probs_dtype)
        except Exception as error:  # noqa: BLE001 (a bad image must not take its batch, or the run, down with it)
            if len(images) > 1:
                logger.warning("the model failed on a batch (%s); retrying its images one by one", error)
                for image in images:
                    self.run([image])
                return
            reason = f"{images[0].entry.path}: the model failed on it: {type(error).__name__}: {error}"
            self.fail(FailedImage(images[0].entry, reason))
            return
        written = time.perf_counter()
        self.summary.model_seconds += written - start
        for image, record in zip(images, records):
            if record.num_boxes == 0:
                self.fail(FailedImage(image.entry, f"{image.entry.path}: {NO_REGIONS}"))
                continue
            self.writer.write(record)
            self.summary.extracted += 1
            self.summary.boxes += record.num_boxes
            self.progress.update(1)
        self.writer.commit()
        self.errors.commit()
        self.summary.write_seconds += time.perf_counter() - written


def extract(options: ExtractOptions) -> ExtractionSummary:
    """Run an extraction (one share of it under `--shard` or `torchrun`); returns its summary.

    Raises:
        ExtractionError: a problem the user must fix (listing, model, output), before work starts where possible.
    """
    started = time.perf_counter()
    format = resolve_format(options.format, options.output)
    format.require()
    device = resolve_device(options.device)
    batch_size = DEFAULT_BATCH_SIZES.get(device.type, 1) if options.batch_size is None else options.batch_size
    if batch_size < 1:
        raise ExtractionError("--batch-size must be at least 1")
    _check_region_options(options, format)
    given = read_box_file(options.boxes_from, options.image_ids) if options.boxes_from is not None else None
    source = image_source(options)
    ids = source.image_ids()
    mine = range(len(ids)) if source.sharded else options.shard.select(range(len(ids)))
    output = options.shard.output_path(options.output)
    model, processor = load_model(options.model, device, options.dtype)
    selection = {} if given is not None else _selection(options, model.config)
    manifest = RunManifest(
        format=format.name,
        model=options.model,
        selection=selection,
        dtype=canonical_precision(options.dtype),
        shard_index=options.shard.index,
        shard_count=options.shard.count,
        shard_by_units=source.sharded and options.shard.count > 1,
        source=source.describe(),
        image_ids=[ids[index] for index in mine],
        boxes_from=None if given is None else given.source(),
        class_probs=options.probs_dtype if options.save_class_probs else None,
    )
    _prepare_output(format, output, options, manifest)
    manifest.save(output)
    attributes = {"model": options.model, **selection}
    if given is not None:
        attributes.update(boxes_from=str(given.path), boxes_sha256=given.digest)
    writer = format.open_writer(
        output,
        options.resume,
        WriterOptions(
            attributes,
            options.checkpoint_images,
            options.parquet_shard_mb,
            manifest.class_probs,
            given_boxes=given is not None,
        ),
    )
    done = set(writer.completed)
    todo = [index for index in mine if ids[index] not in done]
    errors = ErrorLog(errors_path(output))
    summary = ExtractionSummary(
        output=output,
        errors_file=errors.path,
        listed=len(ids),
        assigned=len(mine),
        already_done=len(mine) - len(todo),
    )
    if given is not None:
        listed = set(ids)
        summary.boxes_file = str(given.path)
        summary.unlisted_boxes = [image_id for image_id in given.boxes if image_id not in listed]
    label = f"shard {options.shard}" if options.shard.count > 1 else "extract"
    progress = tqdm(total=len(todo), unit="img", desc=label, disable=not options.progress, dynamic_ncols=True)
    if format.writes_max_boxes and selection:  # the reader cuts MIN-MAX itself from the MAX best, sorted
        selection = {**selection, "min_boxes": selection["max_boxes"]}
    keep_probs = options.save_class_probs or format.needs_class_probs
    pipeline = _Pipeline(
        model,
        selection or None,
        writer,
        errors,
        summary,
        progress,
        given,
        options.probs_dtype if keep_probs else None,
    )
    batcher = SizeBatcher(batch_size)
    summary.setup_seconds = time.perf_counter() - started
    try:
        with GracefulStop() as stop:
            dataset = ImageDataset(processor, options.max_pixels)
            entries = source.images(todo)
            if given is not None:
                entries = _boxes_with_entries(entries, given)
            loader = iter(image_loader(dataset, entries, options.num_workers))
            for item in loader:
                if isinstance(item, FailedImage):
                    pipeline.fail(item)
                else:
                    summary.decode_seconds += item.seconds
                    for batch in batcher.add(item):
                        pipeline.run(batch)
                if stop.requested:
                    break
            else:
                for batch in batcher.drain():
                    pipeline.run(batch)
            del loader  # shuts the workers down
            summary.interrupted = stop.requested
            closing = time.perf_counter()
            writer.close()  # the last HDF5 checkpoint, the last Parquet shard
            summary.write_seconds += time.perf_counter() - closing
    except BaseException:
        writer.abort()
        raise
    finally:
        errors.close()
        progress.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _check_region_options(options: ExtractOptions, format: OutputFormat) -> None:
    """Refuse region options that do not fit together or the format, before any work."""
    if options.boxes_from is not None and (
        options.min_boxes or options.max_boxes or options.score_threshold is not None
    ):
        raise ExtractionError(
            "--boxes and --score-threshold choose among detected regions; with --boxes-from every given box is a "
            "region: drop them"
        )
    if options.probs_dtype not in PROBS_DTYPES:
        raise ExtractionError(f"--probs-dtype must be one of {', '.join(PROBS_DTYPES)}, got {options.probs_dtype!r}")
    if options.save_class_probs and not format.stores_class_probs:
        keeping = ", ".join(name for name, other in FORMATS.items() if other.stores_class_probs)
        raise ExtractionError(
            f"--save-class-probs: the {format.name} format has no room for class distributions (its fields are "
            f"what existing readers of such files expect); use one of {keeping}"
        )


def _selection(options: ExtractOptions, config) -> dict:
    """The region selection of a detection run: the options, else the model's."""
    selection = {
        "min_boxes": options.min_boxes or config.min_boxes,
        "max_boxes": options.max_boxes or config.max_boxes,
        "score_threshold": config.score_threshold if options.score_threshold is None else options.score_threshold,
    }
    if not 0 < selection["min_boxes"] <= selection["max_boxes"]:
        raise ExtractionError(f"--boxes needs 0 < MIN <= MAX, got {selection['min_boxes']}-{selection['max_boxes']}")
    return selection
