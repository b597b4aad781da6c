"""The CUDA path in one prepared run: golden parity on the GPU, throughput and memory per precision, agreement.

1. Parity (TINY on the 7 golden images, FULL ResNet-101 on its 2): the GPU's fp32 run against the original Caffe
   code's outputs, with the golden parity tests' own tolerances and comparisons (tests/parity.py), and stage by stage
   against the CPU's fp32 run of the same network: which stages are bit-exact, and how far the others are.
2. Throughput: per precision (fp32, tf32, bf16, fp32-screened) the whole forward at 600x800 (same-size images,
   batch 1, 8 and 32, FULL network, 300 proposals): images/s, peak GPU memory, for fp32-screened the share of
   proposals it settled in float32, and whether each precision's regions equal fp32's bit for bit.
3. Agreement of each precision with fp32 on the golden images (benchmarks/agreement.py --device cuda --full).

    python benchmarks/gpu_check.py OUT                    # on a CUDA machine: a few minutes on one H100
    python benchmarks/gpu_check.py OUT --quick            # on a CPU with tiny sizes, well under a minute
    bash benchmarks/gpu_check.sh OUT                      # the same with a log; `--prepare` first on a dev machine

Writes OUT/gpu_check.json (the numbers) and prints its progress (gpu_check.sh keeps it in OUT/gpu_check.log). The
golden data is read from --golden (default ../shared/golden beside the repository, else .golden in it: what
gpu_check.sh --prepare writes, small enough to travel with the working tree). The FULL weights are regenerated from
seed 0 by the golden generator (pure numpy, seconds). With --quick: the TINY network only, on the CPU, on 2 golden
images, 96x128 images for the throughput, batches of 1 and 2, and tf32 recorded as skipped (CUDA only).
"""

import argparse
import contextlib
import io
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
sys.path.insert(0, str(REPO_ROOT / "tests"))

import agreement
from benchmark_model import synchronize, synthetic_image
from parity import (
    assert_same_boxes_up_to_tied_order,
    assert_same_selection_up_to_near_ties,
    cosine,
)
from parity_report import IMAGES, load_model, regenerate_full_weights

from butd_frcnn import ButdFrcnnImageProcessor
from butd_frcnn.modeling_butd_frcnn import objectness_probabilities

GOLDEN_CANDIDATES = (REPO_ROOT.parent / "shared" / "golden", REPO_ROOT / ".golden")
FLAT_IMAGES = ("filled_with_0", "filled_with_255")
FULL_IMAGES = ("astronaut", "gradient_500x375")
SELECTIONS = {"_10_100": (10, 100), "_36": (36, 36)}
MODES = ("fp32", "tf32", "bf16", "fp32-screened")
# the golden parity tests' tolerances (tests/test_golden_parity_tiny.py, tests/test_golden_parity_full.py)
TOLERANCES = {
    "tiny": {"res4": 1e-4, "rpn": 1e-5, "boxes": 2e-4, "pool5_flat": 2e-5, "probs": 1e-5, "res4_key": "blob/res4a"},
    "full": {"res4": 8e-3, "rpn": 1e-3, "boxes": 5e-4, "pool5_flat": 5e-5, "probs": 3e-5, "res4_key": "blob/res4b22"},
}
MIN_COSINE = 0.99999


def find_golden(given: str | None) -> Path:
    candidates = [Path(given)] if given else GOLDEN_CANDIDATES
    for folder in candidates:
        if (folder / "tiny_seed0.caffemodel").is_file():
            return folder
    raise SystemExit(
        f"no golden data in {', '.join(map(str, candidates))}: pass --golden, or run gpu_check.sh --prepare"
    )


def golden_weights(golden: Path, variant: str, folder: Path) -> Path:
    """The stored TINY weights; the FULL weights (262 MB) regenerated from seed 0 into `folder` (once)."""
    if variant == "tiny":
        return golden / "tiny_seed0.caffemodel"
    weights = folder / "full_seed0.caffemodel"
    return weights if weights.is_file() else regenerate_full_weights(folder, golden)


