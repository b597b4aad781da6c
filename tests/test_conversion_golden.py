"""The golden TINY .caffemodel of ../shared/golden converts with `butd-frcnn convert` and no flags; the folder loads
with `AutoModel.from_pretrained`, installed and as remote code in a process that cannot import butd_frcnn, and
reproduces the original Caffe outputs."""

import json
import os
import site
import subprocess
import sys

import numpy as np
import pytest
from cli_runner import run_cli
from golden import GOLDEN, REPO_ROOT, TINY_ARCHITECTURE, VOCAB, golden_image_path, load_golden
from huggingface_hub import ModelCard
from safetensors import safe_open

from butd_frcnn.conversion.convert import EXPECTED_FILES
from butd_frcnn.remote_code import model_files

# the model runs with gradients off here, as users run it for features (tests about gradients turn them on)
pytestmark = pytest.mark.usefixtures("no_grad")

# Tolerances against the original (CPU Caffe + OpenBLAS; another BLAS agrees to float rounding): probabilities and
# features differ by ~2e-6 at most, proposals and boxes by ~1e-4 pixels.
PROBABILITY_ATOL = 1e-5
FEATURE_ATOL = 1e-5
BOX_ATOL = 1e-3


@pytest.fixture(scope="module")
def converted(tmp_path_factory, golden_dir):
    """The golden TINY caffemodel converted by the CLI, with no flags at all."""
    out = tmp_path_factory.mktemp("golden") / "tiny-model"
    result = run_cli("convert", str(golden_dir / "tiny_seed0.caffemodel"), str(out))
    assert result.returncode == 0, result.stderr
    assert "converted: 59 layers" in result.stdout
    return out


