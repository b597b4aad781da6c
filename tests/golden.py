"""Where the golden data of the original Caffe code lives (read in place from ../shared), what it holds, and the
models built from it: constants and plain functions shared by the tests (fixtures live in conftest.py)."""

from pathlib import Path

import numpy as np
import pytest

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

TINY_ARCHITECTURE = {
    "depths": [1, 1, 1, 1],
    "stem_channels": 8,
    "hidden_sizes": [32, 64, 128, 256],
    "bottleneck_sizes": [8, 16, 32, 64],
    "rpn_hidden_size": 64,
    "class_embedding_size": 32,
    "attribute_hidden_size": 64,
}


def require_shared() -> Path:
    """The golden data must be there: a missing ../shared is an error, never a skip."""
    if not (GOLDEN / "README.md").is_file():
        pytest.fail(f"the golden data is missing: expected it in {GOLDEN} (../shared beside the repository)")
    return SHARED


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


def dtype_keyword(dtype) -> dict:
    """`from_pretrained`'s keyword for a dtype: `dtype` in transformers 5, `torch_dtype` in transformers 4."""
    import transformers

    return {"dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype": dtype}
