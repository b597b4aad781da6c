"""Where the forward's time goes, how close it gets to this machine's compute limit, and its peak memory.

The full-size default configuration (ResNet-101, 1601 classes, 401 attributes) with random weights runs on fixed
synthetic images (600x800 and 600x1000 after resizing: the two shapes of most COCO / Visual Genome photos). For each
stage of the forward the script prints its time, the GFLOP it computes (counted from the shapes every convolution and
linear layer sees) and the GFLOP/s it reaches; then the whole forward (`model(**batch)`, as users call it), and the
same ratio against the machine's own dense-convolution speed, measured in the same run on convolutions shaped like the
network's, so that "achieved / peak" is comparable across machines: against the run's best convolution, and paired
with the fastest convolution timed right before and after each forward (for machines whose speed drifts).

    python benchmarks/benchmark_model.py                       # CPU, fp32, all threads, 600x800 and 600x1000
    python benchmarks/benchmark_model.py --dtype bf16          # the same in bf16 (any ButdFrcnnConfig.precision)
    python benchmarks/benchmark_model.py --dtype fp32-screened --versus fp32   # and its time against fp32's, paired
    python benchmarks/benchmark_model.py --memory              # peak memory of one forward (fresh process), and
                                                               # what the derived (folded) weights cost
    python benchmarks/benchmark_model.py --gradients           # the model called with gradients on (time, --memory)
    python benchmarks/benchmark_model.py --chunk-size 150      # res5 over 150 regions at once (more memory)
    python benchmarks/benchmark_model.py --compile             # torch.compile'd backbone and res5
    python benchmarks/benchmark_model.py --given-boxes         # model(..., boxes=) with 10, 36, 100, 300 boxes
                                                               # against the detection forward, interleaved
    python benchmarks/benchmark_model.py --device cuda --batch-sizes 1 8 32 --modes fp32 tf32 bf16 fp32-screened

Stages: preprocess (decoded uint8 image -> resized, mean-subtracted tensor), backbone (conv1..res4), RPN + proposals
(RPN head, decoding, NMS), RoI pooling, res5 (+ average pooling), heads (class, box, attribute predictors and
softmaxes), selection (1600-class NMS and top-k). With fp32-screened, "res5" is the whole screened RoI head (pooling,
both res5 passes, the heads and the planning). Besides the stages: the share of the forward's time spent inside the
convolution kernels (from torch.profiler), and res5's speed against the reference convolution timed around it.
"""

import argparse
import contextlib
import functools
import json
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from butd_frcnn import ButdFrcnnConfig, ButdFrcnnImageProcessor, ButdFrcnnModel
from butd_frcnn.configuration_butd_frcnn import PRECISIONS

CONVOLUTION_OPS = ("mkldnn::_convolution_pointwise", "mkldnn::_convolution_pointwise_", "aten::mkldnn_convolution",
                   "aten::_slow_conv2d_forward", "aten::thnn_conv2d")  # fmt: skip
STAGES = ("preprocess", "backbone", "rpn_proposals", "roi_pool", "res5", "heads", "selection")


# ---------------------------------------------------------------------------------------------------------------
# Counting FLOPs
# ---------------------------------------------------------------------------------------------------------------


class FlopCounter:
    """Adds up 2 x multiply-accumulates of every Conv2d and Linear that runs, from the shapes they see."""

    def __init__(self, model: nn.Module):
        self.flops = 0
        self.convolutions: dict[tuple, int] = defaultdict(int)  # signature -> calls
        self.handles = [
            module.register_forward_hook(self._hook)
            for module in model.modules()
            if isinstance(module, (nn.Conv2d, nn.Linear))
        ]

    def _hook(self, module, inputs, output):
        if isinstance(module, nn.Conv2d):
            kernel = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            self.flops += 2 * kernel * output.numel()
            x = inputs[0]
            channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
            signature = (tuple(x.shape), channels_last, tuple(module.weight.shape), module.stride, module.padding)
            self.convolutions[(*signature, module.dilation, x.dtype)] += 1
        else:
            self.flops += 2 * module.in_features * output.numel()

    def take(self) -> int:
        flops, self.flops = self.flops, 0
        return flops

    def remove(self):
        for handle in self.handles:
            handle.remove()


# ---------------------------------------------------------------------------------------------------------------
# The machine's own limit
# ---------------------------------------------------------------------------------------------------------------


def _time(fn, device, repeats: int) -> float:
    fn()  # warm up (kernel selection, caches)
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


