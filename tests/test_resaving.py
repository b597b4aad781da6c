"""A model loaded through the package, changed and saved again (`save_pretrained`, `push_to_hub`) carries what remote
code needs: the same files `butd-frcnn convert` writes, so that it loads without the package, with
`trust_remote_code=True`, and gives the in-package model's outputs bit for bit."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers.utils.hub
from golden import golden_image_path
from hub_support import run_without_package, save_tiny_hub_folder
from huggingface_hub import ModelCard
from huggingface_hub.errors import EntryNotFoundError

from butd_frcnn import ButdFrcnnImageProcessor, ButdFrcnnModel
from butd_frcnn.conversion.convert import EXPECTED_FILES
from butd_frcnn.remote_code import model_files

IMAGE = "astronaut"
FIELDS = ("region_features", "boxes", "object_ids", "object_scores", "attribute_ids", "num_boxes", "class_probs")
SAVED_FILES = sorted(name for name in EXPECTED_FILES if name != "README.md")  # the card comes with a push


@pytest.fixture(scope="module")
def converted(tmp_path_factory, shared_dir):
    return save_tiny_hub_folder(tmp_path_factory.mktemp("hub") / "butd-frcnn-tiny")


@pytest.fixture(scope="module")
def changed(converted):
    """Loaded through the package, then changed as a maintainer would: a precision saved, a head's weights and the
    processor's resizing."""
    from transformers import AutoImageProcessor, AutoModel

    model = AutoModel.from_pretrained(converted).eval()
    assert type(model) is ButdFrcnnModel
    model.config.precision = "bf16"
    with torch.no_grad():
        model.roi_heads.attribute_predictor.attr_score.weight.mul_(1.5)
    processor = AutoImageProcessor.from_pretrained(converted, size={"shortest_edge": 300, "longest_edge": 500})
    assert type(processor) is ButdFrcnnImageProcessor
    return model, processor


def outputs_of(model, processor) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        outputs = model(**processor(str(golden_image_path(IMAGE)), return_tensors="pt"))
    return {field: getattr(outputs, field).float().numpy() for field in FIELDS}


REMOTE = """
import json
import numpy as np
import torch
from transformers import AutoImageProcessor, AutoModel, AutoModelForObjectDetection

folder = {folder!r}
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
detector = AutoModelForObjectDetection.from_pretrained(folder, trust_remote_code=True)
processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
with torch.inference_mode():
    outputs = model(**processor({image!r}, return_tensors="pt"))
np.savez("remote.npz", **{{field: getattr(outputs, field).float().numpy() for field in {fields!r}}})
print(json.dumps({{
    "modules": [type(thing).__module__ for thing in (model, detector, processor)],
    "precision": model.config.precision,
    "size": processor.to_dict()["size"],
}}))
"""


def test_saved_model_and_processor_load_as_remote_code_bit_for_bit(converted, changed, tmp_path):
    model, processor = changed
    out = tmp_path / "resaved"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    assert sorted(path.name for path in out.iterdir()) == SAVED_FILES
    for name in [*model_files(), "handler.py", "requirements.txt", "pipeline_butd_frcnn.py"]:
        assert (out / name).read_bytes() == (converted / name).read_bytes(), name
    for name in ("config.json", "preprocessor_config.json"):
        saved, original = (json.loads((folder / name).read_text()) for folder in (out, converted))
        assert saved["auto_map"] == original["auto_map"], name

    result = run_without_package(
        REMOTE.format(folder=str(out), image=str(golden_image_path(IMAGE)), fields=FIELDS), tmp_path
    )
    assert all(module.startswith("transformers_modules.") for module in result["modules"]), result["modules"]
    assert result["precision"] == "bf16" and result["size"] == {"shortest_edge": 300, "longest_edge": 500}
    remote = np.load(tmp_path / "remote.npz")
    local = outputs_of(model, processor)
    for field in FIELDS:
        assert np.array_equal(remote[field], local[field]), field
    original = outputs_of(ButdFrcnnModel.from_pretrained(converted).eval(), processor)
    assert not np.array_equal(original["region_features"], local["region_features"]), "nothing was changed"


class StandInHub:
    """What `push_to_hub` calls on the Hub, recorded: each commit's files land in `repos/<repo_id>`."""

    def __init__(self, root: Path):
        self.root = root
        self.commits = []

    def create_repo(self, repo_id, **kwargs):
        return SimpleNamespace(repo_id=repo_id)

    def create_branch(self, repo_id, **kwargs):
        pass

    def create_commit(self, repo_id, operations, **kwargs):
        folder = self.root / repo_id
        for operation in operations:
            target = folder / operation.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(operation.path_or_fileobj, target)
        self.commits.append((repo_id, sorted(operation.path_in_repo for operation in operations)))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc", pr_url=None)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The Hub as transformers' `push_to_hub` reaches it, without the network: a new repository (no card yet)."""
    stand_in = StandInHub(tmp_path / "repos")

    def no_card(*args, **kwargs):
        raise EntryNotFoundError("no README.md in a new repository")

    monkeypatch.setattr(transformers.utils.hub, "_hf_api", stand_in)  # the one client `hf_api()` hands out
    monkeypatch.setattr(ModelCard, "load", no_card)
    return stand_in


def test_push_to_hub_uploads_what_save_pretrained_writes(changed, hub, tmp_path):
    model, processor = changed
    model.save_pretrained(tmp_path / "saved")
    processor.save_pretrained(tmp_path / "saved")
    model.push_to_hub("org/resaved")
    processor.push_to_hub("org/resaved")
    repo = hub.root / "org" / "resaved"
    assert sorted(path.name for path in repo.iterdir()) == sorted(EXPECTED_FILES)
    for name in SAVED_FILES:
        assert (repo / name).read_bytes() == (tmp_path / "saved" / name).read_bytes(), name

    # `save_pretrained(push_to_hub=True)`: transformers uploads from inside its save, the companion files included
    model.save_pretrained(tmp_path / "pushed", push_to_hub=True, repo_id="org/pushed")
    processor.save_pretrained(str(tmp_path / "pushed"), push_to_hub=True, repo_id="org/pushed")
    uploaded = sorted(path.name for path in (hub.root / "org" / "pushed").iterdir())
    assert uploaded == sorted(EXPECTED_FILES)
