"""Map the blobs of the original Caffe network onto `ButdFrcnnModel`'s state dict.

The mapping is one explicit table (`caffe_parameter_table`): for every Caffe layer, which blob becomes which
parameter, and how. Caffe's BatchNorm (global statistics) stores `mean * f`, `var * f` and the moving-average
factor `f`; Caffe uses `mean = blob0 * (1 / f)` and `var = blob1 * (1 / f)` in float32 (f == 0 means factor 0), so
that is what `running_mean` / `running_var` receive. The Scale layer that follows gives `weight` (gamma) and `bias`
(beta). The architecture (depths, widths, head sizes) is read from the blobs themselves.
"""

import re
from dataclasses import dataclass, field

import numpy as np
import torch

from ..compat_butd_frcnn import StrictDataclassError
from ..configuration_butd_frcnn import ButdFrcnnConfig
from ..modeling_butd_frcnn import ButdFrcnnAnchorGenerator, ButdFrcnnModel
from .caffemodel import CaffeNet
from .errors import ConversionError

# Layers the original .caffemodel carries but the test network never runs (relation head, heat maps).
UNUSED_LAYER_NAMES = ("fc_rel1", "fc_subject", "fc_object", "rel_merge", "rel_score")
UNUSED_LAYER_PREFIXES = ("heatmap",)

# Caffe layer name -> (state-dict module, Caffe layer type), for the layers outside the ResNet body.
HEAD_LAYERS = {
    "rpn_conv/3x3": ("proposal_generator.rpn_head.conv", "Convolution"),
    "rpn_cls_score": ("proposal_generator.rpn_head.objectness_logits", "Convolution"),
    "rpn_bbox_pred": ("proposal_generator.rpn_head.anchor_deltas", "Convolution"),
    "cls_score": ("roi_heads.box_predictor.cls_score", "InnerProduct"),
    "bbox_pred": ("roi_heads.box_predictor.bbox_pred", "InnerProduct"),
    "cls_embedding": ("roi_heads.attribute_predictor.cls_embedding", "Embed"),
    "fc_attr": ("roi_heads.attribute_predictor.fc_attr", "InnerProduct"),
    "attr_score": ("roi_heads.attribute_predictor.attr_score", "InnerProduct"),
}
BRANCHES = {"branch1": "shortcut", "branch2a": "conv1", "branch2b": "conv2", "branch2c": "conv3"}
BLOCK_LAYER = re.compile(r"^res([2-5])([a-z])(\d*)_(branch1|branch2[abc])$")
BATCH_NORM_FACTOR_BLOB = 2


class WeightMappingError(ConversionError):
    """A checkpoint does not fit the model: a missing blob, a wrong shape or an unknown layer."""


@dataclass(frozen=True)
class BlobTarget:
    """Caffe `layer`'s blob number `blob` becomes state-dict entry `parameter` via `transform`."""

    layer: str
    blob: int
    parameter: str
    transform: str = "copy"  # "copy" | "bn_mean" | "bn_var" (divide by the moving-average factor, blob 2)
    layer_type: str = ""  # the Caffe layer type that holds this blob


@dataclass
class ConversionReport:
    """What a conversion did, for the model card and the command line."""

    source: str = ""
    source_format: str = "caffemodel"
    layout: str = ""
    sha256: str = ""
    size: int = 0
    converted_layers: list[str] = field(default_factory=list)
    skipped_layers: list[str] = field(default_factory=list)
    num_parameters: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"source: {self.source} ({self.source_format}, layout: {self.layout})",
            f"converted: {len(self.converted_layers)} layers, {self.num_parameters:,} values",
        ]
        if self.skipped_layers:
            lines.append(f"skipped (not part of the test network): {', '.join(self.skipped_layers)}")
        lines += self.notes
        return "\n".join(lines)


def caffe_block_name(stage: int, index: int, depth: int) -> str:
    """The original's name of block `index` of stage `stage`: res2a, res2b, ... or res4a, res4b1, ... res4b22.

    Stages of more than 3 blocks number their blocks after the first (`b1`, `b2`, ...), as ResNet-101 does.
    """
    if index == 0:
        return f"res{stage}a"
    return f"res{stage}b{index}" if depth > 3 else f"res{stage}{chr(ord('a') + index)}"


