"""`butd-frcnn extract --boxes-from`, `--save-class-probs` and `--format uniter-npz`: real subprocesses where the
detection tests use them (tests/test_extraction.py), the small converted model, image files of a few sizes, and the
model's own outputs for the same images and boxes as the reference."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_helpers import write_parquet_dataset
from extraction_helpers import (
    TEST_MAX_PIXELS,
    direct_outputs,
    make_image_folder,
    plain_read_butd_tsv,
    plain_read_hdf5,
    plain_read_lxmert_tsv,
    plain_read_npz,
    run_cli,
    run_torchrun,
    save_test_model,
)
from PIL import Image

from butd_frcnn.compare import compare_files
from butd_frcnn.extraction import ExtractionError, ExtractOptions, extract, merge_outputs, read_features
from butd_frcnn.extraction.formats import open_writer
from butd_frcnn.extraction.hdf5 import spool_path
from butd_frcnn.extraction.records import RegionRecord
from butd_frcnn.extraction.sharding import Shard
from butd_frcnn.extraction.sidecars import RunManifest

# 64 x 48 and 48 x 64 images are resized by exactly 2 (TEST_SIZE's 96 shortest edge): boxes / 2 * 2 round-trips
# exactly in float32; 80 x 60 (scale 1.6), 120 x 90 (0.8) and 100 x 40 (1.6) do not
CHOSEN = ("rgb_00", "rgb_01", "rgb_06", "rgb_11", "rgb_15", "rgb_17")
EXACT_ROUND_TRIP = ("rgb_00", "rgb_01", "rgb_06")
RECORD_KEYS = ("image_h", "image_w", "boxes", "features", "objects", "objects_conf", "attrs", "attrs_conf")
PROBS_FORMATS = {"hdf5": "out.h5", "npz": "out", "parquet": "out", "uniter-npz": "out"}
# UNITER's converter (scripts/convert_imgdir.py) keeps the first min(max_bb, max(min_bb, (conf > conf_th).sum()))
# rows; these small numbers make every branch of that rule happen on the test model's 30 proposals per image
MIN_BB, MAX_BB, CONF_TH = 2, 3, 0.025


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, shared_dir) -> Path:
    return save_test_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("images")
    good, _ = make_image_folder(root)
    return {image_id: good[image_id] for image_id in CHOSEN}


@pytest.fixture(scope="module")
def listing(images, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("listing") / "images.txt"
    path.write_text("".join(f"{image_id}\t{file}\n" for image_id, file in images.items()))
    return path


@pytest.fixture(scope="module")
def given_boxes() -> dict[str, list]:
    """Boxes for four of the six images (one reaching outside its image: pooled as given), none for rgb_11, an empty
    list for rgb_15, and two images the runs are not given."""
    return {
        "rgb_00": [[0.0, 0.0, 63.0, 47.0], [10.5, 4.25, 30.0, 40.0], [20.0, 10.0, 80.0, 70.0]],
        "rgb_01": [[5.0, 5.0, 20.0, 20.0]],
        "rgb_06": [[0.0, 30.0, 47.0, 63.0], [12.0, 0.0, 13.0, 1.0]],
        "rgb_17": [[30.0, 20.0, 100.0, 80.0], [0.0, 0.0, 119.0, 89.0]],
        "rgb_15": [],
        "not_given_1": [[0.0, 0.0, 5.0, 5.0]],
        "not_given_2": [[0.0, 0.0, 5.0, 5.0]],
    }


@pytest.fixture(scope="module")
def box_file(given_boxes, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("boxes") / "boxes.json"
    path.write_text(json.dumps(given_boxes))
    return path


@pytest.fixture(scope="module")
def described(model_folder, images, given_boxes) -> dict[str, dict]:
    """The model's own outputs for the given boxes of the images that have some."""
    boxes = {image_id: np.array(rows, np.float32) for image_id, rows in given_boxes.items() if rows}
    return direct_outputs(model_folder, {i: images[i] for i in images if i in boxes}, boxes=boxes)


