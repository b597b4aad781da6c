"""The handler behind an HTTP server with the request contract of Hugging Face's Inference Endpoints server
(tests/endpoint_server.py, on 127.0.0.1 at a free port, in a process that cannot import butd_frcnn), called as users
call it: raw image bodies, base64 JSON, query strings, and huggingface_hub's `InferenceClient(base_url=...)
.object_detection`. Results equal the package's; bad requests get a 400 saying what was wrong, and the server keeps
serving."""

import base64
import io
import json
import select
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from golden import golden_image_path
from hub_support import (
    assert_detections_are_the_kept_regions,
    assert_response_is_the_selection,
    model_regions,
    run_without_package,
    save_tiny_hub_folder,
)
from PIL import Image
from remote import start_without_package

TESTS = Path(__file__).resolve().parent
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, whatever the environment says


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory, shared_dir):
    return save_tiny_hub_folder(tmp_path_factory.mktemp("hub") / "butd-frcnn-tiny")


@pytest.fixture(scope="module")
def server_url(hub_folder, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("server")
    code = "\n".join(
        (
            "import sys",
            f"sys.path.insert(0, {str(TESTS)!r})",
            "import endpoint_server",
            f"endpoint_server.serve({str(hub_folder)!r})",
        )
    )
    process = start_without_package(code, workdir)
    try:
        ready, _, _ = select.select([process.stdout], [], [], 300)
        line = process.stdout.readline() if ready else ""
        if not line.startswith("PORT "):
            raise AssertionError(f"the server did not start: {line!r}\n{(workdir / 'stderr.txt').read_text()}")
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        process.stdout.close()


def post(url: str, body: bytes, content_type: str, query: str = "") -> tuple[int, object]:
    """POST `body`; the HTTP status and the parsed JSON answer."""
    request = urllib.request.Request(
        f"{url}/?{query}" if query else f"{url}/", data=body, headers={"Content-Type": content_type}, method="POST"
    )
    try:
        with NO_PROXY.open(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def as_json(image_bytes: bytes, **parameters) -> bytes:
    return json.dumps({"inputs": base64.b64encode(image_bytes).decode(), "parameters": parameters}).encode()


def test_raw_image_body_with_query_parameters(server_url, hub_folder):
    """Query values arrive as strings, integers ("36") and booleans ("true"); an RGB PNG is exact as a raw body."""
    status, response = post(
        server_url,
        golden_image_path("astronaut").read_bytes(),
        "image/png",
        "output=regions&boxes=36&return_features=true",
    )
    assert status == 200, response
    config, outputs = model_regions(hub_folder, "astronaut", min_boxes=36, max_boxes=36)
    assert response["num_boxes"] == 36
    assert_response_is_the_selection(response, config, outputs, (512, 512))
    assert torch.equal(torch.tensor(response["features"]), outputs.region_features[0])


def test_base64_json_body(server_url, hub_folder):
    status, response = post(
        server_url,
        as_json(golden_image_path("camera").read_bytes(), output="regions", threshold=0.3),
        "application/json",
    )
    assert status == 200, response
    config, outputs = model_regions(hub_folder, "camera", score_threshold=0.3)
    assert_response_is_the_selection(response, config, outputs, (512, 512))


INFERENCE_CLIENT_CALLS = """
import json, os
os.environ["HF_HUB_OFFLINE"] = "0"  # the one server called is the test's own, on 127.0.0.1
os.environ["NO_PROXY"] = "127.0.0.1"
from huggingface_hub import InferenceClient

url, image = {url!r}, {image!r}
# the server reads the body by its Content-Type: set it (huggingface_hub 0.30 sets none; newer ones only for a path)
raw = InferenceClient(base_url=url, headers={{"Content-Type": "image/png"}}, timeout=300)
with_parameters = InferenceClient(base_url=url, headers={{"Content-Type": "application/json"}}, timeout=300)
calls = {{"raw": raw.object_detection(image), "threshold": with_parameters.object_detection(image, threshold=0.3)}}
print(json.dumps({{
    name: [
        {{"score": e.score, "label": e.label, "attribute": e.attribute, "attribute_score": e.attribute_score,
          "box": {{k: getattr(e.box, k) for k in ("xmin", "ymin", "xmax", "ymax")}}}}
        for e in elements
    ]
    for name, elements in calls.items()
}}))
"""


def test_inference_client_object_detection(server_url, hub_folder, tmp_path):
    code = INFERENCE_CLIENT_CALLS.format(url=server_url, image=str(golden_image_path("astronaut")))
    detections = run_without_package(code, tmp_path)
    config, outputs = model_regions(hub_folder, "astronaut")
    assert detections["raw"], "no detection: a weak test"
    assert_detections_are_the_kept_regions(detections["raw"], config, outputs, config.score_threshold)
    config, outputs = model_regions(hub_folder, "astronaut", score_threshold=0.3)
    assert_detections_are_the_kept_regions(detections["threshold"], config, outputs, 0.3)


def encoded(image: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def test_base64_is_exact_where_raw_bodies_are_converted_to_rgb(server_url, hub_folder, tmp_path):
    """A CMYK JPEG: as base64 JSON it is decoded as the original decoded the file; as a raw body the server converts
    it to RGB with Pillow's formula first, and the handler sees that RGB image (other pixels)."""
    path = tmp_path / "cmyk.jpg"
    path.write_bytes(encoded(Image.open(golden_image_path("astronaut")).convert("CMYK"), "JPEG"))
    status, exact = post(server_url, as_json(path.read_bytes(), output="regions"), "application/json")
    assert status == 200, exact
    config, outputs = model_regions(hub_folder, path)
    assert_response_is_the_selection(exact, config, outputs, (512, 512))
    status, raw = post(server_url, path.read_bytes(), "image/jpeg", "output=regions")
    assert status == 200, raw
    server_rgb = Image.open(path).convert("RGB")
    config, outputs = model_regions(hub_folder, server_rgb)
    assert_response_is_the_selection(raw, config, outputs, (512, 512))
    from butd_frcnn import ButdFrcnnImageProcessor

    processor = ButdFrcnnImageProcessor()
    assert not torch.equal(processor(path)["pixel_values"], processor(server_rgb)["pixel_values"])


@pytest.fixture(scope="module")
def png_100_megapixels() -> bytes:
    """A real 10000 x 10000 PNG (about 100 KB: one colour compresses well)."""
    return encoded(Image.new("1", (10_000, 10_000)), "PNG")


def test_bad_requests_get_a_400_and_the_server_keeps_serving(server_url, png_100_megapixels):
    astronaut = golden_image_path("astronaut").read_bytes()
    too_large = "10000 x 10000 = 100000000 pixels is above the limit"
    for body, content_type, query, message in [
        (png_100_megapixels, "image/png", "", too_large),  # decoded by the server, refused by the handler
        (as_json(png_100_megapixels), "application/json", "", too_large),  # refused from the header
        (astronaut, "image/png", "boxes=many", "boxes must be"),
        (astronaut, "image/png", "output=everything", 'output must be "detections" or "regions"'),
        (astronaut[:2000], "application/json", "", ""),  # not JSON: the server's own error
        (json.dumps({"inputs": "not base64!"}).encode(), "application/json", "", "not valid base64"),
        (as_json(astronaut[:2000]), "application/json", "", "cannot decode the image"),
        (as_json(astronaut, return_features=True), "application/json", "", 'return_features needs "output"'),
    ]:
        status, response = post(server_url, body, content_type, query)
        assert status == 400 and message in response["error"], (query, message, response)
        with NO_PROXY.open(f"{server_url}/health", timeout=60) as health:
            assert health.read() == b"Ok"
    status, response = post(server_url, astronaut, "image/png")
    assert status == 200 and isinstance(response, list) and response
