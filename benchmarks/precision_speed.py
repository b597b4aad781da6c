"""The precisions' speed against fp32's, interleaved in one process: the ratios of docs/precision.md's table of modes.

The FULL golden network (ResNet-101 with the golden generator's seed-0 weights, whose class probabilities decide how
many proposals fp32-screened settles) runs one golden image under each precision in turn, round after round, each
round in a rotated order; per precision the median over rounds of its time over fp32's time in the same round (the
machine's speed drifts and other work shares it: only such paired ratios compare), and for fp32-screened the share
of the proposals it settled. The model call alone is timed (the image is preprocessed once), after one warm-up call
per precision that builds its derived weights.

    python benchmarks/precision_speed.py --threads 2
    python benchmarks/precision_speed.py --modes bf16 fp32-screened --image rocket --boxes 36 --rounds 5
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
sys.path.insert(0, str(REPO_ROOT))

from parity_report import GOLDEN, IMAGES, load_model, regenerate_full_weights

from butd_frcnn import ButdFrcnnImageProcessor, ButdFrcnnModel
from butd_frcnn.configuration_butd_frcnn import PRECISIONS


def timed_call(model: ButdFrcnnModel, batch, precision: str, boxes: tuple[int, int]) -> tuple[float, float | None]:
    """Seconds of one `model(**batch)` under `precision`, and the share of proposals settled (fp32-screened)."""
    model.config.precision = precision
    start = time.perf_counter()
    with torch.inference_mode():
        outputs = model(**batch, min_boxes=boxes[0], max_boxes=boxes[1])
    seconds = time.perf_counter() - start
    if outputs.settled_proposals is None:
        return seconds, None
    count = int(outputs.num_proposals[0])
    return seconds, float(outputs.settled_proposals[0, :count].float().mean())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", choices=[p for p in PRECISIONS if p != "fp32"],
                        default=["bf16", "fp16", "fp32-screened"])  # fmt: skip
    parser.add_argument("--image", choices=tuple(IMAGES), default="astronaut")
    parser.add_argument("--boxes", choices=("10-100", "36"), default="10-100")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    boxes = (10, 100) if args.boxes == "10-100" else (36, 36)
    with tempfile.TemporaryDirectory() as folder:
        model = load_model(regenerate_full_weights(Path(folder))).to(args.device)
    batch = ButdFrcnnImageProcessor()(GOLDEN / "images" / IMAGES[args.image], return_tensors="pt").to(args.device)
    modes = ["fp32", *args.modes]
    for mode in modes:
        timed_call(model, batch, mode, boxes)  # builds the mode's derived weights
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    settled: list[float] = []
    for round_index in range(args.rounds):
        for mode in modes[round_index % len(modes) :] + modes[: round_index % len(modes)]:
            elapsed, share = timed_call(model, batch, mode, boxes)
            seconds[mode].append(elapsed)
            if share is not None:
                settled.append(share)
    print(f"FULL network, {args.image}, {args.boxes} boxes, device {args.device}, {torch.get_num_threads()} threads, "
          f"{args.rounds} interleaved rounds, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    for mode in modes:
        ratios = [ours / fp32 for ours, fp32 in zip(seconds[mode], seconds["fp32"], strict=True)]
        line = (
            f"  {mode:13s} {statistics.median(seconds[mode]):7.2f} s (median) | time vs fp32's in the same round: "
            f"median {statistics.median(ratios):.2f}x (" + ", ".join(f"{r:.2f}" for r in ratios) + ")"
        )
        if mode == "fp32-screened":
            line += f" | settled {statistics.median(settled):.0%} of the proposals"
        print(line, flush=True)


if __name__ == "__main__":
    main()
