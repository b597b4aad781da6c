"""The .caffemodel reader (protobuf wire format, no Caffe), the prototxt reader and the vocabularies, on files the
tests write themselves and on the golden network definitions."""

import re

import numpy as np
import pytest
from caffe_wire import field_bytes, layer_bytes, tag, varint, write_caffemodel
from golden import GOLDEN, VOCAB

from butd_frcnn.conversion.caffemodel import CaffeModelError, parse_net, read_caffemodel
from butd_frcnn.conversion.prototxt import (
    PrototxtError,
    parse_param_str,
    parse_text_format,
    proposal_parameters,
    read_prototxt,
)
from butd_frcnn.conversion.vocab import VocabularyError, attribute_names_from_vocabulary, id2label_from_vocabulary

WEIGHT = np.arange(2 * 3 * 5 * 5, dtype=np.float32).reshape(2, 3, 5, 5) / 7
BIAS = np.array([0.5, -1.25], dtype=np.float32)


@pytest.mark.parametrize("legacy_layout", [False, True], ids=["layer", "V1 layers"])
@pytest.mark.parametrize("legacy_shape", [False, True], ids=["shape", "num-channels-height-width"])
@pytest.mark.parametrize("double", [False, True], ids=["float", "double"])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "unpacked"])
def test_reader_decodes_every_encoding(tmp_path, legacy_layout, legacy_shape, double, packed):
    path = write_caffemodel(
        tmp_path / "net.caffemodel",
        [("conv1", "Convolution", [WEIGHT, BIAS]), ("fc", "InnerProduct", [WEIGHT.reshape(2, 75)])],
        legacy=legacy_layout,
        legacy_shape=legacy_shape,
        double=double,
        packed=packed,
    )
    net = read_caffemodel(path)
    assert net.name == "test-net"
    assert net.layout == ("layers" if legacy_layout else "layer")
    assert [layer.name for layer in net.layers] == ["conv1", "fc"]
    assert [layer.type for layer in net.layers] == ["Convolution", "InnerProduct"]
    conv, fc = net.layers
    assert conv.blobs[0].dtype == (np.float64 if double else np.float32)
    expected_bias_shape = (1, 1, 1, 2) if legacy_shape else (2,)
    assert conv.blobs[1].shape == expected_bias_shape
    assert fc.blobs[0].shape == ((1, 1, 2, 75) if legacy_shape else (2, 75))
    np.testing.assert_array_equal(conv.blobs[0].reshape(WEIGHT.shape), WEIGHT.astype(conv.blobs[0].dtype))
    np.testing.assert_array_equal(conv.blobs[1].reshape(-1), BIAS)
    assert net.size == path.stat().st_size


def test_reader_hashes_the_file_and_matches_the_golden_checksum(golden_dir):
    net = read_caffemodel(golden_dir / "tiny_seed0.caffemodel")
    assert net.sha256 == "94a3c530777ea257f2d6c924e418a31eec5964765c1c8830c2bf5334f4adb324"
    assert len([layer for layer in net.layers if layer.blobs]) == 59


def test_reader_skips_fields_it_does_not_need(tmp_path):
    """Unknown fields of every wire type (input names, a varint, fixed32/64 values) are skipped, not misread."""
    layer = layer_bytes("conv1", "Convolution", [WEIGHT])
    extra = (
        field_bytes(3, b"data")  # NetParameter.input
        + tag(7, 0)
        + varint(1)  # force_backward
        + tag(50, 5)
        + b"\x00\x00\x80\x3f"
        + tag(51, 1)
        + b"\x00" * 8
    )
    net = parse_net(extra + field_bytes(100, layer + tag(9, 0) + varint(3)))
    np.testing.assert_array_equal(net.layers[0].blobs[0], WEIGHT)


@pytest.mark.parametrize("keep", [1, 7, 0.5, -1], ids=["1 byte", "7 bytes", "half", "all but the last byte"])
def test_truncated_caffemodel_is_a_plain_error(tmp_path, golden_dir, keep):
    data = (golden_dir / "tiny_seed0.caffemodel").read_bytes()
    size = int(len(data) * keep) if isinstance(keep, float) else (keep if keep > 0 else len(data) + keep)
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(data[:size])
    with pytest.raises(CaffeModelError, match=r"cut\.caffemodel: .*truncated"):
        read_caffemodel(path)


