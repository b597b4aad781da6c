"""The image processor: OpenCV-compatible decoding of every odd kind of file, mean subtraction and resize against
the original's data blob, batching, serialisation, and clear errors on bad input."""

import json
import re

import cv2
import numpy as np
import pytest
import torch
from extraction_helpers import _png_with_size
from golden import GOLDEN_IMAGES, golden_image_path, load_golden
from images import make_odd_images
from PIL import Image

from butd_frcnn import ButdFrcnnImageProcessor
from butd_frcnn.image_processing_butd_frcnn import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    ImageTooLargeError,
    compute_scale,
    load_image_bgr,
    resize_like_opencv,
    subtract_means,
)

# Pillow's limit as shipped: the tests check that no call leaves it changed
PILLOW_DEFAULT_LIMIT = Image.MAX_IMAGE_PIXELS

# Resize: ours vs OpenCV's IPP-accelerated float kernel (and the golden blob, made by it). Both compute the same
# bilinear formula; they round differently in the last bits: at most a few float32 ulps of values below 256.
RESIZE_ATOL = 4e-5


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory):
    return make_odd_images(tmp_path_factory.mktemp("odd"))


def test_every_odd_kind_decodes_exactly_like_cv2_imread(odd_images):
    for name, path in odd_images.items():
        expected = cv2.imread(path, cv2.IMREAD_COLOR)
        ours = load_image_bgr(path)
        assert ours.dtype == np.uint8 and ours.shape == expected.shape, name
        assert np.array_equal(ours, expected), f"{name}: max difference {np.abs(ours.astype(int) - expected).max()}"


def test_pillow_jpeg_decode_of_rocket_against_the_pixels_opencv_decoded():
    """The golden file stores what OpenCV decoded; measure how far Pillow's JPEG decode is from it."""
    stored = load_golden("tiny", "rocket")["image_bgr"]
    ours = load_image_bgr(golden_image_path("rocket"))
    difference = np.abs(ours.astype(int) - stored.astype(int))
    # measured: 0 levels (Pillow and OpenCV 4.8 both use libjpeg-turbo's default integer IDCT)
    assert difference.max() <= 0, f"Pillow's decode differs by up to {difference.max()} levels"


@pytest.mark.parametrize("name", list(GOLDEN_IMAGES))
def test_data_blob_matches_the_original(name, processor):
    golden = load_golden("tiny", name)
    source = golden["image_bgr"] if name == "rocket" else golden_image_path(name)
    channel_order = {"input_channel_order": "bgr"} if name == "rocket" else {}
    batch = processor(source, return_tensors="pt", **channel_order)
    expected = golden["blob/data"]
    assert tuple(batch["pixel_values"].shape) == expected.shape
    assert batch["scales"].dtype == torch.float64
    assert batch["scales"].item() == float(golden["im_scale_f64"])
    assert batch["image_sizes"].tolist() == [list(expected.shape[2:])]
    assert batch["original_sizes"].tolist() == [[int(golden["image_h"]), int(golden["image_w"])]]
    np.testing.assert_allclose(batch["pixel_values"].numpy(), expected, rtol=0, atol=RESIZE_ATOL)


def test_resize_agrees_with_cv2_resize_on_random_images():
    generator = np.random.default_rng(3)
    for height, width in [(37, 53), (480, 640), (333, 500), (1000, 90), (17, 1800)]:
        image = (generator.random((height, width, 3)) * 255).astype(np.uint8)
        scale = compute_scale(height, width, 600, 1000)
        means = subtract_means(image, (102.9801, 115.9465, 122.7717))
        ours = resize_like_opencv(means, scale).permute(1, 2, 0).numpy()
        expected = cv2.resize(means.permute(1, 2, 0).numpy(), None, None, fx=scale, fy=scale)
        assert ours.shape == expected.shape
        np.testing.assert_allclose(ours, expected, rtol=0, atol=RESIZE_ATOL)


def test_scale_rule_and_resized_sizes():
    assert compute_scale(480, 640, 600, 1000) == 1.25
    assert compute_scale(300, 1800, 600, 1000) == 1000 / 1800  # the long side would exceed 1000
    image = torch.zeros(3, 300, 1800)
    assert resize_like_opencv(image, 1000 / 1800).shape == (3, 167, 1000)  # 166.67 rounds to 167


