"""Read a Caffe network definition (`.prototxt`, protobuf text format) and check it against the model's config.

The `.caffemodel` holds weights only; the prototxt holds the numbers the weights do not show: the Python proposal
layer's `param_str` (`feat_stride`, anchor `scales`), the RoI pooling size and scale, the strides and dilations of
every convolution, BatchNorm's `eps`. The converter takes the proposal-layer parameters from it and checks that
everything else agrees with the config, so that a prototxt describing another network is an error, not a silently
different model.
"""

import ast
import os
import re
from dataclasses import dataclass

import numpy as np

from ..configuration_butd_frcnn import ButdFrcnnConfig
from .caffemodel import CaffeNet
from .errors import ConversionError
from .weights import BLOCK_LAYER, caffe_parameter_table, is_unused_layer, squeeze_legacy_shape

Message = dict[str, list]  # field name -> values in file order (scalars, strings or nested messages)

_TOKEN = re.compile(
    r"""\s+|\#[^\n]*                       # whitespace, comments
    |(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    |(?P<punct>[{}:\[\],;<>])
    |(?P<word>[^\s{}:\[\],;<>"'\#]+)""",
    re.VERBOSE,
)
_INTEGER = re.compile(r"^[-+]?(0[xX][0-9a-fA-F]+|\d+)$")
_FLOAT = re.compile(r"^[-+]?((\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|inf(inity)?|nan)[fF]?$", re.IGNORECASE)
_CLOSING = {"{": "}", "<": ">"}

# Layer types of the legacy V1 enum as they are spelled in old prototxts.
V1_TYPE_NAMES = {
    "CONVOLUTION": "Convolution",
    "INNER_PRODUCT": "InnerProduct",
    "POOLING": "Pooling",
    "PYTHON": "Python",
    "RELU": "ReLU",
    "ELTWISE": "Eltwise",
    "SOFTMAX": "Softmax",
}
PARAMETER_LAYER_TYPES = ("Convolution", "Deconvolution", "InnerProduct", "Embed", "BatchNorm", "Scale")
PROPOSAL_KEYS = {"feat_stride": "feature_stride", "scales": "anchor_scales", "ratios": "anchor_ratios"}
CAFFE_BATCH_NORM_EPS = 1e-5  # BatchNormParameter.eps default in caffe.proto


class PrototxtError(ConversionError):
    """The prototxt is unreadable, or it describes a network that differs from the config / the weights."""


@dataclass
class PrototxtLayer:
    name: str
    type: str
    params: Message


@dataclass
class NetDefinition:
    path: str
    name: str
    layers: list[PrototxtLayer]

    def by_name(self) -> dict[str, PrototxtLayer]:
        return {layer.name: layer for layer in self.layers}


def _scalar(word: str):
    if word in ("true", "True", "t"):
        return True
    if word in ("false", "False", "f"):
        return False
    if _INTEGER.match(word):
        return int(word, 0) if not re.match(r"^[-+]?0\d", word) else int(word, 8)
    if _FLOAT.match(word):
        return float(word.rstrip("fF"))
    return word  # an enum value such as MAX or AVE


def _unquote(token: str) -> str:
    """A text-format string literal: C escapes, as Python's own literal syntax reads them."""
    return ast.literal_eval(token if token[0] == '"' else '"' + token[1:-1].replace('"', '\\"') + '"')


def _tokenize(text: str, path: str) -> list[tuple[str, str, int]]:
    tokens, pos, line = [], 0, 1
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise PrototxtError(f"{path}: line {line}: cannot read {text[pos : pos + 20]!r}")
        kind = match.lastgroup
        if kind:
            tokens.append((kind, match.group(kind), line))
        line += match.group().count("\n")
        pos = match.end()
    return tokens


