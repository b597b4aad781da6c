"""Read a Caffe `.caffemodel` (a binary `NetParameter` protobuf) without Caffe and without a compiled `caffe.proto`.

Only the few messages that hold weights are decoded, straight from the protobuf wire format:

    NetParameter       { 1: name, 2: layers (V1LayerParameter, legacy), 100: layer (LayerParameter) }
    LayerParameter     { 1: name, 2: type (string), 7: blobs (BlobProto) }
    V1LayerParameter   { 4: name, 5: type (enum), 6: blobs (BlobProto) }
    BlobProto          { 1: num, 2: channels, 3: height, 4: width (legacy shape), 7: shape (BlobShape),
                         5: data (float), 8: double_data (double) }
    BlobShape          { 1: dim (int64) }

Every other field is skipped by its wire type. The file is streamed one layer at a time and every blob becomes its
own aligned array, so reading costs about one copy of the weights in memory (plus the largest layer), whatever the
file size; the SHA-256 of the file is computed on the way.
"""

import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from .errors import ConversionError

# wire types
VARINT, FIXED64, LENGTH_DELIMITED, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5
FIXED_WIDTHS = {FIXED64: 8, FIXED32: 4}

NET_NAME, NET_LAYERS_V1, NET_LAYER = 1, 2, 100
LAYER_NAME, LAYER_TYPE, LAYER_BLOBS = 1, 2, 7
V1_LAYER_NAME, V1_LAYER_TYPE, V1_LAYER_BLOBS = 4, 5, 6
BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH, BLOB_DATA, BLOB_SHAPE, BLOB_DOUBLE_DATA = 1, 2, 3, 4, 5, 7, 8
LEGACY_SHAPE_FIELDS = (BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH)
SHAPE_DIM = 1

# Layer types of the legacy V1 enum that can carry weights (V1LayerParameter.LayerType).
V1_LAYER_TYPES = {4: "Convolution", 14: "InnerProduct", 39: "Deconvolution"}


class CaffeModelError(ConversionError):
    """The file is not a readable Caffe NetParameter (truncated, corrupt, or something else entirely)."""


@dataclass
class CaffeLayer:
    name: str
    type: str
    blobs: list[np.ndarray] = field(default_factory=list)


@dataclass
class CaffeNet:
    name: str
    layers: list[CaffeLayer]
    layout: str  # "layer" (current), "layers" (legacy V1), or a description of where the blobs came from
    sha256: str = ""
    size: int = 0

    def by_name(self) -> dict[str, CaffeLayer]:
        return {layer.name: layer for layer in self.layers}


def _not_caffe_hint(head: bytes) -> str:
    """A hint for the commonest wrong inputs: a text file (often the .prototxt) instead of the binary weights."""
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return " (it looks like a text file: pass the binary .caffemodel, not the .prototxt)"
    return ""


