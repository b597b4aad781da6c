"""Images per second of `butd-frcnn extract` on this machine, and where the time goes.

Two models: the golden TINY network (its seed-0 weights, converted) and the full-size default configuration
(ResNet-101, random weights: the same amount of computation as the real model). For each precision (`--dtype` of
`butd-frcnn extract`) and batch size, the tool runs in-process over generated 640x480 photos-like JPEGs (all one size,
so batches fill; resized to 600x800) into a BUTD TSV, and the script prints the throughput once running (model loading
left out), the time per image spent decoding (summed over the worker processes, so it overlaps the model), in the
model, and writing, and whether the file is byte for byte the one batch 1 wrote.

Usage: python benchmarks/benchmark_extraction.py [--tiny-images 16] [--full-images 4] [--batch-sizes 1 2 4]
       [--dtypes fp32 bf16 fp32-screened] [--workers 1] [--device cpu] [--threads N] [--no-full] [--no-tiny]
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
GOLDEN = REPO_ROOT.parent / "shared" / "golden"
sys.path.insert(0, str(REPO_ROOT))

from butd_frcnn import ButdFrcnnConfig, ButdFrcnnImageProcessor, ButdFrcnnModel
from butd_frcnn.configuration_butd_frcnn import PRECISIONS
from butd_frcnn.conversion.caffemodel import read_caffemodel
from butd_frcnn.conversion.weights import caffe_to_state_dict, config_from_caffe
from butd_frcnn.extraction import ExtractOptions, extract


def make_images(folder: Path, count: int) -> Path:
    """Smooth random 640x480 JPEGs (upsampled noise), like photos to the decoder."""
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for index in range(count):
        small = rng.randint(0, 256, size=(30, 40, 3)).astype(np.uint8)
        Image.fromarray(small).resize((640, 480), Image.BICUBIC).save(folder / f"image_{index:04d}.jpg", quality=90)
    return folder


def save(model: ButdFrcnnModel, folder: Path) -> Path:
    model.save_pretrained(folder)
    ButdFrcnnImageProcessor().save_pretrained(folder)
    return folder


def tiny_model(folder: Path) -> Path:
    net = read_caffemodel(GOLDEN / "tiny_seed0.caffemodel")
    config = config_from_caffe(net)
    state_dict, _ = caffe_to_state_dict(net, config)
    model = ButdFrcnnModel(config).eval()
    model.load_state_dict(state_dict, strict=True)
    return save(model, folder)


def full_model(folder: Path) -> Path:
    torch.manual_seed(0)
    return save(ButdFrcnnModel(ButdFrcnnConfig()).eval(), folder)


def measure(name: str, model: Path, images: Path, args, workdir: Path) -> None:
    for dtype in args.dtypes:
        first = None
        for batch_size in args.batch_sizes:
            output = workdir / f"{name}-{dtype}-{batch_size}.tsv"
            summary = extract(
                ExtractOptions(
                    inputs=[str(images)],
                    model=str(model),
                    output=output,
                    batch_size=batch_size,
                    num_workers=args.workers,
                    device=args.device,
                    dtype=dtype,
                    overwrite=True,
                    progress=False,
                )
            )
            first = first or output.read_bytes()
            count = max(summary.extracted, 1)
            print(
                f"{name:<6} {dtype:<13} batch {batch_size}: {summary.images_per_second:7.3f} images/s over "
                f"{summary.extracted} images | per image: decoding {1000 * summary.decode_seconds / count:7.1f} ms "
                f"(in workers), model {1000 * summary.model_seconds / count:8.1f} ms, writing "
                f"{1000 * summary.write_seconds / count:5.1f} ms | setup {summary.setup_seconds:.1f} s | "
                f"{'same bytes as batch ' + str(args.batch_sizes[0]) if output.read_bytes() == first else 'DIFFERS'}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny-images", type=int, default=16)
    parser.add_argument("--full-images", type=int, default=4)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--dtypes", nargs="+", choices=PRECISIONS, default=["fp32"], help="precisions to run")
    parser.add_argument("--workers", type=int, default=1, help="decoding worker processes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-full", action="store_true", help="skip the full-size model (slow on a CPU)")
    parser.add_argument("--no-tiny", action="store_true", help="skip the TINY network")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, {args.workers} workers"
    )
    with tempfile.TemporaryDirectory() as temporary:
        workdir = Path(temporary)
        if not args.no_tiny:
            measure("tiny", tiny_model(workdir / "tiny"), make_images(workdir / "tiny-images", args.tiny_images),
                    args, workdir)  # fmt: skip
        if not args.no_full:
            measure("full", full_model(workdir / "full"), make_images(workdir / "full-images", args.full_images),
                    args, workdir)  # fmt: skip


if __name__ == "__main__":
    main()
