"""Checkpoints of the same model that people already have, read onto the original's Caffe layers so that one mapping
table (`weights.caffe_parameter_table`) and its validation serve every input:

- the caffemodel2pytorch `.pt` / `.pth` state dict: Caffe blob names as keys (`conv1.weight`, `bn_conv1.bias`, ...),
  blob 0 as `weight`, blob 1 as `bias`. It keeps only two blobs per layer, so BatchNorm's moving-average factor
  (blob 2) is lost: it must be given (`bn_factor`);
- the transformers-research FRCNN checkpoint (`examples/research_projects/lxmert`, detectron2 names): 12 sigmoid
  objectness logits, mapped to `(background 0, foreground l)` pairs, which give the same probabilities
  (`softmax(0, l) = sigmoid(l)`); a 6400-way box predictor without the background, which gets a zero background
  row; its own anchor table is replaced by the config's (the original's `generate_anchors`). This model's own state
  dict has the same names and is read the same way.

Files are loaded with `torch.load(weights_only=True)`: tensors and plain containers only, never arbitrary objects.
"""

import hashlib
import os
import pickle
import re
from collections import defaultdict

import numpy as np
import torch

from .caffemodel import CaffeLayer, CaffeNet, read_caffemodel
from .errors import ConversionError
from .weights import BATCH_NORM_FACTOR_BLOB, BLOCK_LAYER, caffe_parameter_table, infer_architecture

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format
PICKLE_PROTO = 0x80  # first byte of a pickle (torch.save's legacy format)

FORMAT_CAFFEMODEL = "caffemodel"
FORMAT_CAFFEMODEL2PYTORCH = "caffemodel2pytorch state dict"
FORMAT_DETECTRON = "transformers-research FRCNN state dict"

# Keys of the research checkpoint named differently here: its box predictor also holds the attribute head.
RESEARCH_RENAMES = {
    "roi_heads.box_predictor.cls_embedding.": "roi_heads.attribute_predictor.cls_embedding.",
    "roi_heads.box_predictor.fc_attr.": "roi_heads.attribute_predictor.fc_attr.",
    "roi_heads.box_predictor.attr_score.": "roi_heads.attribute_predictor.attr_score.",
}
# Entries that carry no weights of the original: batch-norm step counters and the port's own anchor table.
IGNORED_KEYS = re.compile(r"(\.num_batches_tracked$|^proposal_generator\.anchor_generator\.cell_anchors)")
BLOB_SUFFIXES = {"weight": 0, "bias": 1}
OBJECTNESS = "proposal_generator.rpn_head.objectness_logits."
ANCHOR_DELTAS = "proposal_generator.rpn_head.anchor_deltas.weight"
BOX_DELTAS = "roi_heads.box_predictor.bbox_pred."
CLASS_SCORES = "roi_heads.box_predictor.cls_score.weight"


class CheckpointError(ConversionError):
    """A PyTorch checkpoint that cannot be read safely, or whose keys fit none of the supported layouts."""


