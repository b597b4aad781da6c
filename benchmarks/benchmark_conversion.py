"""Time and peak memory of converting the full-size (ResNet-101, 262 MB) .caffemodel, relative to its size.

Regenerates the golden FULL synthetic weights with ../shared/golden/refgen/make_caffemodel.py, then converts them in
fresh subprocesses:
- in-process numbers: the time of `convert_caffemodel` alone, and its peak resident memory above the memory the
  imported libraries already hold (the peak is reset after the imports through /proc/self/clear_refs);
- end to end: `butd-frcnn convert` as a user runs it, wall time and peak RSS of the whole process.

Usage: python benchmarks/benchmark_conversion.py [--workdir DIR] [--vocab]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
GOLDEN = REPO_ROOT.parent / "shared" / "golden"
VOCAB = REPO_ROOT.parent / "shared" / "vocab"

MEASURE = r"""
import json, sys, time

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

from butd_frcnn.conversion.convert import convert_caffemodel

options = json.loads(sys.argv[3])
baseline = status("VmRSS")
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS: the peak below is the conversion's own
    reset = True
except OSError:
    reset = False
started = time.perf_counter()
convert_caffemodel(sys.argv[1], sys.argv[2], **options)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "baseline": baseline, "peak": status("VmHWM"), "reset": reset}))
"""


def environment() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def megabytes(count: int) -> str:
    return f"{count / 2**20:,.0f} MiB"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="keep the weights and outputs there (default: a temp dir)")
    parser.add_argument("--vocab", action="store_true", help="also pass the prototxt and the vocabularies")
    args = parser.parse_args()
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        benchmark(args.workdir, args.vocab)
    else:
        with tempfile.TemporaryDirectory(prefix="butd-conversion-") as workdir:
            benchmark(Path(workdir), args.vocab)


def benchmark(workdir: Path, vocab: bool):
    caffemodel = workdir / "full_seed0.caffemodel"
    if not caffemodel.exists():
        subprocess.run(
            [
                sys.executable,
                str(GOLDEN / "refgen" / "make_caffemodel.py"),
                str(GOLDEN / "test_full.prototxt"),
                str(caffemodel),
                "--seed",
                "0",
            ],
            check=True,
            capture_output=True,
        )
    size = caffemodel.stat().st_size
    options, flags = {}, []
    if vocab:
        options = {
            "prototxt": str(GOLDEN / "test_full.prototxt"),
            "objects_vocab": str(VOCAB / "objects_vocab.txt"),
            "attributes_vocab": str(VOCAB / "attributes_vocab.txt"),
        }
        flags = [
            "--prototxt",
            options["prototxt"],
            "--objects-vocab",
            options["objects_vocab"],
            "--attributes-vocab",
            options["attributes_vocab"],
        ]

    measured = subprocess.run(
        [sys.executable, "-c", MEASURE, str(caffemodel), str(workdir / "out-api"), json.dumps(options)],
        check=True,
        capture_output=True,
        text=True,
        env=environment(),
    )
    numbers = json.loads(measured.stdout.strip().splitlines()[-1])

    started = time.perf_counter()
    with open(workdir / "cli.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "butd_frcnn.cli", "convert", str(caffemodel), str(workdir / "out-cli"), *flags],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment(),
        )
        _, status, usage = os.wait4(process.pid, 0)  # this child's own resource usage
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"butd-frcnn convert failed:\n{(workdir / 'cli.log').read_text()[-3000:]}")
    cli_peak = usage.ru_maxrss * 1024  # kilobytes on Linux

    conversion_peak = numbers["peak"] - numbers["baseline"]
    print(f"file: {caffemodel} ({size:,} bytes, {megabytes(size)})")
    print(
        f"convert_caffemodel: {numbers['seconds']:.2f} s; peak RSS {megabytes(numbers['peak'])}, of which "
        f"{megabytes(numbers['baseline'])} are the imported libraries"
    )
    label = "peak above the libraries" if numbers["reset"] else "peak minus RSS after imports (HWM not reset)"
    print(f"  {label}: {megabytes(conversion_peak)} = {conversion_peak / size:.2f} x the file size")
    print(
        f"butd-frcnn convert (whole process, imports included): {wall:.2f} s wall; peak RSS "
        f"{megabytes(cli_peak)} = {cli_peak / size:.2f} x the file size"
    )


if __name__ == "__main__":
    main()
