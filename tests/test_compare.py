"""Tests of `butd-frcnn compare`: the matching against brute force, synthetic files whose differences are known
(identical, permuted, jittered, missing images, mixed formats), and our extraction against the original's outputs."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from extraction_helpers import run_cli, save_model_folder
from golden import GOLDEN, golden_image_path, model_from_caffemodel

from butd_frcnn.compare import compare_files
from butd_frcnn.compare.matching import box_iou, greedy_assignment, optimal_assignment
from butd_frcnn.extraction.formats import open_writer
from butd_frcnn.extraction.records import RegionRecord

FORMAT_PATHS = {"lxmert-tsv": "features.tsv", "hdf5": "features.h5", "npz": "features"}


def synthetic_records(count: int = 6, boxes: int = 12, seed: int = 0) -> list[RegionRecord]:
    """Images with well separated random boxes and ReLU-like features."""
    rng = np.random.RandomState(seed)
    records = []
    for index in range(count):
        corners = np.stack([rng.uniform(0, 400, boxes), rng.uniform(0, 300, boxes)], 1).astype(np.float32)
        sizes = rng.uniform(30, 120, (boxes, 2)).astype(np.float32)
        records.append(
            RegionRecord(
                image_id=f"image_{index:03d}",
                image_h=480,
                image_w=640,
                boxes=np.concatenate([corners, corners + sizes], 1),
                features=np.maximum(rng.normal(size=(boxes, 64)), 0).astype(np.float32),
                objects=rng.randint(0, 1600, boxes).astype(np.int64),
                objects_conf=rng.uniform(0, 1, boxes).astype(np.float32),
                attrs=rng.randint(0, 400, boxes).astype(np.int64),
                attrs_conf=rng.uniform(0, 1, boxes).astype(np.float32),
            )
        )
    return records


def write(records: list[RegionRecord], folder: Path, format: str = "lxmert-tsv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FORMAT_PATHS[format]
    writer = open_writer(format, path, resume=False, attributes={}, checkpoint_images=1000)
    for record in records:
        writer.write(record)
    writer.close()
    return path


def rows(record: RegionRecord, order) -> RegionRecord:
    """The record with its regions reordered (or subset)."""
    take = np.asarray(order)
    return RegionRecord(
        record.image_id, record.image_h, record.image_w, record.boxes[take], record.features[take],
        record.objects[take], record.objects_conf[take], record.attrs[take], record.attrs_conf[take],
    )  # fmt: skip


def compare_json(a: Path, b: Path, tmp_path: Path, *options, exit_code: int = 0) -> dict:
    report = tmp_path / "report.json"
    completed = run_cli("compare", a, b, "--report", report, "--no-progress", *options, check=False)
    assert completed.returncode == exit_code, completed.stdout + completed.stderr
    result = json.loads(report.read_text())
    assert ("PASS" in completed.stdout) == result["passed"]
    return result


# ---------------------------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------------------------


def test_the_optimal_assignment_matches_brute_force():
    rng = np.random.RandomState(1)
    for _ in range(200):
        weights = rng.rand(rng.randint(1, 7), rng.randint(1, 7)) * (rng.rand(1, 1) > 0.2)
        pairs = optimal_assignment(weights)
        assert len({i for i, _ in pairs}) == len(pairs) == len({j for _, j in pairs})
        rows_, columns = weights.shape
        if rows_ <= columns:
            best = max(
                sum(weights[i, p[i]] for i in range(rows_)) for p in itertools.permutations(range(columns), rows_)
            )
        else:
            best = max(
                sum(weights[p[j], j] for j in range(columns)) for p in itertools.permutations(range(rows_), columns)
            )
        assert sum(weights[i, j] for i, j in pairs) == pytest.approx(best)


def test_greedy_takes_the_heaviest_pair_first_where_the_optimum_does_not():
    weights = np.array([[0.9, 0.8], [0.85, 0.0]])
    assert greedy_assignment(weights) == [(0, 0)]
    assert optimal_assignment(weights) == [(0, 1), (1, 0)]


def test_iou_uses_the_inclusive_pixel_convention():
    iou = box_iou(np.array([[0, 0, 9, 9]]), np.array([[5, 0, 14, 9], [20, 20, 29, 29], [0, 0, 9, 9]]))
    assert iou.tolist() == [[50 / 150, 0.0, 1.0]]


# ---------------------------------------------------------------------------------------------------------------
# Known differences
# ---------------------------------------------------------------------------------------------------------------


def test_a_file_compared_with_itself_is_perfect(tmp_path):
    path = write(synthetic_records(), tmp_path / "a")
    result = compare_json(path, path, tmp_path)
    summary = result["summary"]
    assert result["passed"] and summary["images_compared"] == summary["images_identical"] == 6
    assert summary["boxes_iou_at_least"] == {"0.5": 1.0, "0.9": 1.0, "0.99": 1.0}
    assert summary["boxes_exact"] == summary["features_exact"] == 1.0
    assert summary["images_same_order"] == summary["images_same_box_count"] == 1.0
    assert summary["cosine_min"] == pytest.approx(1.0) and summary["relative_l2_max"] == 0.0
    assert summary["feature_matched_cosine_min"] == pytest.approx(1.0)
    assert summary["objects_agree"] == summary["attrs_agree"] == 1.0
    assert result["only_in_a"] == result["only_in_b"] == []


def test_permuted_boxes_are_the_same_set_in_another_order(tmp_path):
    records = synthetic_records()
    rng = np.random.RandomState(2)
    permuted = [rows(record, rng.permutation(record.num_boxes)) for record in records]
    result = compare_json(write(records, tmp_path / "a"), write(permuted, tmp_path / "b"), tmp_path)
    summary = result["summary"]
    assert result["passed"] and summary["images_identical"] == 0
    assert summary["images_same_order"] == 0.0
    assert summary["boxes_exact"] == summary["features_exact"] == 1.0
    assert summary["boxes_iou_at_least"]["0.99"] == 1.0 and summary["objects_agree"] == 1.0
    assert all(not image["same_order"] and image["exact_boxes"] == 1.0 for image in result["images"])


def test_one_jittered_box_moves_the_matching_and_the_numbers(tmp_path):
    records = synthetic_records(count=2, boxes=10)
    changed = [rows(record, range(record.num_boxes)) for record in records]
    target = changed[1]
    width = target.boxes[3, 2] - target.boxes[3, 0] + 1
    target.boxes[3, [0, 2]] += 0.05 * width  # IoU about 0.9 with its original: still matched
    target.features[3] *= 1.5
    target.features[3, :8] += 1.0  # a different direction too: cosine below 1
    target.boxes[7] += 1000.0  # far from everything: unmatched
    a, b = write(records, tmp_path / "a"), write(changed, tmp_path / "b")
    result = compare_json(a, b, tmp_path, "--min-box-agreement", "0.99", exit_code=1)

    images = {image["image_id"]: image for image in result["images"]}
    untouched, jittered = images["image_000"], images["image_001"]
    assert untouched["identical"] and jittered["image_id"] == result["images"][0]["image_id"], "worst first"
    assert jittered["matched"] == 9 and jittered["iou_at_least"]["0.5"] == 0.9
    assert jittered["iou_at_least"]["0.99"] == 0.8 and jittered["exact_boxes"] == 0.8
    expected_iou = box_iou(records[1].boxes[3:4], target.boxes[3:4])[0, 0]
    assert 0.85 < expected_iou < 0.95
    assert jittered["iou_at_least"]["0.9"] == (0.9 if expected_iou >= 0.9 else 0.8)
    before, after = records[1].features[3].astype(np.float64), target.features[3].astype(np.float64)
    cosine = before @ after / np.linalg.norm(before) / np.linalg.norm(after)
    assert jittered["cosine_min"] == pytest.approx(cosine) and cosine < 0.999
    relative_l2 = np.linalg.norm(before - after) / np.linalg.norm(after)
    assert jittered["relative_l2_max"] == pytest.approx(relative_l2, rel=1e-6)
    assert jittered["cosine_mean"] == pytest.approx((8 + cosine) / 9)
    assert jittered["same_order"] and not jittered["identical"]
    assert any("boxes agree" in failure for failure in result["failures"])

    assert compare_json(a, b, tmp_path, "--agreement-iou", "0.5", "--min-box-agreement", "0.9")["passed"]


def test_missing_images_are_listed_and_fail_unless_allowed(tmp_path):
    records = synthetic_records()
    extra = synthetic_records(count=1, seed=5)[0]
    extra.image_id = "only_in_b"
    a = write(records, tmp_path / "a")
    b = write([*records[:4], extra], tmp_path / "b")
    result = compare_json(a, b, tmp_path, exit_code=1)
    assert result["only_in_a"] == ["image_004", "image_005"] and result["only_in_b"] == ["only_in_b"]
    assert result["summary"]["images_compared"] == 4
    assert compare_json(a, b, tmp_path, "--max-missing", "3")["passed"]
    assert len(compare_files(a, b, max_images=2).images) == 2


def test_mixed_formats_give_the_same_report(tmp_path):
    records = synthetic_records()
    changed = [rows(record, list(range(1, record.num_boxes)) + [0]) for record in records[::2]] + records[1::2]
    changed[0].features[2] += 0.25
    reports = {}
    for format_a, format_b in (("lxmert-tsv", "lxmert-tsv"), ("lxmert-tsv", "npz"), ("npz", "hdf5")):
        a = write(records, tmp_path / f"a-{format_a}", format_a)
        b = write(changed, tmp_path / f"b-{format_b}", format_b)
        report = compare_files(a, b)
        reports[format_a, format_b] = (report.summary(), [image.to_dict() for image in report.worst_first()])
    first = next(iter(reports.values()))
    assert all(report == first for report in reports.values())
    assert first[0]["images_identical"] == 3 and first[0]["images_same_order"] == 0.5


def test_ids_can_be_paired_by_their_number(tmp_path):
    records = synthetic_records(count=2)
    renamed = [rows(record, range(record.num_boxes)) for record in records]
    for record, number in zip(renamed, (42, 7)):
        record.image_id = f"COCO_val2014_{number:012d}"
    records[0].image_id, records[1].image_id = "42", "7"
    a, b = write(records, tmp_path / "a"), write(renamed, tmp_path / "b")
    assert compare_files(a, b).images == []
    paired = compare_json(a, b, tmp_path, "--ids", "number")
    assert paired["summary"]["images_identical"] == 2


# ---------------------------------------------------------------------------------------------------------------
# Golden data: the original's outputs
# ---------------------------------------------------------------------------------------------------------------


def test_golden_style_folders_need_a_selection_suffix(tmp_path, golden_dir):
    golden = golden_dir / "tiny"
    completed = run_cli("compare", golden, golden, "--no-progress", check=False)
    assert completed.returncode == 2 and "--suffix" in completed.stderr and "10_100" in completed.stderr
    result = compare_json(golden, golden, tmp_path, "--suffix", "36")
    assert result["summary"]["images_identical"] == 7 and result["summary"]["boxes_a"] == 7 * 36


def test_our_extraction_agrees_with_the_original_on_the_golden_image(tmp_path, golden_dir):
    """The golden TINY weights, converted, extracted through the CLI at the real image size, compared with the
    original's selection: the same boxes in the same order to float rounding, the same labels."""
    from butd_frcnn import ButdFrcnnImageProcessor

    model = save_model_folder(
        model_from_caffemodel(GOLDEN / "tiny_seed0.caffemodel"), ButdFrcnnImageProcessor(), tmp_path / "model"
    )
    ours = tmp_path / "ours.tsv"
    image = golden_image_path("astronaut")
    run_cli("extract", "--model", model, "--output", ours, "--format", "lxmert-tsv", "--no-progress", image)
    result = compare_json(
        ours, golden_dir / "tiny", tmp_path, "--suffix", "10_100", "--min-cosine", "0.99999", "--max-missing", "6"
    )
    assert result["only_in_b"] == sorted({name.stem for name in (golden_dir / "tiny").glob("*.npz")} - {"astronaut"})
    astronaut = result["images"][0]
    assert astronaut["boxes_a"] == astronaut["boxes_b"] == 50
    assert astronaut["iou_at_least"]["0.99"] == 1.0 and astronaut["same_order"]
    assert astronaut["cosine_min"] > 0.99999 and astronaut["objects_agree"] == astronaut["attrs_agree"] == 1.0
