"""`butd-frcnn extract --dataset` and `--format parquet`: small `datasets` datasets built here (a Parquet file with an
Image column, a save_to_disk folder, an imagefolder, a Hub dataset in the datasets cache), extracted by the CLI and
in process, read back by `datasets`, pandas and pyarrow, and compared with the model's own outputs on the same
image files. Pushing runs against a stand-in of the Hub client, never the network."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from dataset_helpers import (
    BAD_IMAGES,
    GOOD_IMAGES,
    ODD_ROWS,
    FakeHub,
    bomb_png,
    cache_as_hub_dataset,
    image_dataset,
    image_files,
    read_with_datasets,
    read_with_pandas,
    read_with_pyarrow,
    small_png,
    write_imagefolder,
    write_parquet_dataset,
)
from extraction_helpers import (
    TEST_MAX_PIXELS,
    assert_rows_equal,
    cli_env,
    direct_outputs,
    make_image_folder,
    run_cli,
    run_cli_process,
    run_torchrun,
    save_test_model,
    start_cli_process,
)
from huggingface_hub import DatasetCard

from butd_frcnn.extraction import ExtractionError, ExtractOptions, extract, push_features, read_features
from butd_frcnn.extraction.decoding import decode_image_bytes
from butd_frcnn.extraction.formats import detect_format, open_source, open_writer
from butd_frcnn.extraction.records import RegionRecord
from butd_frcnn.extraction.sharding import Shard
from butd_frcnn.extraction.sidecars import manifest_path
from butd_frcnn.image_processing_butd_frcnn import ImageDecodeError, load_image_bgr

ROW_KEYS = ("image_h", "image_w", "boxes", "features", "objects", "objects_conf", "attrs", "attrs_conf")
SMALL_SHARD_MB = "0.05"  # ~ 5 images of the test model per Parquet shard


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, shared_dir) -> Path:
    return save_test_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[dict[str, Path], dict[str, Path]]:
    """(good, bad): the image files of the tests by id."""
    root = tmp_path_factory.mktemp("images")
    make_image_folder(root)
    return image_files(root, GOOD_IMAGES), image_files(root, BAD_IMAGES)


@pytest.fixture(scope="module")
def reference(model_folder, files) -> dict[str, dict]:
    """The model's own outputs on the good image files, one at a time."""
    outputs = direct_outputs(model_folder, files[0])
    return {image_id: {key: row[key] for key in ROW_KEYS} for image_id, row in outputs.items()}


@pytest.fixture(scope="module")
def parquet_input(files, tmp_path_factory) -> Path:
    """A folder of two Parquet files with an Image column (every good and bad image, two odd rows)."""
    good, bad = files
    return write_parquet_dataset(tmp_path_factory.mktemp("input") / "parquet", {**good, **bad})


@pytest.fixture(scope="module")
def parquet_output(model_folder, parquet_input, tmp_path_factory):
    """The CLI run over the Parquet dataset into a Parquet output of small shards: (output, completed process)."""
    output = tmp_path_factory.mktemp("extracted") / "features"
    completed = run_cli(
        *extract_args(model_folder, output, "--format", "parquet", "--parquet-shard-mb", SMALL_SHARD_MB),
        "--dataset", f"{parquet_input}/*.parquet", "--id-column", "name", "--num-workers", "1",
    )  # fmt: skip
    return output, completed


def extract_args(model_folder, output, *extra) -> list:
    return ["extract", "--model", model_folder, "--output", output, "--max-pixels", TEST_MAX_PIXELS, "--no-progress",
            *extra]  # fmt: skip


