"""Shared fixtures: the golden data of the original Caffe code (read in place from ../shared), models built from it,
and tiny random configurations."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never touch the network

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
GOLDEN = SHARED / "golden"
VOCAB = SHARED / "vocab"

# image name -> file name, in golden/images
GOLDEN_IMAGES = {
    "filled_with_0": "filled_with_0.png",
    "filled_with_255": "filled_with_255.png",
    "gradient_500x375": "gradient_500x375.png",
    "noise_333x500": "noise_333x500.png",
    "camera": "camera.png",
    "astronaut": "astronaut.png",
    "rocket": "rocket.jpg",
}
FLAT_IMAGES = ("filled_with_0", "filled_with_255")  # exact score ties: the original's order came from numpy's sort
FULL_IMAGES = ("astronaut", "gradient_500x375")

TINY_ARCHITECTURE = dict(
    depths=[1, 1, 1, 1],
    stem_channels=8,
    hidden_sizes=[32, 64, 128, 256],
    bottleneck_sizes=[8, 16, 32, 64],
    rpn_hidden_size=64,
    class_embedding_size=32,
    attribute_hidden_size=64,
)


def require_shared() -> Path:
    """The golden data must be there: a missing ../shared is an error, never a skip."""
    if not (GOLDEN / "README.md").is_file():
        pytest.fail(f"the golden data is missing: expected it in {GOLDEN} (../shared beside the repository)")
    return SHARED


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return require_shared()


@pytest.fixture(scope="session")
def golden_dir(shared_dir) -> Path:
    return shared_dir / "golden"


def load_golden(variant: str, name: str) -> dict:
    require_shared()
    with np.load(GOLDEN / variant / f"{name}.npz") as data:
        return {key: data[key] for key in data.files}


def golden_image_path(name: str) -> Path:
    require_shared()
    return GOLDEN / "images" / GOLDEN_IMAGES[name]


def tiny_config(**overrides):
    """A small random-weight architecture for fast tests."""
    from butd_frcnn import ButdFrcnnConfig

    return ButdFrcnnConfig(**{**TINY_ARCHITECTURE, **overrides})


def model_from_caffemodel(path: Path):
    from butd_frcnn import ButdFrcnnModel
    from butd_frcnn.conversion.caffemodel import read_caffemodel
    from butd_frcnn.conversion.weights import caffe_to_state_dict, config_from_caffe

    net = read_caffemodel(path)
    config = config_from_caffe(net)
    state_dict, _ = caffe_to_state_dict(net, config)
    model = ButdFrcnnModel(config).eval()
    model.load_state_dict(state_dict, strict=True)
    return model


@pytest.fixture(scope="session")
def tiny_golden_model(golden_dir):
    """The golden TINY network with its seed-0 weights, read from the original .caffemodel."""
    return model_from_caffemodel(golden_dir / "tiny_seed0.caffemodel")


@pytest.fixture(scope="session")
def full_caffemodel(golden_dir, tmp_path_factory) -> Path:
    """The FULL ResNet-101 seed-0 weights (262 MB), regenerated with the golden generator and checked by sha256."""
    import hashlib

    path = tmp_path_factory.mktemp("full") / "full_seed0.caffemodel"
    subprocess.run(
        [
            sys.executable,
            str(golden_dir / "refgen" / "make_caffemodel.py"),
            str(golden_dir / "test_full.prototxt"),
            str(path),
            "--seed",
            "0",
        ],
        check=True,
        capture_output=True,
    )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == "685548fd0d0ea1cfc9052916c9337e6eb135854fb5f4ac816c475dae5084062b", "regenerated weights differ"
    return path


@pytest.fixture(scope="session")
def full_golden_model(full_caffemodel):
    return model_from_caffemodel(full_caffemodel)


@pytest.fixture(scope="session")
def processor():
    from butd_frcnn import ButdFrcnnImageProcessor

    return ButdFrcnnImageProcessor()


@pytest.fixture(autouse=True)
def _no_grad():
    """Tests call submodules directly too: nothing here needs gradients."""
    with torch.no_grad():
        yield
