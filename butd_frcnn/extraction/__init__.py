"""The extraction tool: images (files or a `datasets` dataset) in, the region-feature files downstream
vision-and-language code reads out.

`extract` runs a (sharded, resumable) extraction, `merge_outputs` combines shards, `read_features` reads any of the
formats back as `RegionRecord`s, `push_features` shares a Parquet output on the Hub as a dataset. They load on first
use, so that `butd-frcnn extract --help` imports neither torch nor transformers.
"""

import sys
import types

from ..lazy_exports import lazy_exports

_EXPORTS = {
    "FORMATS": "formats",
    "ExtractOptions": "extract",
    "ExtractionError": "records",
    "ExtractionSummary": "extract",
    "RegionRecord": "records",
    "detect_format": "formats",
    "extract": "extract",
    "merge_outputs": "merge",
    "push_features": "dataset_push",
    "read_features": "formats",
}
__all__ = [
    "FORMATS",
    "ExtractOptions",
    "ExtractionError",
    "ExtractionSummary",
    "RegionRecord",
    "detect_format",
    "extract",
    "merge_outputs",
    "push_features",
    "read_features",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


class _Package(types.ModuleType):
    """Keeps each exported name bound to what it exports: `extract` is both a function and the submodule defining
    it, and importing a submodule binds its name on the package (an eager `from .extract import extract` used to
    rebind it right after)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
