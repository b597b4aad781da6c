"""Round trips on synthetic checkpoints the tests write themselves: blobs -> file -> converted folder -> weights, for
the full-size ResNet-101 shapes (no forward pass: the state dicts are compared), both protobuf layouts, legacy
shapes, double data, and the `.pt` layouts of caffemodel2pytorch and of the transformers-research FRCNN."""

import json
import re

import numpy as np
import pytest
import torch
from caffe_wire import random_layers, write_caffemodel
from golden import GOLDEN, TINY_ARCHITECTURE, load_golden
from safetensors import safe_open

from butd_frcnn.conversion.caffemodel import read_caffemodel
from butd_frcnn.conversion.checkpoints import FORMAT_CAFFEMODEL2PYTORCH, FORMAT_DETECTRON, CheckpointError
from butd_frcnn.conversion.convert import convert_caffemodel
from butd_frcnn.conversion.weights import caffe_to_state_dict, config_from_caffe
from butd_frcnn.ops_butd_frcnn import objectness_probabilities

# The relation head and heat maps of the released file: present in the .caffemodel, not in the test network.
UNUSED_LAYERS = [
    ("fc_rel1", "InnerProduct", [(64, 32), (64,)]),
    ("rel_score", "InnerProduct", [(21, 64), (21,)]),
    ("heatmap_conv", "Convolution", [(2, 8, 1, 1)]),
]
HEADS = {
    "rpn_conv/3x3": "proposal_generator.rpn_head.conv",
    "rpn_cls_score": "proposal_generator.rpn_head.objectness_logits",
    "rpn_bbox_pred": "proposal_generator.rpn_head.anchor_deltas",
    "cls_score": "roi_heads.box_predictor.cls_score",
    "bbox_pred": "roi_heads.box_predictor.bbox_pred",
    "cls_embedding": "roi_heads.attribute_predictor.cls_embedding",
    "fc_attr": "roi_heads.attribute_predictor.fc_attr",
    "attr_score": "roi_heads.attribute_predictor.attr_score",
}
BLOCK = re.compile(r"^(res|bn|scale)([2-5])([a-z])(\d*)_branch(1|2a|2b|2c)$")
BRANCH = {"1": "shortcut", "2a": "conv1", "2b": "conv2", "2c": "conv3"}


def expected_entries(name: str, blobs: list[np.ndarray]) -> dict[str, np.ndarray]:
    """What the model must hold for one Caffe layer, derived here independently of the converter's table."""
    as_float = [np.asarray(blob, dtype=np.float32) for blob in blobs]
    if name in HEADS:
        module = HEADS[name]
        shaped = {"weight": as_float[0]} | ({"bias": as_float[1].reshape(-1)} if len(blobs) > 1 else {})
        if name in ("cls_score", "bbox_pred", "fc_attr", "attr_score", "cls_embedding"):
            shaped["weight"] = shaped["weight"].reshape(shaped["weight"].shape[-2:])
        return {f"{module}.{key}": value for key, value in shaped.items()}
    if name in ("conv1", "bn_conv1", "scale_conv1"):
        kind, module = {"conv1": "res", "bn_conv1": "bn", "scale_conv1": "scale"}[name], "backbone.stem.conv1"
    else:
        kind, stage, letter, number, branch = BLOCK.match(name).groups()
        index = int(number) if number else ord(letter) - ord("a")
        prefix = "roi_heads.res5" if stage == "5" else f"backbone.res{stage}"
        module = f"{prefix}.{index}.{BRANCH[branch]}"
    if kind == "res":
        return {f"{module}.weight": as_float[0]}
    if kind == "scale":
        return {f"{module}.norm.weight": as_float[0].reshape(-1), f"{module}.norm.bias": as_float[1].reshape(-1)}
    inverse = np.float32(1) / as_float[2].reshape(-1)[0]  # Caffe: blob * (1 / factor), in float32
    return {
        f"{module}.norm.running_mean": (as_float[0] * inverse).reshape(-1),
        f"{module}.norm.running_var": (as_float[1] * inverse).reshape(-1),
    }


def expected_state_dict(layers) -> dict[str, np.ndarray]:
    expected = {}
    for name, _, blobs in layers:
        if name.startswith(("fc_rel", "rel_", "fc_subject", "fc_object", "heatmap")):
            continue
        expected.update(expected_entries(name, blobs))
    return expected


def with_unused_layers(layers, seed=1):
    rng = np.random.default_rng(seed)
    extra = [
        (name, kind, [rng.standard_normal(shape).astype(np.float32) for shape in shapes])
        for name, kind, shapes in UNUSED_LAYERS
    ]
    return layers[:10] + extra + layers[10:]