@pytest.fixture(scope="module")
def detected(model_folder, listing, tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """A CLI detection run into HDF5 keeping all 30 proposals (`--boxes 30`) and their class distributions, and the
    model's own outputs for the same images."""
    output = tmp_path_factory.mktemp("detected") / "detected.h5"
    run_cli(*extract_args(model_folder, output, "--boxes", "30", "--save-class-probs"), listing)
    rows = plain_read_hdf5(output)
    for record in read_features(output):
        rows[record.image_id].update(cls_prob=record.cls_prob, attr_prob=record.attr_prob)
    return output, rows


def extract_args(model_folder, output, *extra) -> list:
    return ["extract", "--model", model_folder, "--output", output, "--max-pixels", TEST_MAX_PIXELS, "--no-progress",
            "--num-workers", "0", *extra]  # fmt: skip


def extract_in_process(model_folder: Path, output: Path, inputs: list | None = None, **options):
    defaults = {"num_workers": 0, "max_pixels": TEST_MAX_PIXELS, "progress": False}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CLI runs get: same thread count, same bits
    try:
        return extract(ExtractOptions(model=str(model_folder), output=output, inputs=[str(i) for i in inputs or []],
                                      **{**defaults, **options}))  # fmt: skip
    finally:
        torch.set_num_threads(threads)


def errors_by_id(output: Path) -> dict[str, str]:
    lines = Path(f"{output}.errors.tsv").read_text().splitlines()
    return {line.split("\t")[0]: line.split("\t")[2] for line in lines}


def assert_record_equals(record: RegionRecord, expected: dict, keys=RECORD_KEYS) -> None:
    for key in keys:
        value = getattr(record, key)
        assert np.array_equal(value, expected[key]), f"{record.image_id}: {key} differs"


# ---------------------------------------------------------------------------------------------------------------
# Given boxes
# ---------------------------------------------------------------------------------------------------------------


def test_given_boxes_are_described_images_without_boxes_are_errors_and_unused_entries_are_named(
    model_folder, listing, box_file, described, tmp_path
):
    output = tmp_path / "given.tsv"
    completed = run_cli(*extract_args(model_folder, output, "--format", "lxmert-tsv", "--boxes-from", box_file),
                        listing)  # fmt: skip
    rows = plain_read_lxmert_tsv(output)
    assert sorted(rows) == sorted(described)
    for image_id, row in rows.items():
        for key in RECORD_KEYS:
            assert np.array_equal(row[key], described[image_id][key]), f"{image_id}: {key}"
    errors = errors_by_id(output)
    assert sorted(errors) == ["rgb_11", "rgb_15"]
    assert f"the box file {box_file} has no entry for this image" in errors["rgb_11"]
    assert "gives this image no box" in errors["rgb_15"]
    summary = completed.stdout
    assert "4 images extracted (8 boxes)" in summary and "failed 2" in summary
    assert f"2 images of {box_file} are not among the images given" in summary
    assert "not_given_1, not_given_2" in summary
    manifest = RunManifest.load(output)
    assert manifest.boxes_from["path"] == str(box_file) and manifest.boxes_from["kind"] == "json"
    assert len(manifest.boxes_from["sha256"]) == 64


@pytest.mark.parametrize("format", ["butd-tsv", "hdf5", "npz", "parquet"])
def test_every_format_holds_the_given_boxes_outputs(format, model_folder, listing, box_file, described, tmp_path):
    output = tmp_path / ("out.h5" if format == "hdf5" else "out")
    summary = extract_in_process(model_folder, output, [listing], format=format, boxes_from=box_file)
    assert summary.extracted == 4 and summary.failed == 2
    records = {record.image_id: record for record in read_features(output)}
    assert sorted(records) == sorted(described)
    keys = ("image_h", "image_w", "boxes", "features") if format == "butd-tsv" else RECORD_KEYS
    for image_id, record in records.items():
        assert_record_equals(record, described[image_id], keys)


def test_a_dataset_takes_given_boxes_by_its_id_column(model_folder, images, box_file, described, tmp_path):
    dataset = write_parquet_dataset(tmp_path / "dataset", images, shards=1)
    output = tmp_path / "out"
    summary = extract_in_process(model_folder, output, dataset=f"{dataset}/*.parquet", id_column="name",
                                 format="npz", boxes_from=box_file)  # fmt: skip
    errors = errors_by_id(output)
    assert summary.extracted == 4 and sorted(errors) == ["garbage", "no_image", "rgb_11", "rgb_15"]
    assert "no image" in errors["no_image"], "a row's own problem comes first"
    assert "has no entry for this image" in errors["garbage"], "not decoded: the box file gives it nothing"
    for record in read_features(output):
        assert_record_equals(record, described[record.image_id])


def test_refeaturising_a_feature_file_gives_back_its_features(model_folder, listing, detected, tmp_path):
    """Its boxes described again: the same 30 rows in another order (each row's results depend on its box alone),
    the same bits where `boxes / scale * scale` is exact (tests/test_given_boxes.py), float rounding elsewhere."""
    source, expected = detected
    output = tmp_path / "again"
    run_cli(*extract_args(model_folder, output, "--format", "npz", "--boxes-from", source, "--save-class-probs",
                          "--probs-dtype", "float16"), listing)  # fmt: skip
    again = plain_read_npz(output)
    assert sorted(again) == sorted(expected)
    assert all(len(row["boxes"]) == 30 for image_id, row in again.items() if image_id in EXACT_ROUND_TRIP)
    for image_id, row in again.items():
        reference = expected[image_id]
        assert np.array_equal(row["boxes"], reference["boxes"])
        assert row["cls_prob"].dtype == np.float16 and row["attr_prob"].shape == (30, 401)
        if image_id in EXACT_ROUND_TRIP:
            for key in ("features", "objects", "objects_conf", "attrs", "attrs_conf"):
                assert np.array_equal(row[key], reference[key]), f"{image_id}: {key}"
            assert np.array_equal(row["cls_prob"], reference["cls_prob"].astype(np.float16))
        else:
            np.testing.assert_allclose(row["features"], reference["features"], rtol=1e-4, atol=1e-5)
    assert RunManifest.load(output).boxes_from["kind"] == "features"


def test_resume_refuses_other_boxes_and_takes_the_same_boxes_from_another_file(
    model_folder, listing, box_file, given_boxes, tmp_path
):
    output = tmp_path / "out.h5"
    extract_in_process(model_folder, output, [listing], boxes_from=box_file)
    changed = {**given_boxes, "rgb_01": [[5.0, 5.0, 20.0, 21.0]]}
    other = tmp_path / "other.json"
    other.write_text(json.dumps(changed))
    with pytest.raises(
        ExtractionError, match=f"written with the boxes of {box_file} .* this run gives the boxes of {other}"
    ):
        extract_in_process(model_folder, output, [listing], boxes_from=other, resume=True)
    with pytest.raises(ExtractionError, match="written with the boxes of .* this run gives detected regions"):
        extract_in_process(model_folder, output, [listing], resume=True)
    same = tmp_path / "same.jsonl"  # the same boxes, written as JSON lines
    same.write_text("".join(json.dumps({"image_id": i, "boxes": rows}) + "\n" for i, rows in given_boxes.items()))
    resumed = extract_in_process(model_folder, output, [listing], boxes_from=same, resume=True)
    assert resumed.already_done == 4 and resumed.extracted == 0 and resumed.failed == 2
    with pytest.raises(ExtractionError, match="--boxes and --score-threshold choose among detected regions"):
        extract_in_process(model_folder, tmp_path / "x.h5", [listing], boxes_from=box_file, score_threshold=0.1)


def test_shards_of_given_boxes_merge_and_shards_of_other_boxes_do_not(
    model_folder, listing, box_file, given_boxes, described, tmp_path
):
    output = tmp_path / "out.h5"
    for index in (0, 1):
        extract_in_process(model_folder, output, [listing], boxes_from=box_file, shard=Shard(index, 2))
    shards = sorted(tmp_path.glob("out.shard-*-of-00002.h5"))
    merged = merge_outputs(shards, output)
    assert merged.images == 4 and merged.failed == 2 and not merged.missing
    for record in read_features(output):
        assert_record_equals(record, described[record.image_id])

    other = tmp_path / "other" / "out.h5"
    other.parent.mkdir()
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps({**given_boxes, "rgb_00": [[1.0, 1.0, 9.0, 9.0]]}))
    extract_in_process(model_folder, other, [listing], boxes_from=changed, shard=Shard(1, 2))
    with pytest.raises(ExtractionError, match="different settings"):
        merge_outputs([shards[0], other.with_name("out.shard-00001-of-00002.h5")], tmp_path / "mixed.h5")


