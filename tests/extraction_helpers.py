"""Helpers of the extraction and compare tests: a small converted model, a folder of good and bad images, the
model's direct outputs and plain readers of each format (the CLI runners live in `cli_runner.py`)."""

import base64
import csv
import io
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
from cli_runner import cli_env, run_cli, run_cli_process, run_torchrun, start_cli_process  # noqa: F401  (the tests import them here)
from golden import GOLDEN
from PIL import Image

# processor size of the test model: small resized images keep every forward pass fast
TEST_SIZE = {"shortest_edge": 96, "longest_edge": 160}
# decompression-bomb limit of the test runs: above every good test image, below the "too many pixels" one
TEST_MAX_PIXELS = 50_000


def save_test_model(folder: Path) -> Path:
    """The golden TINY weights with a short proposal list and small images, saved like a converted model."""
    from butd_frcnn import ButdFrcnnImageProcessor, ButdFrcnnModel
    from butd_frcnn.conversion.caffemodel import read_caffemodel
    from butd_frcnn.conversion.weights import caffe_to_state_dict, config_from_caffe

    net = read_caffemodel(GOLDEN / "tiny_seed0.caffemodel")
    config = config_from_caffe(net, rpn_pre_nms_top_n=300, rpn_post_nms_top_n=30)
    state_dict, _ = caffe_to_state_dict(net, config)
    model = ButdFrcnnModel(config).eval()
    model.load_state_dict(state_dict, strict=True)
    save_model_folder(model, ButdFrcnnImageProcessor(size=TEST_SIZE), folder)
    return folder


