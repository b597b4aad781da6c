"""`butd-frcnn extract` and `butd-frcnn merge`."""

import argparse
import logging
import os
import re
from datetime import timedelta
from pathlib import Path

from ..hub_errors import failure_line, hub_failure, show_traceback
from .defaults import DEFAULT_MAX_PIXELS, PRECISION_CHOICES, PROBS_DTYPES, RAY_INSTALL_HINT, default_num_workers
from .feature_format import DEFAULT_PARQUET_SHARD_MB
from .formats import FORMATS, format_from_path
from .inputs import ID_STYLES
from .records import ExtractionError
from .sharding import Shard, all_shard_paths

# torch, transformers, Ray and the Hub client load in the run_* functions: `butd-frcnn extract --help` needs none

logger = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130
PUSH_LATER = (
    "the push at the end needs the Hub; if it fails, the features stay complete in {output}, and rerunning the "
    "same command with --resume pushes them (nothing is extracted again)"
)
DATASET_OPTIONS = ("split", "config", "image_column", "id_column")
# ranks of one torchrun wait for each other at the end; a resumed rank may have far less left than the others
DISTRIBUTED_TIMEOUT = timedelta(days=7)


def parse_boxes(text: str) -> tuple[int, int]:
    """`36` -> (36, 36); `10-100` -> (10, 100)."""
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected N or MIN-MAX (e.g. 36 or 10-100), got {text!r}")
    low = int(match[1])
    high = int(match[2]) if match[2] else low
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError(f"need 0 < MIN <= MAX, got {text!r}")
    return low, high


