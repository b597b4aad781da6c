"""Sharing a listing between processes: `--shard I/N` by hand, or the ranks of `torchrun`."""

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .records import ExtractionError


@dataclass(frozen=True)
class Shard:
    """Share `index` of `count`: every `count`-th image of the listing, starting at `index`."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> "Shard":
        match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
        if not match or not 0 <= int(match[1]) < int(match[2]):
            raise ExtractionError(f"--shard takes I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
        return cls(int(match[1]), int(match[2]))

    @classmethod
    def from_torchrun(cls) -> "Shard | None":
        """This process's share when started by `torchrun` (RANK of WORLD_SIZE), else None."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(int(os.environ["RANK"]), world_size) if world_size > 1 else None

    def select(self, items: list) -> list:
        return items[self.index :: self.count]

    def output_path(self, output: Path) -> Path:
        """`features.tsv` -> `features.shard-00001-of-00004.tsv`; the whole output itself when unsharded."""
        if self.count == 1:
            return output
        tag = f".shard-{self.index:05d}-of-{self.count:05d}"
        return output.with_name(output.stem + tag + output.suffix)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def all_shard_paths(output: Path, count: int) -> list[Path]:
    return [Shard(index, count).output_path(output) for index in range(count)]
