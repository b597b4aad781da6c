"""How much the precision modes change the results, so that users can choose knowingly.

Each mode (a `ButdFrcnnConfig.precision`: bf16, fp16, fp32-screened, tf32 on a GPU; or fp32 under torch.compile) runs
the golden networks on the golden images and is compared region by region, with the same tool as `butd-frcnn
compare` (boxes paired one-to-one by IoU), with fp32 on the same device, and with the original Caffe code's own
outputs where the golden data holds them (TINY: every image; FULL: astronaut and gradient_500x375). Per mode and
selection: seconds per image, identical selections (boxes and order), the share of boxes found again at IoU >= 0.9
and >= 0.99, the selections in the same order, the feature cosine of the paired regions (mean and worst) and how
often the object label agrees; for fp32-screened also the share of proposals it settled in float32.

    python benchmarks/agreement.py                        # TINY network on the 7 golden images, CPU
    python benchmarks/agreement.py --full                 # also the FULL ResNet-101 (regenerates its weights)
    python benchmarks/agreement.py --modes bf16 fp32-screened --full --full-images astronaut rocket
    python benchmarks/agreement.py --device cuda --modes tf32 bf16 fp16 fp32-screened --full

The golden weights are synthetic (seeded random): their class probabilities are far flatter than a trained model's,
so near-ties in the selection are more frequent than with the real weights, and the box agreement here is a
pessimistic estimate (and fp32-screened settles more proposals than it would with trained weights).
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from benchmark_model import compiled
from parity_report import GOLDEN, IMAGES, load_model, regenerate_full_weights

from butd_frcnn import ButdFrcnnImageProcessor
from butd_frcnn.compare.metrics import compare_images
from butd_frcnn.extraction.npz import read_npz_file
from butd_frcnn.extraction.records import records_from_model_output

MODES = ("bf16", "fp16", "fp32-screened", "compile", "tf32")
SELECTIONS = {"10-100": (10, 100), "36": (36, 36)}
GOLDEN_SUFFIXES = {"10-100": "10_100", "36": "36"}


def prepared(model, mode: str, device: torch.device):
    """The model set up for `mode`: its precision, or fp32 compiled."""
    model = model.to(device)
    model.config.precision = "fp32" if mode in ("fp32", "compile") else mode
    return compiled(model, mode == "compile")


def run(model, batches, device, selection):
    """Per image its record and seconds; with fp32-screened, also the share of its proposals settled."""
    min_boxes, max_boxes = SELECTIONS[selection]
    records, seconds, settled = {}, 0.0, []
    for name, batch in batches.items():
        start = time.perf_counter()
        with torch.inference_mode():
            outputs = model(
                pixel_values=batch["pixel_values"].to(device),
                image_sizes=batch["image_sizes"],
                scales=batch["scales"],
                min_boxes=min_boxes,
                max_boxes=max_boxes,
            )
        seconds += time.perf_counter() - start
        records[name] = records_from_model_output(outputs, [name], batch["original_sizes"])[0]
        if outputs.settled_proposals is not None:
            settled.append(float(outputs.settled_proposals[0, : int(outputs.num_proposals[0])].float().mean()))
    return records, seconds, settled


def summarize(reference: dict, candidate: dict) -> str:
    """Agreement of `candidate` with `reference` over the images both have."""
    names = [name for name in candidate if name in reference]
    comparisons = [compare_images(candidate[name], reference[name]) for name in names]
    matched = [c for c in comparisons if c.cosine_min is not None]
    count = len(comparisons)
    identical = sum(c.same_order and c.exact_boxes == 1.0 for c in comparisons)
    ordered = sum(c.same_order and c.iou_at_least["0.99"] == 1.0 for c in comparisons)
    numbers = [
        f"identical {identical}/{count}",
        f"same order at IoU>=0.99 {ordered}/{count}",
        f"boxes IoU>=0.9 {np.mean([c.iou_at_least['0.9'] for c in comparisons]):.1%}",
        f"IoU>=0.99 {np.mean([c.iou_at_least['0.99'] for c in comparisons]):.1%}",
    ]
    if matched:
        numbers += [
            f"cosine mean {np.mean([c.cosine_mean for c in matched]):.6f}",
            f"worst {min(c.cosine_min for c in matched):.6f}",
            f"object label {np.mean([c.objects_agree for c in matched]):.1%}",
        ]
    return ", ".join(numbers)


def golden_records(variant: str, image_names, selection: str, golden: Path = GOLDEN) -> dict:
    """The original Caffe code's selections, where the golden data holds them."""
    records = {}
    for name in image_names:
        path = golden / variant.lower() / f"{name}.npz"
        if path.exists():
            records[name] = read_npz_file(path, GOLDEN_SUFFIXES[selection])
    return records


