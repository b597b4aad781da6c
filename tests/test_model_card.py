"""The Hub README template `model_card.md`: its placeholders are the documented ones, and the README rendered from it
passes huggingface_hub's ModelCard parser offline, its metadata surviving a save and load."""

import ast
import re
import string

import yaml
from golden import REPO_ROOT
from huggingface_hub import ModelCard

TEMPLATE = REPO_ROOT / "model_card.md"
SAMPLE_VALUES = {
    "repo_id": "example-org/butd-frcnn",
    "checkpoint": "resnet101_faster_rcnn_final.caffemodel",
    "checkpoint_sha256": "0123456789abcdef" * 4,
    "package_version": "0.1.0",
    "min_boxes": 10,
    "max_boxes": 100,
    "score_threshold": 0.2,
    "parity_table": "| stage | agreement |\n|---|---|\n| selected boxes | 5 / 5 images identical |",
    "conversion_report": "639 blobs mapped; skipped: `fc_rel1`, `rel_score` (relation head, unused at test time).",
}
EXPECTED_METADATA = {
    "license": "mit",
    "library_name": "transformers",
    "pipeline_tag": "object-detection",
    "inference": False,
    "datasets": ["visual_genome"],
}


def split_template() -> tuple[str, str]:
    """The leading HTML comment (documentation of the template) and the body that is rendered."""
    text = TEMPLATE.read_text(encoding="utf-8")
    assert text.startswith("<!--"), "model_card.md must open with its documentation comment"
    comment, body = text.split("-->", 1)
    return comment, body.lstrip()


def render(values: dict) -> str:
    return split_template()[1].format(**values)


def test_placeholders_are_exactly_the_documented_ones():
    comment, body = split_template()
    documented = set(re.findall(r"^\s+\{(\w+)\}\s", comment, flags=re.MULTILINE))
    used = {field for _, field, _, _ in string.Formatter().parse(body) if field is not None}
    assert used == documented == set(SAMPLE_VALUES)


def test_rendered_card_parses_and_its_metadata_round_trips(tmp_path):
    rendered = render(SAMPLE_VALUES)
    assert rendered.startswith("---\n")
    card = ModelCard(rendered)
    metadata = card.data.to_dict()
    assert {key: metadata[key] for key in EXPECTED_METADATA} == EXPECTED_METADATA
    assert {"object-detection", "image-feature-extraction", "custom_code"} <= set(metadata["tags"])
    assert metadata == yaml.safe_load(rendered.split("---\n")[1])

    path = tmp_path / "README.md"
    card.save(path)
    reloaded = ModelCard.load(path)
    assert reloaded.data.to_dict() == metadata
    assert reloaded.text.strip() == card.text.strip()


def test_rendered_card_carries_the_values_usage_and_citation():
    rendered = render(SAMPLE_VALUES)
    for value in SAMPLE_VALUES.values():
        assert str(value) in rendered
    assert not re.search(r"\{(" + "|".join(SAMPLE_VALUES) + r")\}", rendered), "a placeholder is left"
    for needle in (
        'AutoModel.from_pretrained("example-org/butd-frcnn", trust_remote_code=True)',
        'pipeline("object-detection"',
        'pipeline("image-feature-extraction"',
        "butd-frcnn extract",
        "handler.py",
        "inference: false",
        "Anderson",
        "CVPR",
    ):
        assert needle in rendered, needle


def test_python_examples_in_the_rendered_card_are_valid_python():
    blocks = re.findall(r"```python\n(.*?)```", render(SAMPLE_VALUES), flags=re.DOTALL)
    assert len(blocks) >= 4
    for block in blocks:
        ast.parse(block)
