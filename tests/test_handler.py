"""The Inference Endpoints handler, imported from a converted folder as `handler.py` in a process that cannot import
butd_frcnn, called on image payloads: it returns the documented JSON, equal to the model's own selection."""

import re

import pytest
import torch
from golden import REPO_ROOT, golden_image_path
from hub_support import run_without_package, save_tiny_hub_folder

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

folder, astronaut, camera = {folder!r}, {astronaut!r}, {camera!r}
sys.path.insert(0, folder)
import handler

assert handler.__file__.startswith(folder), handler.__file__
endpoint = handler.EndpointHandler(folder)
with open(astronaut, "rb") as file:
    astronaut_bytes = file.read()
as_base64 = "data:image/png;base64," + base64.b64encode(astronaut_bytes).decode()
responses = {{
    "base64_36_features": endpoint({{"inputs": as_base64, "parameters": {{"boxes": "36", "return_features": True}}}}),
    "pil_threshold": endpoint({{"inputs": Image.open(camera), "parameters": {{"threshold": "0.3"}}}}),
    "regions": endpoint(
        {{"inputs": astronaut_bytes, "parameters": {{"regions": {regions!r}, "return_features": True}}}}
    ),
    "no_regions": endpoint({{"inputs": astronaut_bytes, "parameters": {{"regions": []}}}}),
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
}}.items():
    try:
        endpoint(data)
    except ValueError as error:
        errors[name] = str(error)
raw = handler.read_image(astronaut_bytes)
print(json.dumps({{
    "modules": [type(endpoint.model).__module__, type(endpoint.processor).__module__],
    "responses": responses,
    "errors": errors,
    "raw_size": list(raw.size),
}}))
"""


REGIONS = [[10.0, 20.0, 200.0, 180.0], [120.5, 60.25, 400.0, 500.0], [0.0, 0.0, 511.0, 511.0]]


@pytest.fixture(scope="module")
def handler_run(hub_folder, tmp_path_factory):
    code = HANDLER_CALLS.format(
        folder=str(hub_folder),
        astronaut=str(golden_image_path("astronaut")),
        camera=str(golden_image_path("camera")),
        regions=REGIONS,
    )
    return run_without_package(code, tmp_path_factory.mktemp("handler"))


def model_regions(hub_folder, image: str, **selection) -> tuple:
    """The model's own output for one image (installed package; `selection` may be `boxes=[...]`), with its config
    for the names."""
    from butd_frcnn import ButdFrcnnImageProcessor, ButdFrcnnModel

    model = ButdFrcnnModel.from_pretrained(hub_folder).eval()
    processor = ButdFrcnnImageProcessor.from_pretrained(hub_folder)
    return model.config, model(**processor(str(golden_image_path(image)), return_tensors="pt"), **selection)


def assert_response_is_the_selection(response: dict, config, outputs, image_size: tuple[int, int]):
    count = int(outputs.num_boxes[0])
    assert response["image_size"] == {"height": image_size[0], "width": image_size[1]}
    assert response["num_boxes"] == count
    assert torch.equal(torch.tensor(response["boxes"]), outputs.boxes[0, :count])
    assert response["label_ids"] == outputs.object_ids[0, :count].tolist()
    assert response["labels"] == [config.id2label[i] for i in response["label_ids"]]
    assert torch.equal(torch.tensor(response["scores"]), outputs.object_scores[0, :count])
    assert response["attribute_ids"] == outputs.attribute_ids[0, :count].tolist()
    assert response["attributes"] == [config.attribute_names[i] for i in response["attribute_ids"]]
    assert torch.equal(torch.tensor(response["attribute_scores"]), outputs.attribute_scores[0, :count])


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
    ],
)
def test_bad_requests_get_a_clear_error(handler_run, case, message):
    assert message in handler_run["errors"][case]


def test_raw_bytes_decode(handler_run):
    assert handler_run["raw_size"] == [512, 512]


def test_folder_carries_the_endpoint_files_and_package_pins(hub_folder):
    for name in ("handler.py", "requirements.txt"):
        assert (hub_folder / name).read_bytes() == (REPO_ROOT / "butd_frcnn" / "hub_templates" / name).read_bytes()
    assert (hub_folder / "pipeline_butd_frcnn.py").read_bytes() == (
        REPO_ROOT / "butd_frcnn" / "pipeline_butd_frcnn.py"
    ).read_bytes()
    pinned = r"^\W*((?:torch|torchvision|transformers)[=~>][^\s\",]+)"
    requirements = re.findall(pinned, (hub_folder / "requirements.txt").read_text(), flags=re.MULTILINE)
    package = re.findall(pinned, (REPO_ROOT / "pyproject.toml").read_text(), flags=re.MULTILINE)
    assert len(requirements) == 3 and requirements == package, "requirements.txt and pyproject.toml disagree"
