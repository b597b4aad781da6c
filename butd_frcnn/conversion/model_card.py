"""Render the repository's `model_card.md` into a converted folder's README.

The template opens with an HTML comment that documents it (dropped when rendering); the rest is filled with
`str.format` (literal braces are doubled there). The rendered card is parsed back with `huggingface_hub.ModelCard`
before it is written, so that a template edit that breaks the Hub's metadata fails the conversion, not the upload.
"""

import sysconfig
from pathlib import Path

from huggingface_hub import ModelCard

from .. import __version__
from ..configuration_butd_frcnn import ButdFrcnnConfig
from .errors import ConversionError
from .weights import ConversionReport

TEMPLATE_NAME = "model_card.md"
REQUIRED_METADATA = ("license", "library_name", "pipeline_tag", "tags", "datasets")

# Measured by the test suite against the original Caffe code's outputs (../shared/golden, synthetic weights);
# `python benchmarks/parity_report.py --full` prints the full table.
PARITY_TABLE = """| stage | agreement with the original (TINY network on 7 images, FULL ResNet-101 on 2) |
|---|---|
| preprocessed input blob | within 3.1e-5 (OpenCV's IPP resize rounds the last bits differently) |
| res4 features, RPN maps | within 7e-6 and 1.1e-6 (float32 sums of a different BLAS) |
| proposals, given the original's RPN maps | bit-exact, same order, on all 9 image/network pairs |
| proposals end to end | same 300 boxes in the same order on every non-constant image (corners within 3e-4 px) |
| region features, class and attribute probabilities | within 5e-6 |
| selection scores (`max_conf`), given the original's probabilities | bit-exact on all images |
| selected regions, 10-100 and 36 | same boxes, same order, same object and attribute ids, feature cosine >= 0.99999 on every non-constant image (one pair of regions whose scores differ by 2e-7 swaps places in one case) |"""


def model_card_template_path() -> Path:
    """The template: at the repository root (source checkouts, editable installs), else where the wheel installs it
    (`<prefix>/share/butd-frcnn/`)."""
    candidates = [
        Path(__file__).resolve().parents[2] / TEMPLATE_NAME,
        Path(sysconfig.get_path("data")) / "share" / "butd-frcnn" / TEMPLATE_NAME,
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConversionError(f"the model card template is missing: looked for {', '.join(map(str, candidates))}")


def _cell(value) -> str:
    """A markdown table cell: one line, pipes escaped."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _numbers(values) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def architecture_name(config: ButdFrcnnConfig) -> str:
    """`ResNet-101` for depths (3, 4, 23, 3): three convolutions per bottleneck, plus conv1 and the classifier."""
    return f"ResNet-{3 * sum(config.depths) + 2}"


def selection_name(config: ButdFrcnnConfig) -> str:
    if config.min_boxes == config.max_boxes:
        return f"exactly {config.min_boxes}"
    return f"{config.min_boxes}-{config.max_boxes}"


def report_rows(config: ButdFrcnnConfig, report: ConversionReport) -> list[tuple[str, str]]:
    ratios = _numbers(config.anchor_ratios)
    rows = [
        ("source", f"`{Path(report.source).name}`"),
        ("format", f"{report.source_format} (layout: {report.layout})"),
        ("size", f"{report.size:,} bytes"),
        ("SHA-256", f"`{report.sha256}`"),
        ("layers converted", len(report.converted_layers)),
        ("values converted", f"{report.num_parameters:,}"),
        ("layers skipped (not in the test network)", ", ".join(report.skipped_layers) or "none"),
        ("architecture", f"{architecture_name(config)}, blocks per stage (res2-res5) {_numbers(config.depths)}"),
        ("stage widths", _numbers(config.hidden_sizes)),
        ("classes / attributes", f"{config.num_labels} / {config.num_attributes} (index 0: background / none)"),
        ("anchors", f"stride {config.feature_stride}, scales {_numbers(config.anchor_scales)}, ratios {ratios}"),
        ("selection defaults", f"{selection_name(config)} regions, score threshold {config.score_threshold:g}"),
    ]
    rows += [("note", note) for note in report.notes]
    return [(_cell(name), _cell(value)) for name, value in rows]


def render_model_card(
    config: ButdFrcnnConfig,
    report: ConversionReport,
    *,
    model_id: str,
    vocabulary: str,
    template_path: str | Path | None = None,
) -> str:
    """The README of a converted folder; raises `ConversionError` when the template or its metadata is broken."""
    template_path = Path(template_path) if template_path else model_card_template_path()
    text = template_path.read_text(encoding="utf-8")
    if text.startswith("<!--"):
        text = text.split("-->", 1)[1].lstrip()
    rows = report_rows(config, report) + [("class and attribute names", _cell(vocabulary))]
    conversion_report = "\n".join(
        ["| item | value |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows]
    )
    try:
        text = text.format(
            repo_id=model_id,
            checkpoint=Path(report.source).name,
            checkpoint_sha256=report.sha256,
            package_version=__version__,
            min_boxes=config.min_boxes,
            max_boxes=config.max_boxes,
            score_threshold=f"{config.score_threshold:g}",
            parity_table=PARITY_TABLE,
            conversion_report=conversion_report,
        )
    except (KeyError, IndexError, ValueError) as error:
        raise ConversionError(f"{template_path}: cannot render the model card: {error!r}") from error
    metadata = ModelCard(text, ignore_metadata_errors=False).data.to_dict()
    missing = [key for key in REQUIRED_METADATA if not metadata.get(key)]
    if missing:
        raise ConversionError(f"{template_path}: the rendered model card lacks the metadata {missing}")
    return text
