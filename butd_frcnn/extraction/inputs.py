"""What to extract: image files, folders (recursive) and list files, each image with a unique id.

Every problem with the listing itself (a named input that does not exist, duplicate ids, ids that cannot be
written) is an error before any work starts; problems with the images' contents are found later, per image.
"""

import logging
import os
import re
from collections import defaultdict
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


@dataclass(frozen=True)
class ImageEntry:
    image_id: str
    path: str


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
    check_image_ids(entries)
    return entries


def check_image_ids(entries: list[ImageEntry]) -> None:
    """Ids must be unique and writable in every format (no tabs, line breaks, quotes or slashes, not hidden)."""
    bad = [e for e in entries if not e.image_id or e.image_id.startswith(".") or _FORBIDDEN_IN_IDS.search(e.image_id)]
    if bad:
        listed = "; ".join(f"{e.image_id!r} ({e.path})" for e in bad[:10])
        raise ExtractionError(
            f"{len(bad)} image ids cannot be written (empty, starting with '.', or holding a tab, line break, quote "
            f"or slash): {listed}. Give other ids in a list file (id<TAB>path)."
        )
    paths_by_id: dict[str, list[str]] = defaultdict(list)
    for entry in entries:
        paths_by_id[entry.image_id].append(entry.path)
    duplicates = {image_id: paths for image_id, paths in paths_by_id.items() if len(paths) > 1}
    if duplicates:
        listed = "; ".join(f"{image_id!r}: {', '.join(paths)}" for image_id, paths in list(duplicates.items())[:10])
        raise ExtractionError(
            f"{len(duplicates)} image ids are used by more than one image, so their features would overwrite each "
            f"other: {listed}. Rename the files, or give unique ids in a list file (id<TAB>path)."
        )
    logger.debug("listed %d images", len(entries))
