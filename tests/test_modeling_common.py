"""What transformers' own model tests check for every model, on a tiny random ButdFrcnnModel: config JSON round
trip, safetensors save/load round trip (a missing buffer restored on the meta device), tuple vs dict outputs field by
field, loading in bfloat16, gradients reaching the input and the parameters."""

import dataclasses

import pytest
import torch
from golden import dtype_keyword
from model_tester import ButdFrcnnModelTester
from safetensors.torch import load_file, save_file

from butd_frcnn import ButdFrcnnConfig, ButdFrcnnModel, ButdFrcnnModelOutput
from butd_frcnn.ops_butd_frcnn import generate_cell_anchors

# the model runs with gradients off here, as users run it for features (tests about gradients turn them on)
pytestmark = pytest.mark.usefixtures("no_grad")

SCREENED_ONLY = ("settled_proposals",)  # set by precision "fp32-screened" alone (tests/test_precision.py)
OUTPUT_FIELDS = [field.name for field in dataclasses.fields(ButdFrcnnModelOutput) if field.name not in SCREENED_ONLY]


@pytest.fixture(scope="module")
def tester():
    return ButdFrcnnModelTester()


@pytest.fixture(scope="module")
def model(tester):
    return tester.create_model()


@pytest.fixture(scope="module")
def inputs(tester):
    return tester.prepare_inputs()


@pytest.fixture(scope="module")
def outputs(model, inputs):
    """Every field set: hidden states asked for, original sizes given."""
    with torch.no_grad():
        result = model(**inputs, output_hidden_states=True)
    assert all(result[name] is not None for name in OUTPUT_FIELDS), "a field is missing from the full output"
    assert int(result.num_boxes.min()) >= 3, "the tester's inputs must select regions"
    return result


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    model.save_pretrained(folder)
    return folder


def assert_equal_outputs(actual, expected, context: str):
    """Every field of two outputs equal bit for bit (tuples of tensors element by element)."""
    for name in OUTPUT_FIELDS:
        a, b = actual[name], expected[name]
        if isinstance(b, tuple):
            assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b)), f"{context}: {name} differs"
        else:
            assert torch.equal(a, b), f"{context}: {name} differs"


def test_config_json_round_trip(tester, tmp_path):
    config = tester.get_config()
    path = tmp_path / "config.json"
    config.to_json_file(path)
    assert ButdFrcnnConfig.from_json_file(path).to_dict() == config.to_dict()
    assert ButdFrcnnConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
    config.save_pretrained(tmp_path / "folder")
    loaded = ButdFrcnnConfig.from_pretrained(tmp_path / "folder")
    assert loaded.to_dict() == config.to_dict()
    assert loaded.id2label == config.id2label and loaded.attribute_names == config.attribute_names
    assert loaded.depths == config.depths and loaded.num_anchors == config.num_anchors


def test_save_and_load_round_trip_gives_equal_outputs(model, inputs, outputs, saved):
    assert (saved / "model.safetensors").is_file() and not (saved / "pytorch_model.bin").exists()
    loaded = ButdFrcnnModel.from_pretrained(saved)
    assert not loaded.training
    assert_equal_outputs(loaded(**inputs, output_hidden_states=True), outputs, "reloaded")


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("proposal_generator.anchor_generator.cell_anchors", "anchors"),
        ("roi_heads.res5.0.conv1.norm.running_var", "ones"),
    ],
    ids=["cell_anchors", "a BatchNorm variance"],
)
def test_a_buffer_missing_from_the_checkpoint_is_initialised_on_loading(model, saved, tmp_path, key, expected):
    """transformers 5 builds the model on the meta device and initialises what the checkpoint lacks through
    `_init_weights`: a buffer left out must come back with its defined value, not uninitialised memory."""
    state = load_file(saved / "model.safetensors")
    del state[key]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((saved / "config.json").read_text())
    loaded = ButdFrcnnModel.from_pretrained(tmp_path)
    value = loaded.get_buffer(key)
    config = loaded.config
    if expected == "anchors":
        reference = generate_cell_anchors(config.anchor_base_size, config.anchor_ratios, config.anchor_scales)
    else:
        reference = torch.ones_like(model.get_buffer(key))
    assert value.device.type == "cpu" and torch.equal(value, reference)
    for name, tensor in model.state_dict().items():
        if name != key:
            assert torch.equal(loaded.state_dict()[name], tensor), name


def test_tuple_and_dict_outputs_agree_field_by_field(model, inputs, outputs):
    as_tuple = model(**inputs, output_hidden_states=True, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(OUTPUT_FIELDS)
    for name, value in zip(OUTPUT_FIELDS, as_tuple):
        expected = outputs[name]
        if isinstance(expected, tuple):
            assert all(torch.equal(x, y) for x, y in zip(value, expected)), name
        else:
            assert torch.equal(value, expected), name
    # fields left unset (no hidden states, no original sizes) are left out of the tuple, as in transformers
    short = model(inputs["pixel_values"], inputs["image_sizes"], inputs["scales"], return_dict=False)
    assert len(short) == len(OUTPUT_FIELDS) - 2 and torch.equal(short[0], outputs.region_features)


def test_config_return_dict_false_gives_tuples(tester, inputs, outputs):
    model = tester.create_model(return_dict=False)
    as_tuple = model(**inputs)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], outputs.region_features)
    assert isinstance(model(**inputs, return_dict=True), ButdFrcnnModelOutput)


def test_loading_in_bfloat16_runs(saved, inputs, outputs):
    model = ButdFrcnnModel.from_pretrained(saved, **dtype_keyword(torch.bfloat16))
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    result = model(**{**inputs, "pixel_values": inputs["pixel_values"].to(torch.bfloat16)})
    assert result.region_features.dtype == torch.bfloat16 and torch.isfinite(result.region_features).all()
    assert result.class_probs.dtype == torch.float32
    count = int(result.num_proposals[0])
    torch.testing.assert_close(result.class_probs[0, :count].sum(-1), torch.ones(count))
    assert ((result.num_boxes >= 3) & (result.num_boxes <= 8)).all()
    # the same regions as in float32, to bf16's precision: every selected region's features close to a float32 one
    features = result.region_features[0, : int(result.num_boxes[0])].float()
    reference = outputs.proposal_features[0, : int(outputs.num_proposals[0])]
    cosine = torch.nn.functional.cosine_similarity(features[:, None], reference[None], dim=-1).amax(dim=1)
    assert (cosine > 0.99).all(), cosine


def test_gradients_reach_the_input_and_the_parameters(tester, inputs, outputs):
    model = tester.create_model()
    pixel_values = inputs["pixel_values"].clone().requires_grad_()
    with torch.enable_grad():
        result = model(**{**inputs, "pixel_values": pixel_values}, output_hidden_states=True)
        assert result.region_features.requires_grad and result.class_probs.requires_grad
        assert not result.object_ids.requires_grad, "ids are not differentiable"
        (result.region_features.sum() + result.class_probs[..., 1:].sum() + result.attribute_probs.sum()).backward()
    gradient = pixel_values.grad
    assert gradient is not None and torch.isfinite(gradient).all() and gradient.abs().sum() > 0
    # (random weights start every residual branch at zero, so that its inner convolutions get no gradient yet)
    for name in (
        "backbone.stem.conv1.weight",
        "backbone.res4.0.shortcut.weight",
        "roi_heads.res5.0.shortcut.weight",
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.attribute_predictor.attr_score.weight",
    ):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    # the same numbers as without gradients, bit for bit
    assert_equal_outputs(result, outputs, "with gradients")
