"""Shards that read only their share of a Parquet dataset (its files or row groups), and WebDataset tars as
`--dataset`: the union of the shards is the 1-shard run, image for image and failure for failure; a shard never
reads the other shards' data (it is destroyed here and the shard does not notice); broken samples go to the errors
file, a damaged tar is one line."""

import io
import json
import re
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from dataset_helpers import BAD_IMAGES, GOOD_IMAGES, image_dataset, image_files
from extraction_helpers import assert_rows_equal, make_image_folder, run_cli, save_test_model
from test_datasets import errors_by_id, extract_args, extract_in_process, our_rows

from butd_frcnn.extraction import ExtractionError, merge_outputs
from butd_frcnn.extraction.parquet_shards import ParquetShardSource, parquet_files
from butd_frcnn.extraction.sharding import Shard, all_shard_paths
from butd_frcnn.extraction.webdataset_input import WebDatasetSource


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, shared_dir) -> Path:
    return save_test_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Good and bad image files by id."""
    root = tmp_path_factory.mktemp("images")
    make_image_folder(root)
    return {**image_files(root, GOOD_IMAGES[:8]), **image_files(root, BAD_IMAGES[:3])}


def write_parquet_files(folder: Path, files: dict[str, Path], count: int, rows_per_group: int) -> list[Path]:
    """The files' dataset (with two rows without a usable image) as `count` Parquet files of small row groups."""
    dataset = image_dataset(files)
    folder.mkdir(parents=True)
    paths = []
    for index in range(count):
        path = folder / f"part-{index:02d}.parquet"
        dataset.shard(count, index, contiguous=True).to_parquet(str(path), batch_size=rows_per_group)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def whole(model_folder, files, tmp_path_factory) -> tuple[Path, Path]:
    """(input folder, 1-shard output): a Parquet dataset of 4 files, extracted as one shard by the CLI's path."""
    folder = tmp_path_factory.mktemp("input") / "parquet"
    write_parquet_files(folder, files, 4, rows_per_group=2)
    output = tmp_path_factory.mktemp("whole") / "features"
    extract_in_process(model_folder, output, dataset=str(folder))
    return folder, output


def shard_outputs(model_folder, dataset: str, output: Path, count: int, **options) -> list[Path]:
    for index in range(count):
        extract_in_process(model_folder, output, dataset=dataset, shard=Shard(index, count), **options)
    return all_shard_paths(output, count)


def union(outputs: list[Path]) -> tuple[dict, dict]:
    """(rows by id, errors by id) over the shards, every id once."""
    rows, errors = {}, {}
    for output in outputs:
        part = our_rows(output)
        assert not set(part) & set(rows), "an image is in two shards"
        rows.update(part)
        failed = errors_by_id(output) if Path(f"{output}.errors.tsv").exists() else {}
        assert not set(failed) & set(errors)
        errors.update(failed)
    return rows, errors


def without_folder(errors: dict) -> dict:
    """Errors by id with the dataset's folder left out of the places and reasons (`row 10 (name.png): ...`)."""
    return {key: tuple(re.sub(r"^.*\[train\] ", "", text) for text in value) for key, value in errors.items()}