def _shard(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except ExtractionError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_parser(subparsers) -> None:
    extract_parser = subparsers.add_parser(
        "extract",
        help="extract region features of images or a dataset into BUTD/LXMERT TSV, HDF5, npz, UNITER npz or "
        "Parquet files",
        description="Run the model over images (files, folders, list files, or a Hugging Face dataset) and write the "
        "selected regions' (or given boxes') boxes, features, objects and attributes. Resumable (--resume), shardable (--shard I/N, or "
        "torchrun: one shard per rank, merged at the end); Parquet outputs can be pushed to the Hub as a dataset.",
    )
    extract_parser.add_argument("--model", required=True, help="converted model folder or Hugging Face Hub id")
    files = extract_parser.add_argument_group("images from files")
    files.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="image files, folders (recursive) or list files (.txt/.lst/.list: "
        "one `path` or `id<TAB>path` per line, relative to the list's folder)",
    )
    files.add_argument(
        "--image-ids",
        choices=ID_STYLES,
        default="stem",
        help="ids from file names: the name without extension "
        "(stem), or its last number (number: COCO_val2014_000000000042.jpg -> 42, as in the released TSVs)",
    )
    dataset = extract_parser.add_argument_group(
        "images from a dataset (instead of INPUT; needs pip install 'butd-frcnn[datasets]')"
    )
    dataset.add_argument(
        "--dataset",
        metavar="NAME_OR_PATH",
        help="a save_to_disk folder, a folder or glob of Parquet/Arrow files, an imagefolder folder, or a Hub "
        "dataset id (streamed; offline, from the local cache)",
    )
    dataset.add_argument("--split", help="the split to extract (default: the only one)")
    dataset.add_argument("--config", metavar="NAME", help="the dataset's configuration (Hub datasets with several)")
    dataset.add_argument("--image-column", metavar="C", help="the column of images (default: the one Image column)")
    dataset.add_argument("--id-column", metavar="C", help="the column of image ids (default: the row number)")
    output = extract_parser.add_argument_group("output")
    output.add_argument(
        "--output", "-o", required=True, type=Path, help="output file (a folder for npz, uniter-npz and parquet)"
    )
    output.add_argument(
        "--format",
        choices=FORMATS,
        help="output format; default from the output's extension (.tsv: butd-tsv, .h5: hdf5)",
    )
    output.add_argument("--resume", action="store_true", help="keep what OUTPUT holds and add the rest")
    output.add_argument("--overwrite", action="store_true", help="delete OUTPUT first")
    output.add_argument(
        "--hdf5-checkpoint",
        type=int,
        default=1000,
        metavar="N",
        help="hdf5: rewrite the file with the new images every N images (the interval grows with the file)",
    )
    output.add_argument(
        "--parquet-shard-mb",
        type=float,
        default=DEFAULT_PARQUET_SHARD_MB,
        metavar="MB",
        help=f"parquet: start a new shard file after this many MB of arrays (default {DEFAULT_PARQUET_SHARD_MB:g}); "
        "a crash loses at most the shard in progress",
    )
    output.add_argument(
        "--save-class-probs",
        action="store_true",
        help="also store each region's 1601 object and 401 attribute probabilities (cls_prob, attr_prob): hdf5, "
        "npz, parquet, uniter-npz",
    )
    output.add_argument(
        "--probs-dtype",
        choices=PROBS_DTYPES,
        help="dtype of the stored class distributions (and of uniter-npz's soft_labels): float32 (default), or "
        "float16 for half the size",
    )
    selection = extract_parser.add_argument_group("region selection")
    selection.add_argument(
        "--boxes",
        type=parse_boxes,
        help="regions per image: N (e.g. 36) or MIN-MAX (e.g. 10-100, the model's default); uniter-npz writes the "
        "MAX best, sorted, for UNITER's converter to cut",
    )
    selection.add_argument(
        "--score-threshold",
        type=float,
        help="keep regions scoring at least this, within MIN-MAX (default: the model's, 0.2)",
    )
    selection.add_argument(
        "--boxes-from",
        metavar="FILE",
        type=Path,
        help="describe these boxes instead of detecting: JSON {image_id: [[x1, y1, x2, y2], ...]}, JSON lines, COCO "
        "annotations (bbox [x, y, w, h]) or a feature file or folder of ours (see docs/given-boxes.md)",
    )
    speed = extract_parser.add_argument_group("speed and decoding")
    speed.add_argument(
        "--batch-size",
        type=int,
        help="images of one resized size per forward pass (default: 4 on a CPU, where a batch gives every image "
        "the bits it gets alone and fp32 runs ~1.1x faster; 1 on a GPU, where cuDNN may pick other kernels for "
        "other batch sizes, so larger batches may round differently there: see docs/extraction.md)",
    )
    speed.add_argument(
        "--num-workers", type=int, default=default_num_workers(), help="processes decoding images (0: in this one)"
    )
    speed.add_argument("--device", help="cpu or cuda (default: cuda where available)")
    speed.add_argument(
        "--dtype",
        choices=PRECISION_CHOICES,
        default="fp32",
        metavar="PRECISION",
        help="how the model computes (ButdFrcnnConfig.precision): fp32 (default; the original's numbers), bf16 "
        "(about 2x faster on CPUs with bf16 units, more with AMX; near-tied regions may swap, mean feature "
        "cosine ~0.9999), fp16, fp32-screened (fp32's selection and features bit for bit, but for the order of "
        "exactly tied scores: res5 screened in bf16, redone in fp32 for the selected proposals and every one whose "
        "selection is in doubt; on an AMX CPU with sharp class probabilities 0.55-0.70x fp32's time with --boxes "
        "36, but 1.15-1.5x with 10-100, where most proposals need fp32; slower still without AMX: see "
        "docs/precision.md), tf32 (CUDA "
        "only). float32, bfloat16, float16 are accepted spellings of fp32, bf16, fp16",
    )
    speed.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"skip larger images as decompression bombs (default {DEFAULT_MAX_PIXELS}, Pillow's; 0: no limit)",
    )
    speed.add_argument("--no-progress", action="store_true", help="no progress bar")
    scale = extract_parser.add_argument_group("several processes or machines")
    scale.add_argument("--shard", type=_shard, help="process share I of N (0-based) of the listing")
    scale.add_argument("--no-merge", action="store_true", help="torchrun: leave the shards unmerged")
    scale.add_argument("--remove-shards", action="store_true", help="torchrun: delete shards once merged")
    add_ray_arguments(extract_parser)
    hub = extract_parser.add_argument_group(
        "share the features on the Hugging Face Hub (parquet)",
        "Checked before any work: that a token is there and that the Hub accepts it (a refused, expired or read-only "
        "token stops the run; a Hub out of reach is a warning, and the run goes on). Only at the end, after the "
        f"extraction: creating the repository (rights to ORG) and the upload. If those fail, "
        f"{PUSH_LATER.format(output='OUTPUT')}.",
    )
    hub.add_argument(
        "--push-to-hub",
        metavar="ORG/NAME",
        help="once the run is complete, upload the Parquet output as this dataset, with a dataset card",
    )
    hub.add_argument("--private", action="store_true", help="create the dataset repository as private")
    hub.add_argument("--token", help="Hub token (default: HF_TOKEN or the `hf auth login` token)")
    extract_parser.set_defaults(func=run_extract)

    merge_parser = subparsers.add_parser(
        "merge",
        help="combine shard outputs into one, checking for missing and duplicated images",
        description="Combine the shards of `extract --shard` (or of a torchrun run) into one output.",
    )
    merge_parser.add_argument(
        "shards", nargs="*", type=Path, metavar="SHARD", help="shard outputs (default: OUTPUT's shards beside it)"
    )
    merge_parser.add_argument("--output", "-o", required=True, type=Path, help="the merged output")
    merge_parser.add_argument("--allow-missing", action="store_true", help="merge even if images are missing")
    merge_parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    merge_parser.add_argument("--remove-shards", action="store_true", help="delete the shards once merged")
    merge_parser.set_defaults(func=run_merge)