def test_folder_holds_exactly_the_hub_files(converted):
    assert sorted(path.name for path in converted.iterdir()) == sorted(EXPECTED_FILES)
    assert [path.name for path in converted.parent.iterdir()] == [converted.name]  # no temporary folder left
    config = json.loads((converted / "config.json").read_text())
    assert {key: config[key] for key in TINY_ARCHITECTURE} == TINY_ARCHITECTURE
    assert config["auto_map"] == {
        "AutoConfig": "configuration_butd_frcnn.ButdFrcnnConfig",
        "AutoModel": "modeling_butd_frcnn.ButdFrcnnModel",
        "AutoModelForObjectDetection": "modeling_butd_frcnn.ButdFrcnnModel",
    }
    assert (config["min_boxes"], config["max_boxes"], config["score_threshold"]) == (10, 100, 0.2)
    assert (len(config["id2label"]), config["num_attributes"]) == (1601, 401)
    processor = json.loads((converted / "preprocessor_config.json").read_text())
    assert processor["auto_map"] == {"AutoImageProcessor": "image_processing_butd_frcnn.ButdFrcnnImageProcessor"}
    with safe_open(converted / "model.safetensors", framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert f.get_tensor("proposal_generator.anchor_generator.cell_anchors").shape == (12, 4)
    for name in model_files():  # what transformers finds from the model file
        assert (converted / name).read_text() == (REPO_ROOT / "butd_frcnn" / name).read_text()


def test_model_card_parses_offline_and_round_trips(converted):
    card = ModelCard.load(converted / "README.md")
    metadata = card.data.to_dict()
    assert metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == "object-detection"
    assert metadata["license"] == "mit"
    assert metadata["datasets"] == ["visual_genome"]
    assert "bottom-up-attention" in metadata["tags"]
    assert ModelCard(str(card)).data.to_dict() == metadata
    assert "| layers converted | 59 |" in card.text
    assert "94a3c530777ea257f2d6c924e418a31eec5964765c1c8830c2bf5334f4adb324" in card.text
    assert 'AutoModel.from_pretrained("tiny-model"' in card.text


def assert_matches_golden(outputs: dict, name: str, preset: str = "10_100"):
    """Proposals, cls_prob, attr_prob, pool5_flat and the region selection against the original's."""
    golden = load_golden("tiny", name)
    count = int(outputs["num_proposals"][0])
    assert count == len(golden["rois"])
    np.testing.assert_allclose(outputs["proposals"][0, :count], golden["rois"][:, 1:], rtol=0, atol=BOX_ATOL)
    np.testing.assert_allclose(outputs["class_probs"][0, :count], golden["cls_prob"], rtol=0, atol=PROBABILITY_ATOL)
    np.testing.assert_allclose(outputs["attribute_probs"][0, :count], golden["attr_prob"], atol=PROBABILITY_ATOL)
    np.testing.assert_allclose(outputs["proposal_features"][0, :count], golden["pool5_flat"], atol=FEATURE_ATOL)
    boxes = int(outputs["num_boxes"][0])
    assert boxes == int(golden[f"num_boxes_{preset}"])
    np.testing.assert_allclose(outputs["boxes"][0, :boxes], golden[f"boxes_{preset}"], rtol=0, atol=BOX_ATOL)
    np.testing.assert_allclose(outputs["region_features"][0, :boxes], golden[f"features_{preset}"], atol=FEATURE_ATOL)
    np.testing.assert_array_equal(outputs["object_ids"][0, :boxes], golden[f"objects_{preset}"] + 1)
    np.testing.assert_array_equal(outputs["attribute_ids"][0, :boxes], golden[f"attrs_{preset}"] + 1)


@pytest.fixture(scope="module")
def converted_36(tmp_path_factory):
    """The same weights converted with the vocabularies, the prototxt and the 36-box selection as default."""
    out = tmp_path_factory.mktemp("golden-36") / "tiny-36"
    result = run_cli(
        "convert",
        str(GOLDEN / "tiny_seed0.caffemodel"),
        str(out),
        "--prototxt",
        str(GOLDEN / "test_tiny.prototxt"),
        "--objects-vocab",
        str(VOCAB / "objects_vocab.txt"),
        "--attributes-vocab",
        str(VOCAB / "attributes_vocab.txt"),
        "--boxes",
        "36",
    )
    assert result.returncode == 0, result.stderr
    return out


def test_cli_with_vocabularies_prototxt_and_36_boxes(converted_36):
    config = json.loads((converted_36 / "config.json").read_text())
    assert (config["min_boxes"], config["max_boxes"]) == (36, 36)
    assert config["id2label"]["1"] == "yolk" and config["id2label"]["1600"] == "buoy"
    assert config["attribute_names"][:2] == ["__no_attribute__", "gray"]
    assert (config["feature_stride"], config["anchor_scales"]) == (16, [4.0, 8.0, 16.0, 32.0])
    card = ModelCard.load(converted_36 / "README.md")
    assert "exactly 36 regions" in card.text and "test_tiny.prototxt" in card.text


@pytest.mark.parametrize(
    ("folder", "name", "preset"),
    [("converted", "astronaut", "10_100"), ("converted_36", "gradient_500x375", "36")],
    ids=["10-100 default, astronaut", "36 default, gradient"],
)
def test_installed_auto_model_reproduces_golden_outputs(request, folder, name, preset):
    """Loaded by the installed package; the folder's own selection default (no per-call arguments) applies."""
    from transformers import AutoImageProcessor, AutoModel

    import butd_frcnn  # registers the classes: no remote code needed

    folder = request.getfixturevalue(folder)
    model = AutoModel.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    assert isinstance(model, butd_frcnn.ButdFrcnnModel)
    assert isinstance(processor, butd_frcnn.ButdFrcnnImageProcessor)
    outputs = model(**processor([str(golden_image_path(name))], return_tensors="pt"))
    assert_matches_golden({key: value.numpy() for key, value in outputs.items()}, name, preset)


REMOTE_SCRIPT = """
import sys

folder, image, output, *site_packages = sys.argv[1:]
sys.path.extend(site_packages)  # the packages only: no .pth files, so no editable install of butd_frcnn
try:
    import butd_frcnn
except ModuleNotFoundError:
    pass
else:
    raise SystemExit(f"butd_frcnn is importable ({butd_frcnn.__file__}): this would not test remote code")

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoModel

processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
modules = (type(model).__module__, type(processor).__module__)
assert all(module.startswith("transformers_modules.") for module in modules), modules
assert "butd_frcnn" not in sys.modules
with torch.inference_mode():
    outputs = model(**processor([image], return_tensors="pt"))
np.savez(output, **{key: value.numpy() for key, value in outputs.items()})
"""


def test_remote_code_reproduces_golden_outputs(converted, tmp_path):
    """A fresh interpreter (-I: no PYTHONPATH, no user site; -S: no site-packages .pth files, hence no editable
    install), run outside the repository: only the converted folder's own code can be used."""
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_SCRIPT)
    output = tmp_path / "outputs.npz"
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            str(script),
            str(converted),
            str(golden_image_path("astronaut")),
            str(output),
            *site.getsitepackages(),
        ],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environment,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(output) as outputs:
        assert_matches_golden(dict(outputs), "astronaut")
