"""How much the fast modes change the results, so that users can choose knowingly.

Each mode (the model in bf16 or fp16, as `--dtype` of `butd-frcnn extract` runs it; torch.compile; TF32 on a GPU) runs the golden networks on the golden images
and is compared with fp32 on the same device, region by region, with the same tool as `butd-frcnn compare`: boxes
paired one-to-one by IoU, then the share of images whose selection is identical in boxes and order, the share of
boxes found again at IoU >= 0.9, the feature cosine of the paired regions (mean and worst), and how often the object
label agrees.

    python benchmarks/agreement.py                        # TINY network on the 7 golden images, CPU
    python benchmarks/agreement.py --full                 # also the FULL ResNet-101 (regenerates its weights)
    python benchmarks/agreement.py --modes bf16 --full --full-images astronaut rocket
    python benchmarks/agreement.py --device cuda --modes tf32 bf16 fp16 --full

The golden weights are synthetic (seeded random): their class probabilities are far flatter than a trained model's,
so near-ties in the selection are more frequent than with the real weights, and the box agreement here is a
pessimistic estimate.
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
from butd_frcnn.extraction.records import records_from_model_output

MODES = ("bf16", "fp16", "compile", "tf32")
SELECTIONS = {"10-100": (10, 100), "36": (36, 36)}


def prepared(model, mode: str, device: torch.device):
    """The model set up for `mode`, and the dtype its inputs take."""
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    torch.backends.cudnn.allow_tf32 = mode == "tf32"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode, torch.float32)
    return compiled(model.to(device=device, dtype=dtype), mode == "compile"), dtype


def run(model, dtype, batches, device, selection):
    min_boxes, max_boxes = SELECTIONS[selection]
    records, seconds = {}, 0.0
    for name, batch in batches.items():
        start = time.perf_counter()
        with torch.inference_mode():
            outputs = model(
                pixel_values=batch["pixel_values"].to(device, dtype),
                image_sizes=batch["image_sizes"],
                scales=batch["scales"],
                min_boxes=min_boxes,
                max_boxes=max_boxes,
            )
        seconds += time.perf_counter() - start
        records[name] = records_from_model_output(outputs, [name], batch["original_sizes"])[0]
    return records, seconds


def summarize(reference: dict, candidate: dict) -> dict:
    comparisons = [compare_images(candidate[name], reference[name]) for name in reference]
    matched = [c for c in comparisons if c.cosine_min is not None]
    return {
        "identical selection": f"{sum(c.same_order and c.exact_boxes == 1.0 for c in comparisons)}/{len(comparisons)}",
        "same boxes, IoU>=0.99, same order": f"{sum(c.same_order and c.iou_at_least['0.99'] == 1.0 for c in comparisons)}"
        f"/{len(comparisons)}",
        "boxes found at IoU>=0.9": np.mean([c.iou_at_least["0.9"] for c in comparisons]),
        "cosine mean": np.mean([c.cosine_mean for c in matched]) if matched else float("nan"),
        "cosine worst": min(c.cosine_min for c in matched) if matched else float("nan"),
        "object label agrees": np.mean([c.objects_agree for c in matched]) if matched else float("nan"),
    }


def report(variant: str, make_model, image_names, modes, device, processor):
    batches = {}
    for name in image_names:
        if name == "rocket":  # the original decoded it with OpenCV; use the pixels it saw
            with np.load(GOLDEN / "tiny" / "rocket.npz") as golden:
                batches[name] = processor(golden["image_bgr"], input_channel_order="bgr", return_tensors="pt")
        else:
            batches[name] = processor(GOLDEN / "images" / IMAGES[name], return_tensors="pt")
    reference_model, _ = prepared(make_model(), "fp32", device)
    references = {
        selection: run(reference_model, torch.float32, batches, device, selection) for selection in SELECTIONS
    }
    del reference_model
    print(f"\n{variant} network, {len(image_names)} images, device {device}; each mode against fp32 on this device")
    print(f"  fp32: {references['10-100'][1] / len(image_names):.2f} s per image")
    for mode in modes:
        if mode == "tf32" and device.type != "cuda":
            continue
        model, dtype = prepared(make_model(), mode, device)
        for selection in SELECTIONS:
            records, seconds = run(model, dtype, batches, device, selection)
            numbers = summarize(references[selection][0], records)
            text = ", ".join(
                f"{key} {value:.6f}" if isinstance(value, float) else f"{key} {value}"
                for key, value in numbers.items()
            )
            print(f"  {mode:13s} {selection:6s} {seconds / len(image_names):6.2f} s/image | {text}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["bf16", "fp16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full", action="store_true", help="also the FULL ResNet-101 (slow on a CPU)")
    parser.add_argument("--full-images", nargs="+", choices=tuple(IMAGES), default=["astronaut", "rocket", "camera"])
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    processor = ButdFrcnnImageProcessor()
    report("TINY", lambda: load_model(GOLDEN / "tiny_seed0.caffemodel"), list(IMAGES), args.modes, device, processor)
    if args.full:
        with tempfile.TemporaryDirectory() as folder:
            weights = regenerate_full_weights(Path(folder))
            report("FULL", lambda: load_model(weights), args.full_images, args.modes, device, processor)


if __name__ == "__main__":
    main()
