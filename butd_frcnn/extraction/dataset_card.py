"""The README (dataset card) of a Parquet feature output pushed to the Hub: what the features are, how they were made
(model and revision, selection, command line), what they hold (counts, failed images) and how to load them.

The YAML header names the shards as the `train` split (`configs`), so that `load_dataset` and the dataset viewer read
exactly them; the card is parsed back with `huggingface_hub.DatasetCard` before it is written.
"""

from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData

from .. import __version__
from .parquet import SHARD_GLOB, schema_columns, shard_files, shard_schema, shard_statistics
from .records import ExtractionError
from .sidecars import RunManifest, errors_path, read_errors

TAGS = ["butd-frcnn", "bottom-up-attention", "region-features", "faster-rcnn", "visual-genome", "vision-and-language"]
FAILED_SHOWN = 100  # failed images listed in the card (all of them are counted)

COLUMN_MEANINGS = {
    "boxes": "`x1, y1, x2, y2` in original-image pixels, the original's inclusive convention",
    "features": "the region features (`pool5_flat`)",
    "objects": "0-based object ids: line numbers of the Visual Genome `objects_vocab.txt`",
    "objects_conf": "their probabilities",
    "attrs": "0-based attribute ids: line numbers of `attributes_vocab.txt`",
    "attrs_conf": "their probabilities",
    "cls_prob": "the probability of every object class (background first)",
    "attr_prob": 'the probability of every attribute ("no attribute" first)',
}


def _columns_table(output: Path) -> str:
    """The columns of the shards, with their types and meanings."""
    lines = [
        "| column | type | what |",
        "|---|---|---|",
        "| `image_id` | string | the image's id (from the input's id column, its row number, or the file name) |",
        "| `image_h`, `image_w` | int64 | size of the decoded image, before resizing |",
        "| `num_boxes` | int64 | N, the number of selected regions |",
    ]
    for name, (dtype, width) in schema_columns(shard_schema(output)).items():
        shape = "N" if width is None else f"N x {width}"
        lines.append(f"| `{name}` | {shape} {dtype} | {COLUMN_MEANINGS.get(name, '')} |")
    return "\n".join(lines)


def _model_line(manifest: RunManifest, revision: str | None) -> str:
    if revision:
        return f"[`{manifest.model}`](https://huggingface.co/{manifest.model}) at revision `{revision}`"
    return f"`{manifest.model}` (a local model folder)"


def _failed_section(output: Path) -> str:
    failures = read_errors(errors_path(output))
    if not failures:
        return "Every image given was extracted."
    lines = [
        f"{len(failures)} images could not be extracted (unreadable, or no region survived the selection):",
        "",
        "| image id | where | reason |",
        "|---|---|---|",
    ]
    lines += [" | ".join(["", *map(_cell, failure), ""]).strip() for failure in failures[:FAILED_SHOWN]]
    if len(failures) > FAILED_SHOWN:
        lines.append(f"\n... and {len(failures) - FAILED_SHOWN} more (see the run's `.errors.tsv`).")
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Text as one Markdown table cell."""
    return text.replace("|", "\\|")


def render_dataset_card(output: Path, repo_id: str, command_line: str, model_revision: str | None) -> str:
    """The card of the finished Parquet output `output`, to be pushed as the dataset `repo_id`."""
    manifest = RunManifest.load(output)
    if manifest is None:
        raise ExtractionError(f"{output}: no run manifest beside it; only outputs of `butd-frcnn extract` are pushed")
    if not shard_files(output):
        raise ExtractionError(f"{output}: holds no Parquet shard to push")
    images, boxes = shard_statistics(output)
    feature_width = schema_columns(shard_schema(output))["features"][1]
    selection = manifest.selection
    boxes_text = (
        f"{selection['min_boxes']}" if selection["min_boxes"] == selection["max_boxes"]
        else f"{selection['min_boxes']} to {selection['max_boxes']}"
    )  # fmt: skip
    data = DatasetCardData(
        pretty_name=f"BUTD region features: {repo_id.split('/')[-1]}",
        tags=TAGS,
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": SHARD_GLOB}]}],
    )
    body = f"""
# Bottom-up-attention region features of {manifest.source or "images"}

For every image, the regions that the bottom-up-attention Faster R-CNN (Anderson et al., CVPR 2018; ResNet-101,
Visual Genome 1600 objects and 400 attributes) selects, with their {feature_width}-d features, boxes, objects and attributes:
the "BUTD features" that VQA, captioning and vision-and-language models (LXMERT, VisualBERT, UNITER, ...) read.
Extracted with [butd-frcnn](https://pypi.org/project/butd-frcnn/) {__version__}, which computes the original Caffe
model's numbers.

| | |
|---|---|
| images | {images} |
| boxes | {boxes} ({boxes / max(images, 1):.1f} per image) |
| model | {_model_line(manifest, model_revision)} |
| selection | {boxes_text} regions per image, score threshold {selection["score_threshold"]}, {manifest.dtype} |
| source | {manifest.source or "image files"} |
| command | `{command_line}` |

## Load it

```python
from datasets import load_dataset

features = load_dataset("{repo_id}", split="train").with_format("numpy")  # or "torch"
image = features[0]
image["features"]  # (num_boxes, {feature_width}) float32
image["boxes"]     # (num_boxes, 4) float32: x1, y1, x2, y2 in original-image pixels
```

The shards are plain Parquet (`pandas.read_parquet`, `pyarrow.parquet.read_table` read them too); each row is one
image:

{_columns_table(output)}

## Failed images

{_failed_section(output)}
"""
    text = f"---\n{data.to_yaml()}\n---\n{body}"
    parsed = DatasetCard(text).data
    if parsed.configs != data.configs:
        raise ExtractionError(f"the dataset card's metadata does not parse back as written: {parsed}")
    return text