def test_array_inputs_in_every_layout_give_the_same_blob(processor):
    generator = np.random.default_rng(4)
    rgb = (generator.random((40, 60, 3)) * 255).astype(np.uint8)
    reference = processor(Image.fromarray(rgb), return_tensors="pt")["pixel_values"]
    variants = {
        "numpy rgb": processor(rgb, return_tensors="pt"),
        "numpy bgr": processor(rgb[..., ::-1].copy(), input_channel_order="bgr", return_tensors="pt"),
        "tensor chw": processor(torch.from_numpy(rgb).permute(2, 0, 1), return_tensors="pt"),
        "uint16": processor(rgb.astype(np.uint16) * 257, return_tensors="pt"),
        "rgba": processor(np.dstack([rgb, rgb[..., :1]]), return_tensors="pt"),
    }
    for name, batch in variants.items():
        assert torch.equal(batch["pixel_values"], reference), name
    grey = rgb[..., 0]
    grey_batch = processor(grey, return_tensors="pt")["pixel_values"]
    assert torch.equal(grey_batch, processor(np.dstack([grey] * 3), return_tensors="pt")["pixel_values"])


def test_batch_pads_with_zeros_and_records_sizes(processor):
    images = [np.full((30, 40, 3), 200, np.uint8), np.full((50, 20, 3), 10, np.uint8)]
    batch = processor(images, return_tensors="pt")
    sizes = batch["image_sizes"].tolist()
    assert sizes == [[600, 800], [1000, 400]]
    assert batch["pixel_values"].shape == (2, 3, 1000, 800)
    assert batch["original_sizes"].tolist() == [[30, 40], [50, 20]]
    assert batch["scales"].tolist() == [20.0, 20.0]
    assert (batch["pixel_values"][0, :, 600:, :] == 0).all() and (batch["pixel_values"][1, :, :, 400:] == 0).all()
    alone = processor(images[1], return_tensors="pt")["pixel_values"]
    assert torch.equal(batch["pixel_values"][1:, :, :1000, :400], alone)


def test_casting_the_batch_keeps_scales_and_boxes_exact(processor):
    box = [[0.5, 1.25, 30.123456, 20.987654]]
    batch = processor(np.zeros((30, 41, 3), np.uint8), boxes=box, return_tensors="pt")
    scale = batch["scales"].clone()
    batch = batch.to(torch.bfloat16)
    assert batch["pixel_values"].dtype == torch.bfloat16
    assert batch["scales"].dtype == torch.float64 and torch.equal(batch["scales"], scale)
    assert batch["boxes"][0].dtype == torch.float32 and torch.equal(batch["boxes"][0], torch.tensor(box))