def to_cpu(value):
    return value.detach().cpu() if isinstance(value, torch.Tensor) else value


def golden_batch(golden: Path, variant: str, name: str, processor) -> tuple[dict, dict]:
    with np.load(golden / variant / f"{name}.npz") as data:
        expected = {key: data[key] for key in data.files}
    if "image_bgr" in expected:  # rocket: the pixels OpenCV decoded for the original
        batch = processor(expected["image_bgr"], input_channel_order="bgr", return_tensors="pt")
    else:
        batch = processor(str(golden / "images" / IMAGES[name]), return_tensors="pt")
    return expected, batch


def forward(model, batch, device, **options):
    """One fp32 forward on `device` with every stage this check compares, moved to the CPU."""
    moved = {key: value.to(device) if key == "pixel_values" else value for key, value in batch.items()}
    with torch.inference_mode():
        outputs = model(**moved, output_hidden_states=True, **options)
        logits, deltas = model.proposal_generator.rpn_head(outputs.hidden_states[-1])
        stages = {f"backbone.{i}": to_cpu(h) for i, h in enumerate(outputs.hidden_states)}
        stages.update(rpn_probabilities=to_cpu(objectness_probabilities(logits)), rpn_deltas=to_cpu(deltas))
    count, proposals = int(outputs.num_proposals[0]), int(outputs.num_boxes[0])
    for key in ("proposals", "proposal_scores", "proposal_features", "class_probs", "attribute_probs", "box_deltas"):
        stages[key] = to_cpu(getattr(outputs, key)[0, :count])
    for key in ("boxes", "region_features", "object_ids", "attribute_ids", "selection_scores"):
        stages[f"selected.{key}"] = to_cpu(getattr(outputs, key)[0, :proposals])
    return stages


def stage_differences(ours: dict, reference: dict) -> dict:
    """Per stage: bit-exact against the reference run, else the largest difference (None where shapes differ)."""
    result = {}
    for key, value in reference.items():
        other = ours[key]
        if other.shape != value.shape:
            result[key] = {
                "bit_exact": False,
                "max_abs_diff": None,
                "note": f"{tuple(other.shape)} vs {tuple(value.shape)}",
            }
            continue
        difference = (other.double() - value.double()).abs().max().item() if value.numel() else 0.0
        result[key] = {"bit_exact": bool(torch.equal(other, value)), "max_abs_diff": difference}
    return result


def check(results: list, name: str, tolerance, test) -> None:
    """Run one of the golden tests' comparisons; record whether it held."""
    try:
        measured = test()
        results.append({"check": name, "tolerance": tolerance, "measured": measured, "passed": True})
    except AssertionError as error:
        results.append(
            {"check": name, "tolerance": tolerance, "passed": False, "why": " ".join(str(error).split())[:300]}
        )


def max_diff(ours: torch.Tensor, theirs: np.ndarray, tolerance: float) -> float:
    difference = float(np.abs(ours.numpy() - theirs.astype(np.float32)).max())
    assert difference <= tolerance, f"{difference:.3g} > {tolerance}"
    return difference


