"""Helpers of the Hub tests: a converted TINY model folder carrying the real vocabularies, and a Python subprocess in
which the butd_frcnn package cannot be imported (what a Hub user without the package has)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import GOLDEN, VOCAB

# Prepended to the code of every package-less subprocess: the editable install's finder would import butd_frcnn from
# anywhere, so a meta-path finder refuses it, and the subprocess checks that it really is not importable.
BLOCK_PACKAGE = """
import importlib.abc
import sys


class _RefuseButdFrcnn(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "butd_frcnn" or name.startswith("butd_frcnn."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _RefuseButdFrcnn())
try:
    import butd_frcnn
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("butd_frcnn is importable: the remote-code test would not test remote code")


def _assert_package_never_imported():
    imported = [name for name in sys.modules if name == "butd_frcnn" or name.startswith("butd_frcnn.")]
    assert not imported, imported
"""


def vocabulary(name: str) -> list[str]:
    lines = (VOCAB / name).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]


# Proposals kept by the RPN: 100 instead of 300 makes every forward (and so these tests) about three times faster;
# the selection still has realistic scores and counts, and what is compared is always the model's own output.
PROPOSALS = 100


def save_tiny_hub_folder(folder: Path) -> Path:
    """The golden TINY weights with the real Visual Genome vocabularies, saved as a converted Hub folder (weights,
    config with auto_map, preprocessor config, model sources, endpoint files)."""
    from butd_frcnn import ButdFrcnnImageProcessor, ButdFrcnnModel
    from butd_frcnn.configuration_butd_frcnn import BACKGROUND_LABEL, NO_ATTRIBUTE_LABEL
    from butd_frcnn.conversion.caffemodel import read_caffemodel
    from butd_frcnn.conversion.weights import caffe_to_state_dict, config_from_caffe
    from butd_frcnn.hub import register_for_remote_code, write_hub_files

    net = read_caffemodel(GOLDEN / "tiny_seed0.caffemodel")
    config = config_from_caffe(net, rpn_post_nms_top_n=PROPOSALS)
    model = ButdFrcnnModel(config).eval()
    model.load_state_dict(caffe_to_state_dict(net, config)[0], strict=True)
    objects, attributes = vocabulary("objects_vocab.txt"), vocabulary("attributes_vocab.txt")
    assert len(objects) + 1 == len(model.config.id2label) and len(attributes) + 1 == model.config.num_attributes
    model.config.id2label = {0: BACKGROUND_LABEL, **{i: name for i, name in enumerate(objects, start=1)}}
    model.config.label2id = {name: i for i, name in model.config.id2label.items()}
    model.config.attribute_names = [NO_ATTRIBUTE_LABEL, *attributes]
    processor = ButdFrcnnImageProcessor()
    register_for_remote_code(model, processor)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    write_hub_files(folder)
    return folder


def run_without_package(code: str, workdir: Path) -> dict:
    """Run `code` in a fresh Python that cannot import butd_frcnn (and has its own HF cache, offline); the code
    prints one JSON document as its last line of output, returned here."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HOME=str(workdir / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    completed = subprocess.run(
        [sys.executable, "-c", BLOCK_PACKAGE + code + "\n_assert_package_never_imported()\n"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, f"subprocess failed:\n{completed.stderr[-4000:]}"
    return json.loads(completed.stdout.strip().splitlines()[-1])