def test_given_boxes_travel_with_their_images(processor):
    """One image takes its (K, 4) boxes, a list of images one (K_i, 4) per image (`[]` for none); the model checks
    the values."""
    image = np.zeros((30, 40, 3), np.uint8)
    one = processor(image, boxes=[[1, 2, 3, 4], [5, 6, 7, 8]], return_tensors="pt")
    assert [b.tolist() for b in one["boxes"]] == [[[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]]
    two = processor([image, image], boxes=[[[1, 2, 3, 4]], []], return_tensors="np")
    assert [b.shape for b in two["boxes"]] == [(1, 4), (0, 4)] and two["boxes"][0].dtype == np.float32
    assert "boxes" not in processor(image, return_tensors="pt")
    with pytest.raises(ValueError, match="boxes gives 1 entries for 2 images"):
        processor([image, image], boxes=[[[1, 2, 3, 4]]])
    with pytest.raises(ValueError, match="boxes of image 0: not an array"):
        processor(image, boxes=[[1, 2, 3], [1, 2]])


def test_numpy_return_type(processor):
    batch = processor(np.zeros((30, 40, 3), np.uint8), return_tensors="np")
    assert isinstance(batch["pixel_values"], np.ndarray) and batch["pixel_values"].dtype == np.float32


def test_preprocessor_config_round_trip(tmp_path):
    processor = ButdFrcnnImageProcessor(size={"shortest_edge": 300, "longest_edge": 500}, input_channel_order="bgr")
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["size"] == {"shortest_edge": 300, "longest_edge": 500}
    assert saved["pixel_means_bgr"] == [102.9801, 115.9465, 122.7717]
    loaded = ButdFrcnnImageProcessor.from_pretrained(tmp_path)
    assert loaded.size == processor.size and loaded.input_channel_order == "bgr"
    image = np.zeros((30, 40, 3), np.uint8)
    assert torch.equal(
        loaded(image, return_tensors="pt")["pixel_values"], processor(image, return_tensors="pt")["pixel_values"]
    )


def test_unreadable_files_raise_errors_that_name_the_file_and_reason(tmp_path, processor):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    truncated = tmp_path / "truncated.jpg"
    Image.fromarray(np.full((200, 300, 3), 90, np.uint8)).save(tmp_path / "whole.jpg", quality=90)
    truncated.write_bytes((tmp_path / "whole.jpg").read_bytes()[:700])
    cases = {
        empty: "empty",
        text: "not an image",
        truncated: "truncated",
        tmp_path / "missing.png": "no such file",
        tmp_path: "directory",
    }
    for path, reason in cases.items():
        with pytest.raises(ImageDecodeError) as error:
            processor(str(path), return_tensors="pt")
        assert str(path) in str(error.value) and reason in str(error.value)


def test_invalid_arrays_and_degenerate_sizes_are_rejected(processor):
    with pytest.raises(ImageDecodeError, match="uint8"):
        processor(np.zeros((20, 20, 3), np.float32), return_tensors="pt")
    with pytest.raises(ImageDecodeError, match="too elongated"):
        processor(np.zeros((1, 5000, 3), np.uint8), return_tensors="pt")  # 1000/5000 * 1 rounds to 0 rows
    with pytest.raises(TypeError, match="cannot read an image"):
        processor(12345, return_tensors="pt")


def test_decompression_bombs_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("L", (200, 200)).save(path)
    with pytest.raises(ImageTooLargeError, match=r"bomb.png: refused as a decompression bomb: 200 x 200 = 40000"):
        load_image_bgr(path, max_pixels=39_999)
    assert load_image_bgr(path, max_pixels=40_000).shape == (200, 200, 3)
    assert Image.MAX_IMAGE_PIXELS == PILLOW_DEFAULT_LIMIT, "a per-call limit must not leak into the process"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # without a limit of our own, Pillow's global rules
    with pytest.raises(ImageTooLargeError, match="decompression bomb"):
        load_image_bgr(path)
    assert load_image_bgr(path, max_pixels=0).shape == (200, 200, 3)  # 0: no limit at all, not even Pillow's
    assert Image.MAX_IMAGE_PIXELS == 100


def test_images_above_max_pixels_are_refused_before_decoding(tmp_path):
    """Paths, encoded bytes and opened PIL images of more than `max_pixels` are refused from the header: this 100 MP
    PNG holds almost no pixel data, so decoding it first would fail otherwise. Arrays, already decoded, are not
    checked. The limit is set at construction (and saved with the processor) or per call."""
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_with_size(10_000, 10_000))
    processor = ButdFrcnnImageProcessor()
    assert processor.max_pixels == DEFAULT_MAX_PIXELS < 100_000_000
    refused = f"10000 x 10000 = 100000000 pixels is above the limit of {DEFAULT_MAX_PIXELS} (max_pixels)"
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow opens it, and only warns
        opened = Image.open(huge)
    for image in (huge, str(huge), huge.read_bytes(), opened):
        with pytest.raises(ImageTooLargeError, match=re.escape(refused)):
            processor(image, return_tensors="pt")
    assert Image.MAX_IMAGE_PIXELS == PILLOW_DEFAULT_LIMIT, "a per-call limit must not leak into the process"

    small = tmp_path / "small.png"
    Image.new("RGB", (200, 100), "teal").save(small)
    with pytest.raises(ImageTooLargeError, match="200 x 100 = 20000 pixels is above the limit of 19999"):
        processor(small, max_pixels=19_999, return_tensors="pt")
    assert processor(small, max_pixels=20_000, return_tensors="pt")["original_sizes"].tolist() == [[100, 200]]
    ButdFrcnnImageProcessor(max_pixels=19_999).save_pretrained(tmp_path / "saved")
    limited = ButdFrcnnImageProcessor.from_pretrained(tmp_path / "saved")
    assert limited.max_pixels == 19_999
    for image in (small, small.read_bytes(), Image.open(small)):
        with pytest.raises(ImageTooLargeError, match="above the limit of 19999"):
            limited(image, return_tensors="pt")
    assert limited(np.zeros((100, 200, 3), np.uint8), return_tensors="pt")["original_sizes"].tolist() == [[100, 200]]