def parse_text_format(text: str, path: str = "<text>") -> Message:
    """Parse protobuf text format into nested `{field: [values]}` dicts; no schema needed."""
    tokens = _tokenize(text, path)
    position = 0

    def error(message: str) -> PrototxtError:
        line = tokens[min(position, len(tokens) - 1)][2] if tokens else 1
        return PrototxtError(f"{path}: line {line}: {message}")

    def take(kind=None, value=None):
        nonlocal position
        if position >= len(tokens):
            raise error("the file ends in the middle of a message")
        token = tokens[position]
        if (kind and token[0] != kind) or (value and token[1] != value):
            raise error(f"expected {value or kind}, found {token[1]!r}")
        position += 1
        return token

    def peek(value: str) -> bool:
        return position < len(tokens) and tokens[position][1] == value and tokens[position][0] == "punct"

    def value():
        kind, token, _ = take()
        if kind == "string":
            parts = [_unquote(token)]
            while position < len(tokens) and tokens[position][0] == "string":
                parts.append(_unquote(take()[1]))
            return "".join(parts)
        if kind == "word":
            return _scalar(token)
        raise error(f"expected a value, found {token!r}")

    def message(closing: str | None) -> Message:
        fields: Message = {}
        while True:
            if closing is None and position >= len(tokens):
                return fields
            if closing is not None and peek(closing):
                take("punct", closing)
                return fields
            name = take("word")[1]
            if peek(":"):
                take("punct", ":")
            if peek("{") or peek("<"):
                opening = take("punct")[1]
                values = [message(_CLOSING[opening])]
            elif peek("["):
                take("punct", "[")
                values = []
                while not peek("]"):
                    values.append(message(_CLOSING[take("punct")[1]]) if peek("{") or peek("<") else value())
                    if peek(","):
                        take("punct", ",")
                take("punct", "]")
            else:
                values = [value()]
            fields.setdefault(name, []).extend(values)
            if peek(",") or peek(";"):
                take("punct")

    return message(None)


def first(message: Message, name: str, default=None):
    values = message.get(name)
    return values[0] if values else default


def read_prototxt(path: str | os.PathLike) -> NetDefinition:
    """Read a network definition; both the current `layer { type: "..." }` and the legacy `layers` blocks."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise PrototxtError(f"{path}: not a text file (a .prototxt is protobuf text format)") from None
    net = parse_text_format(text, path)
    layers = []
    for block in net.get("layer", []) + net.get("layers", []):
        if not isinstance(block, dict):
            raise PrototxtError(f"{path}: a layer entry is not a message")
        layer_type = first(block, "type", "")
        layers.append(PrototxtLayer(str(first(block, "name", "")), V1_TYPE_NAMES.get(layer_type, layer_type), block))
    if not layers:
        raise PrototxtError(f"{path}: no layers found: this is not a Caffe network definition")
    return NetDefinition(path=path, name=str(first(net, "name", "")), layers=layers)


_PARAM_ITEM = re.compile(
    r"""(?P<quote>['"]?)(?P<key>\w+)(?P=quote)\s*:\s*(?:!!python/tuple\s*)?
    (?P<value>\[[^\]]*\]|\([^)]*\)|[^\s,}]+)""",
    re.VERBOSE,
)


def parse_param_str(text: str, where: str) -> dict:
    """The YAML `param_str` of a Python layer, e.g. `'feat_stride': 16 \\n'scales': !!python/tuple [4, 8, 16, 32]`.

    Only the subset py-faster-rcnn's layers use: `key: number` and `key: [numbers]` (a `!!python/tuple` tag
    allowed), on lines or in a `{...}` flow mapping.
    """
    params, leftover, pos = {}, [], 0
    for match in _PARAM_ITEM.finditer(text):
        leftover.append(text[pos : match.start()])
        pos = match.end()
        raw = match.group("value")
        try:
            if raw[0] in "[(":
                params[match.group("key")] = [_number(item) for item in raw[1:-1].split(",") if item.strip()]
            else:
                params[match.group("key")] = _number(raw)
        except ValueError:
            raise PrototxtError(
                f"{where}: param_str value {raw!r} of {match.group('key')!r} is not a number"
            ) from None
    leftover.append(text[pos:])
    if re.sub(r"[\s{},]", "", "".join(leftover)):
        raise PrototxtError(f"{where}: cannot read param_str {text!r} (expected `key: value` pairs)")
    return params


def _number(text: str) -> int | float:
    text = text.strip()
    return int(text) if _INTEGER.match(text) else float(text)


def find_proposal_layer(definition: NetDefinition) -> PrototxtLayer | None:
    """The Python layer running py-faster-rcnn's `ProposalLayer` (the RPN's proposal generation)."""
    for layer in definition.layers:
        python_param = first(layer.params, "python_param", {})
        if layer.type == "Python" and first(python_param, "layer", "") == "ProposalLayer":
            return layer
    return None


def proposal_parameters(definition: NetDefinition) -> dict:
    """Config fields from the proposal layer's `param_str`: `feature_stride`, `anchor_scales` (and `anchor_ratios`
    when the prototxt names them; py-faster-rcnn's default ratios are 0.5, 1, 2)."""
    layer = find_proposal_layer(definition)
    if layer is None:
        raise PrototxtError(f"{definition.path}: no proposal layer (a Python layer running ProposalLayer) found")
    where = f"{definition.path}: layer {layer.name!r}"
    params = parse_param_str(str(first(first(layer.params, "python_param"), "param_str", "")), where)
    unknown = sorted(set(params) - set(PROPOSAL_KEYS))
    if unknown:
        raise PrototxtError(f"{where}: param_str has keys the model does not know: {unknown}")
    if "feat_stride" not in params:
        raise PrototxtError(f"{where}: param_str has no feat_stride")
    overrides = {PROPOSAL_KEYS[key]: value for key, value in params.items()}
    for key in ("anchor_scales", "anchor_ratios"):
        if key in overrides:
            values = overrides[key] if isinstance(overrides[key], list) else [overrides[key]]
            overrides[key] = [float(v) for v in values]
    overrides["feature_stride"] = int(overrides["feature_stride"])
    return overrides


