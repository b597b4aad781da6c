"""Helpers of the Hub tests: a converted TINY model folder carrying the real vocabularies, and a Python subprocess in
which the butd_frcnn package cannot be imported (what a Hub user without the package has)."""

import json
from pathlib import Path

from golden import GOLDEN, VOCAB
from remote import run_without_package as run_code_without_package

# Proposals kept by the RPN: 100 instead of 300 makes every forward (and so these tests) about three times faster;
# the selection still has realistic scores and counts, and what is compared is always the model's own output.
PROPOSALS = 100


def save_tiny_hub_folder(folder: Path) -> Path:
    """The golden TINY weights converted with the real Visual Genome vocabularies by `butd-frcnn convert`'s function:
    weights, config with auto_map, preprocessor config, model sources, endpoint files, pipeline, model card."""
    from butd_frcnn.conversion.convert import convert_caffemodel

    convert_caffemodel(
        GOLDEN / "tiny_seed0.caffemodel",
        folder,
        objects_vocab=VOCAB / "objects_vocab.txt",
        attributes_vocab=VOCAB / "attributes_vocab.txt",
    )
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["rpn_post_nms_top_n"] = PROPOSALS
    config_path.write_text(json.dumps(config, indent=2))
    return folder


def run_without_package(code: str, workdir: Path) -> dict:
    """Run `code` in a fresh Python that cannot import butd_frcnn (and has its own HF cache, offline); the code
    prints one JSON document as its last line of output, returned here."""
    completed = run_code_without_package(code + "\n_assert_package_never_imported()\n", workdir)
    return json.loads(completed.stdout.strip().splitlines()[-1])