def golden_checks(variant: str, name: str, runs: dict, expected: dict) -> list:
    """The golden parity tests' end-to-end comparisons, applied to the run on the checked device."""
    bounds, results = TOLERANCES[variant], []
    stages = runs["_10_100"]
    if bounds["res4_key"] in expected:
        check(
            results,
            "res4",
            bounds["res4"],
            lambda: max_diff(stages["backbone.3"], expected[bounds["res4_key"]], bounds["res4"]),
        )
    for key, golden_key in (("rpn_probabilities", "blob/rpn_cls_prob_reshape"), ("rpn_deltas", "blob/rpn_bbox_pred")):
        if golden_key in expected:
            check(
                results,
                key,
                bounds["rpn"],
                lambda k=key, g=golden_key: max_diff(stages[k], expected[g], bounds["rpn"]),
            )
    theirs = expected["rois"][:, 1:]
    if name in FLAT_IMAGES:  # almost all ties: which of many equal proposals is kept is not reproducible
        common = sum(bool((theirs == box).all(1).any()) for box in stages["proposals"].numpy())
        results.append({"check": "proposals in common (flat image)", "tolerance": ">= 100 of 300", "measured": common,
                        "passed": common >= 100})  # fmt: skip
        return results

    def proposals():
        assert_same_boxes_up_to_tied_order(
            stages["proposals"].numpy(), stages["proposal_scores"].numpy(), theirs, bounds["boxes"]
        )
        return "same proposals, same order up to exact ties"

    check(results, "proposals end to end", bounds["boxes"], proposals)
    same_rows = (
        stages["proposals"].shape == theirs.shape
        and np.abs(stages["proposals"].numpy() - theirs).max() <= bounds["boxes"]
    )
    if same_rows:
        check(
            results,
            "pool5_flat",
            bounds["pool5_flat"],
            lambda: max_diff(stages["proposal_features"], expected["pool5_flat"], bounds["pool5_flat"]),
        )
        for key, golden_key in (("class_probs", "cls_prob"), ("attribute_probs", "attr_prob")):
            check(
                results,
                golden_key,
                bounds["probs"],
                lambda k=key, g=golden_key: max_diff(stages[k], expected[g], bounds["probs"]),
            )
    for suffix, run in runs.items():

        def selection(run=run, suffix=suffix):
            ours, theirs = run["selected.boxes"].numpy(), expected[f"boxes{suffix}"]
            assert_same_selection_up_to_near_ties(
                ours, run["selected.selection_scores"].numpy(), theirs, atol=bounds["boxes"]
            )
            pairs = [int(np.flatnonzero(np.abs(ours - box).max(1) <= bounds["boxes"])[0]) for box in theirs]
            similarity = float(
                cosine(run["selected.region_features"].numpy()[pairs], expected[f"features{suffix}"]).min()
            )
            assert similarity >= MIN_COSINE, f"feature cosine {similarity}"
            assert (run["selected.object_ids"].numpy()[pairs] - 1).tolist() == expected[f"objects{suffix}"].tolist(), (
                "object ids"
            )
            return {"regions": len(ours), "worst_cosine": similarity}

        check(
            results,
            f"selection {suffix[1:].replace('_', '-')}",
            {"boxes": bounds["boxes"], "cosine": MIN_COSINE},
            selection,
        )
    return results


def parity(golden: Path, variant: str, names, device: torch.device, folder: Path) -> dict:
    """Each image on `device` against the original (the tests' tolerances) and against the CPU's fp32 run."""
    weights = golden_weights(golden, variant, folder)
    reference, model = load_model(weights).eval(), load_model(weights).eval().to(device)
    processor = ButdFrcnnImageProcessor()
    report = {"images": {}}
    for name in names:
        expected, batch = golden_batch(golden, variant, name, processor)
        reference_runs, device_runs = (
            {s: forward(net, batch, where, min_boxes=lo, max_boxes=hi) for s, (lo, hi) in SELECTIONS.items()}
            for net, where in ((reference, torch.device("cpu")), (model, device))
        )
        versus_cpu = stage_differences(device_runs["_10_100"], reference_runs["_10_100"])
        versus_cpu.update(
            {
                f"{k} (36)": v
                for k, v in stage_differences(device_runs["_36"], reference_runs["_36"]).items()
                if k.startswith("selected.")
            }
        )
        report["images"][name] = {
            "versus_cpu_fp32": versus_cpu,
            "versus_original": golden_checks(variant, name, device_runs, expected),
        }
        passed = all(c["passed"] for c in report["images"][name]["versus_original"])
        exact = sorted(k for k, v in versus_cpu.items() if v["bit_exact"])
        print(f"  {variant} {name:17s} original: {'all within the tests tolerances' if passed else 'FAILED'}; "
              f"bit-exact vs CPU fp32: {len(exact)}/{len(versus_cpu)} stages", flush=True)  # fmt: skip
    stages = next(iter(report["images"].values()))["versus_cpu_fp32"]
    report["bit_exact_stages"] = [
        k for k in stages if all(img["versus_cpu_fp32"][k]["bit_exact"] for img in report["images"].values())
    ]
    report["differing_stages"] = {
        k: max((img["versus_cpu_fp32"][k]["max_abs_diff"] or 0.0) for img in report["images"].values())
        for k in stages if k not in report["bit_exact_stages"]
    }  # fmt: skip
    report["all_within_tolerances"] = all(
        c["passed"] for img in report["images"].values() for c in img["versus_original"]
    )
    return report


