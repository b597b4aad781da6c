"""`butd-frcnn extract` and `butd-frcnn merge`."""

import argparse
import logging
import os
import re
from datetime import timedelta
from pathlib import Path

import torch

from .decoding import DEFAULT_MAX_PIXELS
from .extract import ExtractionSummary, ExtractOptions, default_num_workers, extract
from .formats import FORMATS
from .inputs import ID_STYLES
from .merge import find_shards, merge_outputs
from .model_loading import PRECISION_CHOICES
from .records import ExtractionError
from .sharding import Shard, all_shard_paths

logger = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130
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
        help="extract region features of images into BUTD/LXMERT TSV, HDF5 or npz files",
        description="Run the model over images and write the selected regions' boxes, features, objects and "
        "attributes. Resumable (--resume), shardable (--shard I/N, or torchrun: one shard per rank, merged at the end).",
    )
    extract_parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders (recursive) or list files (.txt/.lst/.list: "
        "one `path` or `id<TAB>path` per line, relative to the list's folder)",
    )
    extract_parser.add_argument("--model", required=True, help="converted model folder or Hugging Face Hub id")
    extract_parser.add_argument("--output", "-o", required=True, type=Path, help="output file (folder for npz)")
    extract_parser.add_argument(
        "--format",
        choices=FORMATS,
        help="output format; default from the output's extension (.tsv: butd-tsv, .h5: hdf5)",
    )
    extract_parser.add_argument(
        "--boxes",
        type=parse_boxes,
        help="regions per image: N (e.g. 36) or MIN-MAX (e.g. 10-100, the model's default)",
    )
    extract_parser.add_argument(
        "--score-threshold",
        type=float,
        help="keep regions scoring at least this, within MIN-MAX (default: the model's, 0.2)",
    )
    extract_parser.add_argument(
        "--batch-size",
        type=int,
        help="images of one resized size per forward pass (default: 4 on a CPU, where a batch gives every image "
        "the bits it gets alone and runs the backbone faster; 1 on a GPU, where cuDNN may pick other kernels for "
        "other batch sizes: larger batches are much faster there but may round differently, see the README)",
    )
    extract_parser.add_argument(
        "--num-workers", type=int, default=default_num_workers(), help="processes decoding images (0: in this one)"
    )
    extract_parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    extract_parser.add_argument(
        "--dtype",
        choices=PRECISION_CHOICES,
        default="fp32",
        metavar="PRECISION",
        help="how the model computes: fp32 (default; the original's numbers), bf16 (2-3x faster on CPUs with bf16 "
        "units; near-tied regions may swap), fp16, fp32-screened (fp32's results; res5 screened in bf16 and redone "
        "in fp32 where the selection is in doubt: pays where bf16 is much faster than fp32), tf32 (CUDA only). "
        "float32, bfloat16, float16 are spellings of fp32, bf16, fp16. See ButdFrcnnConfig.precision and the README",
    )
    extract_parser.add_argument("--resume", action="store_true", help="keep what OUTPUT holds and add the rest")
    extract_parser.add_argument("--overwrite", action="store_true", help="delete OUTPUT first")
    extract_parser.add_argument("--shard", type=_shard, help="process share I of N (0-based) of the listing")
    extract_parser.add_argument(
        "--image-ids",
        choices=ID_STYLES,
        default="stem",
        help="ids from file names: the name without extension "
        "(stem), or its last number (number: COCO_val2014_000000000042.jpg -> 42, as in the released TSVs)",
    )
    extract_parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"skip larger images as decompression bombs (default {DEFAULT_MAX_PIXELS}, Pillow's; 0: no limit)",
    )
    extract_parser.add_argument(
        "--hdf5-checkpoint",
        type=int,
        default=1000,
        metavar="N",
        help="hdf5: rewrite the file with the new images every N images (the interval grows with the file)",
    )
    extract_parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    extract_parser.add_argument("--no-merge", action="store_true", help="torchrun: leave the shards unmerged")
    extract_parser.add_argument("--remove-shards", action="store_true", help="torchrun: delete shards once merged")
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


def _options(args, shard: Shard, device: str) -> ExtractOptions:
    min_boxes, max_boxes = args.boxes or (None, None)
    return ExtractOptions(
        inputs=args.inputs,
        model=args.model,
        output=args.output,
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
        progress=not args.no_progress,
    )


def run_extract(args) -> int:
    torchrun_shard = Shard.from_torchrun()
    if torchrun_shard is None:
        try:
            summary = extract(_options(args, args.shard or Shard(), args.device))
        except ExtractionError as error:
            logger.error("%s", error)
            return 1
        print(summary.report())
        return EXIT_INTERRUPTED if summary.interrupted else 0
    if args.shard is not None:
        logger.error("--shard and torchrun both split the work: use one of them")
        return 2
    return _run_distributed(args, torchrun_shard)


def _run_distributed(args, shard: Shard) -> int:
    """One rank of a torchrun: extract this rank's shard, then rank 0 merges all of them once every rank is done."""
    import torch.distributed as dist

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
        dist.barrier()
        return status
    finally:
        dist.destroy_process_group()


def run_merge(args) -> int:
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
