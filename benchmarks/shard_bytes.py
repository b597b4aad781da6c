"""Bytes each `--shard I/N` reads of a Parquet dataset of large images: shards that read only their files or row
groups, against every shard reading every row (what a shard of a dataset that `parquet_shards` cannot split does).

The dataset: `--files` Parquet files (written by `datasets`' `to_parquet`, an Image column and a `name` column) of
`--images-per-file` photo-like JPEGs of `--size` pixels. For N = 1, 2, 4 and each shard, the input side of
`butd-frcnn extract --dataset FILES --shard I/N` (listing its images, then reading each one's bytes, no model) runs in
a fresh process, which prints the bytes it read from files (`rchar` of /proc/self/io, around the listing and reading
only, after a warm-up that imports what they import). The image bytes of the dataset are printed beside them.

Usage: python benchmarks/shard_bytes.py [--files 8] [--images-per-file 8] [--size 2400x1800]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def read_bytes() -> int:
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("rchar:"))


def write_dataset(folder: Path, files: int, per_file: int, size: tuple[int, int]) -> int:
    """The Parquet files; returns the bytes of their images."""
    import datasets

    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    total = 0
    features = datasets.Features({"image": datasets.Image(), "name": datasets.Value("string")})
    for number in range(files):
        images, names = [], []
        for index in range(per_file):
            small = rng.randint(0, 256, size=(size[1] // 8, size[0] // 8, 3)).astype(np.uint8)
            path = folder / "scratch.jpg"
            Image.fromarray(small).resize(size, Image.BICUBIC).save(path, quality=92)
            data = path.read_bytes()
            total += len(data)
            images.append({"bytes": data, "path": None})
            names.append(f"image_{number:03d}_{index:03d}")
        dataset = datasets.Dataset.from_dict({"image": images, "name": names}, features=features)
        dataset.to_parquet(str(folder / f"part-{number:03d}.parquet"), batch_size=4)
    (folder / "scratch.jpg").unlink()
    return total


def warm_up(dataset: str) -> None:
    """Import what the listing imports lazily (datasets' builders: megabytes of modules) before counting."""
    import datasets

    datasets.load_dataset_builder("parquet", data_files=dataset)
    datasets.load_dataset("parquet", data_files=dataset, streaming=True)


def shard_input(request: dict) -> dict:
    """In a fresh process: list and read one shard's images as `extract` does; the bytes read doing so."""
    from butd_frcnn.extraction.dataset_input import DatasetSource
    from butd_frcnn.extraction.extract import ExtractOptions, image_source
    from butd_frcnn.extraction.sharding import Shard

    shard = Shard(request["index"], request["count"])
    options = ExtractOptions(model="-", output=Path("-"), dataset=request["dataset"], id_column="name", shard=shard)
    warm_up(request["dataset"])
    before = read_bytes()
    if request["every_row"]:
        source = DatasetSource(request["dataset"], id_column="name")
        ids = source.image_ids()
        mine = shard.select(range(len(ids)))
    else:
        source = image_source(options)
        ids = source.image_ids()
        mine = range(len(ids))
    images = sum(len(entry.data) for entry in source.images(mine))
    return {"read": read_bytes() - before, "images": len(mine), "image_bytes": images, "kind": type(source).__name__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--images-per-file", type=int, default=8)
    parser.add_argument("--size", default="2400x1800")
    parser.add_argument("--request", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.request:
        print(json.dumps(shard_input(json.loads(args.request))))
        return
    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "dataset"
        total = write_dataset(folder, args.files, args.images_per_file, size)
        on_disk = sum(path.stat().st_size for path in folder.glob("*.parquet"))
        print(f"dataset: {args.files} Parquet files, {args.files * args.images_per_file} JPEGs of {args.size}, "
              f"{total / 2**20:.1f} MiB of images, {on_disk / 2**20:.1f} MiB of files")  # fmt: skip
        print(f"{'N':>2} {'reading':>10} {'shard':>5} {'images':>6} {'MiB read':>9} {'of the files':>12}")
        for count in (1, 2, 4):
            for every_row in (False, True):
                if count == 1 and every_row:
                    continue
                for index in range(count):
                    request = {
                        "dataset": f"{folder}/*.parquet",
                        "index": index,
                        "count": count,
                        "every_row": every_row,
                    }
                    completed = subprocess.run(
                        [sys.executable, __file__, "--request", json.dumps(request)],
                        capture_output=True, text=True, check=True,
                    )  # fmt: skip
                    result = json.loads(completed.stdout.strip().splitlines()[-1])
                    how = "every row" if every_row else "its share"
                    print(f"{count:>2} {how:>10} {index:>5} {result['images']:>6} {result['read'] / 2**20:>9.1f} "
                          f"{result['read'] / on_disk:>11.0%}")  # fmt: skip


if __name__ == "__main__":
    main()
