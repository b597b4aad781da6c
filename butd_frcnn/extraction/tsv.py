"""TSV feature files: the rows of the original `generate_tsv.py` ("butd-tsv") and of LXMERT ("lxmert-tsv").

Both are tab-separated, one image per row, arrays as base64 of their little-endian bytes, rows ending in "\\r\\n"
(Python 2's `csv` writer, which wrote the released files). Fields:
- butd-tsv: image_id, image_w, image_h, num_boxes, boxes (float32, N x 4), features (float32, N x C);
- lxmert-tsv: img_id, img_h, img_w, objects_id (int64), objects_conf (float32), attrs_id (int64), attrs_conf
  (float32), num_boxes, boxes (float32), features (float32); ids 0-based as `records.py` says.
A features field holds ~1 MB of text: `csv` readers need `csv.field_size_limit(sys.maxsize)`, as the originals set.

The writer only appends whole rows, so an interrupted run leaves whole rows plus at most one partial last row;
resuming cuts that row off (`scan_and_repair`).
"""

import base64
import binascii
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .durable import output_error, temporary_path, write_all
from .feature_format import FeatureSource, FeatureWriter, OutputFormat, WriterOptions
from .records import ExtractionError, RegionRecord

logger = logging.getLogger(__name__)

LINE_END = b"\r\n"


def encode_array(array: np.ndarray, dtype: str) -> bytes:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes())


def decode_array(field: bytes, dtype: str, num_boxes: int, width: int | None, name: str) -> np.ndarray:
    """Decode one base64 array field into `(num_boxes,)` or `(num_boxes, width)`; `width=-1` infers it."""
    try:
        raw = base64.b64decode(field, validate=True)
    except binascii.Error as error:
        raise ValueError(f"field {name} is not valid base64 ({error})") from None
    values = np.frombuffer(raw, dtype=dtype)
    if width is None:
        if values.size != num_boxes:
            raise ValueError(f"field {name} holds {values.size} values for {num_boxes} boxes")
        return values
    if num_boxes == 0:
        if values.size:
            raise ValueError(f"field {name} holds {values.size} values for 0 boxes")
        return values.reshape(0, 0 if width == -1 else width)
    if values.size % num_boxes or (width != -1 and values.size != num_boxes * width):
        raise ValueError(f"field {name} holds {values.size} values, not a whole row per box for {num_boxes} boxes")
    return values.reshape(num_boxes, -1)


def _integer(field: bytes, name: str) -> int:
    try:
        return int(field)
    except ValueError:
        raise ValueError(f"field {name} is not an integer: {field[:40]!r}") from None


class TsvLayout(ABC):
    """The fields of one TSV dialect: how a record becomes a row and back."""

    name: str
    fields: tuple[str, ...]

    @abstractmethod
    def encode(self, record: RegionRecord) -> bytes: ...

    @abstractmethod
    def decode(self, fields: list[bytes]) -> RegionRecord: ...

    def parse_line(self, line: bytes) -> RegionRecord:
        """A complete row (its line end included or not) -> record; ValueError says what is wrong."""
        fields = line.rstrip(b"\r\n").split(b"\t")
        if len(fields) != len(self.fields):
            raise ValueError(f"{len(fields)} fields where {self.name} has {len(self.fields)}")
        return self.decode(fields)


class ButdTsvLayout(TsvLayout):
    name = "butd-tsv"
    fields = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")

    def encode(self, record: RegionRecord) -> bytes:
        head = f"{record.image_id}\t{record.image_w}\t{record.image_h}\t{record.num_boxes}\t".encode()
        return (
            b"\t".join([head[:-1], encode_array(record.boxes, "<f4"), encode_array(record.features, "<f4")]) + LINE_END
        )

    def decode(self, fields: list[bytes]) -> RegionRecord:
        num_boxes = _integer(fields[3], "num_boxes")
        return RegionRecord(
            image_id=fields[0].decode(),
            image_w=_integer(fields[1], "image_w"),
            image_h=_integer(fields[2], "image_h"),
            boxes=decode_array(fields[4], "<f4", num_boxes, 4, "boxes"),
            features=decode_array(fields[5], "<f4", num_boxes, -1, "features"),
        )