def block_index(letter: str, number: str) -> int:
    """Index of a block from its name: `a` -> 0, `b` -> 1, `c` -> 2, `b7` -> 7."""
    return int(number) if number else ord(letter) - ord("a")


def module_of_block(stage: int, index: int) -> str:
    return f"roi_heads.res5.{index}" if stage == 5 else f"backbone.res{stage}.{index}"


def conv_bn_targets(conv: str, bn: str, scale: str, module: str) -> list[BlobTarget]:
    """A bias-free convolution followed by BatchNorm + Scale -> `module.weight` and `module.norm.*`."""
    return [
        BlobTarget(conv, 0, f"{module}.weight", layer_type="Convolution"),
        BlobTarget(bn, 0, f"{module}.norm.running_mean", "bn_mean", "BatchNorm"),
        BlobTarget(bn, 1, f"{module}.norm.running_var", "bn_var", "BatchNorm"),
        BlobTarget(scale, 0, f"{module}.norm.weight", layer_type="Scale"),
        BlobTarget(scale, 1, f"{module}.norm.bias", layer_type="Scale"),
    ]


def caffe_parameter_table(depths: list[int]) -> list[BlobTarget]:
    """Every blob the model needs, for a network with `depths` blocks in res2..res5."""
    table = conv_bn_targets("conv1", "bn_conv1", "scale_conv1", "backbone.stem.conv1")
    for stage, depth in zip(range(2, 6), depths):
        for index in range(depth):
            block = caffe_block_name(stage, index, depth)
            suffix = block[len("res") :]
            for branch, module in BRANCHES.items():
                if branch == "branch1" and index > 0:
                    continue
                table += conv_bn_targets(
                    f"{block}_{branch}",
                    f"bn{suffix}_{branch}",
                    f"scale{suffix}_{branch}",
                    f"{module_of_block(stage, index)}.{module}",
                )
    for layer, (module, layer_type) in HEAD_LAYERS.items():
        table.append(BlobTarget(layer, 0, f"{module}.weight", layer_type=layer_type))
        if layer != "cls_embedding":
            table.append(BlobTarget(layer, 1, f"{module}.bias", layer_type=layer_type))
    return table


def blobs_per_layer(table: list[BlobTarget]) -> dict[str, int]:
    """How many blobs each Caffe layer of the table holds (BatchNorm: mean, variance and the factor)."""
    counts: dict[str, int] = {}
    for target in table:
        needed = BATCH_NORM_FACTOR_BLOB + 1 if target.transform != "copy" else target.blob + 1
        counts[target.layer] = max(counts.get(target.layer, 0), needed)
    return counts


def is_unused_layer(name: str) -> bool:
    return name in UNUSED_LAYER_NAMES or name.startswith(UNUSED_LAYER_PREFIXES)


def _blob(net_layers: dict, layer: str, blob: int, what: str) -> np.ndarray:
    if layer not in net_layers:
        raise WeightMappingError(f"the checkpoint has no layer {layer!r}, which the model needs for {what}")
    blobs = net_layers[layer].blobs
    if blob >= len(blobs):
        raise WeightMappingError(
            f"layer {layer!r} has {len(blobs)} blob(s); the model needs blob {blob} of it for {what}"
        )
    return blobs[blob]


def _describe_layers(net: CaffeNet, limit: int = 12) -> str:
    names = [layer.name for layer in net.layers if layer.blobs]
    shown = ", ".join(names[:limit]) + (f", ... ({len(names)} layers with weights)" if len(names) > limit else "")
    return shown or "none"


