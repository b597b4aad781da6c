"""Helpers of the dataset tests: small `datasets` datasets built from image files (a Parquet file with an Image
column, a save_to_disk folder, an imagefolder, a Hub dataset as the datasets cache holds it), a Hub stand-in, and
plain readers of the Parquet feature output (what downstream code does: datasets, pandas, pyarrow)."""

import io
import shutil
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

# the images of the dataset tests (a subset of make_image_folder's: every kind, a few plain ones, every decode error)
GOOD_IMAGES = (
    "rgb_00", "rgb_01", "rgb_06", "photo_0", "photo_1", "bitmap", "grey", "grey_alpha", "rgba", "palette", "bilevel",
    "cmyk", "sixteen_bit", "animated", "rotated",
)  # fmt: skip
BAD_IMAGES = ("empty", "truncated", "not_an_image", "bomb", "one_pixel")
# rows of the Parquet dataset that hold no usable image, and words of their reasons
ODD_ROWS = {"no_image": "no image", "garbage": "not an image"}


def image_files(folder: Path, names) -> dict[str, Path]:
    """The files of make_image_folder's images `names`, by id (file name without extension)."""
    found = {path.stem: path for path in folder.rglob("*") if path.is_file() and not path.is_symlink()}
    return {name: found[name] for name in names}


def image_dataset(files: dict[str, Path], odd_rows: bool = True):
    """A `datasets.Dataset` with an Image column holding each file's bytes, a `name` column (the ids) and an int
    `label` column; with `odd_rows`, also a row without an image and one whose bytes are no image."""
    import datasets

    images = [{"bytes": path.read_bytes(), "path": path.name} for path in files.values()]
    names = list(files)
    if odd_rows:
        images += [None, {"bytes": b"\x00garbage, not pixels" * 10, "path": None}]
        names += list(ODD_ROWS)
    features = datasets.Features(
        {"image": datasets.Image(), "name": datasets.Value("string"), "label": datasets.Value("int64")}
    )
    return datasets.Dataset.from_dict(
        {"image": images, "name": names, "label": list(range(len(names)))}, features=features
    )


def write_parquet_dataset(folder: Path, files: dict[str, Path], shards: int = 2) -> Path:
    """The dataset of `image_dataset` as Parquet files `part-*.parquet` in `folder` (what `to_parquet` writes)."""
    dataset = image_dataset(files)
    folder.mkdir(parents=True)
    for index in range(shards):
        dataset.shard(shards, index, contiguous=True).to_parquet(str(folder / f"part-{index}.parquet"))
    return folder


def write_imagefolder(folder: Path, files: dict[str, Path]) -> dict[str, Path]:
    """An imagefolder of two classes holding copies of `files`; returns the copies by id."""
    copies = {}
    for index, (image_id, path) in enumerate(files.items()):
        target = folder / ("cats" if index % 2 else "dogs") / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
        copies[image_id] = target
    return copies


def cache_as_hub_dataset(dataset, cache: Path, repo_id: str) -> None:
    """Put `dataset` into a datasets cache (`HF_DATASETS_CACHE`) as `load_dataset(repo_id)` leaves a Hub dataset
    there: `<org>___<name>/default/0.0.0/<hash>/<name>-train.arrow` with its `dataset_info.json`."""
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.parquet.parquet import Parquet

    source = cache.parent / "hub-source"
    source.mkdir(parents=True)
    dataset.to_parquet(str(source / "train.parquet"))
    org, name = repo_id.split("/")
    builder = Parquet(dataset_name=name, data_files=DataFilesDict.from_patterns({"train": [str(source / "*")]}))
    builder.download_and_prepare(output_dir=str(cache / f"{org}___{name}" / "default" / "0.0.0" / "0123abcd"))


def bomb_png(payload: bytes) -> bytes:
    """A PNG whose header claims 40000 x 40000 pixels (refused before decoding) followed by `payload`."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 40_000, 40_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", payload) + chunk(b"IEND", b"")


def small_png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 50, 3), value, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


class FakeHub:
    """Records what the push asks of the Hub (and the card it uploads); `fail` makes the upload raise."""

    def __init__(self, fail: Exception | None = None):
        self.calls, self.fail, self.card = [], fail, None
        self.checked_tokens = []

    def whoami(self, token=None, **kwargs):
        """The token check before the work (kept apart from `calls`, the push itself)."""
        self.checked_tokens.append(token)
        return {"name": "someone", "auth": {"accessToken": {"role": "write"}}}

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        self.card = (Path(kwargs["folder_path"]) / "README.md").read_text()
        if self.fail:
            raise self.fail
        return SimpleNamespace(commit_url=f"https://huggingface.co/datasets/{kwargs['repo_id']}/commit/abc")


# ---------------------------------------------------------------------------------------------------------------
# Plain readers of a Parquet feature folder
# ---------------------------------------------------------------------------------------------------------------

ROW_KEYS = ("image_h", "image_w", "boxes", "features", "objects", "objects_conf", "attrs", "attrs_conf")


def read_with_datasets(folder: Path, kind: str = "numpy", **load_options) -> dict[str, dict]:
    """`load_dataset("parquet", data_dir=folder)` (or `load_dataset(folder)` with `by_folder=True`) in numpy or torch
    format, as arrays by image id, checking each array's shape against `num_boxes`."""
    import datasets

    if load_options.pop("by_folder", False):
        loaded = datasets.load_dataset(str(folder), split="train", **load_options)
    else:
        loaded = datasets.load_dataset("parquet", data_dir=str(folder), split="train", **load_options)
    rows = {}
    for row in loaded.with_format(kind):
        count = int(row["num_boxes"])
        assert tuple(row["boxes"].shape) == (count, 4) and row["features"].shape[0] == count
        assert all(tuple(row[key].shape) == (count,) for key in ("objects", "objects_conf", "attrs", "attrs_conf"))
        rows[row["image_id"]] = {key: np.asarray(row[key]) for key in ROW_KEYS}
    return rows


def read_with_pandas(folder: Path) -> dict[str, dict]:
    import pandas as pd

    frame = pd.read_parquet(folder)
    rows = {}
    for record in frame.to_dict("records"):
        rows[record["image_id"]] = {
            "image_h": record["image_h"],
            "image_w": record["image_w"],
            "boxes": np.stack(record["boxes"]),
            "features": np.stack(record["features"]),
            **{key: np.asarray(record[key]) for key in ("objects", "objects_conf", "attrs", "attrs_conf")},
        }
    return rows


def read_with_pyarrow(folder: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    table = pq.read_table(folder)
    rows = {}
    for record in table.to_pylist():
        rows[record["image_id"]] = {
            "image_h": record["image_h"],
            "image_w": record["image_w"],
            "boxes": np.asarray(record["boxes"], np.float32),
            "features": np.asarray(record["features"], np.float32),
            "objects": np.asarray(record["objects"], np.int64),
            "objects_conf": np.asarray(record["objects_conf"], np.float32),
            "attrs": np.asarray(record["attrs"], np.int64),
            "attrs_conf": np.asarray(record["attrs_conf"], np.float32),
        }
    return rows
