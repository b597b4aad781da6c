"""UNITER-ready per-image `.npz` files: one `<image_id>.npz` per image in a folder, the input of UNITER's image
database converter (`scripts/convert_imgdir.py` of ChenRocks/UNITER), as its own extractor (`tools/generate_npz.py`
of the butd-caffe image it runs) writes them.

Keys UNITER reads, one row per region. Detected regions are sorted by `conf`, highest first (the converter keeps a
file's first rows); given boxes (`--boxes-from`) keep the given order, since UNITER's grounding and VCR data find a
target as the k-th row of its image (`ann_ids.index(ann_id)`), and are all kept by the converter's
`--conf_th -1 --num_bb 100` (every row up to `--max_bb`, 100):
- `features` (N x 2048 float32): the regions' `pool5_flat` features;
- `norm_bb` (N x 6 float32): `x1/w, y1/h, x2/w, y2/h, bw/w, bh/h` with `bw = x2 - x1`, `bh = y2 - y1` (UNITER's
  extractor takes the plain difference of the inclusive corners, not the `+ 1` pixel count; columns 2 and 3 are
  computed as it does, `x1/w + bw/w`); UNITER appends `bw/w * bh/h` as a 7th position column when it reads them;
- `conf` (N x 1 float32, the shape UNITER's extractor writes): each region's `max_conf` in the selection (the
  model's `selection_scores`), which the converter counts against its threshold: it keeps the first
  `min(max_bb, max(min_bb, (conf > conf_th).sum()))` rows of every key;
- `soft_labels` (N x 1601, float32 or float16): each region's distribution over the object classes, background
  first (UNITER's masked-region-classification targets);
- with `--save-class-probs`, also `attr_prob` (N x 401).
The converter casts every float32 array to float16, so float32 files give the same database as UNITER's own float16
ones, and our reader gets the features exactly.

The converter takes every key of a file and refuses a file holding anything but one- and two-dimensional arrays, so
what reading the files back needs is stored as per-region rows too, in dtypes its float32 -> float16 cast leaves
alone, so that they reach its database exact: `boxes` (N x 4 float64 holding the float32 boxes exactly,
original-image pixels, inclusive; a folder can be given to `--boxes-from`) and `image_size` (N x 2 int64: the image's
height and width on every row).

Files are written as `npz.py`'s are: hidden temporary name, synced, renamed.
"""

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .feature_format import WriterOptions
from .npz import NpzFormat, NpzSource, NpzWriter, npz_keys
from .records import ExtractionError, RegionRecord

UNITER_KEYS = ("features", "norm_bb", "conf", "soft_labels")
READ_BACK_KEYS = ("boxes", "image_size")


def normalized_boxes(boxes: np.ndarray, image_h: int, image_w: int) -> np.ndarray:
    """UNITER's `norm_bb` of `(N, 4)` float32 boxes (see the module docstring), in float32 as its extractor computes
    it."""
    boxes = np.asarray(boxes, dtype=np.float32)
    width, height = np.float32(image_w), np.float32(image_h)
    x1, y1 = boxes[:, 0] / width, boxes[:, 1] / height
    box_w, box_h = (boxes[:, 2] - boxes[:, 0]) / width, (boxes[:, 3] - boxes[:, 1]) / height
    return np.stack([x1, y1, x1 + box_w, y1 + box_h, box_w, box_h], axis=1)


def conf_order(max_conf: np.ndarray) -> np.ndarray:
    """Rows by `conf`, highest first; equal scores keep their order (stable), so the file order is reproducible."""
    return np.argsort(-np.asarray(max_conf, dtype=np.float32), kind="stable")


def encode_uniter_npz(record: RegionRecord, keep_attr_prob: bool, given_boxes: bool = False) -> bytes:
    """One image's file: detected regions sorted by `conf`, since the converter keeps a file's first rows; given boxes
    in the given order (row k is the k-th given box)."""
    if record.max_conf is None or record.cls_prob is None:
        raise ExtractionError(f"image {record.image_id}: uniter-npz needs each region's conf and class distribution")
    order = np.arange(record.num_boxes) if given_boxes else conf_order(record.max_conf)
    arrays = {
        "features": np.asarray(record.features, dtype=np.float32)[order],
        "norm_bb": normalized_boxes(record.boxes, record.image_h, record.image_w)[order],
        "conf": np.asarray(record.max_conf, dtype=np.float32)[order, None],
        "soft_labels": record.cls_prob[order],
        "boxes": np.asarray(record.boxes, dtype=np.float32).astype(np.float64)[order],
        "image_size": np.tile(np.array([record.image_h, record.image_w], dtype=np.int64), (record.num_boxes, 1)),
    }
    if keep_attr_prob:
        arrays["attr_prob"] = record.attr_prob[order]
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def read_uniter_file(path: Path) -> RegionRecord:
    """One UNITER-ready file of ours as a record (id from the file name)."""
    try:
        with np.load(path) as data:
            missing = [key for key in (*UNITER_KEYS, *READ_BACK_KEYS) if key not in data.files]
            if missing:
                raise ExtractionError(f"{path}: lacks {missing}: not a uniter-npz file written by butd-frcnn")
            height, width = (int(v) for v in data["image_size"][0])
            return RegionRecord(
                image_id=path.stem,
                image_h=height,
                image_w=width,
                boxes=data["boxes"].astype(np.float32),  # float64 in the files, holding float32 values
                features=data["features"],
                cls_prob=data["soft_labels"],
                attr_prob=data["attr_prob"] if "attr_prob" in data.files else None,
                max_conf=data["conf"][:, 0],
            )
    except (OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile) as error:
        raise ExtractionError(f"{path}: cannot read it as a uniter-npz file: {error}") from error


class UniterNpzFormat(NpzFormat):
    """A folder of UNITER-ready files: written, resumed, merged and listed as `npz` folders are (its keys carry no
    selection suffix: `selecting` changes nothing it reads)."""

    name = "uniter-npz"
    needs_class_probs = True
    writes_max_boxes = True

    def recognises(self, path: Path) -> bool:
        first = next(iter(sorted(path.glob("*.npz"))), None) if path.is_dir() else None
        return first is not None and "norm_bb" in (npz_keys(first) or set())

    def open_writer(self, path: Path, resume: bool, options: WriterOptions) -> NpzWriter:
        keep_attr_prob = options.probs_dtype is not None
        return NpzWriter(
            path,
            resume,
            encode=lambda record: encode_uniter_npz(record, keep_attr_prob, options.given_boxes),
            keys=(*UNITER_KEYS, *READ_BACK_KEYS),
        )

    def read(self, path: Path) -> Iterator[RegionRecord]:
        return (read_uniter_file(file) for file in sorted(path.glob("*.npz")))

    def open_source(self, path: Path) -> NpzSource:
        return NpzSource(path, read_uniter_file)


UNITER_NPZ_FORMAT = UniterNpzFormat()