def extract_in_process(model_folder: Path, output: Path, **options):
    defaults = {"num_workers": 0, "max_pixels": TEST_MAX_PIXELS, "progress": False, "format": "parquet"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CLI runs get: same thread count, same bits
    try:
        return extract(ExtractOptions(model=str(model_folder), output=output, **{**defaults, **options}))
    finally:
        torch.set_num_threads(threads)


def errors_by_id(output: Path) -> dict[str, tuple[str, str]]:
    lines = Path(f"{output}.errors.tsv").read_text().splitlines()
    return {image_id: (where, reason) for image_id, where, reason in (line.split("\t") for line in lines)}


def record_bytes(record: RegionRecord) -> int:
    return sum(getattr(record, key).nbytes for key in ROW_KEYS[2:])


def our_rows(output: Path) -> dict[str, dict]:
    return {r.image_id: {key: getattr(r, key) for key in ROW_KEYS} for r in read_features(output)}


# ---------------------------------------------------------------------------------------------------------------
# Decoding: bytes from a dataset give the pixels of the file that holds them
# ---------------------------------------------------------------------------------------------------------------


def test_image_bytes_decode_to_the_pixels_of_the_file(tmp_path):
    root = tmp_path / "images"
    good, bad = make_image_folder(root)
    for image_id, path in {**good, **image_files(root, set(bad) - {"vanished"})}.items():
        for exif in (True, False):
            try:
                expected = load_image_bgr(path, exif, max_pixels=TEST_MAX_PIXELS)
            except ImageDecodeError as error:
                with pytest.raises(type(error)):
                    decode_image_bytes(path.read_bytes(), exif, max_pixels=TEST_MAX_PIXELS)
                continue
            decoded = decode_image_bytes(path.read_bytes(), exif, max_pixels=TEST_MAX_PIXELS)
            assert decoded.dtype == np.uint8 and np.array_equal(decoded, expected), image_id
    assert len(good) > 30


# ---------------------------------------------------------------------------------------------------------------
# A Parquet dataset in, a Parquet feature dataset out
# ---------------------------------------------------------------------------------------------------------------


def test_a_parquet_dataset_gives_the_features_of_its_image_files(parquet_output, files, reference):
    output, completed = parquet_output
    good, bad = files
    assert f"{len(good)} images extracted" in completed.stdout
    assert f"failed {len(bad) + len(ODD_ROWS)}" in completed.stdout
    assert_rows_equal(our_rows(output), reference)  # bit for bit: same pixels, same model, same thread count

    errors = errors_by_id(output)
    assert sorted(errors) == sorted([*bad, *ODD_ROWS])
    assert "empty" in errors["empty"][1] and "decompression bomb" in errors["bomb"][1]
    assert "truncated" in errors["truncated"][1] and "no region" in errors["one_pixel"][1]
    for image_id, words in ODD_ROWS.items():
        where, reason = errors[image_id]
        assert words in reason and "row" in where and where in reason, errors[image_id]
    assert "(empty.jpg)" in errors["empty"][0], "the row's own file name is shown"


def test_the_parquet_output_loads_with_datasets_pandas_and_pyarrow(parquet_output, reference):
    output, _ = parquet_output
    shards = sorted(output.glob("*.parquet"))
    assert len(shards) >= 3, "small shards: several files"
    bound, row_group = float(SMALL_SHARD_MB) * 2**20, float(SMALL_SHARD_MB) * 2**20 / 4
    sizes = [sum(record_bytes(record) for record in read_features(shard)) for shard in shards]
    assert all(size >= bound for size in sizes[:-1]), "a shard is closed once it holds its size"
    assert all(size < bound + row_group + 20_000 for size in sizes), "by at most a row group and an image more"
    assert not list(output.glob(".*")), "no temporary left"

    for kind in ("numpy", "torch"):
        assert_rows_equal(read_with_datasets(output, kind), reference)
    assert_rows_equal(read_with_datasets(output, "numpy", by_folder=True), reference)
    streamed = read_with_datasets(output, "numpy", streaming=True)
    assert_rows_equal(streamed, reference)
    loaded = datasets.load_dataset("parquet", data_dir=str(output), split="train")
    assert loaded.features["features"] == datasets.List(datasets.List(datasets.Value("float32"), length=256))
    assert loaded.features["boxes"] == datasets.List(datasets.List(datasets.Value("float32"), length=4))
    assert loaded.features["objects"] == datasets.List(datasets.Value("int64"))
    batch = loaded.with_format("numpy")[:2]["features"]
    assert [row.shape[1] for row in batch] == [256, 256]

    for reader in (read_with_pandas, read_with_pyarrow):
        assert_rows_equal(reader(output), reference)


def test_read_features_compare_and_random_access_read_parquet(parquet_output, model_folder, files, tmp_path):
    output, _ = parquet_output
    assert detect_format(output).name == "parquet" and detect_format(min(output.glob("*.parquet"))).name == "parquet"
    records = list(read_features(output))
    with open_source(output) as source:
        assert source.ids == [record.image_id for record in records]
        for image_id in reversed(source.ids):  # against file order: each get reads its row group
            record = source.get(image_id)
            assert np.array_equal(record.features, records[source.ids.index(image_id)].features)

    npz = tmp_path / "features"  # the same images from their files, into npz: compare says they are identical
    extract_in_process(model_folder, npz, inputs=[str(path) for path in files[0].values()], format="npz")
    completed = run_cli("compare", output, npz, "--no-progress")
    assert f"compared {len(files[0])} images; {len(files[0])} identical" in completed.stdout
    assert "PASS" in completed.stdout


# ---------------------------------------------------------------------------------------------------------------
# The other kinds of dataset: save_to_disk, imagefolder, a Hub dataset from the cache
# ---------------------------------------------------------------------------------------------------------------


def test_a_save_to_disk_folder_with_splits(model_folder, files, reference, tmp_path):
    good, _ = files
    saved = tmp_path / "saved"
    dataset = image_dataset(good, odd_rows=False)
    datasets.DatasetDict({"train": dataset, "test": dataset.select(range(3))}).save_to_disk(str(saved))

    with pytest.raises(ExtractionError, match=r"has the splits \['train', 'test'\]: choose one with --split"):
        extract_in_process(model_folder, tmp_path / "none", dataset=str(saved))
    summary = extract_in_process(model_folder, tmp_path / "test", dataset=str(saved), split="test", id_column="name")
    assert summary.extracted == 3 and summary.listed == 3
    expected = {image_id: reference[image_id] for image_id in list(good)[:3]}
    assert_rows_equal(our_rows(tmp_path / "test"), expected)

    # the same dataset as a Python object, in shards of the rows
    for index in (0, 1):
        extract_in_process(model_folder, tmp_path / "rows.h5", dataset=dataset, format="hdf5", shard=Shard(index, 2))
    merged = run_cli("merge", "--output", tmp_path / "rows.h5")
    assert f"{len(good)} images" in merged.stdout
    by_row = {str(row): reference[image_id] for row, image_id in enumerate(good)}
    assert_rows_equal(our_rows(tmp_path / "rows.h5"), by_row)  # ids: the row numbers


def test_an_imagefolder_reads_the_files_and_names_them_in_errors(model_folder, files, reference, tmp_path):
    good, bad = files
    copies = write_imagefolder(tmp_path / "folder", {**dict(list(good.items())[:4]), "truncated": bad["truncated"]})
    output = tmp_path / "features"
    summary = extract_in_process(model_folder, output, dataset=str(tmp_path / "folder"))
    assert summary.extracted == 4 and summary.failed == 1
    listing = datasets.load_dataset(str(tmp_path / "folder"), split="train")
    listing = listing.cast_column("image", datasets.Image(decode=False))
    path_of_row = {str(row): Path(item["image"]["path"]) for row, item in enumerate(listing)}
    id_of_path = {path: image_id for image_id, path in copies.items()}
    rows = our_rows(output)
    assert_rows_equal(rows, {row: reference[id_of_path[path_of_row[row]]] for row in rows})
    [(failed_row, (where, reason))] = errors_by_id(output).items()
    assert Path(where) == copies["truncated"] == path_of_row[failed_row] and "truncated" in reason


def test_a_hub_dataset_from_the_cache_offline(model_folder, files, reference, tmp_path):
    good, _ = files
    cache = tmp_path / "datasets-cache"
    cache_as_hub_dataset(image_dataset(dict(list(good.items())[:3]), odd_rows=False), cache, "someone/pictures")
    env = {"HF_DATASETS_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    output = tmp_path / "features"
    args = extract_args(model_folder, output, "--format", "parquet", "--num-workers", "0", "--id-column", "name")
    run_cli_process(*args, "--dataset", "someone/pictures", env=env)  # datasets reads its cache folder at import
    assert_rows_equal(our_rows(output), {image_id: reference[image_id] for image_id in list(good)[:3]})

    missing = run_cli_process(*args, "--dataset", "someone/elsewhere", "--overwrite", env=env, check=False)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "not in the datasets cache" in missing.stderr and "HF_HUB_OFFLINE=1" in missing.stderr


# ---------------------------------------------------------------------------------------------------------------
# Listing problems: before any work
# ---------------------------------------------------------------------------------------------------------------


def test_listing_problems_stop_the_run_before_any_work(model_folder, files, tmp_path):
    good, _ = files
    dataset = image_dataset(dict(list(good.items())[:3]), odd_rows=False)
    twice = datasets.concatenate_datasets([dataset, dataset.select([1])])
    output = tmp_path / "features"
    with pytest.raises(ExtractionError, match=r"'rgb_01': <Dataset> row 1, <Dataset> row 3\. Name another --id-colu"):
        extract_in_process(model_folder, output, dataset=twice, id_column="name")
    with pytest.raises(ExtractionError, match=r"--id-column nom: <Dataset> has the columns \['image', 'name', 'lab"):
        extract_in_process(model_folder, output, dataset=dataset, id_column="nom")
    with pytest.raises(ExtractionError, match="no such file or folder"):
        extract_in_process(model_folder, output, dataset=str(tmp_path / "nothing/here"))
    with pytest.raises(ExtractionError, match=r"has no Image column: choose one of \['name', 'label'\]"):
        extract_in_process(model_folder, output, dataset=dataset.remove_columns("image"))
    assert not output.exists() and not Path(f"{output}.manifest.json").exists()

    from butd_frcnn.cli import main

    image = str(next(iter(good.values())))
    assert main(["extract", "--model", "m", "-o", "o", image, "--dataset", "d"]) == 2
    assert main(["extract", "--model", "m", "-o", "o", image, "--split", "train"]) == 2
    assert main(["extract", "--model", "m", "-o", "o.tsv", image, "--push-to-hub", "org/x"]) == 2


def test_damaged_data_is_a_clear_error(model_folder, parquet_input, tmp_path):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for path in sorted(parquet_input.glob("*.parquet")):
        (damaged / path.name).write_bytes(path.read_bytes())
    last = max(damaged.glob("*.parquet"))
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(ExtractionError, match=r"damaged\[train\]: reading the data failed: .*then rerun with --res"):
        extract_in_process(model_folder, tmp_path / "features", dataset=str(damaged), id_column="name")


def test_a_non_image_column_sends_every_row_to_the_errors_file(model_folder, files, tmp_path):
    good, _ = files
    output = tmp_path / "features"
    dataset = image_dataset(dict(list(good.items())[:2]))
    summary = extract_in_process(model_folder, output, dataset=dataset, image_column="label")
    assert summary.extracted == 0 and summary.failed == 4
    assert all(
        "the image column holds int values, not images" in reason for _, reason in errors_by_id(output).values()
    )


# ---------------------------------------------------------------------------------------------------------------
# Crash safety, resume, shards
# ---------------------------------------------------------------------------------------------------------------


def test_sigkill_loses_at_most_the_shard_in_progress_and_resume_finishes(
    model_folder, parquet_input, files, reference, tmp_path
):
    good, bad = files
    output = tmp_path / "features"
    args = [*extract_args(model_folder, output, "--format", "parquet", "--parquet-shard-mb", SMALL_SHARD_MB,
                          "--num-workers", "1"), "--dataset", str(parquet_input), "--id-column", "name"]  # fmt: skip
    process = start_cli_process(*args)  # a process: the point is a signal
    deadline = time.monotonic() + 300
    while not (output.exists() and list(output.glob("*.parquet"))) and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        time.sleep(0.02)
    while not list(output.glob(".*.tmp-*")) and process.poll() is None:  # the next shard is being written
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL

    partial = read_with_pyarrow(output)  # every visible shard is complete
    assert 0 < len(partial) < len(good)
    assert_rows_equal(partial, {image_id: reference[image_id] for image_id in partial})
    assert list(output.glob(".*.tmp-*")), "the shard in progress was left behind, hidden"

    resumed = run_cli(*args, "--resume")
    assert f"already done {len(partial)}" in resumed.stdout
    assert "removed 1 unfinished shards" in resumed.stderr
    assert_rows_equal(read_with_datasets(output), reference)
    assert not list(output.glob(".*"))
    assert sorted(errors_by_id(output)) == sorted([*bad, *ODD_ROWS])


def test_dataset_shards_merge_into_one_parquet_dataset(model_folder, parquet_input, files, reference, tmp_path):
    good, bad = files
    output = tmp_path / "features"
    args = extract_args(model_folder, output, "--format", "parquet", "--parquet-shard-mb", SMALL_SHARD_MB)
    run_cli(*args, "--dataset", str(parquet_input), "--id-column", "name", "--shard", "0/2", "--num-workers", "0")
    extract_in_process(model_folder, output, dataset=str(parquet_input), id_column="name", shard=Shard(1, 2),
                       parquet_shard_mb=float(SMALL_SHARD_MB))  # fmt: skip
    merged = run_cli("merge", "--output", output)
    assert f"{len(good)} images" in merged.stdout and f"{len(bad) + len(ODD_ROWS)} images had failed" in merged.stdout
    assert_rows_equal(read_with_datasets(output), reference)
    names = sorted(path.name for path in output.glob("*.parquet"))
    assert names == [f"train-{index:05d}.parquet" for index in range(len(names))]


def test_torchrun_shards_merge_then_push(model_folder, files, reference, tmp_path):
    """Two ranks over a save_to_disk dataset: rank 0 merges the Parquet shards, then pushes (offline here: the push
    fails after the merged output is complete)."""
    good, _ = files
    saved = tmp_path / "saved"
    image_dataset(dict(list(good.items())[:4]), odd_rows=False).save_to_disk(str(saved))
    output = tmp_path / "features"
    args = extract_args(model_folder, output, "--format", "parquet", "--num-workers", "0", "--dataset", saved,
                        "--id-column", "name", "--push-to-hub", "org/features")  # fmt: skip
    completed = run_torchrun(*args, env={"HF_TOKEN": "hf_not_a_token"})
    assert "Merged 2 shards: 4 images" in completed.stdout, completed.stderr
    assert completed.returncode != 0 and "offline mode is enabled" in completed.stderr
    assert_rows_equal(read_with_datasets(output), {image_id: reference[image_id] for image_id in list(good)[:4]})


# ---------------------------------------------------------------------------------------------------------------
# Streaming: rows are read as the workers need them, memory stays flat
# ---------------------------------------------------------------------------------------------------------------


def test_rows_are_fetched_lazily():
    from butd_frcnn.extraction.dataset_input import ROWS_PER_READ, DatasetSource

    produced = []

    def rows():
        for index in range(2000):
            produced.append(index)
            yield {"image": small_png(index % 256), "name": f"image-{index}"}

    source = DatasetSource(datasets.IterableDataset.from_generator(rows), image_column="image")
    assert source.image_ids() == [str(index) for index in range(2000)]  # no id column: the rows are counted
    produced.clear()
    images = source.images(range(0, 2000, 7))
    assert produced == [], "nothing is read before the first image is asked for"
    first = next(images)
    assert first.image_id == "0" and first.data == small_png(0)
    assert len(produced) <= 2 * ROWS_PER_READ, "the first image needs only the first rows"
    assert [next(images).image_id for _ in range(3)] == ["7", "14", "21"]


STREAMING_SCRIPT = """
import resource, sys, torch
import datasets
sys.path.insert(0, {tests!r})
from dataset_helpers import bomb_png
from butd_frcnn.extraction import ExtractOptions, extract
torch.set_num_threads(1)
ROWS, PAYLOAD = {rows}, {payload}

def rows():
    for index in range(ROWS):
        yield {{"image": bomb_png(index.to_bytes(4, "big") * (PAYLOAD // 4)), "name": f"image-{{index}}"}}

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
summary = extract(ExtractOptions(model={model!r}, output={output!r}, format="parquet", progress=False,
                                 dataset=datasets.IterableDataset.from_generator(rows), image_column="image",
                                 id_column="name", num_workers=1, max_pixels=50_000))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(summary.failed, before, after)
"""


def test_memory_stays_flat_while_a_large_dataset_streams(model_folder, tmp_path):
    """400 MB of images stream through the run (every one refused from its header, so no model work): the process
    grows by far less than that."""
    rows, payload = 4000, 100_000
    script = STREAMING_SCRIPT.format(tests=str(Path(__file__).parent), rows=rows, payload=payload,
                                     model=str(model_folder), output=str(tmp_path / "features"))  # fmt: skip
    completed = subprocess.run([sys.executable, "-c", script], env=cli_env(), capture_output=True, text=True,
                               check=False, timeout=600)  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    failed, before, after = (int(value) for value in completed.stdout.split()[-3:])
    assert failed == rows
    grown_mb = (after - before) / 1024  # ru_maxrss is in KiB on Linux
    assert grown_mb < 0.25 * rows * payload / 2**20, f"peak memory grew by {grown_mb:.0f} MB"
    assert len(bomb_png(b"x" * payload)) > payload


# ---------------------------------------------------------------------------------------------------------------
# The class distributions of the given-boxes runs, and records that do not fit
# ---------------------------------------------------------------------------------------------------------------


def _record(image_id: str, boxes: int, width: int = 8, dtype=np.float32, distributions: bool = True):
    rng = np.random.RandomState(len(image_id) + boxes)
    return RegionRecord(
        image_id=image_id, image_h=30, image_w=40,
        boxes=rng.uniform(0, 30, (boxes, 4)).astype(np.float32), features=rng.rand(boxes, width).astype(np.float32),
        objects=rng.randint(0, 1600, boxes), objects_conf=rng.rand(boxes).astype(np.float32),
        attrs=rng.randint(0, 400, boxes), attrs_conf=rng.rand(boxes).astype(np.float32),
        cls_prob=rng.rand(boxes, 1601).astype(dtype) if distributions else None,
        attr_prob=rng.rand(boxes, 401).astype(dtype) if distributions else None,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_class_distributions_are_columns_where_records_carry_them(dtype, tmp_path):
    records = [_record("a", 3, dtype=dtype), _record("bb", 5, dtype=dtype)]
    writer = open_writer("parquet", tmp_path / "out")
    for record in records:
        writer.write(record)
    writer.close()
    for back, record in zip(read_features(tmp_path / "out"), records):
        for key in ("boxes", "features", "objects", "attrs_conf", "cls_prob", "attr_prob"):
            assert (
                np.array_equal(getattr(back, key), getattr(record, key))
                and getattr(back, key).dtype == getattr(record, key).dtype
            ), key
    with open_source(tmp_path / "out") as source:
        assert source.get("bb").cls_prob.shape == (5, 1601)
    loaded = datasets.load_dataset(str(tmp_path / "out"), split="train")
    stored = datasets.Value(np.dtype(dtype).name)
    assert loaded.features["cls_prob"] == datasets.List(datasets.List(stored, length=1601))
    assert loaded.features["attr_prob"] == datasets.List(datasets.List(stored, length=401))
    as_numpy = loaded.with_format("numpy", dtype=dtype)  # datasets' numpy format gives float32 unless told
    assert as_numpy[1]["cls_prob"].shape == (5, 1601) and as_numpy[1]["cls_prob"].dtype == dtype
    assert np.array_equal(as_numpy[1]["cls_prob"], records[1].cls_prob)
    assert as_numpy[0]["attr_prob"].shape == (3, 401)

    plain = open_writer("parquet", tmp_path / "plain")
    plain.write(_record("a", 2, distributions=False))
    plain.close()
    assert "cls_prob" not in datasets.load_dataset(str(tmp_path / "plain"), split="train").features
    assert next(read_features(tmp_path / "plain")).cls_prob is None

    mixed = open_writer("parquet", tmp_path / "mixed")
    mixed.write(_record("a", 2))
    mixed.write(_record("b", 2, width=9))
    with pytest.raises(ExtractionError, match="image b: its arrays .* differ from those of the images already in"):
        mixed.close()


# ---------------------------------------------------------------------------------------------------------------
# Push to the Hub (a stand-in client; offline for real)
# ---------------------------------------------------------------------------------------------------------------


def test_push_uploads_the_shards_and_a_dataset_card(parquet_output, files, tmp_path):
    output, _ = parquet_output
    good, bad = files
    hub = FakeHub()
    url = push_features(output, "org/features", private=True, token="hf_test", api=hub,
                        command_line="butd-frcnn extract --dataset pictures")  # fmt: skip
    assert url == "https://huggingface.co/datasets/org/features/commit/abc"
    assert [call[0] for call in hub.calls] == ["create_repo", "upload_folder"]
    assert hub.calls[0][2] == {"token": "hf_test", "private": True, "repo_type": "dataset", "exist_ok": True}
    upload = hub.calls[1][2]
    assert upload["repo_type"] == "dataset" and upload["token"] == "hf_test"
    staged = Path(upload["folder_path"])
    assert staged.parent == output.parent and not staged.exists(), "staged beside the output, then removed"
    assert not (output / "README.md").exists(), "the output stays a folder of Parquet files"

    parsed = DatasetCard(hub.card)  # its YAML is what load_dataset and the dataset viewer read
    assert parsed.data.configs == [{"config_name": "default", "data_files": [{"split": "train", "path": "*.parquet"}]}]
    text = hub.card
    assert f"| images | {len(good)} |" in text and "(a local model folder)" in text
    assert "10 to 100 regions per image, score threshold 0.2, fp32" in text  # the precision, as --dtype names it
    assert "`butd-frcnn extract --dataset pictures`" in text
    assert f"{len(bad) + len(ODD_ROWS)} images could not be extracted" in text and "| garbage |" in text
    assert 'load_dataset("org/features", split="train")' in text

    failing = FakeHub(fail=OSError("connection refused"))
    with pytest.raises(ExtractionError, match=r"failed: connection refused\. The features in .* are complete"):
        push_features(output, "org/features", token="t", api=failing)
    assert not list(output.parent.glob(".*hub-upload*"))


def test_the_card_names_the_hub_models_revision(parquet_output, tmp_path, monkeypatch):
    import huggingface_hub

    from butd_frcnn.extraction.dataset_card import render_dataset_card
    from butd_frcnn.extraction.model_loading import model_revision

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "models--org--butd-frcnn" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--org--butd-frcnn" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--butd-frcnn" / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert model_revision("org/butd-frcnn") == commit  # the snapshot a Hub model was loaded from
    assert model_revision("org/not-cached") is None and model_revision(str(tmp_path)) is None

    output, _ = parquet_output  # as if extracted with that Hub model
    copy = tmp_path / "features"
    shutil.copytree(output, copy)
    manifest = json.loads(manifest_path(output).read_text())
    manifest_path(copy).write_text(json.dumps({**manifest, "model": "org/butd-frcnn"}))
    card = render_dataset_card(copy, "org/features", "butd-frcnn extract", model_revision("org/butd-frcnn"))
    assert f"[`org/butd-frcnn`](https://huggingface.co/org/butd-frcnn) at revision `{commit}`" in card


def test_cli_push_offline_fails_after_the_output_is_complete(model_folder, files, tmp_path):
    good, _ = files
    images = [str(path) for path in list(good.values())[:2]]
    output = tmp_path / "features"
    args = extract_args(model_folder, output, "--format", "parquet", "--num-workers", "0", "--push-to-hub", "org/f")
    # HF_HOME is read when huggingface_hub is imported: fresh processes
    no_token = run_cli_process(*args, *images, env={"HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": ""}, check=False)
    assert no_token.returncode == 1 and "no Hugging Face token found" in no_token.stderr
    assert not output.exists(), "a missing login is found before any work"

    offline = run_cli_process(*args, *images, env={"HF_TOKEN": "hf_not_a_token", "HF_HOME": str(tmp_path / "hf-home")},
                              check=False)  # fmt: skip
    assert offline.returncode == 1 and "Traceback" not in offline.stderr
    assert "2 images extracted" in offline.stdout
    assert "offline mode is enabled" in offline.stderr and "rerun this command with --resume" in offline.stderr
    assert len(read_with_pyarrow(output)) == 2


# ---------------------------------------------------------------------------------------------------------------
# Without the datasets extra
# ---------------------------------------------------------------------------------------------------------------


def test_without_datasets_the_error_says_what_to_install(tmp_path):
    blocked = tmp_path / "blocked"
    for module in ("datasets", "pyarrow"):
        (blocked / module).mkdir(parents=True)
        (blocked / module / "__init__.py").write_text(f"raise ImportError('no module named {module}')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(blocked), cli_env()["PYTHONPATH"]])}
    image = tmp_path / "x.png"
    image.write_bytes(small_png(3))
    for extra in (["--dataset", "some/thing", "--format", "npz"], ["--format", "parquet", str(image)]):
        completed = run_cli_process("extract", "--model", "m", "-o", tmp_path / "out", *extra, env=env, check=False)
        assert completed.returncode == 1 and "Traceback" not in completed.stderr, completed.stderr
        assert "pip install 'butd-frcnn[datasets]'" in completed.stderr
