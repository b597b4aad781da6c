"""The Inference Endpoints handler, imported from a converted folder as `handler.py` in a process that cannot import
butd_frcnn, called on image payloads: it returns the documented JSON, equal to the model's own selection: by default
the object-detection task's list (read here by huggingface_hub's own parser), with `output=regions` the full
response."""

import re
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from extraction_helpers import _png_with_size
from golden import REPO_ROOT, golden_image_path
from hub_support import (
    assert_detections_are_the_kept_regions,
    assert_response_is_the_selection,
    model_regions,
    run_without_package,
    save_tiny_hub_folder,
)
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# the model runs with gradients off here, as users run it for features (tests about gradients turn them on)
pytestmark = pytest.mark.usefixtures("no_grad")

DETECTION_KEYS = {"score", "label", "box", "attribute", "attribute_score"}
RESPONSE_KEYS = {
    "image_size",
    "num_boxes",
    "boxes",
    "labels",
    "label_ids",
    "scores",
    "attributes",
    "attribute_ids",
    "attribute_scores",
}


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory, shared_dir):
    return save_tiny_hub_folder(tmp_path_factory.mktemp("hub") / "butd-frcnn-tiny")


HANDLER_CALLS = """
import base64
import json
from PIL import Image

folder, astronaut, camera, huge = {folder!r}, {astronaut!r}, {camera!r}, {huge!r}
sys.path.insert(0, folder)
import handler

assert handler.__file__.startswith(folder), handler.__file__
endpoint = handler.EndpointHandler(folder)
with open(astronaut, "rb") as file:
    astronaut_bytes = file.read()
with open(huge, "rb") as file:
    huge_bytes = file.read()
as_base64 = "data:image/png;base64," + base64.b64encode(astronaut_bytes).decode()
regions = {{"output": "regions"}}
responses = {{
    "base64_36_features": endpoint(
        {{"inputs": as_base64, "parameters": {{**regions, "boxes": "36", "return_features": True}}}}
    ),
    "pil_threshold": endpoint({{"inputs": Image.open(camera), "parameters": {{**regions, "threshold": "0.3"}}}}),
    "regions": endpoint(
        {{"inputs": astronaut_bytes, "parameters": {{**regions, "regions": {regions!r}, "return_features": True}}}}
    ),
    "no_regions": endpoint({{"inputs": astronaut_bytes, "parameters": {{**regions, "regions": []}}}}),
    "raw_bytes": endpoint({{"inputs": astronaut_bytes, "parameters": regions}}),
    "detections": endpoint({{"inputs": as_base64}}),
    "detections_threshold": endpoint({{"inputs": Image.open(camera), "parameters": {{"threshold": 0.3}}}}),
    "detections_36": endpoint({{"inputs": astronaut_bytes, "parameters": {{"boxes": 36}}}}),
    "detections_of_regions": endpoint({{"inputs": astronaut_bytes, "parameters": {{"regions": {regions!r}}}}}),
}}
errors = {{}}
for name, data in {{
    "url": {{"inputs": "https://example.com/image.jpg"}},
    "not_base64": {{"inputs": "this is not base64!"}},
    "not_an_image": {{"inputs": b"plain text, not an image"}},
    "truncated": {{"inputs": astronaut_bytes[:2000]}},
    "bad_boxes": {{"inputs": astronaut_bytes, "parameters": {{"boxes": "many"}}}},
    "empty_range": {{"inputs": astronaut_bytes, "parameters": {{"boxes": "50-10"}}}},
    "bad_threshold": {{"inputs": astronaut_bytes, "parameters": {{"threshold": "high"}}}},
    "bad_flag": {{"inputs": astronaut_bytes, "parameters": {{"return_features": "yes please"}}}},
    "unknown_parameter": {{"inputs": astronaut_bytes, "parameters": {{"top_k": 5}}}},
    "regions_and_boxes": {{"inputs": astronaut_bytes, "parameters": {{"regions": [[0, 0, 9, 9]], "boxes": "36"}}}},
    "regions_shape": {{"inputs": astronaut_bytes, "parameters": {{"regions": [[0, 0, 9]]}}}},
    "regions_order": {{"inputs": astronaut_bytes, "parameters": {{"regions": [[0, 0, 9, 9], [5, 5, 4, 9]]}}}},
    "regions_outside": {{"inputs": astronaut_bytes, "parameters": {{"regions": [[600, 0, 700, 9]]}}}},
    "no_inputs": {{"image": astronaut_bytes}},
    "empty": {{"inputs": b""}},
    "too_large": {{"inputs": huge_bytes}},
    "too_large_base64": {{"inputs": base64.b64encode(huge_bytes).decode()}},
    "bad_output": {{"inputs": astronaut_bytes, "parameters": {{"output": "everything"}}}},
    "features_without_regions": {{"inputs": astronaut_bytes, "parameters": {{"return_features": True}}}},
}}.items():
    try:
        endpoint(data)
    except ValueError as error:
        errors[name] = str(error)
print(json.dumps({{
    "modules": [type(endpoint.model).__module__, type(endpoint.processor).__module__],
    "responses": responses,
    "errors": errors,
}}))
"""


