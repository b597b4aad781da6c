#!/usr/bin/env bash
# Runs the parity, remote-code and handler tests at one end of the supported range, in a venv of its own:
#   ci/test_at_end.sh FLOOR    the oldest releases we support (ci/constraints-floor.txt; CI runs this)
#   ci/test_at_end.sh NEWEST   the newest releases on the index (ci/constraints-newest.txt)
# Extra arguments go to pytest (e.g. `-k tiny`). The venv lives under ~/.cache/butd-frcnn (BUTD_FRCNN_VENVS moves it)
# and is reused: its dependencies are (re)installed only when the constraints, pyproject.toml or the Python change.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

end=${1:-}
case "$end" in
    FLOOR) constraints=ci/constraints-floor.txt ;;
    NEWEST) constraints=ci/constraints-newest.txt ;;
    *) echo "usage: $0 FLOOR|NEWEST [pytest arguments]" >&2; exit 2 ;;
esac
shift
end_name=$(echo "$end" | tr '[:upper:]' '[:lower:]')
venv=${BUTD_FRCNN_VENVS:-$HOME/.cache/butd-frcnn}/venv-$end_name
python=${PYTHON:-python3}

# The venv's own pins only: not the machine's pip constraints (they cap torch for the main environment).
export PIP_CONSTRAINT=$repo/$constraints
export PIP_DISABLE_PIP_VERSION_CHECK=1

# pip, less the warnings about this machine's local package folders that do not hold a package
pip_quiet() {
    "$venv/bin/python" -m pip --quiet "$@" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }
}

key=$(cat "$constraints" pyproject.toml <("$python" -VV) | sha256sum | cut -d' ' -f1)
started=$SECONDS
if [ ! -x "$venv/bin/python" ]; then
    echo "== $end: creating $venv"
    "$python" -m venv "$venv"
fi
if [ "$(cat "$venv/.butd-frcnn-key" 2>/dev/null)" != "$key" ]; then
    echo "== $end: installing the package and its test dependencies under $constraints"
    pip_quiet install "setuptools>=68" wheel
    pip_quiet install -e ".[test]"
    echo "$key" > "$venv/.butd-frcnn-key"
else
    echo "== $end: reusing $venv (same constraints, pyproject.toml and Python)"
    # the editable install points at whichever checkout installed it last: point it here
    pip_quiet install --no-deps --no-build-isolation -e .
fi
# every pin of the constraints file holds, whatever the venv held before
"$venv/bin/python" - "$constraints" <<'PY'
import sys
from importlib import metadata

from packaging.requirements import Requirement

wrong = []
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if line:
        pin = Requirement(line)
        installed = metadata.version(pin.name)
        if not pin.specifier.contains(installed):
            wrong.append(f"{pin.name} {installed} (wants {pin.specifier})")
if wrong:
    sys.exit("the venv does not hold the pins: " + ", ".join(wrong))
PY
echo "== $end: venv ready in $((SECONDS - started)) s ($(du -sh "$venv" | cut -f1))"
"$venv/bin/python" -c 'import torch, torchvision, transformers, huggingface_hub, numpy; print("==", *(f"{m.__name__} {m.__version__}" for m in (torch, torchvision, transformers, huggingface_hub, numpy)))'

export PATH=$venv/bin:$PATH
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}
# golden parity (TINY and FULL), the model and its remote code, the compatibility module, the pipelines, the Endpoints handler, the CLI
# (convert; extract and compare against the original's selection), the transformers hooks and oneDNN's fused paths
exec "$venv/bin/python" -m pytest -p no:cacheprovider \
    tests/test_golden_parity_tiny.py tests/test_golden_parity_full.py tests/test_modeling.py tests/test_compat.py \
    tests/test_conversion_golden.py tests/test_pipelines.py tests/test_handler.py tests/test_transformers_pins.py \
    tests/test_fused_convolutions.py tests/test_compare.py::test_our_extraction_agrees_with_the_original_on_the_golden_image \
    "$@"
