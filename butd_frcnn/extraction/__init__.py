"""The extraction tool: images (files or a `datasets` dataset) in, the region-feature files downstream
vision-and-language code reads out.

`extract` runs a (sharded, resumable) extraction, `merge_outputs` combines shards, `read_features` reads any of the
formats back as `RegionRecord`s, `push_features` shares a Parquet output on the Hub as a dataset.
"""

from .dataset_push import push_features
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
    "push_features",
    "read_features",
]