REGIONS = [[10.0, 20.0, 200.0, 180.0], [120.5, 60.25, 400.0, 500.0], [0.0, 0.0, 511.0, 511.0]]


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    """A 10000 x 10000 (100 MP) PNG header with almost no data: refused from its header, or decoding it would fail."""
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    path.write_bytes(_png_with_size(10_000, 10_000))
    return path


@pytest.fixture(scope="module")
def handler_run(hub_folder, huge_png, tmp_path_factory):
    code = HANDLER_CALLS.format(
        folder=str(hub_folder),
        astronaut=str(golden_image_path("astronaut")),
        camera=str(golden_image_path("camera")),
        huge=str(huge_png),
        regions=REGIONS,
    )
    return run_without_package(code, tmp_path_factory.mktemp("handler"))


def test_handler_loads_the_folders_own_code(handler_run):
    assert all(module.startswith("transformers_modules.") for module in handler_run["modules"])


def test_base64_payload_with_36_boxes_and_features(handler_run, hub_folder):
    response = handler_run["responses"]["base64_36_features"]
    assert set(response) == RESPONSE_KEYS | {"features"}
    config, outputs = model_regions(hub_folder, "astronaut", min_boxes=36, max_boxes=36)
    assert response["num_boxes"] == 36
    assert_response_is_the_selection(response, config, outputs, (512, 512))
    torch.testing.assert_close(torch.tensor(response["features"]), outputs.region_features[0], rtol=0, atol=0)


def test_pil_payload_with_a_threshold_and_no_features(handler_run, hub_folder):
    response = handler_run["responses"]["pil_threshold"]
    assert set(response) == RESPONSE_KEYS
    config, outputs = model_regions(hub_folder, "camera", score_threshold=0.3)
    assert_response_is_the_selection(response, config, outputs, (512, 512))
    _, default_outputs = model_regions(hub_folder, "camera")
    assert response["num_boxes"] != int(default_outputs.num_boxes[0]), "the threshold had no effect: a weak test"


def test_given_regions_are_described_in_their_order(handler_run, hub_folder):
    response = handler_run["responses"]["regions"]
    assert set(response) == RESPONSE_KEYS | {"features"}
    config, outputs = model_regions(hub_folder, "astronaut", boxes=[REGIONS])
    assert response["num_boxes"] == len(REGIONS) and response["boxes"] == REGIONS
    assert_response_is_the_selection(response, config, outputs, (512, 512))
    torch.testing.assert_close(torch.tensor(response["features"]), outputs.region_features[0], rtol=0, atol=0)
    assert handler_run["responses"]["no_regions"]["num_boxes"] == 0


@pytest.mark.parametrize(
    "case, message",
    [
        ("url", "URLs are not fetched"),
        ("not_base64", "not valid base64"),
        ("not_an_image", "not an image Pillow can read (24 bytes)"),
        ("truncated", "cannot decode the image"),
        ("bad_boxes", "boxes must be"),
        ("empty_range", "0 < MIN <= MAX"),
        ("bad_threshold", "threshold must be a number"),
        ("bad_flag", "return_features must be true or false"),
        ("unknown_parameter", "unknown parameters ['top_k']"),
        ("regions_and_boxes", "boxes and threshold choose among detected regions"),
        ("regions_shape", "regions must be a list of [x1, y1, x2, y2] numbers"),
        ("regions_order", "regions: boxes of image 0: box 1 [5.0, 5.0, 4.0, 9.0] has x2 < x1"),
        (
            "regions_outside",
            "regions: boxes of image 0: box 0 [600.0, 0.0, 700.0, 9.0] has no pixel inside the 512 x 512",
        ),
        ("no_inputs", '{"inputs": image'),
        ("empty", "inputs: the image is empty (0 bytes)"),
        ("too_large", "inputs: refused as a decompression bomb: 10000 x 10000 = 100000000 pixels is above the limit"),
        ("too_large_base64", "10000 x 10000 = 100000000 pixels is above the limit"),
        ("bad_output", 'output must be "detections" or "regions"'),
        ("features_without_regions", 'return_features needs "output": "regions"'),
    ],
)
def test_bad_requests_get_a_clear_error(handler_run, case, message):
    assert message in handler_run["errors"][case]