def throughput(model, device: torch.device, size: tuple[int, int], modes, batch_sizes, repeats: dict) -> dict:
    """Images/s of the whole forward per precision and batch size, peak memory, settled share, fp32 equality."""
    processor = ButdFrcnnImageProcessor()
    single = processor(synthetic_image(*size), do_resize=False, return_tensors="pt")
    results, fp32_regions = {}, {}
    for mode in modes:
        if mode == "tf32" and device.type != "cuda":
            results[mode] = {"skipped": "tf32 runs on CUDA only"}
            continue
        model.config.precision = mode  # TF32 or IEEE float32 is set by the model around its forward
        results[mode] = {}
        for batch_size in batch_sizes:
            batch = {
                "pixel_values": single["pixel_values"].repeat(batch_size, 1, 1, 1).to(device),
                "image_sizes": single["image_sizes"].repeat(batch_size, 1),
                "scales": single["scales"].repeat(batch_size),
            }
            with torch.inference_mode():
                outputs = model(**batch)  # warm-up: kernel selection, the precision's derived weights
                synchronize(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                count = repeats.get(batch_size, 1)
                start = time.perf_counter()
                for _ in range(count):
                    outputs = model(**batch)
                synchronize(device)
                seconds = time.perf_counter() - start
            regions = int(outputs.num_boxes[0])
            first = (to_cpu(outputs.boxes[0, :regions]), to_cpu(outputs.region_features[0, :regions]))
            entry = {
                "images_per_second": batch_size * count / seconds,
                "seconds_per_batch": seconds / count,
                "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
            }
            if mode == "fp32":
                fp32_regions[batch_size] = first
            else:
                entry["regions_equal_fp32"] = all(torch.equal(a, b) for a, b in zip(first, fp32_regions[batch_size]))
            if outputs.settled_proposals is not None:
                valid = torch.arange(outputs.settled_proposals.shape[1]) < outputs.num_proposals.cpu()[:, None]
                entry["settled_share"] = float(outputs.settled_proposals.cpu()[valid].float().mean())
            results[mode][str(batch_size)] = entry
            memory = (
                "" if entry["peak_memory_bytes"] is None else f", peak {entry['peak_memory_bytes'] / 2**30:.2f} GiB"
            )
            settled = f", settled {entry['settled_share']:.1%}" if "settled_share" in entry else ""
            print(
                f"  {mode:13s} batch {batch_size:2d}: {entry['images_per_second']:8.2f} images/s{memory}{settled}",
                flush=True,
            )
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def speeds(golden: Path, device: torch.device, quick: bool, folder: Path) -> dict:
    """The throughput section: the FULL network at 600x800 (quick: TINY with 30 proposals at 96x128)."""
    variant = "tiny" if quick else "full"
    model = load_model(golden_weights(golden, variant, folder)).eval().to(device)
    if quick:  # fewer proposals: the 1600-class selection dominates a TINY forward
        model.config.rpn_post_nms_top_n = model.proposal_generator.post_nms_top_n = 30
    size, batch_sizes = ((96, 128), (1, 2)) if quick else ((600, 800), (1, 8, 32))
    repeats = {1: 1, 2: 1} if quick else {1: 10, 8: 3, 32: 2}
    measured = throughput(model, device, size, MODES, batch_sizes, repeats)
    return {"size": list(size), "model": variant, "proposals": model.config.rpn_post_nms_top_n, **measured}


def agreement_lines(arguments: list[str]) -> list[str]:
    """benchmarks/agreement.py's report, kept line by line."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        agreement.main(arguments)
    text = buffer.getvalue()
    print(text, end="", flush=True)
    return [line.strip() for line in text.splitlines() if line.strip()]


def environment(device: torch.device, quick: bool) -> dict:
    import transformers

    info = {
        "quick": quick,
        "device": str(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    return info


# the golden arrays this check reads none of (early blobs, the per-class box deltas): left out of a prepared copy
UNUSED_GOLDEN_KEYS = ("blob/data", "blob/conv1", "blob/res2a", "blob/res2c", "blob/res3a", "blob/res3b3", "blob/roipool5",
                      "bbox_pred")  # fmt: skip


def prepare_golden(source: Path, target: Path) -> int:
    """A copy of the golden data with what this check reads (the FULL weights are regenerated), small enough to
    travel with the working tree to a device machine; returns its size in bytes."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("README.md", "test_tiny.prototxt", "test_full.prototxt", "tiny_seed0.caffemodel"):
        shutil.copyfile(source / name, target / name)
    for folder in ("images", "refgen"):
        (target / folder).mkdir(exist_ok=True)
        for path in (source / folder).iterdir():
            shutil.copyfile(path, target / folder / path.name)
    for variant in ("tiny", "full"):
        (target / variant).mkdir(exist_ok=True)
        for path in sorted((source / variant).glob("*.npz")):
            with np.load(path) as data:
                kept = {key: data[key] for key in data.files if key not in UNUSED_GOLDEN_KEYS}
            np.savez_compressed(target / variant / path.name, **kept)
    return sum(path.stat().st_size for path in target.rglob("*") if path.is_file())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="folder for gpu_check.json")
    parser.add_argument("--quick", action="store_true", help="CPU, TINY sizes: checks that the check itself runs")
    parser.add_argument("--golden", help="the golden data folder (default: ../shared/golden, else .golden)")
    parser.add_argument("--device", help="default: cuda, or cpu with --quick")
    parser.add_argument(
        "--prepare-golden", action="store_true", help="only write the slim golden copy for a device run into OUTPUT"
    )
    args = parser.parse_args(argv)
    if args.prepare_golden:
        size = prepare_golden(find_golden(args.golden), args.output)
        print(f"golden data for the check in {args.output}: {size / 2**20:.1f} MiB")
        return {"prepared": str(args.output), "bytes": size}
    device = torch.device(args.device or ("cpu" if args.quick else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a GPU machine, or pass --quick")
    golden = find_golden(args.golden)
    args.output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report = {"environment": environment(device, args.quick), "golden": str(golden)}
    print(json.dumps(report["environment"]), flush=True)

    def timed(name, fn):
        start = time.perf_counter()
        print(f"\n== {name}", flush=True)
        report[name] = fn()
        report.setdefault("seconds", {})[name] = time.perf_counter() - start
        (args.output / "gpu_check.json").write_text(json.dumps(report, indent=1))  # what is done so far survives

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        tiny_images = ["astronaut"] if args.quick else list(IMAGES)
        timed("parity_tiny", lambda: parity(golden, "tiny", tiny_images, device, folder))
        if not args.quick:
            timed("parity_full", lambda: parity(golden, "full", FULL_IMAGES, device, folder))
        timed("throughput", lambda: speeds(golden, device, args.quick, folder))
        modes = ["bf16"] if args.quick else ["tf32", "bf16", "fp16", "fp32-screened"]
        arguments = ["--device", str(device), "--modes", *modes, "--golden", str(golden)]
        arguments += ["--tiny-images", "astronaut"] if args.quick else ["--full"]
        timed("agreement", lambda: agreement_lines(arguments))
    report["seconds"]["total"] = time.perf_counter() - started
    (args.output / "gpu_check.json").write_text(json.dumps(report, indent=1))
    print(f"\nwritten {args.output / 'gpu_check.json'} in {report['seconds']['total']:.0f} s")
    return report


if __name__ == "__main__":
    main()