def destroy_data_pages(path: Path) -> None:
    """Overwrite everything of a Parquet file but its footer: reading any row of it fails, its metadata still reads."""
    data = bytearray(path.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    data[4 : len(data) - footer] = b"\xff" * (len(data) - footer - 4)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("count", [2, 4])
def test_shards_by_files_are_the_whole_run_and_read_only_their_files(model_folder, whole, tmp_path, count):
    folder, whole_output = whole
    files = sorted(folder.glob("*.parquet"))
    # each shard reads only its files: the data of the others is destroyed before it runs
    for index in range(count):
        copy = tmp_path / f"input-{index}"
        copy.mkdir()
        for number, path in enumerate(files):
            (copy / path.name).write_bytes(path.read_bytes())
            if number % count != index:
                destroy_data_pages(copy / path.name)
        source = ParquetShardSource("x", [str(p) for p in sorted(copy.glob("*.parquet"))], Shard(index, count),
                                    None, None)  # fmt: skip
        assert [unit.row_group for unit in source.units] == [None] * (len(files) // count)
        extract_in_process(model_folder, tmp_path / "features", dataset=str(copy), shard=Shard(index, count))
    rows, errors = union(all_shard_paths(tmp_path / "features", count))
    assert_rows_equal(rows, our_rows(whole_output))
    assert without_folder(errors) == without_folder(errors_by_id(whole_output))
    merged = merge_outputs(all_shard_paths(tmp_path / "features", count), tmp_path / "merged")
    assert not merged.missing
    assert_rows_equal(our_rows(tmp_path / "merged"), our_rows(whole_output))


def test_shards_by_row_groups_when_the_files_do_not_divide(model_folder, whole, tmp_path):
    folder, whole_output = whole
    files, split = parquet_files(str(folder), None)
    assert split == "train" and [Path(file).name for file in files] == [f"part-0{i}.parquet" for i in range(4)]
    groups = sum(pq.read_metadata(file).num_row_groups for file in files)
    source = ParquetShardSource("x", files, Shard(1, 3), None, None)
    assert len(source.units) == len(range(1, groups, 3)) and all(unit.row_group is not None for unit in source.units)
    outputs = shard_outputs(model_folder, f"{folder}/*.parquet", tmp_path / "features", 3)
    rows, errors = union(outputs)
    assert_rows_equal(rows, our_rows(whole_output))
    assert without_folder(errors) == without_folder(errors_by_id(whole_output))


def test_too_few_row_groups_fall_back_to_every_nth_row(model_folder, files, tmp_path):
    paths = write_parquet_files(tmp_path / "one", files, 1, rows_per_group=1000)
    source = ParquetShardSource("x", [str(paths[0])], Shard(0, 2), None, "name")
    assert source.by_rows
    assert source.image_ids() == image_dataset(files)["name"][::2]


def test_the_id_column_names_the_rows_of_a_share(whole):
    folder, _ = whole
    files, _ = parquet_files(str(folder), None)
    names = [pq.read_table(file, columns=["name"]).column("name").to_pylist() for file in files]
    shares = [ParquetShardSource("x", files, Shard(index, 2), None, "name").image_ids() for index in range(2)]
    assert shares == [names[0] + names[2], names[1] + names[3]]


# ---------------------------------------------------------------------------------------------------------------
# WebDataset tars
# ---------------------------------------------------------------------------------------------------------------


def add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def write_tars(folder: Path, files: dict[str, Path], count: int) -> list[Path]:
    """The files as `count` WebDataset tars (image + json per key), plus in the first tar a sample whose json is
    broken (its image the first file's), one whose image bytes are no image and one without an image."""
    folder.mkdir(parents=True, exist_ok=True)
    items = list(files.items())
    tars = []
    for index in range(count):
        path = folder / f"shard-{index:05d}.tar"
        with tarfile.open(path, "w") as archive:
            for key, image in items[index::count]:
                add_member(archive, f"{key}{image.suffix}", image.read_bytes())
                add_member(archive, f"{key}.json", json.dumps({"key": key}).encode())
            if index == 0:
                add_member(archive, "broken_json.png", items[0][1].read_bytes())
                add_member(archive, "broken_json.json", b"{not json")
                add_member(archive, "garbled.jpg", b"\xff\xd8 no jpeg at all" * 9)
                add_member(archive, "garbled.json", b"{}")
                add_member(archive, "caption_only.txt", b"a caption without its image")
        tars.append(path)
    return tars


def test_webdataset_tars_give_the_features_of_their_image_files(model_folder, files, tmp_path):
    tars = write_tars(tmp_path / "tars", files, 2)
    extract_in_process(model_folder, tmp_path / "from_files", inputs=[str(p) for p in files.values()])
    extract_in_process(model_folder, tmp_path / "from_tars", dataset=str(tmp_path / "tars"))
    expected = our_rows(tmp_path / "from_files")
    rows = our_rows(tmp_path / "from_tars")
    assert_rows_equal({key: rows[key] for key in expected}, expected)
    assert_rows_equal({"broken_json": rows["broken_json"]}, {"broken_json": expected[next(iter(files))]})
    errors = errors_by_id(tmp_path / "from_tars")
    assert set(errors) == {*BAD_IMAGES[:3], "garbled", "caption_only"}
    assert errors["garbled"][0] == f"{tars[0]} sample garbled"
    assert "not an image" in errors["garbled"][1]
    assert "no image member" in errors["caption_only"][1] and "txt" in errors["caption_only"][1]
    # two shards: one tar each, the same rows and failures between them
    outputs = shard_outputs(model_folder, str(tars[0].parent), tmp_path / "sharded", 2)
    shard_rows, shard_errors = union(outputs)
    assert_rows_equal(shard_rows, rows)
    assert shard_errors == errors
    assert WebDatasetSource(str(tars[0].parent), Shard(1, 2)).tars == [str(tars[1])]


@pytest.mark.parametrize("damage", ["garbled header", "truncated"])
def test_a_damaged_tar_is_one_line(model_folder, files, tmp_path, damage):
    tars = write_tars(tmp_path / "tars", files, 1)
    with tarfile.open(tars[0]) as archive:
        second, third = archive.getmembers()[1:3]
    data = tars[0].read_bytes()
    if damage == "truncated":
        data = data[: third.offset_data + 100]
    else:
        data = data[: third.offset] + b"\x01" * 512 + data[third.offset + 512 :]
    tars[0].write_bytes(data)
    completed = run_cli(*extract_args(model_folder, tmp_path / "out", "--format", "parquet"), "--dataset",
                        tars[0], check=False)  # fmt: skip
    assert completed.returncode == 1, completed.stdout
    assert "Traceback" not in completed.stderr
    last_read = (third if damage == "truncated" else second).name.split(".")[0]
    assert f"{tars[0]}: the tar is damaged after the sample {last_read}" in completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1, completed.stderr


def test_webdataset_samples_are_named_by_their_keys(model_folder, files, tmp_path):
    tars = write_tars(tmp_path / "tars", files, 1)
    with pytest.raises(ExtractionError, match="--id-column"):
        extract_in_process(model_folder, tmp_path / "x", dataset=str(tars[0]), id_column="name")