def is_torch_checkpoint(path: str | os.PathLike) -> bool:
    """A `torch.save` file (zip or legacy pickle) rather than a binary protobuf, judged by its first bytes."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(ZIP_MAGIC) or (len(head) > 0 and head[0] == PICKLE_PROTO)


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A flat `{name: tensor}` dict from a `.pt` / `.pth` / `.bin` file, unwrapping `{"model": ...}` or
    `{"state_dict": ...}`; nothing but tensors is ever unpickled."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        zipped = f.read(4).startswith(ZIP_MAGIC)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise CheckpointError(
            f"{path}: cannot be loaded as a plain state dict ({type(error).__name__}: {str(error).splitlines()[0]}). "
            "Only tensors are read (torch.load with weights_only=True); a file holding other Python objects is "
            "refused."
        ) from error
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict) or not loaded:
        raise CheckpointError(f"{path}: holds a {type(loaded).__name__}, not a state dict of tensors")
    not_tensors = [str(key) for key, value in loaded.items() if not isinstance(value, torch.Tensor)]
    if not_tensors or not all(isinstance(key, str) for key in loaded):
        raise CheckpointError(f"{path}: entries that are not named tensors: {not_tensors[:5]}")
    return loaded


def _as_array(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach()
    if tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.to(torch.float32)
    return tensor.numpy()


def caffe_net_from_blob_names(
    state_dict: dict[str, torch.Tensor], path: str, bn_factor: float | None
) -> tuple[CaffeNet, list[str]]:
    """The caffemodel2pytorch layout (`<caffe layer>.weight` / `.bias`, or `.<blob number>`) as Caffe layers."""
    blobs: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    for key, tensor in state_dict.items():
        layer, _, suffix = key.rpartition(".")
        index = BLOB_SUFFIXES.get(suffix, int(suffix) if suffix.isdigit() else None)
        if not layer or index is None:
            raise CheckpointError(f"{path}: key {key!r} is not `<caffe layer>.weight`, `.bias` or `.<blob number>`")
        blobs[layer][index] = _as_array(tensor)
    layers = []
    for name, by_index in blobs.items():
        if sorted(by_index) != list(range(len(by_index))):
            raise CheckpointError(f"{path}: layer {name!r} has blobs {sorted(by_index)}; blob numbers must start at 0")
        layers.append(CaffeLayer(name, "", [by_index[i] for i in range(len(by_index))]))
    net = CaffeNet(name="", layers=layers, layout="Caffe blob names")
    table = caffe_parameter_table(infer_architecture(net)["depths"])
    batch_norms = {target.layer for target in table if target.transform != "copy"}
    lacking = [layer for layer in layers if layer.name in batch_norms and len(layer.blobs) == BATCH_NORM_FACTOR_BLOB]
    notes = []
    if lacking:
        if bn_factor is None:
            raise CheckpointError(
                f"{path}: the BatchNorm layers ({lacking[0].name}, ... {len(lacking)} in all) lack their third blob, "
                "the moving-average factor Caffe divides the statistics by (caffemodel2pytorch keeps two blobs per "
                "layer). Convert the original .caffemodel instead, or give the factor (--bn-factor)."
            )
        for layer in lacking:
            layer.blobs.append(np.array([bn_factor], dtype=np.float32))
        notes.append(f"BatchNorm moving-average factor {bn_factor} given by the user (the file lacks it)")
    return net, notes


def _research_depths(keys: list[str], path: str) -> list[int]:
    pattern = re.compile(r"^(?:backbone\.res([234])|roi_heads\.res(5))\.(\d+)\.")
    blocks: dict[int, set[int]] = {stage: set() for stage in range(2, 6)}
    for key in keys:
        match = pattern.match(key)
        if match:
            blocks[int(match.group(1) or match.group(2))].add(int(match.group(3)))
    if not all(blocks.values()):
        raise CheckpointError(f"{path}: no blocks found for stage(s) {[s for s, b in blocks.items() if not b]}")
    return [max(blocks[stage]) + 1 for stage in range(2, 6)]


def _to_model_names(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, np.ndarray], list[str]]:
    """The research layout renamed and reshaped into this model's state-dict entries (this model's own layout
    passes through unchanged).

    The objectness channels keep their order: anchor `a`'s sigmoid logit becomes anchor `a`'s foreground logit.
    """
    notes, arrays, ignored = [], {}, []
    for key, tensor in state_dict.items():
        if IGNORED_KEYS.search(key):
            ignored.append(key)
            continue
        for old, new in RESEARCH_RENAMES.items():
            if key.startswith(old):
                key = new + key[len(old) :]
        arrays[key] = _as_array(tensor)
    if any("cell_anchors" in key for key in ignored):
        notes.append(
            "the checkpoint's own anchor table was replaced by the config's (the original's generate_anchors)"
        )

    num_anchors = arrays[ANCHOR_DELTAS].shape[0] // 4 if ANCHOR_DELTAS in arrays else None
    num_classes = arrays[CLASS_SCORES].shape[0] if CLASS_SCORES in arrays else None
    for suffix in ("weight", "bias"):
        logits = arrays.get(OBJECTNESS + suffix)
        if num_anchors and logits is not None and logits.shape[0] == num_anchors:
            arrays[OBJECTNESS + suffix] = np.concatenate([np.zeros_like(logits), logits])  # softmax(0, l) = sigmoid(l)
            if suffix == "weight":
                notes.append(f"RPN: {num_anchors} sigmoid objectness logits mapped to (background 0, foreground l)")
        deltas = arrays.get(BOX_DELTAS + suffix)
        if num_classes and deltas is not None and deltas.shape[0] == 4 * (num_classes - 1):
            background = np.zeros((4, *deltas.shape[1:]), deltas.dtype)
            arrays[BOX_DELTAS + suffix] = np.concatenate([background, deltas])
            if suffix == "weight":
                notes.append(f"bbox_pred: a zero background row added ({deltas.shape[0]} -> {deltas.shape[0] + 4})")
    return arrays, notes


def caffe_net_from_detectron_names(state_dict: dict[str, torch.Tensor], path: str) -> tuple[CaffeNet, list[str]]:
    """The transformers-research FRCNN layout (or this model's own) as Caffe layers, via the mapping table; the
    BatchNorm statistics are stored already divided, so their factor blob is 1."""
    arrays, notes = _to_model_names(state_dict)
    table = caffe_parameter_table(_research_depths(list(arrays), path))
    by_parameter = {target.parameter: target for target in table}
    for problem, keys in (
        ("keys the model does not know", sorted(set(arrays) - set(by_parameter))),
        ("the checkpoint lacks", sorted(set(by_parameter) - set(arrays))),
    ):
        if keys:
            raise CheckpointError(f"{path}: {problem}: {keys[:8]}{' ...' if len(keys) > 8 else ''}")

    blobs: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    for target in table:
        blobs[target.layer][target.blob] = arrays[target.parameter]
        if target.transform != "copy":
            blobs[target.layer][BATCH_NORM_FACTOR_BLOB] = np.ones(1, np.float32)
    types = {target.layer: target.layer_type for target in table}
    layers = [
        CaffeLayer(name, types[name], [by_index[i] for i in sorted(by_index)]) for name, by_index in blobs.items()
    ]
    return CaffeNet(name="", layers=layers, layout="detectron2 names"), notes


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def read_checkpoint(path: str | os.PathLike, bn_factor: float | None = None) -> tuple[CaffeNet, str, list[str]]:
    """Any supported checkpoint as Caffe layers: `(net, format name, notes for the report)`."""
    path = os.fspath(path)
    if not is_torch_checkpoint(path):
        return read_caffemodel(path), FORMAT_CAFFEMODEL, []
    state_dict = load_state_dict(path)
    if any(key.startswith(("backbone.", "proposal_generator.", "roi_heads.")) for key in state_dict):
        net, notes = caffe_net_from_detectron_names(state_dict, path)
        source_format = FORMAT_DETECTRON
    elif any(BLOCK_LAYER.match(key.rpartition(".")[0]) or key.startswith("conv1.") for key in state_dict):
        net, notes = caffe_net_from_blob_names(state_dict, path, bn_factor)
        source_format = FORMAT_CAFFEMODEL2PYTORCH
    else:
        raise CheckpointError(
            f"{path}: its keys ({', '.join(list(state_dict)[:5])}, ...) fit neither the caffemodel2pytorch layout "
            "(Caffe layer names) nor the transformers-research FRCNN layout (backbone.*, roi_heads.*)"
        )
    net.size, net.sha256 = os.path.getsize(path), file_sha256(path)
    return net, source_format, notes
