"""Images per second of `butd-frcnn extract --ray` (a local Ray started by the run: decoding tasks, one model actor)
against the plain `butd-frcnn extract` (DataLoader decoding workers, the model in the main process), on the same
photo-like 640x480 JPEGs, into Parquet, each run a fresh `butd-frcnn` process timed from start to end (Python
start, model loading and, for Ray, starting the cluster and its workers included).

The runs are interleaved (CLI, Ray, CLI, Ray... at two image counts) so that a change of the machine's load hits both
alike; each count's wall times give a fixed cost and a cost per image (a line through the two counts), which
separate Ray's overhead (starting the cluster, the workers importing PyTorch, the model loading in the actor) from
its throughput once running. The load average before and after is printed: on a shared machine compare the ratios.

Usage: python benchmarks/ray_speed.py [--model tiny|full] [--counts 8 24] [--repeats 2] [--actor-cpus 1]
       [--device cpu|cuda] [--dtype fp32]
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from benchmark_extraction import full_model, make_images, tiny_model


def run(command: list[str], label: str) -> float:
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ,
                               "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"})  # fmt: skip
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise SystemExit(f"{label} failed:\n{completed.stderr[-3000:]}")
    done = re.search(r"Done: (\d+) images", completed.stdout)
    print(f"    {label:>4}: {seconds:7.1f} s  ({done[0] if done else '?'})", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--counts", type=int, nargs=2, default=[8, 24])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--actor-cpus", type=float, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: one model actor per GPU")
    parser.add_argument("--dtype", default="fp32", help="the precision mode of both")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        model = (tiny_model if args.model == "tiny" else full_model)(work / "model")
        images = {count: make_images(work / f"images-{count}", count) for count in args.counts}
        print(f"model {args.model}, {os.cpu_count()} CPUs, load average {os.getloadavg()}", flush=True)
        times: dict[tuple[str, int], list[float]] = {}
        for repeat in range(args.repeats):
            for count in args.counts:
                print(f"  repeat {repeat}, {count} images", flush=True)
                base = [sys.executable, "-m", "butd_frcnn.cli", "extract", "--model", str(model), str(images[count]),
                        "--format", "parquet", "--no-progress", "--overwrite", "--device", args.device, "--dtype", args.dtype]  # fmt: skip
                order = [("cli", []), ("ray", ["--ray", "--ray-actor-cpus", str(args.actor_cpus)])]
                for label, extra in order if repeat % 2 == 0 else order[::-1]:
                    output = work / f"out-{label}"
                    seconds = run([*base, "--output", str(output), *extra], label)
                    times.setdefault((label, count), []).append(seconds)
        low, high = args.counts
        print(f"load average after: {os.getloadavg()}")
        print(
            f"{'':>4} {'s at ' + str(low):>9} {'s at ' + str(high):>9} {'fixed s':>8} {'s/image':>8} {'images/s':>9}"
        )
        per_image = {}
        for label in ("cli", "ray"):
            a, b = statistics.median(times[(label, low)]), statistics.median(times[(label, high)])
            per_image[label] = (b - a) / (high - low)
            fixed = a - per_image[label] * low
            print(
                f"{label:>4} {a:>9.1f} {b:>9.1f} {fixed:>8.1f} {per_image[label]:>8.2f} {1 / per_image[label]:>9.2f}"
            )
        print(f"ray / cli, seconds per image once running: {per_image['ray'] / per_image['cli']:.2f}")


if __name__ == "__main__":
    main()