def _float32_equal(a: float, b: float) -> bool:
    return np.float32(a) == np.float32(b)


def _convolution_geometry(config: ButdFrcnnConfig) -> dict[str, tuple[int, int, int]]:
    """`(stride, pad, dilation)` of every ResNet-block convolution, as the config builds the model."""
    geometry = {}
    for target in caffe_parameter_table(config.depths):
        match = BLOCK_LAYER.match(target.layer)
        if not match or target.layer_type != "Convolution":
            continue
        stage = int(match.group(1)) - 2
        first_block = match.group(2) == "a" and not match.group(3)
        branch = match.group(4)
        stride = config.stage_strides[stage] if first_block and branch in ("branch1", "branch2a") else 1
        dilation = config.stage_dilations[stage] if branch == "branch2b" else 1
        pad = dilation if branch == "branch2b" else 0  # the 3x3 keeps its size; the 1x1s need no padding
        geometry[target.layer] = (stride, pad, dilation)
    return geometry


def _repeated(params: Message, name: str, default: int) -> list[int]:
    return [int(v) for v in params.get(name, [])] or [default]


def _check_convolution(layer: PrototxtLayer, expected: tuple[int, int, int], problems: list[str]):
    params = first(layer.params, "convolution_param", {})
    stride, pad, dilation = expected
    found = {
        "stride": _repeated(params, "stride", 1)
        + [int(params[k][0]) for k in ("stride_h", "stride_w") if k in params],
        "pad": _repeated(params, "pad", 0) + [int(params[k][0]) for k in ("pad_h", "pad_w") if k in params],
        "dilation": _repeated(params, "dilation", 1),
    }
    for name, want in (("stride", stride), ("pad", pad), ("dilation", dilation)):
        if any(value != want for value in found[name]):
            problems.append(f"layer {layer.name!r}: {name} {found[name]} but the config makes {want}")


def _param_block(layer: PrototxtLayer) -> Message:
    names = {"Convolution": "convolution_param", "InnerProduct": "inner_product_param", "Embed": "embed_param"}
    return first(layer.params, names.get(layer.type, ""), {})