def report(variant: str, make_model, image_names, modes, device, processor, golden: Path = GOLDEN):
    batches = {}
    for name in image_names:
        if name == "rocket":  # the original decoded it with OpenCV; use the pixels it saw
            with np.load(golden / "tiny" / "rocket.npz") as data:
                batches[name] = processor(data["image_bgr"], input_channel_order="bgr", return_tensors="pt")
        else:
            batches[name] = processor(golden / "images" / IMAGES[name], return_tensors="pt")
    goldens = {selection: golden_records(variant, image_names, selection, golden) for selection in SELECTIONS}
    reference_model = prepared(make_model(), "fp32", device)
    references = {selection: run(reference_model, batches, device, selection) for selection in SELECTIONS}
    del reference_model
    print(f"\n{variant} network, {len(image_names)} images, device {device}, {torch.get_num_threads()} threads")
    for selection in SELECTIONS:
        records, seconds, _ = references[selection]
        golden = goldens[selection]
        against_golden = f" | vs the original ({len(golden)} images): {summarize(golden, records)}" if golden else ""
        print(f"  {'fp32':13s} {selection:6s} {seconds / len(image_names):6.2f} s/image{against_golden}")
    for mode in modes:
        if mode == "tf32" and device.type != "cuda":
            continue
        model = prepared(make_model(), mode, device)
        for selection in SELECTIONS:
            records, seconds, settled = run(model, batches, device, selection)
            fp32_records, fp32_seconds, _ = references[selection]
            line = (
                f"  {mode:13s} {selection:6s} {seconds / len(image_names):6.2f} s/image "
                f"({seconds / fp32_seconds:.2f}x fp32's time)"
            )
            if settled:
                line += f", settled {np.mean(settled):.0%} of the proposals"
            line += f" | vs fp32: {summarize(fp32_records, records)}"
            if goldens[selection]:
                line += f" | vs the original: {summarize(goldens[selection], records)}"
            print(line, flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["bf16", "fp32-screened"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full", action="store_true", help="also the FULL ResNet-101 (slow on a CPU)")
    parser.add_argument("--full-images", nargs="+", choices=tuple(IMAGES), default=["astronaut", "rocket", "camera"])
    parser.add_argument("--no-tiny", action="store_true", help="only the FULL network")
    parser.add_argument("--tiny-images", nargs="+", choices=tuple(IMAGES), default=list(IMAGES))
    parser.add_argument("--threads", type=int)
    parser.add_argument(
        "--golden", type=Path, default=GOLDEN, help="the golden data folder (default ../shared/golden)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    processor = ButdFrcnnImageProcessor()
    if not args.no_tiny:
        tiny = args.golden / "tiny_seed0.caffemodel"
        report("TINY", lambda: load_model(tiny), args.tiny_images, args.modes, device, processor, args.golden)
    if args.full:
        with tempfile.TemporaryDirectory() as folder:
            weights = regenerate_full_weights(Path(folder), args.golden)
            report("FULL", lambda: load_model(weights), args.full_images, args.modes, device, processor, args.golden)


if __name__ == "__main__":
    main()
