"""The choices and defaults that `butd-frcnn extract --help` shows, in a module that imports neither torch nor
transformers so that the help comes at once. `PRECISIONS` spells out `ButdFrcnnConfig`'s precision modes (a test
checks that the two agree)."""

import os

PRECISIONS = ("fp32", "bf16", "fp16", "fp32-screened", "tf32")
DTYPE_SPELLINGS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
"""`--dtype` spellings of the precisions (`ButdFrcnnConfig.precision`) that older versions accepted."""
PRECISION_CHOICES = (*PRECISIONS, *DTYPE_SPELLINGS)

PROBS_DTYPES = ("float32", "float16")
"""dtypes of the stored class distributions (`--probs-dtype`)."""

DATASETS_INSTALL_HINT = "pip install 'butd-frcnn[datasets]'"
RAY_INSTALL_HINT = "pip install 'butd-frcnn[ray]'"

DEFAULT_MAX_PIXELS = 89_478_485
"""Pillow's own warning threshold (it refuses only twice as many); extraction refuses anything above it."""


def canonical_precision(name: str) -> str:
    """The `ButdFrcnnConfig.precision` that a `--dtype` value names (`bfloat16` -> `bf16`)."""
    return DTYPE_SPELLINGS.get(name, name)


def default_num_workers() -> int:
    return min(8, max(1, (os.cpu_count() or 2) - 1))
