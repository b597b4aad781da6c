"""Inference Endpoints handler of the bottom-up-attention Faster R-CNN (BUTD region features).

Inference Endpoints import this file from the model repository and call `EndpointHandler(path)(data)`. The model
loads through the repository's own code (`trust_remote_code=True`): the `butd_frcnn` package is not needed.

Request `data`:
    inputs: the image: its file's bytes, the same in base64 (a `data:image/...;base64,` prefix is allowed), or a PIL
        image (what the endpoint gives for a request sent with `Content-Type: image/...`). URLs are not fetched.
    parameters (optional):
        boxes: "10-100" (10 to 100 regions, the released features), "36" (exactly 36) or "MIN-MAX";
            defaults to the model config's selection.
        threshold: score threshold of the region selection (a region is kept when its best class score after
            per-class NMS reaches it, within the boxes range); defaults to the model config's (0.2).
        return_features: also return the region features (one 2048-d list per region); defaults to false.
        regions: regions to describe instead of detecting: a list of [x1, y1, x2, y2] in image pixels (inclusive:
            width = x2 - x1 + 1), e.g. the boxes of a referring expression. The response then holds exactly these
            regions, in this order (none for an empty list); `boxes` and `threshold`, which choose among detected
            regions, do not go with it.

Response, JSON-serialisable, one entry per selected (or given) region in the original's order:
    image_size: {"height": H, "width": W}, the decoded image's size;
    num_boxes: N;
    boxes: N x [x1, y1, x2, y2] in image pixels (inclusive: width = x2 - x1 + 1);
    labels, label_ids, scores: the most probable object class (name, id in 1..1600) and its probability;
    attributes, attribute_ids, attribute_scores: the same for the attribute (id in 1..400);
    features: N x [2048 floats], only with return_features.
"""

import base64
import binascii
import io
import math
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from transformers import AutoImageProcessor, AutoModelForObjectDetection

_BASE64_PREFIX = ";base64,"


class EndpointHandler:
    """Loads the model folder once; each call runs one image (see the module docstring for the request)."""

    def __init__(self, path: str = ""):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForObjectDetection.from_pretrained(path, trust_remote_code=True).to(self.device).eval()
        self.processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=True)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(data, dict) or "inputs" not in data:
            raise ValueError('the request must be {"inputs": image, "parameters": {...}}')
        image = read_image(data["inputs"])
        parameters = data.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ValueError(f"parameters must be an object, got {type(parameters).__name__}")  # noqa: TRY004
        unknown = set(parameters) - {"boxes", "threshold", "return_features", "regions"}
        if unknown:
            raise ValueError(f"unknown parameters {sorted(unknown)}: use boxes, threshold, return_features, regions")
        config = self.model.config
        min_boxes, max_boxes = parse_boxes(parameters.get("boxes"), config.min_boxes, config.max_boxes)
        threshold = parse_threshold(parameters.get("threshold"), config.score_threshold)
        return_features = parse_flag(parameters.get("return_features"), "return_features")
        given_regions = parse_regions(parameters.get("regions"))
        if given_regions is not None and ("boxes" in parameters or "threshold" in parameters):
            raise ValueError("regions are described as given: boxes and threshold choose among detected regions")

        inputs = self.processor(image, boxes=given_regions, return_tensors="pt").to(self.device)
        try:
            with torch.inference_mode():
                outputs = self.model(**inputs, min_boxes=min_boxes, max_boxes=max_boxes, score_threshold=threshold)
        except ValueError as error:
            if given_regions is None:
                raise
            # the model names the bad box ("boxes of image 0: box 1 [...] has x2 < x1")
            raise ValueError(f"regions: {error}") from None
        regions = self.processor.post_process_object_detection(outputs, threshold=0.0)[0]
        height, width = inputs["original_sizes"][0].tolist()
        label_ids, attribute_ids = regions["labels"].tolist(), regions["attributes"].tolist()
        response = {
            "image_size": {"height": height, "width": width},
            "num_boxes": len(label_ids),
            "boxes": regions["boxes"].tolist(),
            "labels": [config.id2label[i] for i in label_ids],
            "label_ids": label_ids,
            "scores": regions["scores"].tolist(),
            "attributes": [config.attribute_names[i] for i in attribute_ids],
            "attribute_ids": attribute_ids,
            "attribute_scores": regions["attribute_scores"].tolist(),
        }
        if return_features:
            response["features"] = outputs.region_features[0, : len(label_ids)].float().cpu().tolist()
        return response


def read_image(inputs: Any) -> Image.Image:
    """The request's image as a decoded PIL image; a clear `ValueError` for anything else."""
    if isinstance(inputs, Image.Image):
        return inputs
    if isinstance(inputs, str):
        inputs = _decode_base64(inputs)
    if not isinstance(inputs, (bytes, bytearray)):
        kind = type(inputs).__name__  # a bad request (ValueError: HTTP 400), not a programming error
        raise ValueError(f"inputs must be image bytes, a base64 string or a PIL image, got {kind}")  # noqa: TRY004
    try:
        image = Image.open(io.BytesIO(inputs))
        image.load()
    except UnidentifiedImageError:
        raise ValueError(f"inputs is not an image Pillow can read ({len(inputs)} bytes)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot decode the image in inputs: {error}") from None
    return image


def _decode_base64(text: str) -> bytes:
    text = text.strip()
    if text.startswith(("http://", "https://")):
        raise ValueError("URLs are not fetched: send the image's bytes or its base64 encoding")
    if text.startswith("data:") and _BASE64_PREFIX in text:
        text = text.split(_BASE64_PREFIX, 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("inputs is a string but not valid base64 of an image file") from None


def parse_boxes(boxes: Any, default_min: int, default_max: int) -> tuple[int, int]:
    """The selection range of a boxes preset: `"10-100"` gives (10, 100), `"36"` or 36 gives (36, 36)."""
    if boxes is None:
        return default_min, default_max
    text = str(boxes).strip()
    try:
        low, _, high = text.partition("-")
        min_boxes, max_boxes = int(low), int(high or low)
    except ValueError:
        raise ValueError(f'boxes must be "MIN-MAX" (e.g. "10-100") or a count (e.g. "36"), got {boxes!r}') from None
    if not 0 < min_boxes <= max_boxes:
        raise ValueError(f"boxes needs 0 < MIN <= MAX, got {boxes!r}")
    return min_boxes, max_boxes


def parse_regions(regions: Any) -> list[list[float]] | None:
    """Given regions: a list of [x1, y1, x2, y2] numbers (the model checks their values and names a bad one)."""
    if regions is None:
        return None
    if not isinstance(regions, list) or not all(
        isinstance(box, list)
        and len(box) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
        for box in regions
    ):
        raise ValueError(f"regions must be a list of [x1, y1, x2, y2] numbers, got {regions!r}"[:300])
    return [[float(v) for v in box] for box in regions]


def parse_threshold(threshold: Any, default: float) -> float:
    if threshold is None:
        return default
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number, got {threshold!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    return value


def parse_flag(value: Any, name: str) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{name} must be true or false, got {value!r}")
