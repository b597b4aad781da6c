#!/usr/bin/env bash
# The prepared CUDA check (benchmarks/gpu_check.py), with its log: OUT/gpu_check.log beside OUT/gpu_check.json.
#
#   bash benchmarks/gpu_check.sh --prepare           # on a machine with ../shared: the golden data the check reads
#                                                    # into .golden/ (about 42 MiB, git-ignored through
#                                                    # .git/info/exclude), to carry to the device machine
#   bash benchmarks/gpu_check.sh OUT                 # on the GPU machine, from the working tree (no install)
#   bash benchmarks/gpu_check.sh OUT --quick         # on a CPU, tiny sizes
#
# On the device tool: carry [".golden"], command `bash benchmarks/gpu_check.sh $OUT`, timeout_s 600.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
if [[ "${1:-}" == "--prepare" ]]; then
  exclude=$(git rev-parse --git-path info/exclude)
  grep -qx '/.golden/' "$exclude" 2>/dev/null || echo '/.golden/' >> "$exclude"
  exec "$PYTHON" benchmarks/gpu_check.py .golden --prepare-golden "${@:2}"
fi
OUT=${1:?usage: gpu_check.sh OUT [--quick] | --prepare}
mkdir -p "$OUT"
{ echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"; nvidia-smi --query-gpu=name,driver_version,memory.total \
    --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"; } | tee "$OUT/gpu_check.log"
"$PYTHON" benchmarks/gpu_check.py "$OUT" "${@:2}" 2>&1 | tee -a "$OUT/gpu_check.log"