# ---------------------------------------------------------------------------------------------------------------
# Class distributions
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(model_folder, images) -> dict[str, dict]:
    """The model's 10 best regions of each image (uniter-npz writes the MAX best: with 10-10 the same regions)."""
    return direct_outputs(model_folder, images, min_boxes=10, max_boxes=10)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("format", list(PROBS_FORMATS))
def test_class_distributions_in_every_format_that_has_room(format, dtype, model_folder, listing, reference, tmp_path):
    output = tmp_path / PROBS_FORMATS[format]
    options = {"format": format, "min_boxes": 10, "max_boxes": 10, "save_class_probs": True}
    extract_in_process(model_folder, output, [listing], **options, probs_dtype=dtype)
    records = {record.image_id: record for record in read_features(output)}
    assert sorted(records) == sorted(reference)
    for image_id, record in records.items():
        expected = reference[image_id]
        order = np.argsort(-expected["max_conf"], kind="stable") if format == "uniter-npz" else slice(None)
        for key in ("cls_prob", "attr_prob"):
            array = getattr(record, key)
            assert array.dtype == np.dtype(dtype), key
            assert np.array_equal(array, expected[key][order].astype(dtype)), f"{image_id}: {key}"
    assert RunManifest.load(output).class_probs == dtype
    other = "float16" if dtype == "float32" else "float32"
    with pytest.raises(ExtractionError, match="'class_probs'"):
        extract_in_process(model_folder, output, [listing], **options, probs_dtype=other, resume=True)
    if format != "uniter-npz":  # its soft labels are always there; the flag adds attr_prob
        without = tmp_path / f"without_{PROBS_FORMATS[format]}"
        extract_in_process(model_folder, without, [listing], format=format)
        assert next(read_features(without)).cls_prob is None


