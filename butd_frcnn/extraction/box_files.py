"""Regions given by the user (`extract --boxes-from FILE`, `show --boxes-from FILE`): per image id, the boxes whose
features to compute, `(x1, y1, x2, y2)` in the image's own pixels with the inclusive convention of our outputs
(width = x2 - x1 + 1).

FILE is any of:
- a JSON object `{"<image_id>": [[x1, y1, x2, y2], ...], ...}`;
- JSON lines, one object per line with `image_id` and `boxes` (as above);
- a COCO-style annotation file (`images` and `annotations`, each annotation's `bbox` being `[x, y, w, h]`): each image
  gets its annotations' boxes in file order, `x2 = x + max(0, w - 1)`, `y2 = y + max(0, h - 1)` (py-faster-rcnn's
  COCO loader; it also clips to the image, which the model does not need). Images are known by their `file_name`
  without extension, or by their `id` with `--image-ids number`; an image with no annotation has no box;
- a feature file or folder this tool wrote, in any format: its boxes, e.g. to describe them again with another
  checkpoint or dtype.

Every box is checked here (four finite numbers, x2 >= x1, y2 >= y1), so that a bad file stops a run before any work;
whether a box lies inside its image is the model's check (it knows the image's size).
"""

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .formats import read_features
from .records import ExtractionError

BOX_FILE_KINDS = ("json", "jsonl", "coco", "features")


@dataclass(frozen=True)
class GivenBoxes:
    """The boxes of a box file.

    Attributes:
        path: the file (or feature folder) they were read from.
        kind: one of `BOX_FILE_KINDS`.
        boxes: image id -> `(K, 4)` float32 boxes, in the file's order (`K = 0` where an image is listed without
            boxes).
        digest: sha256 of the ids and boxes (not of the file's bytes: the same boxes written otherwise give the same
            digest), which a run's manifest records so that `--resume` refuses other boxes.
    """

    path: Path
    kind: str
    boxes: dict[str, np.ndarray]
    digest: str

    def source(self) -> dict[str, str]:
        """What a run manifest records about the boxes."""
        return {"path": str(self.path), "kind": self.kind, "sha256": self.digest}


def read_box_file(path: str | Path, id_style: str = "stem") -> GivenBoxes:
    """Read a box file of any of the kinds the module docstring lists (recognised by its content).

    Args:
        path: the file, or a feature folder.
        id_style: how the run names its images (`--image-ids`): decides how COCO images are keyed (`stem`: their
            `file_name` without extension; `number`: their `id`).

    Raises:
        ExtractionError: naming the file, the place in it (line, image, box) and what is wrong.
    """
    path = Path(path)
    kind, entries = _parse(path, id_style)
    boxes: dict[str, np.ndarray] = {}
    for image_id, where, rows in entries:
        if image_id in boxes:
            raise ExtractionError(f"{path}: image {image_id!r} is given boxes twice ({where})")
        boxes[image_id] = _checked_boxes(rows, f"{path}: image {image_id!r} ({where})")
    return GivenBoxes(path, kind, boxes, _digest(boxes))


def _parse(path: Path, id_style: str) -> tuple[str, Iterator[tuple[str, str, Any]]]:
    """The kind of the file and its entries `(image_id, where in the file, boxes)`."""
    if path.is_dir() or not _starts_like_json(path):
        return "features", _feature_file_entries(path)
    text = _read_text(path)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg != "Extra data":
            raise ExtractionError(f"{path}: not valid JSON: {error}") from None
        return "jsonl", _json_lines_entries(path, text)
    if isinstance(document, dict) and "images" in document and "annotations" in document:
        return "coco", _coco_entries(path, document, id_style)
    if isinstance(document, dict) and "image_id" in document and "boxes" in document:  # JSON lines, one line
        return "jsonl", _json_lines_entries(path, text)
    if not isinstance(document, dict):
        raise ExtractionError(
            f'{path}: expected {{"<image_id>": [[x1, y1, x2, y2], ...]}}, JSON lines or COCO annotations, got a JSON '
            f"{type(document).__name__}"
        )
    return "json", ((str(image_id), "its entry", rows) for image_id, rows in document.items())


