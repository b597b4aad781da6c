"""Crash-safe file primitives shared by the writers: complete writes, atomic replacement, clear disk-full errors."""

import errno
import os
import shutil
from pathlib import Path

from .records import ExtractionError

_DISK_FULL = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded"}
_DISK_FULL[errno.EFBIG] = "the file-size limit was reached"


def output_error(path: str | os.PathLike, error: OSError) -> ExtractionError:
    """Turn a failed write into an error that says what happened and how to go on."""
    reason = _DISK_FULL.get(error.errno)
    if reason is not None:
        return ExtractionError(
            f"{reason} while writing {path} ({error.strerror}). The output is intact up to the last complete image: "
            "free some space, then rerun the same command with --resume."
        )
    return ExtractionError(f"cannot write {path}: {error}")


def write_all(fd: int, data: bytes) -> None:
    """`os.write` until every byte is out (a write may be partial)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_directory(path: str | os.PathLike) -> None:
    """Make a rename or a new file in `path` durable (a power cut cannot undo it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, sync_directory: bool = True) -> None:
    """Write `path` so that it either keeps its old content or holds all of `data`, even after a power cut (once
    its folder is synced: here, or by the caller after a batch of files)."""
    temporary = temporary_path(path)
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise output_error(path, error) from None
    if sync_directory:
        fsync_directory(path.parent)


def publish(temporary: Path, path: Path) -> None:
    """Give a file completely written under a temporary name its final name, durably: its data is synced before the
    rename (a power cut cannot leave a renamed but empty file) and the rename after it."""
    fd = os.open(temporary, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    fsync_directory(path.parent)


def temporary_path(path: Path) -> Path:
    """A hidden sibling name for a file being written (readers that glob `*.npz` or `*.tsv` never see it)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove_temporaries(folder: Path, name: str = "*") -> int:
    """Delete what an interrupted `atomic_write_bytes` left behind; returns how many files it removed."""
    removed = 0
    for leftover in folder.glob(f".{name}.tmp-*"):
        leftover.unlink(missing_ok=True)
        removed += 1
    return removed


def link_into_new_folder(files: list[tuple[Path, str]], folder: Path) -> None:
    """Create `folder` holding each `(source, name)` of `files` (hard-linked where possible, else copied): built
    under a hidden name, synced and renamed, so the folder appears complete or not at all."""
    temporary = temporary_path(folder)
    try:
        temporary.mkdir()
        for source, name in files:
            try:
                os.link(source, temporary / name)
            except OSError:
                shutil.copy2(source, temporary / name)
        fsync_directory(temporary)
        os.replace(temporary, folder)
        fsync_directory(folder.parent)
    except OSError as error:
        raise output_error(folder, error) from None
    finally:
        if temporary.exists():
            shutil.rmtree(temporary)
