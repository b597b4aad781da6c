"""Images per second of `butd-frcnn extract` on this machine, and where the time goes.

Two models: the golden TINY network (its seed-0 weights, converted) and the full-size default configuration
(ResNet-101, random weights: the same amount of computation as the real model). For each precision (`--dtype` of
`butd-frcnn extract`) and batch size, the tool runs in-process over generated 640x480 photos-like JPEGs (all one size,
so batches fill; resized to 600x800) into a BUTD TSV, and the script prints the throughput once running (model loading
left out), the time per image spent decoding (summed over the worker processes, so it overlaps the model), in the
model, and writing, and whether the file is byte for byte the one batch 1 wrote.

`--inputs` compares, with the TINY model, the same JPEGs read as files and as a `datasets` dataset (a Parquet file
with an Image column), written to a TSV and to Parquet, and the input side alone (listing, reading, decoding and
preprocessing in the workers, no model): each run in its own process (so that its peak memory is its own), the
variants interleaved (each repeat in a rotated order) and repeated: the best images/s, and the medians of the main
process's peak memory and of the share of the running time spent writing (the Parquet writer's against the TSV
writer's).

Usage: python benchmarks/benchmark_extraction.py [--tiny-images 16] [--full-images 4] [--batch-sizes 1 2 4]
       [--dtypes fp32 bf16 fp32-screened] [--workers 1] [--device cpu] [--threads N] [--no-full] [--no-tiny]
       [--inputs [--input-images 40] [--repeats 3]]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
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
from butd_frcnn.extraction import ExtractionSummary, ExtractOptions, extract
from butd_frcnn.extraction.decoding import ImageDataset, image_loader
from butd_frcnn.extraction.extract import image_source


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


# the input and output variants of `--inputs`: (source, format); no format: reading and decoding alone, no model
INPUT_VARIANTS = {
    "files -> tsv": ("files", "butd-tsv"),
    "dataset -> tsv": ("dataset", "butd-tsv"),
    "files -> parquet": ("files", "parquet"),
    "dataset -> parquet": ("dataset", "parquet"),
    "files, decoding only": ("files", None),
    "dataset, decoding only": ("dataset", None),
}


def write_image_dataset(images: Path, folder: Path) -> Path:
    """The JPEGs of `images` as a Parquet file with an Image column (their bytes) and a `name` column."""
    import datasets

    files = sorted(images.glob("*.jpg"))
    table = {"image": [{"bytes": path.read_bytes(), "path": path.name} for path in files],
             "name": [path.stem for path in files]}  # fmt: skip
    features = datasets.Features({"image": datasets.Image(), "name": datasets.Value("string")})
    folder.mkdir()
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(folder / "images.parquet"))
    return folder


def decode_only(options: ExtractOptions) -> ExtractionSummary:
    """The input side of a run alone: list the images, then read, decode and preprocess them in the workers."""
    started = time.perf_counter()
    source = image_source(options)
    count = len(source.image_ids())
    processor = ButdFrcnnImageProcessor.from_pretrained(options.model)
    summary = ExtractionSummary(output=options.output, errors_file=options.output, listed=count)
    summary.setup_seconds = time.perf_counter() - started
    loader = image_loader(
        ImageDataset(processor, options.max_pixels), source.images(range(count)), options.num_workers
    )
    summary.extracted = sum(1 for _ in loader)
    summary.seconds = time.perf_counter() - started
    return summary


def run_once(request: dict) -> dict:
    """One run (in a child process): its summary's numbers and this process's peak memory."""
    import resource

    if request["threads"]:
        torch.set_num_threads(request["threads"])
    if request["source"] == "files":
        source = {"inputs": [request["images"]]}
    else:
        source = {"dataset": request["dataset"], "id_column": "name"}
    suffix = ".tsv" if request["format"] == "butd-tsv" else ""
    options = ExtractOptions(
        model=request["model"],
        output=Path(request["workdir"]) / f"{request['source']}-{request['format']}{suffix}",
        format=request["format"],
        num_workers=request["workers"],
        device=request["device"],
        overwrite=True,
        progress=False,
        **source,
    )
    summary = extract(options) if request["format"] else decode_only(options)
    running = summary.seconds - summary.setup_seconds
    return {
        "images": summary.extracted,
        "images_per_second": summary.images_per_second,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "write_share": summary.write_seconds / running if running > 0 else 0.0,
        "setup_seconds": summary.setup_seconds,
    }


def compare_inputs(model: Path, images: Path, args, workdir: Path) -> None:
    dataset = write_image_dataset(images, workdir / "image-dataset")
    results: dict[str, list[dict]] = {name: [] for name in INPUT_VARIANTS}
    names = list(INPUT_VARIANTS)
    for repeat in range(args.repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:  # each repeat starts elsewhere
            source, format = INPUT_VARIANTS[name]
            request = {"model": str(model), "images": str(images), "dataset": str(dataset), "source": source,
                       "format": format, "workdir": str(workdir), "workers": args.workers, "device": args.device,
                       "threads": args.threads}  # fmt: skip
            child = subprocess.run([sys.executable, __file__, "--child", json.dumps(request)], capture_output=True,
                                   text=True, check=True)  # fmt: skip
            results[name].append(json.loads(child.stdout.splitlines()[-1]))
    count = results["files -> tsv"][0]["images"]
    print(f"\ninputs and outputs, TINY model, {count} 640x480 JPEGs, {args.workers} decoding workers, {args.repeats} "
          "interleaved runs each: images/s the best run (other processes only slow a run down), memory and writing "
          "share the median (decoding only: no model, how fast the input side could feed it):")  # fmt: skip
    for name, runs in results.items():
        median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        each = ", ".join(f"{run['images_per_second']:.2f}" for run in runs)
        print(
            f"{name:<24} {max(run['images_per_second'] for run in runs):7.2f} images/s | peak memory "
            f"{median['peak_mb']:6.0f} MB | writing {100 * median['write_share']:4.1f}% of the running time | setup "
            f"{median['setup_seconds']:.1f} s | images/s per run: {each}",
            flush=True,
        )


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(run_once(json.loads(sys.argv[2]))))
        return
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
    parser.add_argument("--inputs", action="store_true", help="only: files against a dataset, TSV against Parquet")
    parser.add_argument("--input-images", type=int, default=40, help="--inputs: images per run")
    parser.add_argument("--repeats", type=int, default=3, help="--inputs: runs of each variant")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, {args.workers} workers"
    )
    with tempfile.TemporaryDirectory() as temporary:
        workdir = Path(temporary)
        if args.inputs:
            images = make_images(workdir / "input-images", args.input_images)
            compare_inputs(tiny_model(workdir / "tiny"), images, args, workdir)
            return
        if not args.no_tiny:
            measure("tiny", tiny_model(workdir / "tiny"), make_images(workdir / "tiny-images", args.tiny_images),
                    args, workdir)  # fmt: skip
        if not args.no_full:
            measure("full", full_model(workdir / "full"), make_images(workdir / "full-images", args.full_images),
                    args, workdir)  # fmt: skip


if __name__ == "__main__":
    main()