def assert_weights_equal(folder, expected: dict[str, np.ndarray]):
    with safe_open(folder / "model.safetensors", framework="np") as f:
        assert f.metadata() == {"format": "pt"}
        keys = set(f.keys())
        assert keys == set(expected) | {"proposal_generator.anchor_generator.cell_anchors"}
        for key, value in expected.items():
            loaded = f.get_tensor(key)
            assert loaded.dtype == np.float32 and loaded.shape == value.shape, key
            np.testing.assert_array_equal(loaded, value, err_msg=key)


@pytest.fixture(scope="module")
def full_layers():
    """Random blobs with the shapes of the full ResNet-101 network (262 MB), plus unused relation layers."""
    return with_unused_layers(random_layers(GOLDEN / "param_shapes_full.json", seed=0))


@pytest.mark.parametrize("legacy", [False, True], ids=["layer, shape", "V1 layers, num-channels-height-width"])
def test_full_size_round_trip(tmp_path, full_layers, legacy):
    path = write_caffemodel(tmp_path / "full.caffemodel", full_layers, legacy=legacy, legacy_shape=legacy)
    prototxt = None if legacy else GOLDEN / "test_full.prototxt"  # the unmodified original network: it agrees
    result = convert_caffemodel(path, tmp_path / "out", prototxt=prototxt)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["depths"] == [3, 4, 23, 3]
    assert config["hidden_sizes"] == [256, 512, 1024, 2048]
    assert config["bottleneck_sizes"] == [64, 128, 256, 512]
    assert (config["rpn_hidden_size"], config["num_attributes"], len(config["id2label"])) == (512, 401, 1601)
    assert (config["class_embedding_size"], config["attribute_hidden_size"]) == (256, 512)
    assert result.report.layout == ("layers" if legacy else "layer")
    assert result.report.skipped_layers == ["fc_rel1", "rel_score", "heatmap_conv"]
    assert len(result.report.converted_layers) == 320
    assert_weights_equal(tmp_path / "out", expected_state_dict(full_layers))


@pytest.mark.parametrize(
    "encoding",
    [
        {"legacy": True, "legacy_shape": False, "double": True, "packed": True},
        {"legacy": False, "legacy_shape": True, "double": True, "packed": False},
        {"legacy": True, "legacy_shape": True, "double": False, "packed": False},
    ],
    ids=["V1, double", "layer, legacy shapes, unpacked double", "V1, legacy shapes, unpacked float"],
)
def test_tiny_round_trip_of_other_encodings(tmp_path, encoding):
    layers = random_layers(GOLDEN / "param_shapes_tiny.json", seed=1)
    path = write_caffemodel(tmp_path / "tiny.caffemodel", layers, **encoding)
    net = read_caffemodel(path)
    state_dict, _ = caffe_to_state_dict(net, config_from_caffe(net))
    # double blobs are read as Caffe reads them into a float net: cast to float32 first
    expected = expected_state_dict([(n, t, [b.astype(np.float32) for b in blobs]) for n, t, blobs in layers])
    for key, value in expected.items():
        assert state_dict[key].shape == value.shape, key
        np.testing.assert_array_equal(state_dict[key].numpy(), value, err_msg=key)
    assert {key: getattr(config_from_caffe(net), key) for key in TINY_ARCHITECTURE} == TINY_ARCHITECTURE


@pytest.fixture(scope="module")
def golden_tiny_state_dict():
    net = read_caffemodel(GOLDEN / "tiny_seed0.caffemodel")
    state_dict, _ = caffe_to_state_dict(net, config_from_caffe(net))
    return {key: value.clone() for key, value in state_dict.items()}


def load_weights(folder) -> dict[str, np.ndarray]:
    with safe_open(folder / "model.safetensors", framework="np") as f:
        return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (a safe_open handle is not a dict)


def test_caffemodel2pytorch_state_dict(tmp_path, golden_tiny_state_dict):
    """Caffe blob names as keys, two blobs per layer (BatchNorm's factor lost): with the factor given, the same
    weights as converting the .caffemodel."""
    net = read_caffemodel(GOLDEN / "tiny_seed0.caffemodel")
    blobs = {
        f"{layer.name}.{suffix}": torch.from_numpy(blob.copy())
        for layer in net.layers
        for suffix, blob in zip(("weight", "bias"), layer.blobs)
    }
    torch.save(blobs, tmp_path / "tiny.pt")
    with pytest.raises(CheckpointError, match=r"lack their third blob.*--bn-factor"):
        convert_caffemodel(tmp_path / "tiny.pt", tmp_path / "refused")
    assert not (tmp_path / "refused").exists()

    factor = float(net.by_name()["bn_conv1"].blobs[2][0])
    result = convert_caffemodel(tmp_path / "tiny.pt", tmp_path / "out", bn_factor=factor)
    assert result.report.source_format == FORMAT_CAFFEMODEL2PYTORCH
    converted = load_weights(tmp_path / "out")
    assert set(converted) == set(golden_tiny_state_dict)
    for key, value in golden_tiny_state_dict.items():
        np.testing.assert_array_equal(converted[key], value.numpy(), err_msg=key)