def test_the_hdf5_spool_keeps_class_distributions_across_an_interruption(tmp_path):
    rng = np.random.RandomState(0)
    records = [
        RegionRecord(
            image_id=f"img{i}",
            image_h=30,
            image_w=40,
            boxes=rng.rand(3, 4).astype(np.float32),
            features=rng.rand(3, 8).astype(np.float32),
            objects=rng.randint(0, 1600, 3),
            objects_conf=rng.rand(3).astype(np.float32),
            attrs=rng.randint(0, 400, 3),
            attrs_conf=rng.rand(3).astype(np.float32),
            cls_prob=rng.rand(3, 1601).astype(np.float16),
            attr_prob=rng.rand(3, 401).astype(np.float16),
        )
        for i in range(3)
    ]
    path = tmp_path / "out.h5"
    writer = open_writer("hdf5", path, probs_dtype="float16")
    for record in records:
        writer.write(record)
    writer.commit()
    writer.abort()  # as a crash leaves it: the images are in the spool only
    assert spool_path(path).stat().st_size > 0
    resumed = open_writer("hdf5", path, resume=True, probs_dtype="float16")
    assert resumed.completed == ["img0", "img1", "img2"]
    resumed.close()
    for back, record in zip(read_features(path), records):
        for key in ("features", "cls_prob", "attr_prob"):
            assert np.array_equal(getattr(back, key), getattr(record, key)), key
            assert getattr(back, key).dtype == getattr(record, key).dtype, key


@pytest.mark.parametrize("format", ["butd-tsv", "lxmert-tsv"])
def test_tsv_formats_refuse_class_distributions(format, model_folder, listing, tmp_path):
    output = tmp_path / "out.tsv"
    with pytest.raises(ExtractionError, match=f"the {format} format has no room for class distributions.*hdf5"):
        extract_in_process(model_folder, output, [listing], format=format, save_class_probs=True)
    assert not output.exists()


def test_option_combinations_are_usage_errors(model_folder, listing, box_file, tmp_path):
    for extra, message in (
        (["--probs-dtype", "float16"], "--probs-dtype goes with --save-class-probs"),
        (["--boxes-from", box_file, "--boxes", "36"], "with --boxes-from every given box is one"),
    ):
        completed = run_cli(*extract_args(model_folder, tmp_path / "out.h5", *extra), listing, check=False)
        assert completed.returncode == 2 and message in completed.stderr