class LxmertTsvLayout(TsvLayout):
    name = "lxmert-tsv"
    fields = (
        "img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf", "num_boxes", "boxes",
        "features",
    )  # fmt: skip

    def encode(self, record: RegionRecord) -> bytes:
        if not record.has_labels:
            raise ExtractionError(f"image {record.image_id}: lxmert-tsv needs object and attribute ids")
        parts = [
            f"{record.image_id}\t{record.image_h}\t{record.image_w}".encode(),
            encode_array(record.objects, "<i8"),
            encode_array(record.objects_conf, "<f4"),
            encode_array(record.attrs, "<i8"),
            encode_array(record.attrs_conf, "<f4"),
            str(record.num_boxes).encode(),
            encode_array(record.boxes, "<f4"),
            encode_array(record.features, "<f4"),
        ]
        return b"\t".join(parts) + LINE_END

    def decode(self, fields: list[bytes]) -> RegionRecord:
        num_boxes = _integer(fields[7], "num_boxes")
        return RegionRecord(
            image_id=fields[0].decode(),
            image_h=_integer(fields[1], "img_h"),
            image_w=_integer(fields[2], "img_w"),
            objects=decode_array(fields[3], "<i8", num_boxes, None, "objects_id"),
            objects_conf=decode_array(fields[4], "<f4", num_boxes, None, "objects_conf"),
            attrs=decode_array(fields[5], "<i8", num_boxes, None, "attrs_id"),
            attrs_conf=decode_array(fields[6], "<f4", num_boxes, None, "attrs_conf"),
            boxes=decode_array(fields[8], "<f4", num_boxes, 4, "boxes"),
            features=decode_array(fields[9], "<f4", num_boxes, -1, "features"),
        )


BUTD_TSV = ButdTsvLayout()
LXMERT_TSV = LxmertTsvLayout()
TSV_LAYOUTS = {layout.name: layout for layout in (BUTD_TSV, LXMERT_TSV)}


def detect_tsv_layout(path: Path) -> TsvLayout:
    """Tell the two dialects apart by the number of fields of the first row."""
    with open(path, "rb") as file:
        first = file.readline()
    count = first.count(b"\t") + 1
    for layout in TSV_LAYOUTS.values():
        if count == len(layout.fields):
            return layout
    raise ExtractionError(f"{path}: the first row has {count} tab-separated fields; a butd-tsv row has 6, lxmert 10")


def _complete_rows(path: Path, layout: TsvLayout) -> Iterator[tuple[int, bytes, RegionRecord | ValueError]]:
    """(offset, row, record or the reason it is broken) for every row; a final row without its line end is broken."""
    offset = 0
    with open(path, "rb") as file:
        for line in file:
            if not line.endswith(b"\n"):
                yield offset, line, ValueError("the row has no line end (the write was interrupted)")
                return
            try:
                yield offset, line, layout.parse_line(line)
            except (ValueError, UnicodeDecodeError) as error:
                yield offset, line, ValueError(str(error))
            offset += len(line)


def read_tsv(path: str | os.PathLike, layout: TsvLayout | None = None) -> Iterator[RegionRecord]:
    """The records of a TSV file in file order. A broken last row (an interrupted run) is skipped with a warning;
    a broken row elsewhere is an error."""
    path = Path(path)
    layout = layout or detect_tsv_layout(path)
    pending_error = None
    for offset, _, record in _complete_rows(path, layout):
        if pending_error is not None:
            raise ExtractionError(f"{path}: the row at byte {pending_error[0]} is broken: {pending_error[1]}")
        if isinstance(record, ValueError):
            pending_error = (offset, record)
            continue
        yield record
    if pending_error is not None:
        logger.warning("%s: ignored a broken last row at byte %d (%s)", path, *pending_error)


def scan_and_repair(path: Path, layout: TsvLayout) -> list[str]:
    """The ids of the complete rows of `path`, in file order. Everything from the first broken row on (a
    half-written last row) is cut off, so that appending goes on from a clean row boundary."""
    ids: list[str] = []
    seen: set[str] = set()
    good_size = 0
    for offset, line, record in _complete_rows(path, layout):
        if isinstance(record, ValueError):
            logger.warning(
                "%s: cutting off a broken row at byte %d (%s); it will be extracted again", path, offset, record
            )
            break
        if record.image_id in seen:
            raise ExtractionError(f"{path}: image {record.image_id} appears twice; this is not a file we wrote")
        seen.add(record.image_id)
        ids.append(record.image_id)
        good_size = offset + len(line)
    if path.stat().st_size > good_size:
        try:
            os.truncate(path, good_size)
        except OSError as error:
            raise ExtractionError(f"cannot repair {path}: {error}") from None
    return ids


