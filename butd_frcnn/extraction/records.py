"""One image's extracted regions, in the conventions every output format shares.

Object and attribute ids follow the original `generate_tsv.py` and LXMERT: a 0-based index over the 1600 objects
(background excluded) and the 400 attributes ("no attribute" excluded), i.e. the line number in
`objects_vocab.txt` / `attributes_vocab.txt`. The model's `object_ids` / `attribute_ids` (indices of
`config.id2label` / `config.attribute_names`) are these plus one.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


class ExtractionError(RuntimeError):
    """A problem the user must fix (bad input listing, unreadable output, full disk...); the message says what."""


@dataclass
class RegionRecord:
    """The selected regions of one image.

    Attributes:
        image_id: the image's id, unique in an output.
        image_h, image_w: size of the decoded image (before resizing), as the original TSVs store it.
        boxes: `(N, 4)` float32, `(x1, y1, x2, y2)` in original-image pixels, inclusive convention.
        features: `(N, C)` float32 region features (`pool5_flat`).
        objects, attrs: `(N,)` int64 0-based object / attribute indices, or None where a format lacks them.
        objects_conf, attrs_conf: `(N,)` float32 probabilities of those, or None.
        cls_prob: `(N, 1601)` probability of every object class per region (background first), float32 or
            float16, or None where a run does not keep it (what UNITER-style consumers read as soft labels).
        attr_prob: `(N, 401)` the same over the attributes ("no attribute" first), or None.
        max_conf: `(N,)` float32 score the region selection ranked each region by (`generate_tsv.py`'s `max_conf`,
            the model's `selection_scores`: UNITER's `conf`), or None where a format does not keep it.
    """

    image_id: str
    image_h: int
    image_w: int
    boxes: np.ndarray
    features: np.ndarray
    objects: np.ndarray | None = None
    objects_conf: np.ndarray | None = None
    attrs: np.ndarray | None = None
    attrs_conf: np.ndarray | None = None
    cls_prob: np.ndarray | None = None
    attr_prob: np.ndarray | None = None
    max_conf: np.ndarray | None = None

    @property
    def num_boxes(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def has_labels(self) -> bool:
        return self.objects is not None and self.attrs is not None


def _rows(tensor: "torch.Tensor", index: int, count: int, dtype) -> np.ndarray:
    """The first `count` entries of image `index` of a padded batch tensor, as a contiguous numpy array."""
    rows = tensor[index, :count].detach().cpu()
    rows = rows.float() if rows.is_floating_point() else rows.long()  # numpy has no bfloat16
    return np.ascontiguousarray(rows.numpy(), dtype=dtype)


def records_from_model_output(
    outputs, image_ids: list[str], original_sizes: "torch.Tensor", probs_dtype: str | None = None
) -> list[RegionRecord]:
    """Split the model's padded batch outputs into one float32 / int64 record per image; with `probs_dtype`
    (`float32` or `float16`), each region's class and attribute distributions too (rows `proposal_indices` of the
    per-proposal `class_probs` / `attribute_probs`)."""
    records = []
    for index, (image_id, count) in enumerate(zip(image_ids, outputs.num_boxes.tolist())):
        height, width = (int(v) for v in original_sizes[index].tolist())
        record = RegionRecord(
            image_id=image_id,
            image_h=height,
            image_w=width,
            boxes=_rows(outputs.boxes, index, count, np.float32),
            features=_rows(outputs.region_features, index, count, np.float32),
            objects=_rows(outputs.object_ids, index, count, np.int64) - 1,
            objects_conf=_rows(outputs.object_scores, index, count, np.float32),
            attrs=_rows(outputs.attribute_ids, index, count, np.int64) - 1,
            attrs_conf=_rows(outputs.attribute_scores, index, count, np.float32),
            max_conf=_rows(outputs.selection_scores, index, count, np.float32),
        )
        if probs_dtype is not None:
            rows = outputs.proposal_indices[index, :count]
            record.cls_prob = _rows(outputs.class_probs[index, rows][None], 0, count, probs_dtype)
            record.attr_prob = _rows(outputs.attribute_probs[index, rows][None], 0, count, probs_dtype)
        records.append(record)
    return records
