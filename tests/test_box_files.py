"""Box files of `--boxes-from`: JSON, JSON lines, COCO annotations and our own feature files, read into per-image
float32 boxes; every malformed file or box is an error naming the file, the place and the box."""

import json

import numpy as np
import pytest

from butd_frcnn.extraction.box_files import read_box_file
from butd_frcnn.extraction.formats import open_writer
from butd_frcnn.extraction.records import ExtractionError, RegionRecord

BOXES = {
    "COCO_val2014_000000000042": [[10.0, 20.0, 110.0, 220.5], [0.0, 0.0, 5.0, 5.0]],
    "street": [[1.5, 2.25, 3.75, 4.0]],
    "empty": [],
}


def write(path, text: str):
    path.write_text(text)
    return path


def assert_boxes(given, expected: dict):
    assert list(given.boxes) == list(expected)
    for image_id, rows in expected.items():
        boxes = given.boxes[image_id]
        assert boxes.dtype == np.float32 and boxes.shape == (len(rows), 4)
        assert np.array_equal(boxes, np.array(rows, np.float32).reshape(-1, 4)), image_id


def test_json_object(tmp_path):
    given = read_box_file(write(tmp_path / "boxes.json", json.dumps(BOXES)))
    assert given.kind == "json" and given.path == tmp_path / "boxes.json"
    assert_boxes(given, BOXES)


def test_json_lines_give_the_same_boxes_and_digest(tmp_path):
    lines = [json.dumps({"image_id": image_id, "boxes": rows}) for image_id, rows in BOXES.items()]
    given = read_box_file(write(tmp_path / "boxes.jsonl", "\n".join(lines[:2]) + "\n\n" + lines[2] + "\n"))
    assert given.kind == "jsonl"
    assert_boxes(given, BOXES)
    assert given.digest == read_box_file(write(tmp_path / "boxes.json", json.dumps(BOXES))).digest
    single = read_box_file(write(tmp_path / "one.jsonl", json.dumps({"image_id": 7, "boxes": [[1, 2, 3, 4]]})))
    assert single.kind == "jsonl" and list(single.boxes) == ["7"]


def test_the_digest_changes_with_any_box_or_id(tmp_path):
    digest = read_box_file(write(tmp_path / "a.json", json.dumps(BOXES))).digest
    moved = {**BOXES, "street": [[1.5, 2.25, 3.75, 4.5]]}
    renamed = {("avenue" if key == "street" else key): rows for key, rows in BOXES.items()}
    for other in (moved, renamed):
        assert read_box_file(write(tmp_path / "b.json", json.dumps(other))).digest != digest


COCO = {
    "images": [
        {"id": 42, "file_name": "COCO_val2014_000000000042.jpg", "width": 640, "height": 480},
        {"id": 7, "file_name": "nested/street.png", "width": 100, "height": 100},
        {"id": 9, "file_name": "empty.jpg", "width": 10, "height": 10},
    ],
    "annotations": [
        {"id": 1, "image_id": 42, "bbox": [10, 20, 101, 201.5], "category_id": 3},
        {"id": 2, "image_id": 7, "bbox": [1.5, 2.25, 3.25, 2.75], "category_id": 1},
        {"id": 3, "image_id": 42, "bbox": [0, 0, 6, 0.5], "category_id": 1},
    ],
}


def test_coco_annotations_map_xywh_to_inclusive_corners(tmp_path):
    """x2 = x + w - 1 (a box `w` pixels wide); a side under one pixel gives a one-pixel box (py-faster-rcnn)."""
    path = write(tmp_path / "instances.json", json.dumps(COCO))
    given = read_box_file(path)
    assert given.kind == "coco"
    assert_boxes(given, {**BOXES, "COCO_val2014_000000000042": [[10.0, 20.0, 110.0, 220.5], [0.0, 0.0, 5.0, 0.0]]})
    by_number = read_box_file(path, id_style="number")
    assert list(by_number.boxes) == ["42", "7", "9"]
    assert np.array_equal(by_number.boxes["42"], given.boxes["COCO_val2014_000000000042"])


def test_a_feature_file_of_ours_gives_its_boxes(tmp_path):
    records = [
        RegionRecord(
            image_id=image_id,
            image_h=50,
            image_w=60,
            boxes=np.array(rows, np.float32).reshape(-1, 4),
            features=np.ones((len(rows), 8), np.float32),
            objects=np.zeros(len(rows), np.int64),
            objects_conf=np.ones(len(rows), np.float32),
            attrs=np.zeros(len(rows), np.int64),
            attrs_conf=np.ones(len(rows), np.float32),
        )
        for image_id, rows in BOXES.items()
        if rows
    ]
    for format, path in (("npz", tmp_path / "features"), ("lxmert-tsv", tmp_path / "features.tsv")):
        writer = open_writer(format, path, resume=False, attributes={}, checkpoint_images=1000)
        for record in records:
            writer.write(record)
        writer.commit()
        writer.close()
        given = read_box_file(path)
        assert given.kind == "features"
        assert_boxes(given, {key: rows for key, rows in BOXES.items() if rows})


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("nan.json", '{"a": [[0, 0, 5, 5], [1, NaN, 3, 4]]}', r"image 'a' \(its entry\): box 1 \[1.0, nan, 3.0, 4.0\] is not finite"),
        ("order.jsonl", '{"image_id": "a", "boxes": []}\n{"image_id": "b", "boxes": [[5, 0, 4, 9]]}', r"image 'b' \(line 2\): box 0 \[5.0, 0.0, 4.0, 9.0\] has x2 < x1"),
        ("y.json", '{"a": [[0, 9, 5, 8]]}', r"box 0 \[0.0, 9.0, 5.0, 8.0\] has y2 < y1"),
        ("shape.json", '{"a": [[0, 0, 5]]}', r"image 'a' \(its entry\): boxes must be a list of \[x1, y1, x2, y2\], got shape \(1, 3\)"),
        ("ragged.json", '{"a": [[0, 0, 5, 5], [1]]}', "boxes must be a list of"),
        ("text.json", '{"a": "box"}', "boxes must be a list of"),
        ("twice.jsonl", '{"image_id": "a", "boxes": []}\n{"image_id": "a", "boxes": []}', r"image 'a' is given boxes twice \(line 2\)"),
        ("line.jsonl", '{"image_id": "a", "boxes": []}\n{"image": "b"}', r"line 2: expected \{\"image_id\""),
        ("broken.jsonl", '{"image_id": "a", "boxes": []}\n{"image_id": ', r"line 2: not valid JSON"),
        ("broken.json", '{"a": [[0, 0, 1, 1]', "not valid JSON"),
        ("array.json", "[[0, 0, 1, 1]]", "got a JSON list"),
        ("coco.json", json.dumps({"images": [], "annotations": [{"image_id": 1, "bbox": [0, 0, 1, 1]}]}), r"annotations\[0\] is for image id 1, which `images` lacks"),
        ("bbox.json", json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1}]}), r"annotations\[0\] needs an `image_id` and a `bbox`"),
        ("words.txt", "some words\n", "not a box file .* nor a feature file"),
    ],
)  # fmt: skip
def test_malformed_files_and_boxes_are_errors_naming_the_place(tmp_path, name, text, message):
    path = write(tmp_path / name, text)
    with pytest.raises(ExtractionError, match=message) as raised:
        read_box_file(path)
    assert str(path) in str(raised.value)


def test_a_missing_file_is_an_error(tmp_path):
    with pytest.raises(ExtractionError, match="no_such.json"):
        read_box_file(tmp_path / "no_such.json")