def infer_architecture(net: CaffeNet) -> dict:
    """Config fields read from the blobs: depths from the block names, widths from the blob shapes, head sizes."""
    layers = net.by_name()
    blocks: dict[int, set[int]] = {stage: set() for stage in range(2, 6)}
    for name in layers:
        match = BLOCK_LAYER.match(name)
        if match:
            blocks[int(match.group(1))].add(block_index(match.group(2), match.group(3)))
    if not any(blocks.values()):
        raise WeightMappingError(
            f"this checkpoint has no ResNet blocks (res2a_branch1, res2a_branch2a, ...): its layers are "
            f"{_describe_layers(net)}. Only the bottom-up-attention ResNet Faster R-CNN is supported."
        )
    for stage, indices in blocks.items():
        if not indices or indices != set(range(len(indices))):
            raise WeightMappingError(
                f"stage res{stage}: blocks {sorted(indices)} found; expected a ResNet with blocks 0..n-1 in every "
                "stage (is this the bottom-up-attention Faster R-CNN?)"
            )
    depths = [len(blocks[stage]) for stage in range(2, 6)]

    def shape(layer, ndim=4):
        value = _blob(layers, layer, 0, "reading the architecture (is this the bottom-up-attention Faster R-CNN?)")
        return squeeze_legacy_shape(value.shape, ndim)

    num_rpn_logits = shape("rpn_cls_score")[0]
    return {
        "depths": depths,
        "num_channels": shape("conv1")[1],
        "stem_channels": shape("conv1")[0],
        "hidden_sizes": [shape(f"res{stage}a_branch2c")[0] for stage in range(2, 6)],
        "bottleneck_sizes": [shape(f"res{stage}a_branch2a")[0] for stage in range(2, 6)],
        "rpn_hidden_size": shape("rpn_conv/3x3")[0],
        "num_labels": shape("cls_score", 2)[0],
        "num_attributes": shape("attr_score", 2)[0],
        "class_embedding_size": shape("cls_embedding", 2)[1],
        "attribute_hidden_size": shape("fc_attr", 2)[0],
        "num_rpn_anchors": num_rpn_logits // 2,
    }


