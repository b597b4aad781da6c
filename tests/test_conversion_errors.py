"""Bad inputs, each its own test: a clear error naming the file, layer and shapes, and nothing half-written left
behind. Also the output folder's atomicity, the selection defaults of the released checkpoints, and the Hub push
with an injected client (no network)."""

import os
from types import SimpleNamespace

import httpx2
import huggingface_hub
import numpy as np
import pytest
import torch
from caffe_wire import random_layers, write_caffemodel
from cli_runner import run_cli, run_cli_process
from golden import GOLDEN, VOCAB
from huggingface_hub.errors import HfHubHTTPError
from safetensors import safe_open

from butd_frcnn.conversion.convert import EXPECTED_FILES, convert_caffemodel
from butd_frcnn.conversion.errors import ConversionError
from butd_frcnn.conversion.prototxt import PrototxtError
from butd_frcnn.conversion.push import HubPushError
from butd_frcnn.conversion.vocab import VocabularyError
from butd_frcnn.conversion.weights import WeightMappingError
from butd_frcnn.image_processing_butd_frcnn import ButdFrcnnImageProcessor
from butd_frcnn.ops_butd_frcnn import generate_cell_anchors


@pytest.fixture(scope="module")
def tiny_layers():
    return random_layers(GOLDEN / "param_shapes_tiny.json", seed=2)


def edited(layers, drop=(), replace=None, add=()):
    """A copy of `layers` without `drop`, with `replace[name] = (type, blobs)`, plus `add`."""
    replace = replace or {}
    out = []
    for name, layer_type, blobs in layers:
        if name in drop:
            continue
        out.append((name, *replace[name]) if name in replace else (name, layer_type, blobs))
    return out + list(add)


def convert_layers(tmp_path, layers, **kwargs):
    path = write_caffemodel(tmp_path / "model.caffemodel", layers)
    return convert_caffemodel(path, tmp_path / "out", **kwargs)


def assert_nothing_written(tmp_path):
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.caffemodel"]