# ---------------------------------------------------------------------------------------------------------------
# UNITER-ready files
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uniter_and_selected(model_folder, listing, tmp_path_factory) -> tuple[Path, Path]:
    """The same MIN-MAX selection written as uniter-npz (by the CLI) and as plain npz."""
    root = tmp_path_factory.mktemp("uniter")
    selection = ("--boxes", f"{MIN_BB}-{MAX_BB}", "--score-threshold", str(CONF_TH))
    run_cli(*extract_args(model_folder, root / "uniter", "--format", "uniter-npz", *selection), listing)
    run_cli(*extract_args(model_folder, root / "selected", "--format", "npz", *selection), listing)
    return root / "uniter", root / "selected"


def test_uniter_files_hold_the_keys_uniter_reads(uniter_and_selected, reference):
    folder, _ = uniter_and_selected
    for image_id, expected in reference.items():
        with np.load(folder / f"{image_id}.npz") as data:
            arrays = {key: data[key] for key in data.files}
        assert sorted(arrays) == ["boxes", "conf", "features", "image_size", "norm_bb", "soft_labels"]
        assert all(array.ndim in (1, 2) for array in arrays.values()), "the converter refuses other arrays"
        count = len(arrays["conf"])
        assert count == MAX_BB, "the MAX best regions, for the converter to cut"
        assert arrays["features"].shape == (count, expected["features"].shape[1])
        assert arrays["norm_bb"].shape == (count, 6) and arrays["conf"].shape == (count, 1)
        assert arrays["soft_labels"].shape == (count, 1601) and arrays["image_size"].shape == (count, 2)
        for key in ("features", "norm_bb", "conf", "soft_labels"):
            assert arrays[key].dtype == np.float32, key
        assert arrays["boxes"].dtype == np.float64, "float32 values in a dtype the converter's float16 cast leaves"
        conf = arrays["conf"][:, 0]
        assert (np.diff(conf) <= 0).all(), "sorted by conf, highest first"
        assert np.array_equal(conf, np.sort(expected["max_conf"])[::-1][:count]), "the selection's max_conf"
        # each row is one region: its box, feature and class distribution come from the same model row
        rows = [int(np.flatnonzero((expected["boxes"] == box).all(axis=1))[0]) for box in arrays["boxes"]]
        assert np.array_equal(arrays["features"], expected["features"][rows])
        assert np.array_equal(arrays["soft_labels"], expected["cls_prob"][rows])
        assert (arrays["image_size"] == [expected["image_h"], expected["image_w"]]).all()
        height, width = expected["image_h"], expected["image_w"]
        x1, y1, x2, y2 = arrays["boxes"].T.astype(np.float64)
        np.testing.assert_allclose(
            arrays["norm_bb"],
            np.stack([x1 / width, y1 / height, x2 / width, y2 / height, (x2 - x1) / width, (y2 - y1) / height], 1),
            rtol=1e-6,
            atol=1e-7,
        )


def test_uniters_box_count_rule_keeps_the_regions_our_selection_keeps(uniter_and_selected):
    """UNITER's converter cuts each file to `min(max_bb, max(min_bb, (conf > conf_th).sum()))` rows; with its
    settings equal to ours, that keeps the regions our MIN-MAX selection keeps (every branch of the rule is seen)."""
    uniter, selected = uniter_and_selected
    branches = set()
    for path in sorted(selected.glob("*.npz")):
        with np.load(uniter / path.name) as data:
            conf, boxes = data["conf"], data["boxes"]
        passing = int((conf > CONF_TH).sum())
        kept = int(min(MAX_BB, max(MIN_BB, passing)))
        branches.add("min" if passing < MIN_BB else "max" if passing == MAX_BB else "threshold")
        with np.load(path) as ours:
            ours_boxes = ours["boxes"]
        assert kept == len(ours_boxes), path.stem
        assert sorted(map(tuple, boxes[:kept].tolist())) == sorted(map(tuple, ours_boxes.tolist())), path.stem
    assert branches == {"min", "threshold", "max"}


