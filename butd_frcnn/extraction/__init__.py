"""The extraction tool: images in, the region-feature files downstream vision-and-language code reads out.

`extract` runs a (sharded, resumable) extraction, `merge_outputs` combines shards, `read_features` reads any of the
formats back as `RegionRecord`s.
"""

from .extract import ExtractionSummary, ExtractOptions, extract
from .formats import FORMATS, detect_format, read_features
from .merge import merge_outputs
from .records import ExtractionError, RegionRecord

__all__ = [
    "FORMATS",
    "ExtractOptions",
    "ExtractionError",
    "ExtractionSummary",
    "RegionRecord",
    "detect_format",
    "extract",
    "merge_outputs",
    "read_features",
]