class _Reader:
    """Cursor over one protobuf message held in memory; errors say where in the file they happened."""

    def __init__(self, buffer: memoryview, start: int, end: int, path: str, context: str, file_offset: int = 0):
        self.buffer, self.pos, self.end, self.path, self.context = buffer, start, end, path, context
        self.file_offset = file_offset  # where `buffer[0]` sits in the file

    def error(self, message: str) -> CaffeModelError:
        return CaffeModelError(f"{self.path}: {self.context}: {message} (at byte {self.file_offset + self.pos})")

    def varint(self) -> int:
        result, shift = 0, 0
        while True:
            if self.pos >= self.end:
                raise self.error("the message ends inside a number: the file is truncated or corrupt")
            byte = self.buffer[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7
            if shift >= 64:
                raise self.error("malformed number: this is not a Caffe model file")

    def fields(self) -> Iterator[tuple[int, int, int | tuple[int, int]]]:
        """Yield `(field_number, wire_type, value)`; length-delimited and fixed-width values are `(start, end)`."""
        while self.pos < self.end:
            key = self.varint()
            number, wire_type = key >> 3, key & 7
            if number == 0:
                raise self.error("field number 0: this is not a Caffe model file")
            if wire_type == VARINT:
                yield number, wire_type, self.varint()
            elif wire_type == LENGTH_DELIMITED:
                length = self.varint()
                yield number, wire_type, self.span(length, number)
            elif wire_type in FIXED_WIDTHS:
                yield number, wire_type, self.span(FIXED_WIDTHS[wire_type], number)
            else:
                raise self.error(f"unsupported wire type {wire_type}: this is not a Caffe model file")

    def span(self, length: int, number: int) -> tuple[int, int]:
        start = self.pos
        if start + length > self.end:
            raise self.error(
                f"field {number} claims {length} bytes but only {self.end - start} remain: "
                "the file is truncated or corrupt"
            )
        self.pos += length
        return start, start + length

    def fixed_width_run(self, key: int, dtype: np.dtype) -> np.ndarray:
        """Consume the values of consecutive unpacked fields with the same one-byte `key` and fixed width."""
        stride = 1 + dtype.itemsize
        count = (self.end - self.pos) // stride
        if key > 0x7F or count == 0:
            return np.zeros(0, dtype)
        rows = np.frombuffer(self.buffer, dtype=np.uint8, count=count * stride, offset=self.pos).reshape(count, stride)
        mismatch = np.flatnonzero(rows[:, 0] != key)
        run = int(mismatch[0]) if mismatch.size else count
        values = rows[:run, 1:].copy().view(dtype).reshape(-1)
        self.pos += run * stride
        return values

    def sub(self, span: tuple[int, int], context: str) -> "_Reader":
        return _Reader(self.buffer, span[0], span[1], self.path, context, self.file_offset)

    def text(self, span: tuple[int, int]) -> str:
        try:
            return bytes(self.buffer[span[0] : span[1]]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.error("a name is not valid UTF-8: this is not a Caffe model file") from None


class _Stream:
    """The top level of the file, read sequentially (every byte passes through the hash)."""

    def __init__(self, file: BinaryIO, size: int, path: str):
        self.file, self.size, self.path, self.pos = file, size, path, 0
        self.sha256 = hashlib.sha256()

    def error(self, message: str) -> CaffeModelError:
        return CaffeModelError(f"{self.path}: {message} (at byte {self.pos})")

    def read(self, count: int) -> bytearray:
        data = bytearray(count)
        got = self.file.readinto(data)
        if got != count:
            raise self.error(f"expected {count} more bytes but the file ends after {got}: the file is truncated")
        self.sha256.update(data)
        self.pos += count
        return data

    def varint(self) -> int:
        result, shift = 0, 0
        while True:
            if self.pos >= self.size:
                raise self.error("the file ends inside a number: the file is truncated")
            byte = self.read(1)[0]
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7
            if shift >= 64:
                raise self.error("malformed number: this is not a Caffe model file")


def _packed_varints(reader: _Reader, span: tuple[int, int]) -> list[int]:
    sub = reader.sub(span, reader.context)
    values = []
    while sub.pos < sub.end:
        values.append(sub.varint())
    return values


def _read_blob(reader: _Reader) -> np.ndarray:
    """One BlobProto as an owned, aligned array of its shape (float32, or float64 for `double_data`)."""
    dims, legacy = None, {}
    chunks: list[np.ndarray] = []
    for number, wire_type, value in reader.fields():
        if number == BLOB_SHAPE and wire_type == LENGTH_DELIMITED:
            dims = []
            for dim_number, dim_wire, dim_value in reader.sub(value, reader.context + " shape").fields():
                if dim_number == SHAPE_DIM:
                    dims += _packed_varints(reader, dim_value) if dim_wire == LENGTH_DELIMITED else [dim_value]
        elif number in LEGACY_SHAPE_FIELDS and wire_type == VARINT:
            legacy[number] = value
        elif number in (BLOB_DATA, BLOB_DOUBLE_DATA):
            dtype = np.dtype("<f4" if number == BLOB_DATA else "<f8")
            start, end = value
            if wire_type == LENGTH_DELIMITED:  # packed: what Caffe writes
                if (end - start) % dtype.itemsize:
                    raise reader.error("blob data length is not a whole number of values")
                count = (end - start) // dtype.itemsize
                chunks.append(np.frombuffer(reader.buffer, dtype=dtype, count=count, offset=start).copy())
            elif wire_type == (FIXED32 if dtype.itemsize == 4 else FIXED64):
                # unpacked: one field per value; take the whole run of them at once
                chunks.append(np.frombuffer(reader.buffer, dtype=dtype, count=1, offset=start).copy())
                chunks.append(reader.fixed_width_run(key=(number << 3) | wire_type, dtype=dtype))
            else:
                raise reader.error(f"blob data field {number} has wire type {wire_type}: the file is corrupt")
    if dims is None:
        dims = [legacy.get(n, 1) for n in LEGACY_SHAPE_FIELDS] if legacy else []
    data = chunks[0] if len(chunks) == 1 else (np.concatenate(chunks) if chunks else np.zeros(0, np.float32))
    expected = int(np.prod(dims)) if dims else 0
    if data.size != expected:
        raise reader.error(f"blob holds {data.size} values but its shape {dims} needs {expected}")
    return data.reshape(dims)


def _read_layer(reader: _Reader, legacy: bool) -> CaffeLayer:
    name_field, type_field, blobs_field = (
        (V1_LAYER_NAME, V1_LAYER_TYPE, V1_LAYER_BLOBS) if legacy else (LAYER_NAME, LAYER_TYPE, LAYER_BLOBS)
    )
    name, layer_type, blob_spans = "", "", []
    for number, wire_type, value in reader.fields():
        if number == name_field and wire_type == LENGTH_DELIMITED:
            name = reader.text(value)
            reader.context = f"layer {name!r}"
        elif number == type_field:
            if legacy and wire_type == VARINT:
                layer_type = V1_LAYER_TYPES.get(value, f"V1:{value}")
            elif wire_type == LENGTH_DELIMITED:
                layer_type = reader.text(value)
        elif number == blobs_field and wire_type == LENGTH_DELIMITED:
            blob_spans.append(value)
    blobs = [_read_blob(reader.sub(span, f"blob {i} of layer {name!r}")) for i, span in enumerate(blob_spans)]
    return CaffeLayer(name, layer_type, blobs)


def read_net(file: BinaryIO, size: int, path: str = "<bytes>") -> CaffeNet:
    """Decode a NetParameter from a binary stream of `size` bytes, one top-level field at a time."""
    if size == 0:
        raise CaffeModelError(f"{path}: the file is empty")
    stream = _Stream(file, size, path)
    name, layers, layouts = "", [], set()
    head = file.read(64)
    file.seek(0)
    while stream.pos < size:
        try:
            key = stream.varint()
            number, wire_type = key >> 3, key & 7
            if number == 0 or wire_type not in (VARINT, LENGTH_DELIMITED, *FIXED_WIDTHS):
                raise stream.error(f"field {number} with wire type {wire_type}: this is not a Caffe model file")
            if wire_type == VARINT:
                stream.varint()
                continue
            if wire_type in FIXED_WIDTHS:
                stream.read(FIXED_WIDTHS[wire_type])
                continue
            length = stream.varint()
            if length > size - stream.pos:
                raise stream.error(
                    f"field {number} claims {length} bytes but only {size - stream.pos} remain: the file is "
                    "truncated (or not a Caffe model file)"
                )
            offset = stream.pos
            data = memoryview(stream.read(length))
            if number == NET_NAME:
                name = _Reader(data, 0, length, path, "NetParameter", offset).text((0, length))
            elif number in (NET_LAYER, NET_LAYERS_V1):
                legacy = number == NET_LAYERS_V1
                layouts.add("layers" if legacy else "layer")
                reader = _Reader(data, 0, length, path, f"layer #{len(layers)}", offset)
                layers.append(_read_layer(reader, legacy))
        except CaffeModelError as error:
            raise CaffeModelError(f"{error}{_not_caffe_hint(head)}") from None
    if not any(layer.blobs for layer in layers):
        raise CaffeModelError(
            f"{path}: no layer with weights found: this is not a Caffe model file{_not_caffe_hint(head)}"
        )
    return CaffeNet(
        name=name, layers=layers, layout="+".join(sorted(layouts)), sha256=stream.sha256.hexdigest(), size=size
    )


def parse_net(data: bytes | bytearray | memoryview, path: str = "<bytes>") -> CaffeNet:
    """Decode a NetParameter held in memory."""
    return read_net(io.BytesIO(data), len(data), path)


def read_caffemodel(path: str | os.PathLike) -> CaffeNet:
    """Read a `.caffemodel` file; raises `CaffeModelError` naming the file and the place when it is unreadable."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        return read_net(f, os.fstat(f.fileno()).st_size, path)