def test_uniter_files_read_back_and_give_their_boxes(uniter_and_selected, model_folder, listing, tmp_path):
    folder, _ = uniter_and_selected
    records = {record.image_id: record for record in read_features(folder)}
    assert sorted(records) == sorted(p.stem for p in folder.glob("*.npz"))
    again = tmp_path / "again.h5"
    extract_in_process(model_folder, again, [listing], boxes_from=folder)
    for record in read_features(again):
        assert np.array_equal(record.boxes, records[record.image_id].boxes)
    report = compare_files(folder, again)
    assert len(report.images) == len(records) and not report.only_in_a and not report.only_in_b
    for image in report.images:
        assert image.exact_boxes == 1.0 and image.same_order and image.cosine_min > 0.9999, image.image_id


def test_torchrun_given_boxes_into_uniter_files_merge_into_the_single_process_output(
    model_folder, listing, box_file, tmp_path
):
    single = tmp_path / "single"
    extract_in_process(model_folder, single, [listing], format="uniter-npz", boxes_from=box_file)
    merged = tmp_path / "torchrun" / "features"
    completed = run_torchrun(
        *extract_args(model_folder, merged, "--format", "uniter-npz", "--boxes-from", box_file), listing
    )
    assert completed.returncode == 0, completed.stderr
    assert "Merged 2 shards" in completed.stdout and "2 images of" in completed.stdout
    assert sorted(errors_by_id(merged)) == ["rgb_11", "rgb_15"]
    names = sorted(path.name for path in single.glob("*.npz"))
    assert names == sorted(path.name for path in merged.glob("*.npz")) and len(names) == 4
    for name in names:
        with np.load(single / name) as one, np.load(merged / name) as two:
            assert one.files == two.files
            for key in one.files:
                assert np.array_equal(one[key], two[key]), f"{name}: {key}"


# Given boxes in UNITER's files: its grounding and VCR data find a target as the k-th row of the image's boxes
# (data/re.py: `target = img['ann_ids'].index(ann_id)`), so row k must be the k-th given box in every format.
ORDER_FORMATS = {"butd-tsv": "out.tsv", "lxmert-tsv": "out.tsv", "hdf5": "out.h5", "npz": "out", "parquet": "out",
                 "uniter-npz": "out"}  # fmt: skip