def test_encoded_bytes_decode_exactly_like_their_file(odd_images):
    processor = ButdFrcnnImageProcessor()
    for name, path in odd_images.items():
        with open(path, "rb") as file:
            data = file.read()
        assert np.array_equal(processor.process_image(data), processor.process_image(path)), name
    with pytest.raises(ImageDecodeError, match=r"not an image Pillow can read \(9 bytes\)"):
        processor(b"not a png", return_tensors="pt")


def test_do_resize_false_keeps_each_image_at_its_own_size(processor):
    images = [np.full((30, 40, 3), 200, np.uint8), np.full((50, 20, 3), 10, np.uint8)]
    for batch in (
        processor(images, do_resize=False, return_tensors="pt"),
        ButdFrcnnImageProcessor(do_resize=False)(images, return_tensors="pt"),
    ):
        assert batch["pixel_values"].shape == (2, 3, 50, 40)
        assert batch["image_sizes"].tolist() == batch["original_sizes"].tolist() == [[30, 40], [50, 20]]
        assert batch["scales"].tolist() == [1.0, 1.0]
        for i, image in enumerate(images):
            expected = subtract_means(image, (102.9801, 115.9465, 122.7717))  # mean-subtracted all the same
            height, width = image.shape[:2]
            assert torch.equal(batch["pixel_values"][i, :, :height, :width], expected)
        assert (batch["pixel_values"][0, :, 30:] == 0).all() and (batch["pixel_values"][1, :, :, 20:] == 0).all()
    assert processor(images[0], return_tensors="pt")["pixel_values"].shape == (1, 3, 600, 800), "per call only"


# one value of each standard flag that asks for something the original did not do
UNHONOURED_FLAGS = {
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "do_rescale": True,
    "do_convert_rgb": True,
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "do_pad": False,
    "pad_size": {"height": 1000, "width": 1000},
    "default_to_square": True,
    "resample": 3,  # PILImageResampling.BICUBIC
    "data_format": "channels_last",
    "input_data_format": "channels_first",
    "device": "meta",
    "image_seq_length": 576,
}


@pytest.mark.parametrize(("flag", "value"), list(UNHONOURED_FLAGS.items()), ids=list(UNHONOURED_FLAGS))
def test_flags_that_cannot_be_honoured_are_refused_at_construction_and_call(flag, value, processor):
    image = np.zeros((30, 40, 3), np.uint8)
    with pytest.raises(ValueError, match=f"ButdFrcnnImageProcessor cannot honour {flag}="):
        ButdFrcnnImageProcessor(**{flag: value})
    with pytest.raises(ValueError, match=f"ButdFrcnnImageProcessor cannot honour {flag}="):
        processor(image, return_tensors="pt", **{flag: value})


def test_a_saved_config_asking_for_normalisation_is_refused_on_loading(tmp_path):
    ButdFrcnnImageProcessor().save_pretrained(tmp_path)
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "do_normalize": True, "image_mean": [0.5] * 3}))
    with pytest.raises(ValueError, match="cannot honour do_normalize=True"):
        ButdFrcnnImageProcessor.from_pretrained(tmp_path)


def test_flags_left_at_what_the_original_does_are_accepted(processor):
    from transformers.image_utils import ChannelDimension, PILImageResampling

    image = np.random.default_rng(5).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    expected = processor(image, return_tensors="pt")["pixel_values"]
    same = {
        "do_normalize": False,
        "do_rescale": False,
        "rescale_factor": 0.5,  # used only with do_rescale
        "do_pad": True,
        "do_center_crop": False,
        "resample": PILImageResampling.BILINEAR,
        "data_format": ChannelDimension.FIRST,
        "device": "cpu",
        "disable_grouping": True,
    }
    assert torch.equal(processor(image, return_tensors="pt", **same)["pixel_values"], expected)
    assert torch.equal(ButdFrcnnImageProcessor(**same)(image, return_tensors="pt")["pixel_values"], expected)


def test_unknown_arguments_and_bad_sizes_are_refused(processor):
    image = np.zeros((30, 40, 3), np.uint8)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['do_magic'\]"):
        processor(image, do_magic=True)
    with pytest.raises(ValueError, match="size must be"):
        processor(image, size={"height": 600, "width": 800})
    with pytest.raises(ValueError, match="size must be"):
        ButdFrcnnImageProcessor(size={"shortest_edge": 600})
    with pytest.raises(ValueError, match="return_tensors"):
        processor(image, return_tensors="tf")