def research_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The transformers-research FRCNN layout of the same weights: the attribute head inside the box predictor,
    12 sigmoid objectness logits (foreground minus background: sigmoid(f - b) = softmax(b, f)[1]), 6400 box deltas
    without the background, its own anchor table and batch-norm counters."""
    research = {}
    for key, value in state_dict.items():
        key = key.replace("roi_heads.attribute_predictor.", "roi_heads.box_predictor.")
        if key.startswith("proposal_generator.rpn_head.objectness_logits."):
            value = value[12:] - value[:12]
        elif key.startswith("roi_heads.box_predictor.bbox_pred."):
            value = value[4:]
        elif key.endswith("cell_anchors"):
            key, value = key + ".0", torch.zeros(12, 4)
        elif key.endswith("norm.running_var"):
            research[key.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
        research[key] = value.clone()
    return research


def test_research_frcnn_state_dict(tmp_path, golden_tiny_state_dict):
    torch.save(research_layout(golden_tiny_state_dict), tmp_path / "pytorch_model.bin")
    result = convert_caffemodel(tmp_path / "pytorch_model.bin", tmp_path / "out")
    assert result.report.source_format == FORMAT_DETECTRON
    assert any("sigmoid" in note for note in result.report.notes)
    converted = load_weights(tmp_path / "out")
    changed = {"proposal_generator.rpn_head.objectness_logits.", "roi_heads.box_predictor.bbox_pred."}
    for key, value in golden_tiny_state_dict.items():
        if not key.startswith(tuple(changed)):
            np.testing.assert_array_equal(converted[key], value.numpy(), err_msg=key)
    for suffix in ("weight", "bias"):
        deltas = converted[f"roi_heads.box_predictor.bbox_pred.{suffix}"]
        assert deltas.shape[0] == 1601 * 4 and not deltas[:4].any()
        np.testing.assert_array_equal(
            deltas[4:], golden_tiny_state_dict[f"roi_heads.box_predictor.bbox_pred.{suffix}"][4:]
        )
        logits = converted[f"proposal_generator.rpn_head.objectness_logits.{suffix}"]
        assert logits.shape[0] == 24 and not logits[:12].any()

    # the RPN on the original's res4 gives the original's objectness probabilities
    golden = load_golden("tiny", "astronaut")
    res4 = torch.from_numpy(golden["blob/res4a"])
    hidden = torch.relu(
        torch.nn.functional.conv2d(
            res4,
            torch.from_numpy(converted["proposal_generator.rpn_head.conv.weight"]),
            torch.from_numpy(converted["proposal_generator.rpn_head.conv.bias"]),
            padding=1,
        )
    )
    logits = torch.nn.functional.conv2d(
        hidden,
        torch.from_numpy(converted["proposal_generator.rpn_head.objectness_logits.weight"]),
        torch.from_numpy(converted["proposal_generator.rpn_head.objectness_logits.bias"]),
    )
    probabilities = objectness_probabilities(logits).numpy()
    np.testing.assert_allclose(probabilities[:, 12:], golden["blob/rpn_cls_prob_reshape"][:, 12:], atol=2e-6)


def test_research_checkpoint_with_unknown_keys(tmp_path, golden_tiny_state_dict):
    checkpoint = research_layout(golden_tiny_state_dict)
    checkpoint["roi_heads.box_predictor.relation.weight"] = torch.zeros(3, 3)
    torch.save({"model": checkpoint}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"model.pt: keys the model does not know: \['roi_heads"):
        convert_caffemodel(tmp_path / "model.pt", tmp_path / "out")


def test_pickle_of_arbitrary_objects_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"conv1.weight": torch.zeros(1), "payload": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil.pt: cannot be loaded as a plain state dict.*weights_only"):
        convert_caffemodel(tmp_path / "evil.pt", tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_research_checkpoint_with_a_missing_key(tmp_path, golden_tiny_state_dict):
    checkpoint = research_layout(golden_tiny_state_dict)
    del checkpoint["backbone.res3.0.conv2.norm.running_var"]
    torch.save(checkpoint, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"model.pt: the checkpoint lacks: \['backbone\.res3\.0\.conv2\.norm"):
        convert_caffemodel(tmp_path / "model.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()