@pytest.fixture(scope="module")
def many_given_boxes(images) -> dict[str, np.ndarray]:
    """Twelve boxes per image (as VCR and RefCOCO images bring), in an order that is not their conf order."""
    rng = np.random.default_rng(7)
    boxes = {}
    for image_id in ("rgb_00", "rgb_17"):
        with Image.open(images[image_id]) as image:
            width, height = image.size
        x1 = rng.integers(0, width // 2, 12).astype(np.float32)
        y1 = rng.integers(0, height // 2, 12).astype(np.float32)
        x2 = x1 + rng.integers(4, width // 2, 12) + 0.5  # half pixels: exact in float32, not an integer cast
        y2 = y1 + rng.integers(4, height // 2, 12) + 0.25
        boxes[image_id] = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
    return boxes


@pytest.fixture(scope="module")
def many_described(model_folder, images, many_given_boxes) -> dict[str, dict]:
    described = direct_outputs(model_folder, {i: images[i] for i in many_given_boxes}, boxes=many_given_boxes)
    conf_sorted = [
        np.array_equal(np.argsort(-d["max_conf"], kind="stable"), np.arange(12)) for d in described.values()
    ]
    assert not any(conf_sorted), "the given order must differ from the conf order, or the test proves nothing"
    return described


def uniter_converter_dump(path: Path, conf_th: float = -1, max_bb: int = 100, min_bb: int = 10) -> dict:
    """What UNITER's `scripts/convert_imgdir.py` stores for one file (its `load_npz`, from reading its code): the
    count `min(max_bb, max(min_bb, (conf > conf_th).sum()))`, every float32 array cast to float16, every key cut to
    that many rows, anything but 1-d and 2-d arrays refused."""
    with np.load(path, allow_pickle=True) as data:
        count = int(min(max_bb, max(min_bb, (data["conf"] > conf_th).sum())))
        dump = {}
        for key in data.files:
            array = data[key]
            array = array.astype(np.float16) if array.dtype == np.float32 else array
            assert array.ndim in (1, 2), f"{path}: the converter refuses {key} ({array.ndim}-d) as corrupted"
            dump[key] = array[:count]
    return dump


def uniter_grounding_rows(dump: dict, ann_ids: list, num_bb: int = 100) -> dict:
    """UNITER's reading of a `--conf_th -1` database (data/data.py `DetectFeatLmdb` with `num_bb` rows per image,
    `_get_img_feat`) and its grounding data (data/re.py): the feature and position rows, the target row of each
    annotation, and the eval's boxes (`x1 * w, y1 * h, bw * w, bh * h` from the position columns)."""
    features = torch.tensor(dump["features"][:num_bb]).float()
    norm_bb = torch.tensor(dump["norm_bb"][:num_bb]).float()
    position = torch.cat([norm_bb, norm_bb[:, 4:5] * norm_bb[:, 5:]], dim=-1)
    assert len(ann_ids) == features.size(0), "UNITER's grounding dataset asserts one row per annotation"
    return {"features": features, "position": position, "targets": [ann_ids.index(ann) for ann in ann_ids]}


def plain_read_parquet(folder: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    table = pq.read_table(sorted(folder.glob("*.parquet")))
    return {row["image_id"]: {"boxes": np.array(row["boxes"], np.float32),
                              "features": np.array(row["features"], np.float32)} for row in table.to_pylist()}  # fmt: skip


PLAIN_READERS = {"butd-tsv": plain_read_butd_tsv, "lxmert-tsv": plain_read_lxmert_tsv, "hdf5": plain_read_hdf5,
                 "npz": plain_read_npz, "parquet": plain_read_parquet}  # fmt: skip


@pytest.mark.parametrize("format", list(ORDER_FORMATS))
def test_row_k_is_the_kth_given_box_in_every_format_as_its_readers_read_it(
    format, model_folder, images, many_given_boxes, many_described, tmp_path
):
    box_file = tmp_path / "boxes.json"
    box_file.write_text(json.dumps({image_id: boxes.tolist() for image_id, boxes in many_given_boxes.items()}))
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"{image_id}\t{images[image_id]}\n" for image_id in many_given_boxes))
    output = tmp_path / ORDER_FORMATS[format]
    summary = extract_in_process(model_folder, output, [listing], format=format, boxes_from=box_file)
    assert summary.extracted == 2 and summary.failed == 0
    for image_id, given in many_given_boxes.items():
        expected = many_described[image_id]
        if format != "uniter-npz":
            row = PLAIN_READERS[format](output)[image_id]
            assert np.array_equal(row["boxes"], given), f"{format} {image_id}: rows are not in the given order"
            assert np.array_equal(row["features"], expected["features"]), f"{format} {image_id}"
            continue
        # UNITER: the converter's recipe for given boxes, `--conf_th -1 --num_bb 100`, then its grounding reader
        dump = uniter_converter_dump(output / f"{image_id}.npz", conf_th=-1, max_bb=100, min_bb=10)
        ann_ids = [1000 + k for k in range(len(given))]  # the image's annotations, in the order given
        read = uniter_grounding_rows(dump, ann_ids, num_bb=100)
        assert read["targets"] == list(range(len(given)))
        for k, target in enumerate(read["targets"]):
            assert torch.equal(read["features"][target], torch.tensor(expected["features"][k]).half().float()), k
        height, width = expected["image_h"], expected["image_w"]
        eval_boxes = read["position"][:, :4] * torch.tensor([width, height, width, height])
        eval_boxes[:, 2:] = read["position"][:, 4:6] * torch.tensor([width, height])
        x1, y1, x2, y2 = torch.tensor(given, dtype=torch.float64).T
        wanted = torch.stack([x1, y1, x2 - x1, y2 - y1], dim=1).float()
        torch.testing.assert_close(eval_boxes, wanted, rtol=2e-3, atol=0.1)  # float16 positions
        # the extra keys reach the database exact: the cast to float16 leaves them alone
        assert dump["boxes"].dtype == np.float64 and np.array_equal(dump["boxes"], given)
        assert dump["image_size"].dtype == np.int64 and (dump["image_size"] == [height, width]).all()
        assert {"features", "norm_bb", "conf", "soft_labels"} <= set(dump)