def test_random_bytes_fail_fast(tmp_path):
    path = tmp_path / "noise.caffemodel"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 8 << 20, dtype=np.uint8).tobytes())
    with pytest.raises(CaffeModelError, match="noise.caffemodel") as error:
        read_caffemodel(path)
    # the error comes from the first few fields, not after reading the whole file
    assert int(re.search(r"at byte (\d+)", str(error.value)).group(1)) < 1024


def test_text_file_gets_a_hint(golden_dir):
    with pytest.raises(CaffeModelError, match="text file.*not the .prototxt"):
        read_caffemodel(golden_dir / "test_tiny.prototxt")


def test_empty_file(tmp_path):
    (tmp_path / "empty.caffemodel").write_bytes(b"")
    with pytest.raises(CaffeModelError, match="empty"):
        read_caffemodel(tmp_path / "empty.caffemodel")


def test_blob_whose_data_does_not_fill_its_shape(tmp_path):
    blob = field_bytes(7, field_bytes(1, varint(4) + varint(4))) + field_bytes(5, np.zeros(15, "<f4").tobytes())
    data = field_bytes(100, field_bytes(1, b"conv1") + field_bytes(7, blob))
    with pytest.raises(CaffeModelError, match=r"layer 'conv1'.*15 values but its shape \[4, 4\] needs 16"):
        parse_net(data, "bad.caffemodel")


def test_text_format_parser_reads_nested_messages_lists_and_strings():
    text = """
    name: "net"  # a comment
    input_shape { dim: 1 dim: [3, 224] }
    layer { name: 'a' type: "Python" python_param { param_str: "'feat_stride': 16 \\n'scales': [1, 2]" } }
    layer < name: "b" bias_term: false eps: 1e-3 pool: MAX >
    """
    parsed = parse_text_format(text)
    assert parsed["name"] == ["net"]
    assert parsed["input_shape"][0]["dim"] == [1, 3, 224]
    first, second = parsed["layer"]
    assert first["python_param"][0]["param_str"] == ["'feat_stride': 16 \n'scales': [1, 2]"]
    assert second == {"name": ["b"], "bias_term": [False], "eps": [1e-3], "pool": ["MAX"]}


def test_param_str_forms():
    assert parse_param_str("'feat_stride': 16 \n'scales': !!python/tuple [4, 8, 16, 32]", "x") == {
        "feat_stride": 16,
        "scales": [4, 8, 16, 32],
    }
    assert parse_param_str("{'feat_stride': 8, 'ratios': (0.5, 1)}", "x") == {"feat_stride": 8, "ratios": [0.5, 1]}
    with pytest.raises(PrototxtError, match="cannot read param_str"):
        parse_param_str("feat_stride = 16", "layer 'proposal'")


@pytest.mark.parametrize("variant", ["tiny", "full"])
def test_golden_prototxts_give_the_original_proposal_parameters(variant):
    definition = read_prototxt(GOLDEN / f"test_{variant}.prototxt")
    assert proposal_parameters(definition) == {"feature_stride": 16, "anchor_scales": [4.0, 8.0, 16.0, 32.0]}
    assert definition.by_name()["roi_pool5"].type == "ROIPooling"


def test_unreadable_prototxt_names_the_line(tmp_path):
    path = tmp_path / "broken.prototxt"
    path.write_text('name: "x"\nlayer {\n  name: "conv1"\n  type: \n}\n')
    with pytest.raises(PrototxtError, match=r"broken.prototxt: line 5: expected a value"):
        read_prototxt(path)


def test_vocabularies_name_classes_by_their_first_synonym():
    id2label = id2label_from_vocabulary(VOCAB / "objects_vocab.txt", 1601)
    attributes = attribute_names_from_vocabulary(VOCAB / "attributes_vocab.txt", 401)
    assert len(id2label) == 1601 and id2label[0] == "__background__" and id2label[1] == "yolk"
    assert len(attributes) == 401 and attributes[0] == "__no_attribute__" and attributes[1] == "gray"  # "gray,grey"


def test_vocabulary_of_the_wrong_size():
    with pytest.raises(VocabularyError, match=r"attributes_vocab.txt has 400 entries.*cls_score has 1601 outputs"):
        id2label_from_vocabulary(VOCAB / "attributes_vocab.txt", 1601)