def _options(args, shard: Shard, device: str):
    from .extract import ExtractOptions

    min_boxes, max_boxes = args.boxes or (None, None)
    return ExtractOptions(
        model=args.model,
        output=args.output,
        inputs=args.inputs,
        dataset=args.dataset,
        split=args.split,
        dataset_config=args.config,
        image_column=args.image_column,
        id_column=args.id_column,
        format=args.format,
        min_boxes=min_boxes,
        max_boxes=max_boxes,
        score_threshold=args.score_threshold,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=device,
        dtype=args.dtype,
        resume=args.resume,
        overwrite=args.overwrite,
        shard=shard,
        image_ids=args.image_ids,
        max_pixels=args.max_pixels,
        checkpoint_images=args.hdf5_checkpoint,
        parquet_shard_mb=args.parquet_shard_mb,
        progress=not args.no_progress,
        boxes_from=args.boxes_from,
        save_class_probs=args.save_class_probs,
        probs_dtype=args.probs_dtype or "float32",
    )


def _usage_problem(args, torchrun: bool) -> str | None:
    """What is wrong with a combination of options, before anything is loaded."""
    if args.inputs and args.dataset:
        return "give the images as INPUT files, folders or list files, or as --dataset, not both"
    if not args.inputs and not args.dataset:
        return "nothing to extract: give INPUT files, folders or list files, or --dataset"
    dataset_only = [name for name in DATASET_OPTIONS if getattr(args, name) is not None]
    if dataset_only and not args.dataset:
        return f"{', '.join('--' + name.replace('_', '-') for name in dataset_only)} only go with --dataset"
    if torchrun and args.shard is not None:
        return "--shard and torchrun both split the work: use one of them"
    if args.boxes_from is not None and (args.boxes is not None or args.score_threshold is not None):
        return "--boxes and --score-threshold choose among detected regions; with --boxes-from every given box is one"
    format = FORMATS[args.format] if args.format else format_from_path(args.output)
    keeps_class_probs = args.save_class_probs or (format is not None and format.needs_class_probs)
    if args.probs_dtype is not None and not keeps_class_probs:
        return "--probs-dtype goes with --save-class-probs (or --format uniter-npz, for its soft_labels)"
    if not args.push_to_hub:
        return "--private and --token only go with --push-to-hub" if args.private or args.token else None
    if format is None or not format.hub_dataset:
        return "--push-to-hub uploads a Parquet output: add --format parquet"
    if args.shard is not None or (torchrun and args.no_merge):
        return "--push-to-hub needs the whole output: with --shard or --no-merge, merge the shards, then push"
    return None


def run_extract(args) -> int:
    torchrun_shard = Shard.from_torchrun()
    problem = _usage_problem(args, torchrun_shard is not None)
    if problem:
        logger.error("%s", problem)
        return 2
    import torch

    from .dataset_push import push_token
    from .extract import extract

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.push_to_hub:
        try:  # before the work: a bad login should not wait for the end of the run
            _, warning = push_token(args.token)
        except ExtractionError as error:
            logger.error("%s", error)
            show_traceback(logger)
            return 1
        if warning:
            logger.warning("%s. Extracting anyway: %s", warning, PUSH_LATER.format(output=args.output))
    if args.ray is not None:
        return _run_on_ray(args, torchrun_shard is not None)
    if torchrun_shard is not None:
        return _run_distributed(args, torchrun_shard)
    try:
        summary = extract(_options(args, args.shard or Shard(), args.device))
    except ExtractionError as error:
        logger.error("%s", error)
        show_traceback(logger)
        return 1
    except Exception as error:  # the Hub failing under a streamed --dataset
        if hub_failure(error) is None:
            raise
        safe = f"The images written to {args.output} before it are complete."
        logger.error("%s", failure_line(error, "extract", safe, "rerun this command with --resume"))
        show_traceback(logger)
        return 1
    print(summary.report())
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return _push(args, summary.complete)