def save_model_folder(model, processor, folder: Path) -> Path:
    """Save like `butd-frcnn convert` does (remote-code files included)."""
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _noise(rng, height: int, width: int, channels: int = 3) -> np.ndarray:
    """Smooth random pictures (upsampled noise), so that the detector sees some structure."""
    small = rng.randint(0, 256, size=(max(height // 8, 1), max(width // 8, 1), channels)).astype(np.uint8)
    image = Image.fromarray(small.squeeze(-1) if channels == 1 else small).resize((width, height), Image.BILINEAR)
    return np.asarray(image)


def _png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims `width x height` pixels but holds almost no data (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def make_image_folder(root: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """About fifty images in nested folders: good ones of many kinds and sizes (several of one size, to batch), and
    each kind of bad one.

    Returns:
        the path of each image that must be extracted (by id), and for each one that must be skipped (by id) words
        its reason contains.
    """
    rng = np.random.RandomState(0)
    good: dict[str, Path] = {}
    bad: dict[str, str] = {}

    def save(relative: str, image: Image.Image, **kwargs) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, **kwargs)
        good[path.stem] = path

    sizes = [(64, 48)] * 6 + [(48, 64)] * 5 + [(80, 60)] * 4 + [(100, 40), (37, 53), (120, 90), (90, 90)]
    for i, (width, height) in enumerate(sizes):
        folder = ("a", "b/c", "b")[i % 3]
        save(f"{folder}/rgb_{i:02d}.png", Image.fromarray(_noise(rng, height, width)))
    for i in range(8):
        save(f"jpeg/photo_{i}.jpg", Image.fromarray(_noise(rng, 48, 64)), quality=90)
    save("kinds/bitmap.bmp", Image.fromarray(_noise(rng, 50, 70)))
    save("kinds/grey.png", Image.fromarray(_noise(rng, 48, 64, 1)))
    save("kinds/grey_alpha.png", Image.fromarray(_noise(rng, 48, 64, 2), "LA"))
    save("kinds/rgba.png", Image.fromarray(_noise(rng, 48, 64, 4), "RGBA"))
    save("kinds/palette.png", Image.fromarray(_noise(rng, 48, 64)).convert("P", palette=Image.ADAPTIVE, colors=32))
    save("kinds/bilevel.png", Image.fromarray(_noise(rng, 48, 64, 1)).convert("1"))
    save("kinds/cmyk.jpg", Image.fromarray(_noise(rng, 48, 64, 4), "CMYK"), quality=90)
    save("kinds/sixteen_bit.png", Image.fromarray(_noise(rng, 48, 64, 1).astype(np.uint16) * 257))
    frames = [Image.fromarray(_noise(rng, 48, 64)) for _ in range(3)]
    save("kinds/animated.gif", frames[0], save_all=True, append_images=frames[1:], duration=100, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: rotated 90 degrees, as phones write it
    save("kinds/rotated.jpg", Image.fromarray(_noise(rng, 40, 70)), exif=exif, quality=90)
    save("kinds/long_thin.png", Image.fromarray(_noise(rng, 30, 300)))  # 10:1, resized to 160 x 16

    def write_bad(relative: str, data: bytes, reason: str) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        bad[path.stem] = reason

    jpeg = io.BytesIO()
    Image.fromarray(_noise(rng, 48, 64)).save(jpeg, "JPEG", quality=90)
    png = io.BytesIO()
    Image.fromarray(_noise(rng, 48, 64)).save(png, "PNG")
    write_bad("bad/empty.jpg", b"", "empty")
    write_bad("bad/truncated.jpg", jpeg.getvalue()[: len(jpeg.getvalue()) // 2], "truncated")
    write_bad("bad/truncated_png.png", png.getvalue()[: len(png.getvalue()) // 2], "truncated")
    write_bad("bad/not_an_image.png", b"these are words, not pixels\n" * 20, "not an image")
    write_bad("bad/bomb.png", _png_with_size(40_000, 40_000), "decompression bomb")
    too_big = io.BytesIO()
    Image.fromarray(_noise(rng, 200, 300)).save(too_big, "PNG")  # 60,000 pixels > TEST_MAX_PIXELS
    write_bad("bad/too_many_pixels.png", too_big.getvalue(), "decompression bomb")
    extreme = io.BytesIO()
    Image.fromarray(_noise(rng, 2, 1000)).save(extreme, "PNG")  # resizes to 0 rows
    write_bad("bad/extreme_aspect.png", extreme.getvalue(), "elongated")
    one_pixel = io.BytesIO()
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(one_pixel, "PNG")
    write_bad("bad/one_pixel.png", one_pixel.getvalue(), "no region")  # no proposal is 16 original pixels wide
    for rows in (5, 6):  # resized to 160 x 1: the backbone's pooling has no output row; both share one batch
        flat = io.BytesIO()
        Image.fromarray(_noise(rng, rows, 1000)).save(flat, "PNG")
        write_bad(f"bad/one_row_{rows}.png", flat.getvalue(), "model failed")
    (root / "bad" / "vanished.jpg").symlink_to(root / "bad" / "no_such_file.jpg")
    bad["vanished"] = "no such file"
    (root / "README.txt").write_text("not listed: folders are searched for image files only\n")
    return good, bad


def direct_outputs(
    model_folder: Path, paths: dict[str, Path], boxes: dict | None = None, **selection
) -> dict[str, dict]:
    """The model's own outputs, one image at a time through its processor (the reference every format must hold);
    with `boxes` (id -> (K, 4) array), those of the given boxes. Besides the record fields, each image's `cls_prob`,
    `attr_prob` (float32) and `max_conf` (the selection scores)."""
    from transformers import AutoImageProcessor, AutoModel

    import butd_frcnn  # noqa: F401  (registers the classes)

    model = AutoModel.from_pretrained(model_folder).eval()
    processor = AutoImageProcessor.from_pretrained(model_folder)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = {}
        for image_id, path in paths.items():
            inputs = processor([str(path)], return_tensors="pt")
            regions = selection if boxes is None else {"boxes": [torch.from_numpy(boxes[image_id])]}
            with torch.no_grad():
                outputs = model(**inputs, **regions)
            count = int(outputs.num_boxes[0])
            rows = outputs.proposal_indices[0, :count]
            results[image_id] = {
                "image_h": int(inputs["original_sizes"][0, 0]),
                "image_w": int(inputs["original_sizes"][0, 1]),
                "boxes": outputs.boxes[0, :count].numpy(),
                "features": outputs.region_features[0, :count].numpy(),
                "objects": outputs.object_ids[0, :count].numpy() - 1,
                "objects_conf": outputs.object_scores[0, :count].numpy(),
                "attrs": outputs.attribute_ids[0, :count].numpy() - 1,
                "attrs_conf": outputs.attribute_scores[0, :count].numpy(),
                "cls_prob": outputs.class_probs[0, rows].numpy(),
                "attr_prob": outputs.attribute_probs[0, rows].numpy(),
                "max_conf": outputs.selection_scores[0, :count].numpy(),
            }
        return results
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------------------
# Plain readers: what a user's downstream code does (the reading snippets of docs/formats.md), independent of our package
# ---------------------------------------------------------------------------------------------------------------


def plain_read_butd_tsv(path: Path) -> dict[str, dict]:
    csv.field_size_limit(sys.maxsize)
    fields = ["image_id", "image_w", "image_h", "num_boxes", "boxes", "features"]
    rows = {}
    with open(path, newline="") as file:
        for row in csv.DictReader(file, fieldnames=fields, delimiter="\t"):
            count = int(row["num_boxes"])
            rows[row["image_id"]] = {
                "image_h": int(row["image_h"]),
                "image_w": int(row["image_w"]),
                "boxes": np.frombuffer(base64.b64decode(row["boxes"]), np.float32).reshape(count, 4),
                "features": np.frombuffer(base64.b64decode(row["features"]), np.float32).reshape(count, -1),
            }
    return rows


def plain_read_lxmert_tsv(path: Path) -> dict[str, dict]:
    """LXMERT's `load_obj_tsv` reading, field for field."""
    csv.field_size_limit(sys.maxsize)
    fields = ["img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf", "num_boxes",
              "boxes", "features"]  # fmt: skip
    rows = {}
    with open(path, newline="") as file:
        for item in csv.DictReader(file, fieldnames=fields, delimiter="\t"):
            count = int(item["num_boxes"])
            decode = {
                "objects": ("objects_id", (count,), np.int64),
                "objects_conf": ("objects_conf", (count,), np.float32),
                "attrs": ("attrs_id", (count,), np.int64),
                "attrs_conf": ("attrs_conf", (count,), np.float32),
                "boxes": ("boxes", (count, 4), np.float32),
                "features": ("features", (count, -1), np.float32),
            }
            row = {"image_h": int(item["img_h"]), "image_w": int(item["img_w"])}
            for key, (field, shape, dtype) in decode.items():
                row[key] = np.frombuffer(base64.b64decode(item[field]), dtype=dtype).reshape(shape)
            rows[item["img_id"]] = row
    return rows


def plain_read_hdf5(path: Path) -> dict[str, dict]:
    import h5py

    rows = {}
    with h5py.File(path, "r") as file:
        for image_id in file["index"].asstr():
            group = file["images"][image_id]
            row = {
                key: group[key][()] for key in ("boxes", "features", "objects", "objects_conf", "attrs", "attrs_conf")
            }
            row.update(image_h=int(group.attrs["image_h"]), image_w=int(group.attrs["image_w"]))
            assert image_id not in rows, f"{image_id} twice in the index"
            rows[image_id] = row
    return rows


def plain_read_npz(folder: Path) -> dict[str, dict]:
    rows = {}
    for path in sorted(folder.glob("*.npz")):
        with np.load(path) as data:
            rows[str(data["image_id"])] = {key: data[key] for key in data.files if key != "image_id"}
    return rows


PLAIN_READERS = {
    "butd-tsv": plain_read_butd_tsv,
    "lxmert-tsv": plain_read_lxmert_tsv,
    "hdf5": plain_read_hdf5,
    "npz": plain_read_npz,
}


def assert_rows_equal(rows: dict[str, dict], expected: dict[str, dict], exact: bool = True) -> None:
    """Every image exactly once, each array of `rows` equal (bit for bit, or to float rounding) to `expected`."""
    assert sorted(rows) == sorted(expected), sorted(set(rows) ^ set(expected))
    for image_id, row in rows.items():
        for key, value in row.items():
            if key == "num_boxes":
                assert int(value) == len(expected[image_id]["boxes"]), image_id
                continue
            reference = expected[image_id][key]
            if exact or np.asarray(reference).dtype.kind != "f":
                assert np.array_equal(value, reference), f"{image_id}: {key} differs"
                assert np.asarray(value).dtype == np.asarray(reference).dtype, f"{image_id}: {key} dtype"
            else:
                np.testing.assert_allclose(value, reference, rtol=1e-4, atol=1e-4, err_msg=f"{image_id}: {key}")