def _check_outputs(layer: PrototxtLayer, blobs: list[np.ndarray], needs_bias: bool, problems: list[str]):
    """`num_output` (and Embed's `input_dim`) against the weights, `bias_term` against the model."""
    params = _param_block(layer)
    weight = squeeze_legacy_shape(blobs[0].shape, 2 if layer.type in ("InnerProduct", "Embed") else 4)
    outputs = weight[1] if layer.type == "Embed" else weight[0]
    if "num_output" in params and int(params["num_output"][0]) != outputs:
        problems.append(f"layer {layer.name!r}: num_output {params['num_output'][0]} but its weights have {outputs}")
    if layer.type == "Embed" and "input_dim" in params and int(params["input_dim"][0]) != weight[0]:
        problems.append(f"layer {layer.name!r}: input_dim {params['input_dim'][0]} but its weights have {weight[0]}")
    bias_term = bool(first(params, "bias_term", True))  # caffe.proto's default for all three layer types
    if bias_term != needs_bias:
        has = "a" if needs_bias else "no"
        problems.append(f"layer {layer.name!r}: bias_term {bias_term} but the model's layer has {has} bias")


def _check_batch_norm(layer: PrototxtLayer, config: ButdFrcnnConfig, problems: list[str]):
    params = first(layer.params, "batch_norm_param", {})
    eps = float(first(params, "eps", CAFFE_BATCH_NORM_EPS))
    if not _float32_equal(eps, config.batch_norm_eps):
        problems.append(f"layer {layer.name!r}: eps {eps} but the config has batch_norm_eps {config.batch_norm_eps}")
    if first(params, "use_global_stats", True) is False:
        problems.append(f"layer {layer.name!r}: use_global_stats false, but the model uses the stored statistics")


def _check_roi_pooling(layer: PrototxtLayer, config: ButdFrcnnConfig, problems: list[str]):
    params = first(layer.params, "roi_pooling_param", {})
    for key in ("pooled_h", "pooled_w"):
        if int(first(params, key, 0)) != config.roi_pool_size:
            problems.append(
                f"layer {layer.name!r}: {key} {first(params, key)} but the config has roi_pool_size "
                f"{config.roi_pool_size}"
            )
    scale = float(first(params, "spatial_scale", 1.0))
    if not _float32_equal(scale, 1.0 / config.feature_stride):
        problems.append(
            f"layer {layer.name!r}: spatial_scale {scale} but the config's feature_stride {config.feature_stride} "
            f"makes {1.0 / config.feature_stride}"
        )


def check_prototxt(definition: NetDefinition, config: ButdFrcnnConfig, net: CaffeNet):
    """Raise `PrototxtError` listing everything in the prototxt that disagrees with the config or the weights."""
    problems: list[str] = []
    for key, value in proposal_parameters(definition).items():
        if getattr(config, key) != value:
            problems.append(f"proposal layer: {key} {value} but the config has {getattr(config, key)}")

    layers = definition.by_name()
    table = caffe_parameter_table(config.depths)
    types = {target.layer: target.layer_type for target in table}
    biased = {target.layer for target in table if target.parameter.endswith(".bias") and target.layer_type != "Scale"}
    geometry = _convolution_geometry(config)
    weights = net.by_name()
    for name, layer_type in types.items():
        layer = layers.get(name)
        if layer is None:
            problems.append(f"layer {name!r} ({layer_type}) is missing from the prototxt")
        elif layer.type != layer_type:
            problems.append(f"layer {name!r} is a {layer.type} layer in the prototxt; the model has a {layer_type}")
        elif layer_type == "BatchNorm":
            _check_batch_norm(layer, config, problems)
        elif layer_type in ("Convolution", "InnerProduct", "Embed"):
            if name in geometry:
                _check_convolution(layer, geometry[name], problems)
            if name in weights and weights[name].blobs:
                _check_outputs(layer, weights[name].blobs, name in biased, problems)
    for layer in definition.layers:
        if layer.type in PARAMETER_LAYER_TYPES and layer.name not in types and not is_unused_layer(layer.name):
            problems.append(f"layer {layer.name!r} ({layer.type}) is not part of the model")
        if layer.type == "ROIPooling":
            _check_roi_pooling(layer, config, problems)
    if problems:
        shown = problems[:12] + ([f"... and {len(problems) - 12} more"] if len(problems) > 12 else [])
        raise PrototxtError(f"{definition.path} disagrees with the model:\n  " + "\n  ".join(shown))


__all__ = [
    "NetDefinition",
    "PrototxtError",
    "check_prototxt",
    "parse_param_str",
    "parse_text_format",
    "proposal_parameters",
    "read_prototxt",
]