def _run_on_ray(args, torchrun: bool) -> int:
    from .ray_data import run_with_ray

    problem = "--ray and torchrun both spread the work: use one of them" if torchrun else ray_usage_problem(args)
    if problem:
        logger.error("%s", problem)
        return 2
    try:
        print(run_with_ray(_options(args, Shard(), args.device), args.ray, args.ray_actors, args.ray_actor_cpus))
    except ExtractionError as error:
        logger.error("%s", error)
        show_traceback(logger)
        return 1
    return _push(args, complete=True)


def add_ray_arguments(parser) -> None:
    """The `extract` options of a Ray run (Ray itself is imported only when `--ray` is given)."""
    group = parser.add_argument_group(f"a Ray cluster (needs {RAY_INSTALL_HINT}; Parquet output)")
    group.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run on Ray Data: decoding in CPU tasks, the model in an actor pool; ADDRESS of an existing cluster "
        "(host:6379, or auto), or none to start one on this machine",
    )
    group.add_argument(
        "--ray-actors",
        type=int,
        metavar="N",
        help="model actors (default: one per GPU with --device cuda; on CPUs, one per --ray-actor-cpus CPUs of the "
        "cluster's, one CPU left to read and decode)",
    )
    group.add_argument(
        "--ray-actor-cpus",
        type=float,
        default=1,
        metavar="C",
        help="CPUs each model actor holds (default 1; its PyTorch threads)",
    )


def ray_usage_problem(args) -> str | None:
    """What `--ray` cannot be combined with, before anything is loaded."""
    if args.resume:
        return "--ray does not resume: Ray retries what fails during the run; rerun into a new output"
    if args.shard is not None:
        return "--ray splits the work itself: leave out --shard"
    if args.format is not None and not FORMATS[args.format].hub_dataset:
        return f"--ray writes the parquet format: leave out --format {args.format}"
    return None


def _push(args, complete: bool) -> int:
    """Push the finished output when asked (the exit status of the run: 1 if the push failed)."""
    if not args.push_to_hub:
        return 0
    if not complete:
        print(f"  not pushed to {args.push_to_hub}: the run is incomplete; rerun it with --resume to finish and push")
        return 0
    try:
        from .dataset_push import push_features

        url = push_features(args.output, args.push_to_hub, private=args.private, token=args.token)
    except ExtractionError as error:
        logger.error("%s", error)
        return 1
    print(f"pushed to https://huggingface.co/datasets/{args.push_to_hub} ({url})")
    return 0


def _run_distributed(args, shard: Shard) -> int:
    """One rank of a torchrun: extract this rank's shard, then rank 0 merges all of them once every rank is done."""
    import torch.distributed as dist

    from .extract import ExtractionSummary, extract
    from .merge import merge_outputs

    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if args.device == "cuda" else args.device
    dist.init_process_group(backend="gloo", timeout=DISTRIBUTED_TIMEOUT)
    try:
        try:
            summary = extract(_options(args, shard, device))
        except ExtractionError as error:
            logger.error("rank %d: %s", shard.index, error)
            return 1
        summaries: list[ExtractionSummary | None] = [None] * shard.count
        dist.all_gather_object(summaries, summary)
        status = 0
        if shard.index == 0:
            total = ExtractionSummary.combine(summaries, args.output)
            print(total.report())
            status = EXIT_INTERRUPTED if total.interrupted else 0
            if not total.complete:
                print("  the shards were not merged: resume the run (--resume), then it merges them")
            elif not args.no_merge:
                try:
                    merged = merge_outputs(
                        all_shard_paths(args.output, shard.count),
                        args.output,
                        overwrite=True,
                        remove_shards=args.remove_shards,
                    )
                except ExtractionError as error:
                    logger.error("%s", error)
                    status = 1
                else:
                    print(merged.report())
                    status = _push(args, complete=True)
        dist.barrier()
        return status
    finally:
        dist.destroy_process_group()


def run_merge(args) -> int:
    from .merge import find_shards, merge_outputs

    shards = args.shards or find_shards(args.output)
    try:
        if not shards:
            raise ExtractionError(f"no shards of {args.output} found beside it: name them")
        summary = merge_outputs(shards, args.output, args.allow_missing, args.overwrite, args.remove_shards)
    except ExtractionError as error:
        logger.error("%s", error)
        return 1
    print(summary.report())
    return 0