def _starts_like_json(path: Path) -> bool:
    try:
        with open(path, "rb") as file:
            head = file.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError as error:
        raise ExtractionError(f"cannot read the box file {path}: {error}") from None
    return head[:1] in (b"{", b"[")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ExtractionError(f"cannot read the box file {path}: {error}") from None


def _json_lines_entries(path: Path, text: str) -> Iterator[tuple[str, str, Any]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise ExtractionError(f"{path}, line {number}: not valid JSON: {error}") from None
        if not isinstance(entry, dict) or "image_id" not in entry or "boxes" not in entry:
            raise ExtractionError(
                f'{path}, line {number}: expected {{"image_id": ..., "boxes": [[x1, y1, x2, y2], ...]}}'
            )
        yield str(entry["image_id"]), f"line {number}", entry["boxes"]


def _coco_entries(path: Path, document: dict, id_style: str) -> Iterator[tuple[str, str, Any]]:
    images, annotations = document["images"], document["annotations"]
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise ExtractionError(f"{path}: COCO `images` and `annotations` must be lists")
    boxes_by_image: dict[Any, list] = {}
    names: dict[Any, str] = {}
    for index, image in enumerate(images):
        try:
            coco_id, file_name = image["id"], image["file_name"]
        except (KeyError, TypeError):
            raise ExtractionError(f"{path}: images[{index}] needs an `id` and a `file_name`") from None
        names[coco_id] = str(coco_id) if id_style == "number" else Path(str(file_name)).stem
        boxes_by_image[coco_id] = []
    for index, annotation in enumerate(annotations):
        try:
            coco_id, bbox = annotation["image_id"], annotation["bbox"]
            x, y, width, height = (float(value) for value in bbox)
        except (KeyError, TypeError, ValueError):
            raise ExtractionError(
                f"{path}: annotations[{index}] needs an `image_id` and a `bbox` [x, y, w, h]"
            ) from None
        if coco_id not in boxes_by_image:
            raise ExtractionError(f"{path}: annotations[{index}] is for image id {coco_id!r}, which `images` lacks")
        boxes_by_image[coco_id].append([x, y, x + max(0.0, width - 1), y + max(0.0, height - 1)])
    return ((names[coco_id], f"images id {coco_id!r}", rows) for coco_id, rows in boxes_by_image.items())


def _feature_file_entries(path: Path) -> Iterator[tuple[str, str, Any]]:
    try:
        for record in read_features(path):
            yield record.image_id, "its record", record.boxes
    except ExtractionError as error:
        raise ExtractionError(
            f"{path}: not a box file (JSON, JSON lines, COCO annotations) nor a feature file: {error}"
        ) from None


def _checked_boxes(rows: Any, where: str) -> np.ndarray:
    try:
        boxes = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError):
        raise ExtractionError(f"{where}: boxes must be a list of [x1, y1, x2, y2]") from None
    if boxes.size == 0:
        return np.zeros((0, 4), np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ExtractionError(f"{where}: boxes must be a list of [x1, y1, x2, y2], got shape {boxes.shape}")
    problems = (
        (~np.isfinite(boxes).all(axis=1), "is not finite"),
        (boxes[:, 2] < boxes[:, 0], "has x2 < x1"),
        (boxes[:, 3] < boxes[:, 1], "has y2 < y1"),
    )
    for bad, reason in problems:
        if bad.any():
            index = int(np.flatnonzero(bad)[0])
            raise ExtractionError(f"{where}: box {index} {boxes[index].tolist()} {reason}")
    return boxes.astype(np.float32)


def _digest(boxes: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for image_id in sorted(boxes):
        rows = np.ascontiguousarray(boxes[image_id], dtype="<f4")
        digest.update(f"{image_id}\0{rows.shape[0]}\0".encode() + rows.tobytes())
    return digest.hexdigest()