PEAK_SHAPES = {
    # name: (input shape, out channels, kernel, dilation): plain dense convolutions shaped like the network's heaviest
    "3x3 256->256 @ 1x38x50": ((1, 256, 38, 50), 256, 3, 1),
    "1x1 1024->256 @ 1x38x50": ((1, 1024, 38, 50), 256, 1, 1),
    "3x3/d2 512->512 @ 64x14x14": ((64, 512, 14, 14), 512, 3, 2),
    "1x1 512->2048 @ 64x14x14": ((64, 512, 14, 14), 2048, 1, 1),
}
MEMORY_FORMATS = {"NCHW": torch.contiguous_format, "NHWC": torch.channels_last}


def conv_seconds(input_shape, weight_shape, memory_format, stride, padding, dilation, dtype, device, repeats) -> float:
    """Best-of-`repeats` time of one convolution on random data, both operands in `memory_format`."""
    x = torch.randn(input_shape, device=device, dtype=dtype).contiguous(memory_format=memory_format)
    w = (torch.randn(weight_shape, device=device, dtype=dtype) * 0.01).contiguous(memory_format=memory_format)
    b = torch.zeros(weight_shape[0], device=device, dtype=dtype)
    return _time(functools.partial(F.conv2d, x, w, b, stride, padding, dilation), device, repeats)


