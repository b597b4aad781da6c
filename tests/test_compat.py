"""What `compat_butd_frcnn` gives the model files behaves alike on transformers 4 and 5: the configuration's
constructor, validation and saved form, the initialisers and the image processor's registration. The main suite runs
this on transformers 5; ci/test_at_end.sh runs it again at the floor (transformers 4.51.3) and the newest releases."""

import json

import pytest
import torch
from golden import tiny_config
from transformers import AutoConfig, AutoImageProcessor

from butd_frcnn import ButdFrcnnConfig, ButdFrcnnImageProcessor
from butd_frcnn.compat_butd_frcnn import StrictDataclassClassValidationError, StrictDataclassError, init


def test_fields_take_their_defaults_and_keywords_and_the_rest_reaches_the_base_class():
    config = ButdFrcnnConfig(depths=(1, 2, 3, 4), num_labels=5, output_hidden_states=True, note="kept")
    assert config.depths == [1, 2, 3, 4] and config.stem_channels == 64 and config.anchor_scales == [4, 8, 16, 32]
    assert config.id2label == {0: "__background__", 1: "class_1", 2: "class_2", 3: "class_3", 4: "class_4"}
    assert config.label2id["class_4"] == 4 and config.num_labels == 5
    assert config.output_hidden_states is True and config.note == "kept"
    assert len(config.attribute_names) == config.num_attributes == 401
    assert ButdFrcnnConfig().depths == [3, 4, 23, 3], "a default must not be shared between instances"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"precision": "fast"}, "precision='fast'"),
        ({"depths": [1, 1, 1]}, "need one entry per stage"),
        ({"min_boxes": 20, "max_boxes": 10}, "need 0 < min_boxes <= max_boxes"),
        ({"num_attributes": 3, "attribute_names": ["a"]}, "1 attribute_names for num_attributes=3"),
    ],
)
def test_validation_raises_huggingface_hubs_error_with_our_message(overrides, message):
    with pytest.raises(StrictDataclassClassValidationError, match=message) as raised:
        ButdFrcnnConfig(**overrides)
    assert isinstance(raised.value, StrictDataclassError)


def test_saved_config_loads_back_equal(tmp_path):
    config = tiny_config(id2label={0: "__background__", 1: "dog", 2: "cat"}, precision="bf16", min_boxes=36)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "butd_frcnn" and saved["id2label"] == {"0": "__background__", "1": "dog", "2": "cat"}
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is ButdFrcnnConfig
    for name in ("depths", "anchor_ratios", "attribute_names", "precision", "min_boxes", "id2label", "label2id"):
        assert getattr(loaded, name) == getattr(config, name), name
    assert loaded.to_diff_dict() == config.to_diff_dict()


@torch.enable_grad()  # as where transformers initialises a model (the tests otherwise run without gradients)
def test_initialisers_write_in_place_without_recording_gradients():
    weight = torch.nn.Parameter(torch.ones(3, 4))
    init.zeros_(weight)
    init.copy_(weight, torch.arange(12.0).reshape(3, 4))
    assert torch.equal(weight, torch.arange(12.0).reshape(3, 4)) and weight.grad_fn is None
    init.normal_(weight, std=0.01)
    init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")
    init.constant_(weight, 2.0)
    init.ones_(weight)
    assert torch.equal(weight, torch.ones(3, 4)) and weight.requires_grad and weight.grad_fn is None


def test_image_processor_is_registered_for_the_config_and_round_trips(tmp_path):
    size = {"shortest_edge": 300, "longest_edge": 500}
    processor = ButdFrcnnImageProcessor(pixel_means_bgr=[1.0, 2.0, 3.0], size=size)
    processor.save_pretrained(tmp_path)
    tiny_config().save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is ButdFrcnnImageProcessor
    assert loaded.pixel_means_bgr == [1.0, 2.0, 3.0] and loaded.size == size