class TsvWriter(FeatureWriter):
    """Appends rows to a TSV file, whole rows only: a failed write (full disk) is cut back to the last whole row.

    Args:
        path: the file; created if missing.
        layout: `BUTD_TSV` or `LXMERT_TSV`.
        resume: keep the rows already there (repairing a half-written last row); otherwise start empty.
    """

    def __init__(self, path: str | os.PathLike, layout: TsvLayout, resume: bool):
        self.path = Path(path)
        self.layout = layout
        self.completed: list[str] = scan_and_repair(self.path, layout) if resume and self.path.exists() else []
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if resume else os.O_TRUNC)
        try:
            self._fd = os.open(self.path, flags, 0o644)
        except OSError as error:
            raise output_error(self.path, error) from None
        self._size = os.fstat(self._fd).st_size

    def write(self, record: RegionRecord) -> None:
        row = self.layout.encode(record)
        try:
            write_all(self._fd, row)
        except OSError as error:
            os.ftruncate(self._fd, self._size)
            raise output_error(self.path, error) from None
        self._size += len(row)

    def commit(self) -> None:
        """Make the rows written so far durable."""
        try:
            os.fsync(self._fd)
        except OSError as error:
            raise output_error(self.path, error) from None

    @property
    def size(self) -> int:
        return self._size

    def truncate(self) -> None:
        """Drop every row (they were copied elsewhere)."""
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)
        self._size = 0

    def close(self) -> None:
        if self._fd >= 0:
            self.commit()
            os.close(self._fd)
            self._fd = -1

    def abort(self) -> None:
        """Close after a failure: the rows written are whole, nothing more is attempted."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def complete_row_ids(path: Path) -> list[str]:
    """The id field of every complete row (a half-written last row is left out with a warning)."""
    ids = []
    with open(path, "rb") as file:
        for line in file:
            if not line.endswith(b"\n"):
                logger.warning("%s: leaving out a half-written last row", path)
                break
            ids.append(line.split(b"\t", 1)[0].decode())
    return ids


class TsvSource(FeatureSource):
    """One pass notes where each complete row starts; `get` seeks there and parses that row."""

    def __init__(self, path: Path, layout: TsvLayout):
        self.path = path
        self.layout = layout
        self._offsets: dict[str, int] = {}
        offset = 0
        with open(path, "rb") as file:
            for line in file:
                if not line.endswith(b"\n"):
                    logger.warning("%s: ignored a half-written last row", path)
                    break
                image_id = line.split(b"\t", 1)[0].decode()
                if image_id in self._offsets:
                    raise ExtractionError(f"{path}: image {image_id} has more than one row")
                self._offsets[image_id] = offset
                offset += len(line)
        self.ids = list(self._offsets)
        self._file = open(path, "rb")  # noqa: SIM115 (kept open for every `get`)

    def get(self, image_id: str) -> RegionRecord:
        self._file.seek(self._offsets[image_id])
        try:
            return self.layout.parse_line(self._file.readline())
        except (ValueError, UnicodeDecodeError) as error:
            raise ExtractionError(f"{self.path}: the row of image {image_id} is broken: {error}") from None

    def close(self) -> None:
        self._file.close()


def merge_tsv(shards: list[Path], output: Path, layout: TsvLayout) -> None:
    """Concatenate the complete rows of `shards` (each checked to parse) into `output`, written atomically."""
    temporary = temporary_path(output)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for shard in shards:
            with open(shard, "rb") as file:
                for line in file:
                    if not line.endswith(b"\n"):
                        break
                    try:
                        layout.parse_line(line)
                    except (ValueError, UnicodeDecodeError) as error:
                        raise ExtractionError(f"{shard}: a broken row ({error}); resume that shard first") from None
                    write_all(fd, line)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(temporary, output)
    except OSError as error:
        raise output_error(output, error) from None
    finally:
        if fd >= 0:
            os.close(fd)
        temporary.unlink(missing_ok=True)


def _first_row_fields(path: Path) -> int:
    with open(path, "rb") as file:
        return file.readline().count(b"\t") + 1


class TsvFormat(OutputFormat):
    """One TSV dialect as an output format: a file that only ever grows by whole rows."""

    def __init__(self, layout: TsvLayout, suffixes: tuple[str, ...] = ()):
        self.layout = layout
        self.name = layout.name
        self.suffixes = suffixes

    def recognises(self, path: Path) -> bool:
        return path.is_file() and _first_row_fields(path) == len(self.layout.fields)

    def open_writer(self, path: Path, resume: bool, options: WriterOptions) -> TsvWriter:
        return TsvWriter(path, self.layout, resume)

    def read(self, path: Path) -> Iterator[RegionRecord]:
        return read_tsv(path, self.layout)

    def open_source(self, path: Path) -> TsvSource:
        return TsvSource(path, self.layout)

    def stored_ids(self, path: Path) -> list[str]:
        return complete_row_ids(path)

    def merge(self, shards: list[Path], output: Path) -> None:
        merge_tsv(shards, output, self.layout)


BUTD_TSV_FORMAT = TsvFormat(BUTD_TSV, suffixes=(".tsv",))  # the original's format, what a `.tsv` output means
LXMERT_TSV_FORMAT = TsvFormat(LXMERT_TSV)
