"""Inference Endpoints handler of the bottom-up-attention Faster R-CNN (BUTD region features).

Inference Endpoints (huggingface-inference-toolkit) import this file from the model repository and call
`EndpointHandler(path)(data)`; any exception becomes an HTTP 400 with its message. The model loads through the
repository's own code (`trust_remote_code=True`): the `butd_frcnn` package is not needed.

Request `data` (what the server makes of the HTTP body):
    inputs: the image. A JSON body (`Content-Type: application/json`) gives its file's bytes in base64 (a
        `data:image/...;base64,` prefix is allowed): this is the exact path, the bytes are decoded as the original's
        `cv2.imread` decoded the file. A raw body (`Content-Type: image/jpeg`, `image/png`, ...) arrives as a PIL
        image that the server has already converted to RGB with Pillow's own conversion: CMYK JPEGs and 16-bit PNGs
        then give other pixels, so other regions, than the same file sent as base64. URLs are not fetched.
    parameters (optional; a JSON object, or the URL's query string, whose values arrive as strings, integers or
        booleans):
        output: "detections" (the default) or "regions" (see Response).
        boxes: "10-100" (10 to 100 regions, the released features), "36" (exactly 36) or "MIN-MAX";
            defaults to the model config's selection.
        threshold: the score a region needs: the selection keeps regions whose best class score after per-class NMS
            reaches it (within the boxes range); detections also leave out selected regions whose object score is
            below it. Defaults to the model config's (0.2).
        return_features: with output "regions", also return the region features (one 2048-d list per region).
        regions: regions to describe instead of detecting: a list of [x1, y1, x2, y2] in image pixels (inclusive:
            width = x2 - x1 + 1), e.g. the boxes of a referring expression. The response then holds exactly these
            regions, in this order (none for an empty list); `boxes` and `threshold`, which choose among detected
            regions, do not go with it.
    Images of more pixels than the image processor's `max_pixels` (preprocessor_config.json) are refused from their
    header, before they are decoded.

Response, JSON-serialisable, one entry per region in the original's order:
    output "detections": the object-detection task's list (what the Hub widget and
        `huggingface_hub.InferenceClient.object_detection` read): `{"score", "label", "box": {"xmin", "ymin", "xmax",
        "ymax"}, "attribute", "attribute_score"}` with whole-pixel boxes (truncated), label the object class.
    output "regions": one object:
        image_size: {"height": H, "width": W}, the decoded image's size;
        num_boxes: N;
        boxes: N x [x1, y1, x2, y2] in image pixels (inclusive: width = x2 - x1 + 1);
        labels, label_ids, scores: the most probable object class (name, id in 1..1600) and its probability;
        attributes, attribute_ids, attribute_scores: the same for the attribute (id in 1..400);
        features: N x [2048 floats], only with return_features.
"""

import base64
import binascii
import math
from typing import Any

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForObjectDetection

_BASE64_PREFIX = ";base64,"
PARAMETERS = ("output", "boxes", "threshold", "return_features", "regions")
OUTPUTS = ("detections", "regions")


class EndpointHandler:
    """Loads the model folder once; each call runs one image (see the module docstring for the request)."""

    def __init__(self, path: str = ""):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForObjectDetection.from_pretrained(path, trust_remote_code=True).to(self.device).eval()
        self.processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=True)

    def __call__(self, data: dict[str, Any]) -> list[dict[str, Any]] | dict[str, Any]:
        if not isinstance(data, dict) or "inputs" not in data:
            raise ValueError('the request must be {"inputs": image, "parameters": {...}}')
        parameters = data.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ValueError(f"parameters must be an object, got {type(parameters).__name__}")  # noqa: TRY004
        unknown = set(parameters) - set(PARAMETERS)
        if unknown:
            raise ValueError(f"unknown parameters {sorted(unknown)}: use {', '.join(PARAMETERS)}")
        config = self.model.config
        output = parse_output(parameters.get("output"))
        min_boxes, max_boxes = parse_boxes(parameters.get("boxes"), config.min_boxes, config.max_boxes)
        threshold = parse_threshold(parameters.get("threshold"), config.score_threshold)
        return_features = parse_flag(parameters.get("return_features"), "return_features")
        if return_features and output != "regions":
            raise ValueError('return_features needs "output": "regions": detections have no room for features')
        given_regions = parse_regions(parameters.get("regions"))
        if given_regions is not None and ("boxes" in parameters or "threshold" in parameters):
            raise ValueError("regions are described as given: boxes and threshold choose among detected regions")

        try:  # the processor refuses an image above its max_pixels from the header, before decoding it
            bgr = self.processor.process_image(read_image(data["inputs"]))
        except ValueError as error:
            raise ValueError(f"inputs: {error}") from None
        inputs = self.processor(bgr, input_channel_order="bgr", boxes=given_regions, return_tensors="pt")
        try:
            with torch.inference_mode():
                outputs = self.model(
                    **inputs.to(self.device), min_boxes=min_boxes, max_boxes=max_boxes, score_threshold=threshold
                )
        except ValueError as error:
            if given_regions is None:
                raise
            # the model names the bad box ("boxes of image 0: box 1 [...] has x2 < x1")
            raise ValueError(f"regions: {error}") from None
        if output == "detections":
            # given regions are all described; detected ones are kept where their object score reaches the threshold
            minimum_score = 0.0 if given_regions is not None else threshold
            return detections(self.processor.post_process_object_detection(outputs, minimum_score)[0], config)
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


def detections(regions: dict[str, torch.Tensor], config) -> list[dict[str, Any]]:
    """Regions of `post_process_object_detection` in the object-detection task's layout, with the attribute (the
    layout of the model's `ButdFrcnnObjectDetectionPipeline`)."""
    return [
        {
            "score": score,
            "label": config.id2label[label],
            "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), box)),
            "attribute": config.attribute_names[attribute],
            "attribute_score": attribute_score,
        }
        for score, label, box, attribute, attribute_score in zip(
            regions["scores"].tolist(),
            regions["labels"].tolist(),
            regions["boxes"].int().tolist(),  # whole pixels, truncated, as the object-detection pipeline reports
            regions["attributes"].tolist(),
            regions["attribute_scores"].tolist(),
        )
    ]


def read_image(inputs: Any) -> bytes | Image.Image:
    """The request's image, not yet decoded: the file's bytes (given, or decoded from base64) or the server's PIL
    image; a clear `ValueError` for anything else."""
    if isinstance(inputs, Image.Image):
        return inputs
    if isinstance(inputs, str):
        return _decode_base64(inputs)
    if not isinstance(inputs, (bytes, bytearray)):
        kind = type(inputs).__name__  # a bad request (ValueError: HTTP 400), not a programming error
        raise ValueError(f"inputs must be image bytes, a base64 string or a PIL image, got {kind}")  # noqa: TRY004
    return bytes(inputs)


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


def parse_output(output: Any) -> str:
    if output is None:
        return OUTPUTS[0]
    if output not in OUTPUTS:
        raise ValueError(f'output must be "detections" or "regions", got {output!r}')
    return output


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