def test_cli_reports_a_truncated_file_without_traceback(tmp_path, golden_dir):
    data = (golden_dir / "tiny_seed0.caffemodel").read_bytes()
    (tmp_path / "cut.caffemodel").write_bytes(data[: len(data) // 2])
    result = run_cli("convert", str(tmp_path / "cut.caffemodel"), str(tmp_path / "out"), check=False)
    assert result.returncode == 1
    assert "butd-frcnn convert: error:" in result.stderr and "cut.caffemodel" in result.stderr
    assert "truncated" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_network_of_another_architecture(tmp_path):
    rng = np.random.default_rng(0)
    vgg = [
        (name, kind, [rng.standard_normal(shape).astype(np.float32) for shape in shapes])
        for name, kind, shapes in [
            ("conv1_1", "Convolution", [(8, 3, 3, 3), (8,)]),
            ("conv1_2", "Convolution", [(8, 8, 3, 3), (8,)]),
            ("fc6", "InnerProduct", [(16, 8), (16,)]),
            ("cls_score", "InnerProduct", [(21, 16), (21,)]),
            ("bbox_pred", "InnerProduct", [(84, 16), (84,)]),
        ]
    ]
    with pytest.raises(WeightMappingError, match=r"no ResNet blocks.*conv1_1, conv1_2, fc6.*Only the bottom-up"):
        convert_layers(tmp_path, vgg)
    assert_nothing_written(tmp_path)


def test_resnet_without_the_attribute_head(tmp_path, tiny_layers):
    layers = edited(tiny_layers, drop=("cls_embedding", "fc_attr", "attr_score"))
    with pytest.raises(WeightMappingError, match=r"no layer 'attr_score'.*bottom-up-attention"):
        convert_layers(tmp_path, layers)
    assert_nothing_written(tmp_path)


def test_missing_layer(tmp_path, tiny_layers):
    with pytest.raises(WeightMappingError, match=r"no layer 'bn3a_branch2b'.*backbone\.res3\.0\.conv2\.norm"):
        convert_layers(tmp_path, edited(tiny_layers, drop=("bn3a_branch2b",)))
    assert_nothing_written(tmp_path)


def test_missing_blob(tmp_path, tiny_layers):
    gamma = {name: blobs for name, _, blobs in tiny_layers}["scale2a_branch2c"][0]
    layers = edited(tiny_layers, replace={"scale2a_branch2c": ("Scale", [gamma])})
    with pytest.raises(
        WeightMappingError,
        match=r"'scale2a_branch2c' has 1 blob\(s\); .*blob 1 .*backbone\.res2\.0\.conv3\.norm\.bias",
    ):
        convert_layers(tmp_path, layers)
    assert_nothing_written(tmp_path)


def test_wrong_shape(tmp_path, tiny_layers):
    layers = edited(tiny_layers, replace={"res3a_branch2b": ("Convolution", [np.zeros((16, 16, 1, 1), np.float32)])})
    with pytest.raises(
        WeightMappingError,
        match=r"'res3a_branch2b' blob 0 has shape \[16, 16, 1, 1\], but backbone\.res3\.0\.conv2\.weight needs "
        r"\[16, 16, 3, 3\]",
    ):
        convert_layers(tmp_path, layers)
    assert_nothing_written(tmp_path)


def test_unknown_layer(tmp_path, tiny_layers):
    layers = edited(tiny_layers, add=[("fc_mystery", "InnerProduct", [np.zeros((5, 7), np.float32)])])
    with pytest.raises(
        WeightMappingError, match=r"layers the model does not know: fc_mystery \(InnerProduct.*\[5, 7\]"
    ):
        convert_layers(tmp_path, layers)
    assert_nothing_written(tmp_path)


def test_unknown_blob_of_a_known_layer(tmp_path, tiny_layers):
    weight = {name: blobs for name, _, blobs in tiny_layers}["conv1"][0]
    layers = edited(tiny_layers, replace={"conv1": ("Convolution", [weight, np.zeros(8, np.float32)])})
    with pytest.raises(WeightMappingError, match=r"'conv1' has 2 blobs but the model uses 1: unknown blob 1 .*\[8\]"):
        convert_layers(tmp_path, layers)
    assert_nothing_written(tmp_path)


def test_layer_of_the_wrong_type(tmp_path, tiny_layers):
    blobs = {name: blobs for name, _, blobs in tiny_layers}["bn_conv1"]
    layers = edited(tiny_layers, replace={"bn_conv1": ("Scale", blobs)})
    with pytest.raises(WeightMappingError, match=r"'bn_conv1' is a Scale layer, but the model needs a BatchNorm"):
        convert_layers(tmp_path, layers)
    assert_nothing_written(tmp_path)


def prototxt_with(tmp_path, *replacements: tuple[str, str]):
    text = (GOLDEN / "test_tiny.prototxt").read_text()
    for old, new in replacements:
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "edited.prototxt"
    path.write_text(text)
    return path


def test_prototxt_that_disagrees_with_the_model(tmp_path, golden_dir):
    prototxt = prototxt_with(tmp_path, ("dilation: 2", "dilation: 1"), ("pooled_w: 14", "pooled_w: 7"))
    with pytest.raises(PrototxtError) as error:
        convert_caffemodel(golden_dir / "tiny_seed0.caffemodel", tmp_path / "out", prototxt=prototxt)
    message = str(error.value)
    assert "edited.prototxt disagrees with the model" in message
    assert "layer 'res5a_branch2b': dilation [1] but the config makes 2" in message
    assert "layer 'roi_pool5': pooled_w 7 but the config has roi_pool_size 14" in message
    assert not (tmp_path / "out").exists()


def test_prototxt_anchor_scales_that_the_weights_do_not_have(tmp_path, golden_dir):
    prototxt = prototxt_with(tmp_path, ("[4, 8, 16, 32]", "[8, 16, 32]"))
    with pytest.raises(WeightMappingError, match=r"rpn_cls_score has 24 channels \(12 anchors\).*3 scales make 9"):
        convert_caffemodel(golden_dir / "tiny_seed0.caffemodel", tmp_path / "out", prototxt=prototxt)
    assert not (tmp_path / "out").exists()


def test_prototxt_feature_stride_that_the_strides_do_not_make(tmp_path, golden_dir):
    prototxt = prototxt_with(tmp_path, ("'feat_stride': 16", "'feat_stride': 8"))
    with pytest.raises(
        ConversionError, match=r"feature_stride=8 but stage_strides=\[1, 2, 2, 1\] put res4 at stride 16"
    ):
        convert_caffemodel(golden_dir / "tiny_seed0.caffemodel", tmp_path / "out", prototxt=prototxt)


def test_prototxt_proposal_parameters_reach_the_config_and_the_anchors(tmp_path, golden_dir):
    """Other scales (still 12 anchors, so the weights fit): taken from param_str, not from the defaults."""
    prototxt = prototxt_with(tmp_path, ("[4, 8, 16, 32]", "[2, 4, 8, 16]"))
    result = convert_caffemodel(golden_dir / "tiny_seed0.caffemodel", tmp_path / "out", prototxt=prototxt)
    assert result.config.anchor_scales == [2.0, 4.0, 8.0, 16.0]
    with safe_open(tmp_path / "out" / "model.safetensors", framework="pt") as f:
        anchors = f.get_tensor("proposal_generator.anchor_generator.cell_anchors")
    torch.testing.assert_close(anchors, generate_cell_anchors(16, [0.5, 1.0, 2.0], [2.0, 4.0, 8.0, 16.0]))
    assert anchors[4].tolist() == [-8.0, -8.0, 23.0, 23.0]  # ratio 1, scale 2: 32 x 32 centred at 7.5


def test_vocabulary_that_does_not_fit_the_head(tmp_path, golden_dir):
    with pytest.raises(VocabularyError, match=r"attributes_vocab.txt has 400 entries.*cls_score has 1601"):
        convert_caffemodel(
            golden_dir / "tiny_seed0.caffemodel", tmp_path / "out", objects_vocab=VOCAB / "attributes_vocab.txt"
        )
    assert not (tmp_path / "out").exists()


def test_unwritable_output_folder(tmp_path, golden_dir):
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(ConversionError, match=r"cannot create the output folder: .*a-file is not an existing folder"):
        convert_caffemodel(golden_dir / "tiny_seed0.caffemodel", tmp_path / "a-file" / "out")


def test_failure_while_writing_leaves_nothing_behind(tmp_path, golden_dir, monkeypatch):
    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ButdFrcnnImageProcessor, "save_pretrained", disk_full)
    with pytest.raises(ConversionError, match=r"writing the converted model failed: .*No space left on device"):
        convert_caffemodel(golden_dir / "tiny_seed0.caffemodel", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_is_kept_unless_overwrite(tmp_path, golden_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(ConversionError, match=r"out: the folder exists and is not empty"):
        convert_caffemodel(golden_dir / "tiny_seed0.caffemodel", out)
    assert [path.name for path in out.iterdir()] == ["keep.txt"]

    convert_caffemodel(golden_dir / "tiny_seed0.caffemodel", out, overwrite=True)
    assert sorted(path.name for path in out.iterdir()) == sorted(EXPECTED_FILES)
    assert [path.name for path in tmp_path.iterdir()] == ["out"]


def test_existing_empty_folder_is_used(tmp_path, golden_dir):
    (tmp_path / "out").mkdir()
    convert_caffemodel(golden_dir / "tiny_seed0.caffemodel", tmp_path / "out")
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == sorted(EXPECTED_FILES)


@pytest.mark.parametrize(
    ("file_name", "boxes", "expected"),
    [
        ("resnet101_faster_rcnn_final.caffemodel", None, (10, 100, 0.2)),
        ("resnet101_faster_rcnn_final_iter_320000.caffemodel", None, (36, 36, 0.2)),
        ("resnet101_faster_rcnn_final_iter_320000.caffemodel", "10-100", (10, 100, 0.2)),
        ("resnet101_faster_rcnn_final.caffemodel", "36", (36, 36, 0.2)),
        ("my_weights.caffemodel", None, (10, 100, 0.2)),
    ],
)
def test_selection_defaults_of_the_released_checkpoints(tmp_path, golden_dir, file_name, boxes, expected):
    checkpoint = tmp_path / file_name
    checkpoint.symlink_to(golden_dir / "tiny_seed0.caffemodel")
    config = convert_caffemodel(checkpoint, tmp_path / "out", boxes=boxes).config
    assert (config.min_boxes, config.max_boxes, config.score_threshold) == expected


class FakeHub:
    """Records what the converter asks of the Hub; `fail` makes the upload raise."""

    def __init__(self, fail: Exception | None = None):
        self.calls, self.fail = [], fail
        self.checked_tokens = []

    def whoami(self, token=None, **kwargs):
        """The token check before the work (kept apart from `calls`, the push itself)."""
        self.checked_tokens.append(token)
        return {"name": "someone", "auth": {"accessToken": {"role": "write"}}}

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        files = sorted(path.name for path in os.scandir(kwargs["folder_path"]))
        self.calls.append(("upload_folder", kwargs["repo_id"], {**kwargs, "files": files}))
        if self.fail:
            raise self.fail
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc", pr_url=None)


def test_push_to_hub_creates_the_repository_and_uploads_the_folder_in_one_commit(tmp_path, golden_dir):
    hub = FakeHub()
    result = convert_caffemodel(
        golden_dir / "tiny_seed0.caffemodel",
        tmp_path / "out",
        push_to_hub="org/butd-frcnn-tiny",
        private=True,
        revision="v1",
        token="hf_test_token",
        hub_api=hub,
    )
    assert hub.checked_tokens == ["hf_test_token"], "the token is checked before converting"
    assert [call[0] for call in hub.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert hub.calls[0][1:] == (
        "org/butd-frcnn-tiny",
        {
            "token": "hf_test_token",
            "private": True,
            "repo_type": "model",
            "exist_ok": True,
        },
    )
    assert hub.calls[1][2]["branch"] == "v1"
    upload = hub.calls[2][2]
    assert upload["folder_path"] == str(tmp_path / "out") and upload["revision"] == "v1"
    assert upload["files"] == sorted(EXPECTED_FILES) and upload["create_pr"] is False
    assert result.hub_url == "https://huggingface.co/org/butd-frcnn-tiny/commit/abc"
    assert 'from_pretrained("org/butd-frcnn-tiny"' in (tmp_path / "out" / "README.md").read_text()


def test_push_without_token_fails_before_converting(tmp_path, golden_dir, monkeypatch):
    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    hub = FakeHub()
    with pytest.raises(HubPushError, match=r"no Hugging Face token found: log in with `hf auth login`"):
        convert_caffemodel(golden_dir / "tiny_seed0.caffemodel", tmp_path / "out", push_to_hub="org/m", hub_api=hub)
    assert hub.calls == []
    assert not (tmp_path / "out").exists()


def test_cli_push_without_token(tmp_path, golden_dir):
    result = run_cli_process(  # HF_HOME is read when huggingface_hub is imported: a fresh process
        "convert",
        str(golden_dir / "tiny_seed0.caffemodel"),
        str(tmp_path / "out"),
        "--push-to-hub",
        "org/m",
        env={"HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": None, "HUGGING_FACE_HUB_TOKEN": None},
        check=False,
    )
    assert result.returncode == 1
    assert "error: no Hugging Face token found" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def forbidden() -> HfHubHTTPError:
    request = httpx2.Request("POST", "https://huggingface.co/api/org/m/commit/main")
    return HfHubHTTPError("403 Forbidden: you cannot write to org", response=httpx2.Response(403, request=request))


@pytest.mark.parametrize("failure", [lambda: OSError("connection refused"), forbidden], ids=["network", "refused"])
def test_failed_push_keeps_the_converted_folder(tmp_path, golden_dir, failure):
    hub = FakeHub(fail=failure())
    with pytest.raises(HubPushError, match=r"pushing .*out to org/m failed: .*hf upload org/m"):
        convert_caffemodel(
            golden_dir / "tiny_seed0.caffemodel",
            tmp_path / "out",
            push_to_hub="org/m",
            token="t",
            hub_api=hub,
            create_pr=True,
        )
    assert hub.calls[-1][2]["create_pr"] is True
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == sorted(EXPECTED_FILES)
