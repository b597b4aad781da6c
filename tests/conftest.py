"""Shared fixtures: the golden data of the original Caffe code (read in place from ../shared) and the models built
from it. Constants and plain helpers live in helper modules (golden.py, ...), imported by the tests themselves."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never touch the network

import subprocess
import sys
from pathlib import Path

import pytest
from golden import model_from_caffemodel, require_shared


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return require_shared()


@pytest.fixture(scope="session")
def golden_dir(shared_dir) -> Path:
    return shared_dir / "golden"


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
def full_random_model():
    """The full-size default architecture (ResNet-101, the released heads) with seed-0 random weights, built once
    for the tests about its shapes; they leave it as they found it."""
    import torch

    from butd_frcnn import ButdFrcnnConfig, ButdFrcnnModel

    torch.manual_seed(0)
    return ButdFrcnnModel(ButdFrcnnConfig()).eval()


@pytest.fixture(scope="session")
def processor():
    from butd_frcnn import ButdFrcnnImageProcessor

    return ButdFrcnnImageProcessor()


@pytest.fixture
def no_grad():
    """Gradients off for one test, as users run the model for features. Test modules that run the model ask for it
    (`pytestmark = pytest.mark.usefixtures("no_grad")`); a test about gradients turns them on itself
    (`torch.enable_grad()`), and fixtures shared by several tests run the model under `torch.no_grad()` themselves."""
    import torch

    with torch.no_grad():
        yield
