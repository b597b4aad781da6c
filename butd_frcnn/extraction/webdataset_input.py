"""Images from WebDataset tar shards (img2dataset's output): the members of one key (`000042.jpg`, `000042.json`,
...) are one sample, its id the key, its image the member with an image file's extension.

Read with `tarfile`, a member at a time, never decoding anything but the image (a broken `.json` beside it costs
nothing); `datasets`' own webdataset reader parses every `.json` member and stops the whole run at the first broken one.
A member whose bytes are no image goes to the errors file like a bad file; a key without an image too; a tar damaged
past some point is an error naming the tar and the last key read, and what was extracted before is kept.

With `--shard I/N` (or torchrun) a shard lists and reads only its own tars (every N-th, in sorted order), so N
machines read the corpus once between them.
"""

import glob
import logging
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .inputs import IMAGE_SUFFIXES, ImageEntry, ImageSource, check_image_ids
from .records import ExtractionError
from .sharding import Shard

logger = logging.getLogger(__name__)

TAR_SUFFIX = ".tar"
KEY_REMEDY = "Rename the keys of the tars (their members' names up to the first dot)."


def is_webdataset(name) -> bool:
    """Whether `--dataset NAME` names WebDataset tars: a `.tar` file, a glob of them, or a folder holding them."""
    if not isinstance(name, str):
        return False
    path = Path(name).expanduser()
    if path.suffix.lower() == TAR_SUFFIX:
        return True
    return path.is_dir() and any(path.glob(f"*{TAR_SUFFIX}")) and not any(path.glob("*.parquet"))


def tar_files(name: str) -> list[str]:
    """The tars `--dataset NAME` names, sorted."""
    path = Path(name).expanduser()
    found = sorted(glob.glob(str(path / f"*{TAR_SUFFIX}")) if path.is_dir() else glob.glob(str(path)))
    if not found:
        raise ExtractionError(f"--dataset {name}: no .tar file matches")
    return found


def split_key(member_name: str) -> tuple[str, str]:
    """`dir/000042.jpg` -> (`dir/000042`, `jpg`): WebDataset's rule (the key ends at the first dot of the file name)."""
    folder, _, file_name = member_name.rpartition("/")
    stem, _, suffix = file_name.partition(".")
    return (f"{folder}/{stem}" if folder else stem), suffix.lower()


def image_member(members: dict[str, bytes], key: str, image_suffix: str | None = None) -> bytes | None:
    """The image of one sample (its members by suffix): the `image_suffix` member, or the one member with an image
    file's extension; None when it has none (an error if it has several and no suffix was chosen)."""
    if image_suffix is not None:
        return members.get(image_suffix)
    images = [suffix for suffix in members if f".{suffix.rsplit('.', 1)[-1]}" in IMAGE_SUFFIXES]
    if len(images) > 1:
        raise ExtractionError(f"sample {key} has several images {sorted(images)}: choose one with --image-column")
    return members[images[0]] if images else None


def _check_end(archive: tarfile.TarFile) -> None:
    """`tarfile` ends its iteration quietly at a garbled header or the end of a truncated file: a complete tar
    goes on with its end-of-archive block of zeros there."""
    archive.fileobj.seek(archive.offset)
    block = archive.fileobj.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE:
        raise tarfile.ReadError("it ends early (truncated)")
    if block.strip(b"\0"):
        raise tarfile.ReadError(f"a member's header at byte {archive.offset} is garbled")


def sample_entry(key: str, where: str, members: dict[str, bytes], image_suffix: str | None = None) -> ImageEntry:
    """The entry of one sample: its image member's bytes, or the problem the errors file reports."""
    try:
        data = image_member(members, key, image_suffix)
    except ExtractionError as error:
        return ImageEntry(key, where, problem=str(error))
    if data is None:
        return ImageEntry(key, where, problem=f"the sample has no image member (it has {sorted(members)})")
    return ImageEntry(key, where, data=data)


class WebDatasetSource(ImageSource):
    """The samples of WebDataset tars, or with a `shard`, of its share of the tars only.

    Args:
        name: a `.tar` file, a glob of them, or a folder holding them.
        shard: this process's share: every `count`-th tar from `index` (or, with fewer tars than shards, every
            `count`-th sample, read from every tar).
        image_suffix: the member holding the image (`jpg`), where samples hold several (default: the only one).
    """

    sharded = True

    def __init__(self, name: str, shard: Shard | None = None, image_suffix: str | None = None):
        self.name = name
        self.shard = shard = shard or Shard()
        self.image_suffix = image_suffix
        tars = tar_files(name)
        self.by_tars = shard.count > 1 and len(tars) >= shard.count
        if shard.count > 1 and not self.by_tars:
            logger.warning(
                "%s: %d tars for %d shards: every shard reads every tar (give at least as many tars as shards)",
                name, len(tars), shard.count,
            )  # fmt: skip
        self.tars = shard.select(tars) if self.by_tars else tars
        self._ids: list[str] = []
        self._where: list[str] = []

    def describe(self) -> str:
        return self.name

    def _samples(self, read_data: bool) -> Iterator[tuple[str, str, dict[str, bytes]]]:
        """(key, tar, {suffix: bytes}) of each sample in order (the bytes only with `read_data`)."""
        for tar in self.tars:
            key, members = None, {}
            try:
                with tarfile.open(tar, "r:*") as archive:  # members in order; a listing seeks past their data
                    for member in archive:
                        if not member.isfile():
                            continue
                        member_key, suffix = split_key(member.name)
                        if member_key != key:
                            if key is not None:
                                yield key, tar, members
                            key, members = member_key, {}
                        members[suffix] = archive.extractfile(member).read() if read_data else b""
                    _check_end(archive)
            except (tarfile.TarError, OSError, EOFError) as error:
                after = f"after the sample {key}" if key is not None else "at its start"
                raise ExtractionError(
                    f"{tar}: the tar is damaged {after} ({type(error).__name__}: {error}). What was extracted before "
                    "is kept: repair or replace the tar, then rerun with --resume."
                ) from None
            if key is not None:
                yield key, tar, members

    def _list_image_ids(self) -> list[str]:
        ids, where = [], []
        for key, tar, _ in self._samples(read_data=False):
            ids.append(key)
            where.append(tar)
        if self.shard.count > 1 and not self.by_tars:
            ids, where = self.shard.select(ids), self.shard.select(where)
        check_image_ids(ids, lambda index: f"{where[index]} sample {ids[index]}", KEY_REMEDY)
        self._ids, self._where = ids, where
        return ids

    def images(self, indices: Iterable[int]) -> Iterator[ImageEntry]:
        self.image_ids()  # lists the images once, if not yet done
        wanted = {self._ids[index] for index in indices}
        for key, tar, members in self._samples(read_data=True):
            if key not in wanted:
                continue
            yield sample_entry(key, f"{tar} sample {key}", members, self.image_suffix)
