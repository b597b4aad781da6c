"""The precisions' speed against fp32's, interleaved in one process: the ratios of docs/precision.md's table of modes.

The FULL golden network (ResNet-101 with the golden generator's seed-0 weights, whose class probabilities decide how
many proposals fp32-screened settles) runs one golden image under each precision in turn, round after round, each
round in a rotated order; per precision the median over rounds of its time over fp32's time in the same round (the
machine's speed drifts and other work shares it: only such paired ratios compare), and for fp32-screened the share
of the proposals it settled. The model call alone is timed (the image is preprocessed once), after one warm-up call
per precision that builds its derived weights.

    python benchmarks/precision_speed.py --threads 2
    python benchmarks/precision_speed.py --modes bf16 fp32-screened --image rocket --boxes 36 --rounds 5

`--sharpen S [S ...]` sweeps the sharpness of the class probabilities: the class head's weights and bias are
multiplied by each S in turn (1 = the golden weights, whose probabilities are flat; trained weights are sharp, with
a median top class probability near 0.9), and per S and per selection (`--boxes 10-100 36`) it prints the median top
foreground probability, the regions selected, the proposals fp32-screened settled, its time against fp32's and
whether its outputs equal fp32's bit for bit:

    python benchmarks/precision_speed.py --threads 2 --modes fp32-screened --sharpen 1 2 3 4 --boxes 10-100 36
"""

import argparse
import logging
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


SELECTIONS = {"10-100": (10, 100), "36": (36, 36)}
COMPARED_FIELDS = ("boxes", "region_features", "object_ids", "object_scores", "attribute_ids", "proposal_indices")


def sharpen(model: ButdFrcnnModel, factor: float) -> None:
    """Multiply the class head's logits by `factor` (its weights and bias; the derived copies dropped)."""
    head = model.roi_heads.box_predictor.cls_score
    with torch.no_grad():
        head.weight.mul_(factor)
        head.bias.mul_(factor)
    model.clear_derived_weights()


class ExactTies(logging.Handler):
    """Counts the exact float32 ties fp32-screened reports: where they decide the selection, fp32's order among
    them follows numpy's sort of whole columns that hold screened estimates, the one difference allowed."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "exact float32 ties" in record.getMessage():
            self.count += int(record.args[0])


def sharpness_sweep(model: ButdFrcnnModel, batch, scales: list[float], selections: list[str], rounds: int) -> None:
    """Per class-head scale and selection: sharpness, regions, settled share, fp32-screened's time vs fp32's."""
    ties = ExactTies()
    package_logger = logging.getLogger("butd_frcnn")
    package_logger.addHandler(ties)
    package_logger.setLevel(logging.INFO)
    print(f"{'scale':>5} {'selection':>9} {'median top prob':>15} {'regions':>7} {'settled':>11} "
          f"{'screened vs fp32 time':>21} {'bit-equal':>9} {'exact ties':>10}")  # fmt: skip
    current = 1.0
    for scale in scales:
        sharpen(model, scale / current)
        current = scale
        for name in selections:
            boxes = SELECTIONS[name]
            model.config.precision = "fp32"
            with torch.inference_mode():
                reference = model(**batch, min_boxes=boxes[0], max_boxes=boxes[1])
            model.config.precision = "fp32-screened"
            ties.count = 0
            with torch.inference_mode():
                screened = model(**batch, min_boxes=boxes[0], max_boxes=boxes[1])
            exact_ties = ties.count
            equal = all(torch.equal(getattr(screened, f), getattr(reference, f)) for f in COMPARED_FIELDS)
            count = int(reference.num_proposals[0])
            top = reference.class_probs[0, :count, 1:].amax(dim=1).median()
            settled = int(screened.settled_proposals[0, :count].sum())
            ratios = []
            for round_index in range(rounds):
                order = ["fp32", "fp32-screened"][:: 1 if round_index % 2 == 0 else -1]
                times = {mode: timed_call(model, batch, mode, boxes)[0] for mode in order}
                ratios.append(times["fp32-screened"] / times["fp32"])
            ratio = statistics.median(ratios)
            print(f"{scale:5g} {name:>9} {float(top):15.2f} {int(reference.num_boxes[0]):7d} "
                  f"{settled:4d} of {count:3d} {ratio:11.2f}x ({'faster' if ratio < 1 else 'slower'}) "
                  f"{'yes' if equal else 'NO':>9} {exact_ties:10d}", flush=True)  # fmt: skip
    sharpen(model, 1.0 / current)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", choices=[p for p in PRECISIONS if p != "fp32"],
                        default=["bf16", "fp16", "fp32-screened"])  # fmt: skip
    parser.add_argument("--image", choices=tuple(IMAGES), default="astronaut")
    parser.add_argument("--boxes", nargs="+", choices=tuple(SELECTIONS), default=["10-100"])
    parser.add_argument("--sharpen", nargs="+", type=float, metavar="S",
                        help="sweep the class head's scale: settled share and speed per sharpness")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        model = load_model(regenerate_full_weights(Path(folder))).to(args.device)
    batch = ButdFrcnnImageProcessor()(GOLDEN / "images" / IMAGES[args.image], return_tensors="pt").to(args.device)
    if args.sharpen:
        print(f"FULL network, {args.image}, device {args.device}, {torch.get_num_threads()} threads, {args.rounds} "
              f"interleaved rounds, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
        sharpness_sweep(model, batch, args.sharpen, args.boxes, args.rounds)
        return
    boxes = SELECTIONS[args.boxes[0]]
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
    print(f"FULL network, {args.image}, {args.boxes[0]} boxes, device {args.device}, {torch.get_num_threads()} threads, "
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
