#!/usr/bin/env bash
# Every measurement of docs/performance.md and docs/precision.md, in sequence (run it on an otherwise idle machine):
# whole forward at 600x800 in fp32 and bf16 against the machine's own dense-convolution peak (paired ratios; RUNS
# invocations of 3 paired forwards each, medians summarized at the end), the convolutions' share and res5's ratio,
# peak memory of one 600x1000 image in every CPU precision, each precision's time against fp32's (interleaved),
# agreement of bf16 and fp32-screened with fp32 and with the original (FULL golden network), and extraction images/s
# for batches of 1, 2 and 4 (EXTRACTION_IMAGES images, default 8), and a batch of 4 against one image at a time
# (interleaved).
#
#   bash benchmarks/run_performance_measurements.sh                 # all cores
#   THREADS=2 RUNS=3 OUT=results bash benchmarks/run_performance_measurements.sh
#   STEPS="agreement extraction" bash benchmarks/run_performance_measurements.sh   # some steps only (model, memory,
#                                                                                  # speed, agreement, extraction,
#                                                                                  # batches)
#
# Logs and JSON go to $OUT (default: performance-measurements/); the load average is printed before every step, since
# other work on the machine makes every absolute number slower (the paired ratios less so).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-performance-measurements}
RUNS=${RUNS:-3}
THREADS=${THREADS:-$(nproc)}
STEPS=${STEPS:-model memory speed agreement extraction batches}
mkdir -p "$OUT"
step() { echo; echo "=== $* (load average: $(cut -d' ' -f1-3 /proc/loadavg))"; }
wanted() { [[ " $STEPS " == *" $1 "* ]]; }

wanted model && for precision in fp32 bf16; do
  for run in $(seq "$RUNS"); do
    step "benchmark_model.py --dtype $precision, run $run of $RUNS"
    python benchmarks/benchmark_model.py --sizes 600x800 --dtype "$precision" --repeats 3 --threads "$THREADS" \
      --json "$OUT/model-$precision-$run.json" | tee "$OUT/model-$precision-$run.log"
  done
done

wanted memory && for precision in fp32 bf16 fp16 fp32-screened; do
  step "benchmark_model.py --memory --dtype $precision"
  python benchmarks/benchmark_model.py --memory --sizes 600x1000 --dtype "$precision" --threads "$THREADS" \
    | tee "$OUT/memory-$precision.log"
done

if wanted speed; then
  step "precision_speed.py (each precision's time against fp32's, interleaved, FULL golden network)"
  python benchmarks/precision_speed.py --threads "$THREADS" --rounds "$RUNS" | tee "$OUT/precision-speed.log"
fi

if wanted agreement; then
  step "agreement.py --full (bf16 and fp32-screened against fp32 and the original)"
  python benchmarks/agreement.py --full --modes bf16 fp32-screened --threads "$THREADS" | tee "$OUT/agreement.log"
fi

if wanted extraction; then
  step "benchmark_extraction.py (batches 1, 2, 4; fp32, bf16, fp32-screened)"
  python benchmarks/benchmark_extraction.py --no-tiny --full-images "${EXTRACTION_IMAGES:-8}" --batch-sizes 1 2 4 \
    --dtypes fp32 bf16 fp32-screened --threads "$THREADS" | tee "$OUT/extraction.log"
fi

if wanted batches; then
  step "batch_speed.py (a batch of 4 same-size images against one at a time, interleaved)"
  python benchmarks/batch_speed.py --threads "$THREADS" --rounds "$RUNS" | tee "$OUT/batch-speed.log"
fi

wanted model || exit 0
step "summary"
python - "$OUT" "$RUNS" <<'EOF'
import json, statistics, sys
from pathlib import Path

out, runs = Path(sys.argv[1]), int(sys.argv[2])
for precision in ("fp32", "bf16"):
    sizes = [json.loads((out / f"model-{precision}-{run}.json").read_text())["sizes"]["600x800"] for run in range(1, runs + 1)]
    paired = [size["paired_fraction_of_peak_median"] for size in sizes]
    print(
        f"{precision}: forward {statistics.median(s['forward_seconds'] for s in sizes):.2f} s (median of {runs} runs' "
        f"best), paired fraction of the dense-conv peak {statistics.median(paired):.1%} (runs: "
        + ", ".join(f"{p:.1%}" for p in paired)
        + f"), res5 {statistics.median(s['res5_paired_fraction_median'] for s in sizes):.1%}, outside the "
        f"convolutions {1 - statistics.median(s['convolution_share'] for s in sizes):.1%}"
    )
EOF
