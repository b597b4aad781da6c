"""The Visual Genome vocabularies of the original (`objects_vocab.txt`, `attributes_vocab.txt`): one class per line,
synonyms separated by commas (`gray,grey`). Index 0 of the model's classes (background) and attributes ("no
attribute") is not in the files."""

import os

from ..configuration_butd_frcnn import BACKGROUND_LABEL, NO_ATTRIBUTE_LABEL
from .errors import ConversionError


class VocabularyError(ConversionError):
    """A vocabulary file that does not fit the checkpoint's heads (wrong count, blank entries)."""


def read_vocabulary(path: str | os.PathLike, expected: int, head: str) -> list[str]:
    """The names in `path`, one per line; a class is named by its first synonym, as the original's demo does.

    Args:
        expected: how many entries the checkpoint's `head` layer needs (its size without index 0).
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise VocabularyError(f"{path}: not a UTF-8 text file") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.split(",")[0].strip() for line in lines]
    blank = [number for number, name in enumerate(names, 1) if not name]
    if blank:
        raise VocabularyError(f"{path}: line {blank[0]} is empty; every line must name a class")
    if len(names) != expected:
        raise VocabularyError(
            f"{path} has {len(names)} entries, but the checkpoint's {head} has {expected + 1} outputs "
            f"(index 0 plus {expected} names): is this the right vocabulary for this checkpoint?"
        )
    return names


def id2label_from_vocabulary(path: str | os.PathLike, num_labels: int) -> dict[int, str]:
    """`{0: "__background__", 1: first object, ...}` for a `cls_score` of `num_labels` outputs."""
    return {0: BACKGROUND_LABEL, **dict(enumerate(read_vocabulary(path, num_labels - 1, "cls_score"), 1))}


def attribute_names_from_vocabulary(path: str | os.PathLike, num_attributes: int) -> list[str]:
    """`["__no_attribute__", first attribute, ...]` for an `attr_score` of `num_attributes` outputs."""
    return [NO_ATTRIBUTE_LABEL, *read_vocabulary(path, num_attributes - 1, "attr_score")]