def squeeze_legacy_shape(shape: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    """Drop the leading 1s of a legacy 4-D `num, channels, height, width` shape down to `ndim` axes.

    Old Caffe stored every blob as 4-D: an InnerProduct weight `(out, in)` as `(1, 1, out, in)`, a bias as
    `(1, 1, 1, out)`.
    """
    shape = tuple(shape)
    while len(shape) > ndim and shape[0] == 1:
        shape = shape[1:]
    return shape


def expected_shapes(config: ButdFrcnnConfig) -> dict[str, tuple[int, ...]]:
    """State-dict shapes of a model with this config, without allocating its weights."""
    with torch.device("meta"):
        model = ButdFrcnnModel(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _apply(transform: str, value: np.ndarray, factor: np.ndarray | None) -> np.ndarray:
    value = value.astype(np.float32, copy=False)
    if transform == "copy":
        return value
    # Caffe: scale_factor = blob2 == 0 ? 0 : 1 / blob2, in the blob's float precision
    f = np.float32(factor.reshape(-1)[0])
    scale_factor = np.float32(0) if f == 0 else np.float32(1) / f
    return value * scale_factor


def _check_layer_type(layer, target: BlobTarget):
    """A known layer type must be the one the table expects (a V1 enum the reader does not name is not checked)."""
    known = layer.type and not layer.type.startswith("V1:")
    if known and target.layer_type and layer.type != target.layer_type:
        raise WeightMappingError(
            f"layer {layer.name!r} is a {layer.type} layer, but the model needs a {target.layer_type} layer there "
            f"for {target.parameter}"
        )


def _check_blob_counts(net_layers: dict, table: list[BlobTarget]):
    """A used layer with more blobs than the model takes (a bias the model lacks...) holds an unknown blob."""
    for layer_name, count in blobs_per_layer(table).items():
        blobs = net_layers[layer_name].blobs
        if len(blobs) > count:
            extra = ", ".join(f"blob {i} of shape {list(b.shape)}" for i, b in enumerate(blobs) if i >= count)
            raise WeightMappingError(
                f"layer {layer_name!r} has {len(blobs)} blobs but the model uses {count}: unknown {extra}"
            )


def caffe_to_state_dict(net: CaffeNet, config: ButdFrcnnConfig) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Build the model's state dict from a parsed `.caffemodel`, validating every blob against the config.

    Float32 blobs are shared with `net`, not copied, so that converting costs no second copy of the weights.

    Raises:
        WeightMappingError: a blob the model needs is missing, a shape differs, or the file has a layer the model
            does not know (the relation and heat-map layers of the original are skipped and reported instead).
    """
    layers = net.by_name()
    shapes = expected_shapes(config)
    table = caffe_parameter_table(config.depths)
    state_dict: dict[str, torch.Tensor] = {}
    for target in table:
        value = _blob(layers, target.layer, target.blob, target.parameter)
        _check_layer_type(layers[target.layer], target)
        factor = None
        if target.transform != "copy":
            factor = _blob(layers, target.layer, BATCH_NORM_FACTOR_BLOB, target.parameter)
        if target.parameter not in shapes:
            raise WeightMappingError(
                f"layer {target.layer!r} maps to {target.parameter}, which a model with this config does not have"
            )
        expected = shapes[target.parameter]
        if squeeze_legacy_shape(value.shape, len(expected)) != expected:
            raise WeightMappingError(
                f"layer {target.layer!r} blob {target.blob} has shape {list(value.shape)}, but "
                f"{target.parameter} needs {list(expected)}"
            )
        converted = np.ascontiguousarray(_apply(target.transform, value, factor).reshape(expected))
        if not converted.flags.writeable:
            converted = converted.copy()
        state_dict[target.parameter] = torch.from_numpy(converted)
    _check_blob_counts(layers, table)

    used = {target.layer for target in table}
    report = ConversionReport(layout=net.layout, sha256=net.sha256, size=net.size)
    unknown = []
    for layer in net.layers:
        if not layer.blobs:
            continue
        if layer.name in used:
            report.converted_layers.append(layer.name)
        elif is_unused_layer(layer.name):
            report.skipped_layers.append(layer.name)
        else:
            unknown.append(f"{layer.name} ({layer.type or 'untyped'}, blobs {[list(b.shape) for b in layer.blobs]})")
    if unknown:
        raise WeightMappingError(
            f"the checkpoint has layers the model does not know: {', '.join(unknown)}. A network of another "
            "architecture? (Only the bottom-up-attention ResNet Faster R-CNN is supported.)"
        )
    state_dict["proposal_generator.anchor_generator.cell_anchors"] = ButdFrcnnAnchorGenerator.default_cell_anchors(
        config
    )
    report.num_parameters = sum(t.numel() for t in state_dict.values())
    missing = sorted(set(shapes) - set(state_dict))
    if missing:
        raise WeightMappingError(f"the mapping table leaves these model entries without a value: {missing}")
    return state_dict, report


def config_from_caffe(net: CaffeNet, **overrides) -> ButdFrcnnConfig:
    """A config whose architecture matches the checkpoint; `overrides` set anything else (labels, selection...)."""
    architecture = infer_architecture(net)
    num_anchors = architecture.pop("num_rpn_anchors")
    num_labels = architecture.pop("num_labels")
    kwargs = {**architecture, **overrides}
    if "id2label" not in kwargs:
        kwargs["num_labels"] = num_labels
    try:
        config = ButdFrcnnConfig(**kwargs)
    except (StrictDataclassError, ValueError, TypeError) as error:  # the config's own validation
        cause = error.__cause__ or error
        raise WeightMappingError(f"these settings do not make a consistent model: {cause}") from None
    if config.num_anchors != num_anchors:
        raise WeightMappingError(
            f"rpn_cls_score has {2 * num_anchors} channels ({num_anchors} anchors), but the config's "
            f"{len(config.anchor_ratios)} ratios x {len(config.anchor_scales)} scales make {config.num_anchors}"
        )
    if config.num_labels != num_labels:
        raise WeightMappingError(f"cls_score has {num_labels} classes but id2label has {config.num_labels}")
    return config


__all__ = [
    "BlobTarget",
    "ConversionReport",
    "WeightMappingError",
    "caffe_parameter_table",
    "caffe_to_state_dict",
    "config_from_caffe",
    "infer_architecture",
]
