"""What batching same-size images buys on this machine: four 600x800 images as one batch against one at a time,
interleaved round by round in one process (the machine's speed drifts: only such paired ratios compare), per
precision, with the full-size model (random weights: the same work as the real one). `butd-frcnn extract` batches 4
same-size images by default on a CPU, where a batch gives each image the bits it gets alone (tested).

    python benchmarks/batch_speed.py --threads 2 --rounds 2
    python benchmarks/batch_speed.py --precisions fp32 --batch-size 2
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from butd_frcnn import ButdFrcnnConfig, ButdFrcnnImageProcessor, ButdFrcnnModel
from butd_frcnn.configuration_butd_frcnn import PRECISIONS


def photo_like(seed: int, height: int = 600, width: int = 800) -> np.ndarray:
    """Upsampled noise as a uint8 RGB image: some structure for the detector, the same size for every seed."""
    small = torch.from_numpy(np.random.RandomState(seed).rand(1, 3, height // 10, width // 10).astype(np.float32))
    image = torch.nn.functional.interpolate(small * 255, size=(height, width), mode="bilinear", align_corners=False)
    return image[0].permute(1, 2, 0).round().to(torch.uint8).numpy()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ButdFrcnnModel(ButdFrcnnConfig()).eval()
    processor = ButdFrcnnImageProcessor()
    images = [photo_like(seed) for seed in range(args.batch_size)]
    singles = [processor(image, return_tensors="pt") for image in images]
    batch = processor(images, return_tensors="pt")
    for precision in args.precisions:
        model.config.precision = precision
        speedups = []
        with torch.inference_mode():
            model(**singles[0])  # builds the precision's derived weights
            for _ in range(args.rounds):
                start = time.perf_counter()
                for single in singles:
                    model(**single)
                alone = time.perf_counter() - start
                start = time.perf_counter()
                model(**batch)
                together = time.perf_counter() - start
                speedups.append(alone / together)
                print(f"{precision}: {args.batch_size} images one at a time {alone:.1f} s, as one batch "
                      f"{together:.1f} s: {alone / together:.2f}x (load average {os.getloadavg()[0]:.1f})",
                      flush=True)  # fmt: skip
        print(
            f"{precision}: a batch of {args.batch_size} against one at a time, median {statistics.median(speedups):.2f}x"
        )


if __name__ == "__main__":
    main()