def test_raw_bytes_decode(handler_run):
    assert handler_run["responses"]["raw_bytes"]["image_size"] == {"height": 512, "width": 512}


def test_detections_are_the_object_detection_task_list(handler_run, hub_folder):
    config, outputs = model_regions(hub_folder, "astronaut")
    response = handler_run["responses"]["detections"]
    assert_detections_are_the_kept_regions(response, config, outputs, config.score_threshold)
    assert response, "no detection: a weak test"
    assert all(set(element) == DETECTION_KEYS for element in response)


def test_detections_take_the_threshold_boxes_and_regions(handler_run, hub_folder):
    config, outputs = model_regions(hub_folder, "camera", score_threshold=0.3)
    assert_detections_are_the_kept_regions(handler_run["responses"]["detections_threshold"], config, outputs, 0.3)
    config, outputs = model_regions(hub_folder, "astronaut", min_boxes=36, max_boxes=36)
    response = handler_run["responses"]["detections_36"]
    assert_detections_are_the_kept_regions(response, config, outputs, config.score_threshold)
    assert 0 < len(response) < 36, "no selected region was left out below the threshold: a weak test"
    config, outputs = model_regions(hub_folder, "astronaut", boxes=[REGIONS])
    response = handler_run["responses"]["detections_of_regions"]
    assert_detections_are_the_kept_regions(response, config, outputs, 0.0)
    assert len(response) == len(REGIONS), "given regions are all described"


def test_folder_carries_the_endpoint_files(hub_folder):
    for name in ("handler.py", "requirements.txt"):
        assert (hub_folder / name).read_bytes() == (REPO_ROOT / "butd_frcnn" / "hub_templates" / name).read_bytes()
    assert (hub_folder / "pipeline_butd_frcnn.py").read_bytes() == (
        REPO_ROOT / "butd_frcnn" / "pipeline_butd_frcnn.py"
    ).read_bytes()


# The Inference Endpoints server's own pins (huggingface-inference-toolkit 0.5.6, setup.py: transformers 4.51.3,
# huggingface_hub 0.30.2, torch 2.5.1; torchvision is unpinned there and resolves to torch 2.5.1's release)
SERVER_PINS = {"torch": "2.5.1", "torchvision": "0.20.1", "transformers": "4.51.3", "huggingface-hub": "0.30.2"}


def test_requirements_install_nothing_on_a_stock_server():
    """The server runs `pip install -r requirements.txt`: its own pins satisfy every requirement (nothing installed,
    no torch with other CUDA libraries), and so do the versions these tests run with (the other end)."""
    lines = (REPO_ROOT / "butd_frcnn" / "hub_templates" / "requirements.txt").read_text().splitlines()
    requirements = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    dependencies_block = re.search(
        r"^dependencies = \[(.*?)^\]", (REPO_ROOT / "pyproject.toml").read_text(), re.MULTILINE | re.DOTALL
    )
    dependencies = re.findall(r'^\s*"([^"]+)"', dependencies_block.group(1), flags=re.MULTILINE)
    package = {canonicalize_name(Requirement(dependency).name) for dependency in dependencies}
    names = {canonicalize_name(requirement.name) for requirement in requirements}
    assert set(SERVER_PINS) <= names <= package, "requirements.txt states the package's own dependencies"
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if name in SERVER_PINS:
            assert requirement.specifier.contains(SERVER_PINS[name]), f"the server's {name} fails {requirement}"
        else:  # the server installs these unpinned (their newest release when its image was built)
            assert all(spec.operator == ">=" for spec in requirement.specifier), requirement
        assert requirement.specifier.contains(version(requirement.name)), f"this environment fails {requirement}"
