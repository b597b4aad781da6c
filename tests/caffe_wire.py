"""Write Caffe `NetParameter` files for the conversion tests, straight in the protobuf wire format.

Covers what real files contain: the current `layer` field (100) and the legacy V1 `layers` field (2); blob shapes as
`shape { dim }` or the legacy num/channels/height/width; float `data` or `double_data`, packed or one field per value.
"""

import json
from pathlib import Path

import numpy as np

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5
V1_TYPE_ENUM = {"Convolution": 4, "InnerProduct": 14}  # V1LayerParameter.LayerType; newer types have no enum value


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def field_bytes(field: int, payload: bytes) -> bytes:
    return tag(field, LENGTH_DELIMITED) + varint(len(payload)) + payload


def blob_bytes(array: np.ndarray, legacy_shape: bool = False, double: bool = False, packed: bool = True) -> bytes:
    """A BlobProto; `legacy_shape` writes num/channels/height/width, padding the shape with leading 1s to 4-D."""
    array = np.asarray(array)
    if legacy_shape:
        dims = (1,) * (4 - array.ndim) + array.shape
        shape = b"".join(tag(number, VARINT) + varint(dim) for number, dim in zip((1, 2, 3, 4), dims))
    else:
        shape = field_bytes(7, field_bytes(1, b"".join(varint(dim) for dim in array.shape)))
    number, dtype, wire_type = (8, "<f8", FIXED64) if double else (5, "<f4", FIXED32)
    values = array.astype(dtype).ravel()
    if packed:
        data = field_bytes(number, values.tobytes())
    else:  # one tagged field per value
        key = tag(number, wire_type)
        records = np.empty(values.size, dtype=[("key", "u1", len(key)), ("value", dtype)])
        records["key"] = np.frombuffer(key, np.uint8)
        records["value"] = values
        data = records.tobytes()
    return shape + data


def layer_bytes(name: str, layer_type: str, blobs: list[np.ndarray], legacy: bool = False, **blob_options) -> bytes:
    """A LayerParameter (name 1, type 2 as a string, blobs 7) or a V1LayerParameter (name 4, type 5 as an enum,
    blobs 6)."""
    encoded = [blob_bytes(blob, **blob_options) for blob in blobs]
    if legacy:
        header = field_bytes(4, name.encode())
        if layer_type in V1_TYPE_ENUM:
            header += tag(5, VARINT) + varint(V1_TYPE_ENUM[layer_type])
        return header + b"".join(field_bytes(6, blob) for blob in encoded)
    header = field_bytes(1, name.encode()) + field_bytes(2, layer_type.encode())
    return header + b"".join(field_bytes(7, blob) for blob in encoded)


def write_caffemodel(path, layers, legacy: bool = False, net_name: str = "test-net", **blob_options) -> Path:
    """`layers`: `(name, type, [arrays])` triples, written in order, one layer at a time."""
    path = Path(path)
    with open(path, "wb") as f:
        f.write(field_bytes(1, net_name.encode()))
        f.writelines(
            field_bytes(2 if legacy else 100, layer_bytes(name, layer_type, blobs, legacy, **blob_options))
            for name, layer_type, blobs in layers
        )
    return path


def layer_type_of(name: str) -> str:
    """The Caffe type of a layer of the BUTD network, from its name."""
    if name.startswith("bn"):
        return "BatchNorm"
    if name.startswith("scale"):
        return "Scale"
    if name == "cls_embedding":
        return "Embed"
    if name.startswith(("conv", "res", "rpn")):
        return "Convolution"
    return "InnerProduct"


def random_layers(param_shapes_json: Path, seed: int) -> list[tuple[str, str, list[np.ndarray]]]:
    """Random blobs with the shapes of a golden `param_shapes_*.json` (layer -> blob shapes); BatchNorm factors are
    positive and differ from 1, as trained Caffe models' do."""
    rng = np.random.default_rng(seed)
    layers = []
    for name, shapes in json.loads(Path(param_shapes_json).read_text()).items():
        layer_type = layer_type_of(name)
        blobs = [rng.standard_normal(int(np.prod(shape)), dtype=np.float32).reshape(shape) for shape in shapes]
        if layer_type == "BatchNorm":
            factor = np.float32(rng.uniform(1.5, 1000.0))
            blobs[1] = np.abs(blobs[1]) * factor + factor * np.float32(0.5)  # variance * factor, positive
            blobs[2] = np.array([factor], dtype=np.float32)
        layers.append((name, layer_type, blobs))
    return layers
