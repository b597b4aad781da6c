"""What to extract: an `ImageSource` lists its images (each with a unique id) before any work, then hands them out
lazily for the decoding workers. `FileSource` reads image files, folders (recursive) and list files.

Every problem with the listing itself (a named input that does not exist, duplicate ids, ids that cannot be
written) is an error before any work starts; problems with the images' contents are found later, per image.
"""

import logging
import os
import re
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .records import ExtractionError

logger = logging.getLogger(__name__)

# what OpenCV's imread (the original's decoder) reads, plus the formats Pillow adds
IMAGE_SUFFIXES = frozenset(
    [
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".bmp",
        ".dib",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".jp2",
        ".j2k",
        ".ras",
        ".sr",
    ]
)
LIST_SUFFIXES = frozenset((".txt", ".lst", ".list"))
ID_STYLES = ("stem", "number")
_FORBIDDEN_IN_IDS = re.compile(r"[\t\r\n\"/\\\x00]")
LIST_FILE_REMEDY = "Rename the files, or give other ids in a list file (id<TAB>path)."


@dataclass(frozen=True)
class ImageEntry:
    """One image as it travels to a decoding worker.

    Attributes:
        image_id: its unique id.
        path: the image file to read, or where `data` comes from (a dataset row); the errors file names it.
        data: the encoded image (as a file holds it), when it does not come from a file.
        problem: why there is no image to decode (a dataset row without one): the worker reports it as a failure.
    """

    image_id: str
    path: str
    data: bytes | None = None
    problem: str | None = None


class ImageSource(ABC):
    """Where a run's images come from. `image_ids` lists every image once, in a fixed order (all processes of a
    distributed run list the same), before any work; `images` yields the chosen ones lazily, so that only the
    images in flight are ever in memory. Either can be asked first: the listing happens once, when first needed.
    A `sharded` source was given its share and lists only that."""

    sharded = False
    _listed_ids: list[str] | None = None

    def image_ids(self) -> list[str]:
        """Every image's id, in order; an `ExtractionError` if the listing is unusable (e.g. duplicate ids)."""
        if self._listed_ids is None:
            self._listed_ids = self._list_image_ids()
        return self._listed_ids

    @abstractmethod
    def _list_image_ids(self) -> list[str]:
        """List the images (once per source; `image_ids` keeps the result)."""

    @abstractmethod
    def images(self, indices: Iterable[int]) -> Iterator[ImageEntry]:
        """The images at `indices` (positions in `image_ids`, ascending), one at a time."""

    @abstractmethod
    def describe(self) -> str:
        """What the images are, in words (for logs and dataset cards)."""


def image_id_from_path(path: str, style: str) -> str:
    """`stem`: the file name without its extension (`COCO_val2014_000000000042`); `number`: the last run of digits
    in it without leading zeros (`42`), the integer ids of the released COCO / VG / Flickr30k TSVs."""
    stem = Path(path).stem
    if style == "stem":
        return stem
    digits = re.findall(r"\d+", stem)
    if not digits:
        raise ExtractionError(f"{path}: --image-ids number needs digits in the file name; give ids in a list file")
    return str(int(digits[-1]))


def _walk_folder(folder: Path) -> list[str]:
    """Image files under `folder`, recursively, in sorted order; hidden files and folders are left out."""
    found = []
    for root, folders, files in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(os.path.join(root, name))
    return found


def _read_list_file(list_file: Path, id_style: str) -> list[ImageEntry]:
    """One image per line: `path` or `id<TAB>path`; relative paths are relative to the list file's folder. Empty
    lines and lines starting with `#` are skipped."""
    entries = []
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ExtractionError(f"cannot read the list file {list_file}: {error}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        image_id, _, path = line.rpartition("\t")
        path = os.path.join(list_file.parent, path) if not os.path.isabs(path) else path
        if not image_id:
            image_id = image_id_from_path(path, id_style)
        if "\t" in image_id:
            raise ExtractionError(f"{list_file}, line {number}: expected `path` or `id<TAB>path`, got more tabs")
        entries.append(ImageEntry(image_id, path))
    return entries


def list_images(inputs: list[str], id_style: str = "stem") -> list[ImageEntry]:
    """All images named by `inputs`, in a deterministic order (every process of a distributed run lists the same).

    Args:
        inputs: image files, folders (searched recursively for image files) and list files (`.txt`, `.lst`,
            `.list`: one `path` or `id<TAB>path` per line).
        id_style: how ids are derived from file names where a list file gives none (see `image_id_from_path`).
    """
    entries: list[ImageEntry] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            entries.extend(ImageEntry(image_id_from_path(p, id_style), p) for p in _walk_folder(path))
        elif path.suffix.lower() in LIST_SUFFIXES:
            entries.extend(_read_list_file(path, id_style))
        elif path.exists() or path.is_symlink():
            entries.append(ImageEntry(image_id_from_path(name, id_style), name))
        else:
            raise ExtractionError(f"{name}: no such file or folder")
    check_image_ids([entry.image_id for entry in entries], lambda index: entries[index].path)
    return entries


def check_image_ids(ids: list[str], location: Callable[[int], str], remedy: str = LIST_FILE_REMEDY) -> None:
    """Ids must be unique and writable in every format (no tabs, line breaks, quotes or slashes, not hidden).

    Args:
        ids: the listing's ids.
        location: where the image at a position of `ids` comes from (a path), for the error message.
        remedy: how the user can give other ids, for the error message.
    """
    bad = [index for index, image_id in enumerate(ids) if not _writable(image_id)]
    if bad:
        listed = "; ".join(f"{ids[index]!r} ({location(index)})" for index in bad[:10])
        raise ExtractionError(
            f"{len(bad)} image ids cannot be written (empty, starting with '.', or holding a tab, line break, quote "
            f"or slash): {listed}. {remedy}"
        )
    positions_by_id: dict[str, list[int]] = defaultdict(list)
    for index, image_id in enumerate(ids):
        positions_by_id[image_id].append(index)
    duplicates = {image_id: found for image_id, found in positions_by_id.items() if len(found) > 1}
    if duplicates:
        listed = "; ".join(
            f"{image_id!r}: {', '.join(location(index) for index in found)}"
            for image_id, found in list(duplicates.items())[:10]
        )
        raise ExtractionError(
            f"{len(duplicates)} image ids are used by more than one image, so their features would overwrite each "
            f"other: {listed}. {remedy}"
        )
    logger.debug("listed %d images", len(ids))


def _writable(image_id: str) -> bool:
    return bool(image_id) and not image_id.startswith(".") and not _FORBIDDEN_IN_IDS.search(image_id)


class FileSource(ImageSource):
    """Image files, folders (recursive) and list files (see `list_images`)."""

    def __init__(self, inputs: list[str], id_style: str = "stem"):
        self.inputs = list(inputs)
        self.id_style = id_style
        self._entries: list[ImageEntry] = []

    def _list_image_ids(self) -> list[str]:
        self._entries = list_images(self.inputs, self.id_style)
        return [entry.image_id for entry in self._entries]

    def images(self, indices: Iterable[int]) -> Iterator[ImageEntry]:
        self.image_ids()  # the listing, made once whichever is asked first
        return (self._entries[index] for index in indices)

    def describe(self) -> str:
        return ", ".join(self.inputs)