def conv_gflops(name: str, layout: str, device: torch.device, dtype: torch.dtype, repeats: int) -> float:
    """GFLOP/s of one of `PEAK_SHAPES` in one layout (best of `repeats`)."""
    shape, out_channels, kernel, dilation = PEAK_SHAPES[name]
    weight_shape = (out_channels, shape[1], kernel, kernel)
    padding = dilation * (kernel // 2)
    seconds = conv_seconds(shape, weight_shape, MEMORY_FORMATS[layout], 1, padding, dilation, dtype, device, repeats)
    return 2 * shape[0] * out_channels * shape[1] * kernel * kernel * shape[2] * shape[3] / seconds / 1e9


def machine_conv_peak(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> dict[tuple[str, str], float]:
    """GFLOP/s of every `PEAK_SHAPES` entry in both memory formats; the best of them is the machine's dense-conv
    peak."""
    return {
        (name, layout): conv_gflops(name, layout, device, dtype, repeats)
        for name in PEAK_SHAPES
        for layout in MEMORY_FORMATS
    }


def isolated_convolution_seconds(convolutions: dict[tuple, int], device: torch.device) -> float:
    """The time the forward's convolutions take when each runs alone (best of 3), in the layout the forward gives
    them: what a perfect implementation of the rest would approach."""
    total = 0.0
    for (shape, channels_last, weight_shape, stride, padding, dilation, dtype), calls in convolutions.items():
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        total += calls * conv_seconds(shape, weight_shape, memory_format, stride, padding, dilation, dtype, device, 3)
    return total


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------------------
# One forward, stage by stage
# ---------------------------------------------------------------------------------------------------------------


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A fixed photo-like RGB image (smooth noise): random weights on it give a full set of 300 proposals."""
    rng = np.random.RandomState(seed)
    small = torch.from_numpy(rng.randint(0, 256, size=(1, 3, height // 20, width // 20)).astype(np.float32))
    smooth = F.interpolate(small, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 255)
    return smooth[0].permute(1, 2, 0).round().to(torch.uint8).numpy()


def staged_forward(model, processor, image, device, counter, timings, flops):
    """The forward's stages, called one by one as `ButdFrcnnModel.forward` calls them, each timed and counted."""

    @contextlib.contextmanager
    def stage(name):
        synchronize(device)
        start = time.perf_counter()
        yield
        synchronize(device)
        timings[name] += time.perf_counter() - start
        flops[name] += counter.take()

    config = model.config
    with stage("preprocess"):
        batch = processor(image, return_tensors="pt")
        pixel_values = batch["pixel_values"].to(device, model.compute_dtype())
    scales = batch["scales"].to(device=device, dtype=torch.float32)
    height, width = pixel_values.shape[2:]
    with stage("backbone"):
        features = model.backbone(pixel_values)[-1]
    with stage("rpn_proposals"):
        boxes, _ = model.proposal_generator(features, height, width, scales)[0]
    heads = model.roi_heads
    if config.precision == "fp32-screened":
        selection = {key: getattr(config, key) for key in ("min_boxes", "max_boxes", "score_threshold")}
        with stage("res5"):
            outputs = model.heads_for_selection(features, boxes, boxes / scales[0], **selection)
    else:
        with stage("roi_pool"):
            pooled = heads.pool_regions(features, boxes)
        with stage("res5"):
            region_features = heads.region_features(pooled)
        with stage("heads"):
            outputs = heads.predict(region_features)
    with stage("selection"):
        selected = model.select(boxes / scales[0], outputs, config.min_boxes, config.max_boxes, config.score_threshold)
        selected["boxes"].cpu()
    return boxes.shape[0], selected["boxes"].shape[0]


def convolution_share(fn) -> float:
    """The share of `fn`'s wall time spent inside convolution kernels (self time of the convolution ops)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        fn()
        wall = time.perf_counter() - start
    inside = sum(event.self_cpu_time_total for event in prof.key_averages() if event.key in CONVOLUTION_OPS)
    return inside / 1e6 / wall


def whole_forward_fn(model, processor, image, device, precision=None):
    """`model(**batch)` as users call it (preprocessing included), under `precision` (default: the model's)."""

    def run():
        batch = processor(image, return_tensors="pt")
        saved = model.config.precision
        model.config.precision = precision or saved
        try:
            model(**batch.to(device)).boxes.cpu()
        finally:
            model.config.precision = saved

    return run


def benchmark_size(model, processor, size, device, repeats, reference_gflops, versus=None):
    """Per-stage (seconds, FLOP), the whole forward's paired runs, the isolated convolutions' seconds, res5's
    paired rates, the convolutions' share of the forward, the paired time ratio against `versus`, and counts."""
    image = synthetic_image(*size)
    counter = FlopCounter(model)
    staged_forward(model, processor, image, device, counter, defaultdict(float), defaultdict(int))  # warm-up
    counter.take()
    counter.convolutions.clear()
    runs, res5_paired = [], []
    for _ in range(repeats):
        timings, flops = defaultdict(float), defaultdict(int)
        before = reference_gflops()
        proposals, selected = staged_forward(model, processor, image, device, counter, timings, flops)
        runs.append((timings, flops))
        res5_paired.append((flops["res5"] / timings["res5"] / 1e9, max(before, reference_gflops())))
    counter.remove()
    # best of the repeats, stage by stage: the machine's speed drifts, and the best run is the least disturbed
    stages = {name: (min(t[name] for t, _ in runs), runs[0][1][name]) for name in STAGES}
    isolated = isolated_convolution_seconds(counter.convolutions, device) / repeats

    whole_forward = whole_forward_fn(model, processor, image, device)
    other = whole_forward_fn(model, processor, image, device, versus) if versus else None
    if other:
        other()  # warm up its derived weights
    # already warm: the staged runs went through the same kernels. Each forward is paired with the reference
    # convolution timed just before and just after it (the faster of the two: conservative), so that their ratio
    # compares the two under the same machine conditions.
    references, seconds, ratios = [reference_gflops()], [], []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        whole_forward()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        references.append(reference_gflops())
        if other:
            start = time.perf_counter()
            other()
            synchronize(device)
            ratios.append(seconds[-1] / (time.perf_counter() - start))
    paired = [(max(references[i], references[i + 1]), seconds[i]) for i in range(repeats)]  # (GFLOP/s, seconds)
    share = convolution_share(whole_forward) if device.type == "cpu" else float("nan")
    return stages, paired, isolated, res5_paired, share, sorted(ratios), proposals, selected


def print_cpu_report(args, model, processor, device):
    """Measures the machine's peak before and after the model runs, then prints everything.

    This VM's speed drifts by up to 2x over minutes, so the ratio to the peak is given two ways: against the best
    peak of the whole run (conservative: the forward's best run may fall in a slow spell), and paired, each whole
    forward against the fastest convolution timed just before and after it.
    """
    dtype = model.compute_dtype()
    peaks_before = machine_conv_peak(device, dtype)
    reference_name = max(peaks_before, key=peaks_before.get)
    reference = functools.partial(conv_gflops, *reference_name, device, dtype, repeats=3)
    results = {
        size: benchmark_size(model, processor, size, device, args.repeats, reference, args.versus)
        for size in args.sizes
    }
    peaks_after = machine_conv_peak(device, dtype)
    peaks = {key: max(peaks_before[key], peaks_after[key]) for key in peaks_before}
    peak = max(peaks.values())
    gradients = "on" if torch.is_grad_enabled() else "off (inference mode)"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, precision "
        f"{model.config.precision} (computing in {dtype}), gradients {gradients}, load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    print("machine dense-conv GFLOP/s (same dtype; measured before / after the model, best of 5 each):")
    for name, layout in peaks:
        key = (name, layout)
        print(f"  {name + ' ' + layout:36s} {peaks_before[key]:8.1f} {peaks_after[key]:8.1f}")
    print(f"  peak {peak:.1f} GFLOP/s")
    report = {
        "threads": torch.get_num_threads(),
        "precision": model.config.precision,
        "dtype": str(dtype),
        "machine_peak_gflops": {" ".join(key): value for key, value in peaks.items()},
        "sizes": {},
    }
    for size, (stages, paired, isolated, res5_paired, share, ratios, proposals, selected) in results.items():
        staged_total = sum(seconds for seconds, _ in stages.values())
        total_flops = sum(f for _, f in stages.values())
        print(f"\n{size[0]}x{size[1]}: {proposals} proposals, {selected} regions selected (best of {args.repeats})")
        print(f"  {'stage':14s} {'seconds':>8s} {'share':>7s} {'GFLOP':>8s} {'GFLOP/s':>8s} {'of peak':>8s}")
        for name, (seconds, flops) in stages.items():
            rate = flops / seconds / 1e9 if flops else 0.0
            of_peak = f"{rate / peak:7.1%}" if flops else "      -"
            print(
                f"  {name:14s} {seconds:8.3f} {seconds / staged_total:7.1%} {flops / 1e9:8.1f} "
                f"{rate if flops else float('nan'):8.1f} {of_peak}"
            )
        forward_seconds = min(seconds for _, seconds in paired)
        overall = total_flops / forward_seconds / 1e9
        paired_ratios = sorted(total_flops / seconds / 1e9 / reference for reference, seconds in paired)
        print(
            f"  whole forward (model(**batch), preprocessing included): {forward_seconds:.2f} s, "
            f"{total_flops / 1e9:.0f} GFLOP, {overall:.1f} GFLOP/s = {overall / peak:.1%} of the run's best "
            "dense-conv peak"
        )
        print(
            f"  each forward against {' '.join(reference_name)} timed just before and after it: "
            + ", ".join(f"{total_flops / seconds / 1e9:.0f}/{reference:.0f}" for reference, seconds in paired)
            + f" GFLOP/s = {paired_ratios[len(paired_ratios) // 2]:.1%} (median), {paired_ratios[-1]:.1%} (best)"
        )
        print(
            f"  its convolutions, each run alone in the same shapes and layouts: {isolated:.2f} s "
            f"({total_flops / isolated / 1e9:.1f} GFLOP/s): the forward runs at {isolated / forward_seconds:.1%} of that"
        )
        res5_ratios = sorted(rate / reference for rate, reference in res5_paired)
        print(
            "  res5 against the reference convolution timed around it: "
            + ", ".join(f"{rate:.0f}/{reference:.0f}" for rate, reference in res5_paired)
            + f" GFLOP/s = {res5_ratios[len(res5_ratios) // 2]:.1%} (median)"
        )
        print(f"  time inside the convolution kernels (torch.profiler): {share:.1%}; outside: {1 - share:.1%}")
        if ratios:
            print(
                f"  time against precision {args.versus}, each forward paired with one of it: "
                + ", ".join(f"{ratio:.2f}" for ratio in ratios)
                + f" (median {ratios[len(ratios) // 2]:.2f}; below 1: faster)"
            )
        report["sizes"][f"{size[0]}x{size[1]}"] = {
            "stages": {name: {"seconds": s, "gflop": f / 1e9} for name, (s, f) in stages.items()},
            "forward_seconds": forward_seconds,
            "paired_reference_gflops_and_forward_seconds": paired,
            "isolated_convolution_seconds": isolated,
            "gflop": total_flops / 1e9,
            "fraction_of_peak": overall / peak,
            "paired_fraction_of_peak_median": paired_ratios[len(paired_ratios) // 2],
            "res5_paired_fraction_median": res5_ratios[len(res5_ratios) // 2],
            "convolution_share": share,
            "time_ratio_versus": ratios,
        }
    return report


# ---------------------------------------------------------------------------------------------------------------
# Given boxes
# ---------------------------------------------------------------------------------------------------------------


def print_given_boxes_report(args, model, processor, device) -> dict:
    """The forward on K given boxes (no RPN, no selection; the boxes are the detection run's first K proposals, in
    original pixels) against the detection forward (300 proposals) on the same image, all timed interleaved, best of
    `--repeats` each: on a machine whose speed drifts, only their ratios mean something. K = 0 is the cost of
    everything but the RoI heads (preprocessing is done once, outside the timings)."""
    size = args.sizes[0]
    dtype = model.compute_dtype()
    batch = processor(synthetic_image(*size), return_tensors="pt").to(device)  # the model casts to its precision
    detected = model(**batch)
    available = int(detected.num_proposals[0])
    proposals = detected.proposals[0, :available] / batch["scales"][0].float()
    counts = [0, *(count for count in args.given_boxes if count <= available)]
    runs = {"detection": lambda: model(**batch).boxes.cpu()}
    for count in counts:
        runs[count] = functools.partial(lambda k: model(**batch, boxes=[proposals[:k]]).boxes.cpu(), count)
    for run in runs.values():
        run()  # warm up every shape once
    seconds: dict = defaultdict(list)
    for _ in range(args.repeats):
        for name, run in runs.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    best = {name: min(values) for name, values in seconds.items()}
    detection, base = best["detection"], best[0]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, dtype {dtype}; "
        f"{size[0]}x{size[1]}, {available} proposals; best of {args.repeats}, interleaved"
    )
    print(f"  {'regions':>18s} {'seconds':>8s} {'of detection':>13s} {'RoI heads: of detection':>24s} {'K / 300':>8s}")
    print(f"  {'detection (300)':>18s} {detection:8.3f} {1:13.1%} {1:24.1%} {'':>8s}")
    for count in counts:
        heads = (best[count] - base) / (detection - base)
        print(
            f"  {f'{count} given':>18s} {best[count]:8.3f} {best[count] / detection:13.1%} {heads:24.1%} "
            f"{count / available:8.1%}"
        )
    print(
        "  (RoI heads: a run's time beyond the 0-box run, against the detection run's time beyond it: the RPN and "
        "the selection count in the detection's share)"
    )
    return {"size": f"{size[0]}x{size[1]}", "proposals": available, "seconds": {str(k): v for k, v in seconds.items()}}


# ---------------------------------------------------------------------------------------------------------------
# GPU throughput
# ---------------------------------------------------------------------------------------------------------------


def gpu_busy_fraction(fn) -> float:
    """Share of the wall time during which CUDA kernels run, from the profiler's kernel intervals (merged)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    intervals = sorted(
        (event.time_range.start, event.time_range.end)
        for event in prof.events()
        if event.device_type == torch.autograd.DeviceType.CUDA
    )
    busy, current_start, current_end = 0.0, None, None
    for begin, end in intervals:
        if current_end is None or begin > current_end:
            if current_end is not None:
                busy += current_end - current_start
            current_start, current_end = begin, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        busy += current_end - current_start
    return busy / 1e6 / wall  # microseconds


def print_gpu_report(args, config, processor, device):
    image = synthetic_image(*args.sizes[0])
    single = processor(image, return_tensors="pt")
    report = {}
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device)}, {args.sizes[0][0]}x{args.sizes[0][1]}")
    print(f"  {'mode':13s} {'batch':>5s} {'images/s':>9s} {'GPU busy':>9s}")
    for mode in args.modes:
        torch.manual_seed(0)
        model = compiled(ButdFrcnnModel(config).eval().to(device=device), args.compile)
        model.config.precision = mode  # TF32 or IEEE float32 is set by the model around its forward
        for batch_size in args.batch_sizes:
            batch = {
                "pixel_values": single["pixel_values"].repeat(batch_size, 1, 1, 1).to(device),
                "image_sizes": single["image_sizes"].repeat(batch_size, 1),
                "scales": single["scales"].repeat(batch_size),
            }

            def run(model=model, batch=batch):
                with torch.inference_mode():
                    model(**batch).boxes.cpu()

            seconds = _time(run, device, args.repeats)
            busy = gpu_busy_fraction(run)
            print(f"  {mode:13s} {batch_size:5d} {batch_size / seconds:9.1f} {busy:9.1%}")
            report[f"{mode}/{batch_size}"] = {"images_per_second": batch_size / seconds, "gpu_busy": busy}
        del model
        torch.cuda.empty_cache()
    return report


# ---------------------------------------------------------------------------------------------------------------
# Peak memory
# ---------------------------------------------------------------------------------------------------------------


def peak_memory_child(args) -> None:
    """Runs in a fresh process: the process's peak resident memory after building the model, then after one forward."""
    config = ButdFrcnnConfig(**chunk_override(args), precision=args.dtype)
    torch.manual_seed(0)
    model = ButdFrcnnModel(config).eval()
    processor = ButdFrcnnImageProcessor()
    image = synthetic_image(*args.sizes[-1])
    batch = processor(image, return_tensors="pt")
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with forward_mode(args):
        model(**batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    derived = model.derived_weights_nbytes() / 2**20
    weights = sum(t.nbytes for t in (*model.parameters(), *model.buffers())) / 2**20
    print(
        json.dumps(
            {"model_loaded_mib": loaded, "peak_mib": peak, "derived_weights_mib": derived, "weights_mib": weights}
        )
    )


def print_memory_report(args) -> dict:
    size = args.sizes[-1]
    command = [sys.executable, __file__, "--memory-child", "--dtype", args.dtype, "--sizes", f"{size[0]}x{size[1]}"]
    if args.gradients:
        command.append("--gradients")
    if args.chunk_size is not None:
        command += ["--chunk-size", str(args.chunk_size)]
    result = json.loads(
        subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    )
    print(
        f"peak resident memory of a fresh process, one {size[0]}x{size[1]} forward in {args.dtype}"
        f"{' with gradients on' if args.gradients else ''}: "
        f"{result['peak_mib']:.0f} MiB ({result['model_loaded_mib']:.0f} MiB after building the model; "
        f"Python, torch and weights included)"
    )
    print(
        f"derived weights kept by the model after it (BatchNorm folded into the convolutions, prepacked, "
        f"half-precision copies; `model.derived_weights_nbytes()`): {result['derived_weights_mib']:.0f} MiB, beside "
        f"{result['weights_mib']:.0f} MiB of parameters and buffers; `model.clear_derived_weights()` frees them"
    )
    return result


def compiled(model, enabled: bool):
    """With `enabled`, the model with its two convolution stacks compiled (res5 sees varying region counts)."""
    if enabled:
        model.backbone = torch.compile(model.backbone)
        model.roi_heads.res5 = torch.compile(model.roi_heads.res5, dynamic=True)
    return model


def forward_mode(args) -> contextlib.AbstractContextManager:
    """Inference mode, as extraction runs the model; with `--gradients`, nothing: the caller's default, gradients on."""
    return contextlib.nullcontext() if args.gradients else torch.inference_mode()


def chunk_override(args) -> dict:
    """Config overrides from the command line: the res5 chunk size trades peak memory for speed."""
    return {} if args.chunk_size is None else {"roi_head_chunk_size": args.chunk_size}


def parse_size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype", choices=PRECISIONS, default="fp32", help="the model's precision (ButdFrcnnConfig.precision)"
    )
    parser.add_argument("--versus", choices=PRECISIONS, help="also time each whole forward against this precision")
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=[(600, 800), (600, 1000)])
    parser.add_argument("--repeats", type=int, default=3, help="runs per size; the best is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32], help="GPU runs")
    parser.add_argument(
        "--modes", nargs="+", choices=PRECISIONS, default=["fp32", "tf32", "bf16", "fp32-screened"], help="GPU runs"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone and res5")
    parser.add_argument("--chunk-size", type=int, help="regions per res5 chunk (default: the config's)")
    parser.add_argument("--memory", action="store_true", help="only the peak memory (in a fresh process)")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--gradients",
        action="store_true",
        help="call the model with gradients on (a plain call), not in inference mode",
    )
    parser.add_argument(
        "--given-boxes",
        type=int,
        nargs="*",
        metavar="K",
        help="time model(..., boxes=) with K given boxes (default 10 36 100 300) against detection, first size only",
    )
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        return peak_memory_child(args)
    if args.memory:
        report = print_memory_report(args)
    else:
        device = torch.device(args.device)
        processor = ButdFrcnnImageProcessor()
        config = ButdFrcnnConfig(**chunk_override(args))
        if device.type == "cuda":
            report = print_gpu_report(args, config, processor, device)
        else:
            torch.manual_seed(0)
            config.precision = args.dtype
            model = compiled(ButdFrcnnModel(config).eval(), args.compile)
            with forward_mode(args):
                if args.given_boxes is not None:
                    args.given_boxes = args.given_boxes or [10, 36, 100, 300]
                    report = print_given_boxes_report(args, model, processor, device)
                else:
                    report = print_cpu_report(args, model, processor, device)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
