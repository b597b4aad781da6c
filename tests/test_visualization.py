"""Pictures of the selected regions: the drawing functions on synthetic images, and `butd-frcnn show` as a real
subprocess on a golden image."""

import json

import numpy as np
import pytest
import torch
from cli_runner import run_cli
from golden import golden_image_path
from hub_support import save_tiny_hub_folder
from PIL import Image

from butd_frcnn.visualization import (
    display_name,
    distinct_colors,
    draw_regions,
    region_caption,
    show_regions,
    text_color_on,
)

# the model runs with gradients off here, as users run it for features (tests about gradients turn them on)
pytestmark = pytest.mark.usefixtures("no_grad")


def test_colours_are_distinct_and_text_contrasts_with_them():
    colors = distinct_colors(100)
    assert len(set(colors)) == 100
    assert all(0 <= c <= 255 for color in colors for c in color)
    assert text_color_on((255, 255, 0)) == (0, 0, 0)  # black on yellow
    assert text_color_on((0, 0, 128)) == (255, 255, 255)  # white on navy
    assert {text_color_on(color) for color in colors} == {(0, 0, 0), (255, 255, 255)}


def test_caption_reads_attribute_object_score_with_the_first_synonym():
    assert display_name("gray,grey") == "gray"
    assert region_caption("gray,grey", "t-shirt,tee shirt", 0.8712) == "gray t-shirt 0.87"


def changed(before: Image.Image, after: Image.Image) -> np.ndarray:
    return np.any(np.asarray(before.convert("RGB")) != np.asarray(after), axis=2)


def band_box(picture: np.ndarray, color: tuple[int, int, int], rows: slice, columns: slice):
    """Rows and columns spanned by the pixels of `color` within a window of the picture."""
    window = np.all(picture[rows, columns] == color, axis=2)
    ys, xs = np.nonzero(window)
    assert ys.size, f"no pixel of {color} in the window"
    return slice(rows.start + ys.min(), rows.start + ys.max() + 1), slice(
        columns.start + xs.min(), columns.start + xs.max() + 1
    )


@pytest.mark.parametrize("size", [(80, 60), (640, 480), (3000, 2000)])
@pytest.mark.parametrize("background", [0, 255])
def test_boxes_and_captions_are_drawn_on_a_copy_of_any_size_and_background(size, background):
    width, height = size
    image = Image.new("L", size, background)
    boxes = [
        (0.2 * width, 0.5 * height, 0.6 * width - 1, 0.9 * height - 1),  # room above for its caption
        (0.5 * width, 0, width - 1, 0.4 * height),  # touches the top edge: its caption goes inside
    ]
    picture = draw_regions(image, boxes, ["red car 0.91", "white sky 0.40"])
    assert picture.size == size and picture.mode == "RGB"
    assert np.all(np.asarray(image) == background), "the input image was modified"
    diff = changed(image, picture)
    pixels = np.asarray(picture)

    x1, y1, x2, y2 = (round(v) for v in boxes[0])
    middle_y = (y1 + y2) // 2
    # inside the black rim (invisible on black) runs the coloured line
    assert diff[middle_y, x1 + 1] and diff[middle_y, x2 - 1], "the first box's sides are not drawn"
    assert not diff[middle_y, (x1 + x2) // 2], "the inside of a box is painted over"
    assert 0 < diff.mean() < 0.6

    # the caption: a band of the box's colour right above the box, with text of the contrasting colour on it
    color = distinct_colors(2)[0]
    rows, columns = band_box(pixels, color, slice(0, y1), slice(0, width))
    assert rows.stop == y1, "the caption band does not sit on the box"
    band = pixels[rows, columns].astype(int)
    text_color = np.array(text_color_on(color))
    # glyph pixels: closer to the text colour than to the band's (anti-aliased edges may be in between)
    text = np.abs(band - text_color).sum(axis=2) < np.abs(np.array(color) - text_color).sum() / 2
    assert 0.02 * text.size < text.sum() < 0.6 * text.size, "no legible text on the caption band"

    # the second box touches the top edge: its caption is drawn inside it
    margin = min(width, height) // 100 + 4
    x1 = round(boxes[1][0])
    inside = pixels[margin : 2 * margin, x1 + margin : x1 + 3 * margin]
    assert np.all(inside == distinct_colors(2)[1], axis=2).mean() > 0.1, "no caption inside the second box"


def test_caption_size_follows_the_image_size():
    def caption_height(size):
        image = Image.new("RGB", size, (128, 128, 128))
        width, height = size
        picture = draw_regions(image, [(width // 4, height // 2, width // 2, height - 1)], ["tall tree 0.50"])
        column = changed(image, picture)[: height // 2, width // 4 + 3]
        return int(column.sum())

    assert caption_height((3000, 2000)) > 3 * caption_height((400, 300)) > 0


def test_mismatched_boxes_and_captions_are_refused():
    with pytest.raises(ValueError, match="2 boxes but 1 captions"):
        draw_regions(Image.new("RGB", (10, 10)), [(0, 0, 5, 5), (1, 1, 4, 4)], ["one"])


# ---------------------------------------------------------------------------------------------------------------
# With the model: show_regions and `butd-frcnn show`
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory, shared_dir):
    return save_tiny_hub_folder(tmp_path_factory.mktemp("hub") / "butd-frcnn-tiny")


@pytest.fixture(scope="module")
def camera_regions(hub_folder):
    """The grey 512x512 golden image, the model, its processor and its selected regions, best first."""
    from butd_frcnn import ButdFrcnnImageProcessor, ButdFrcnnModel

    model = ButdFrcnnModel.from_pretrained(hub_folder).eval()
    processor = ButdFrcnnImageProcessor.from_pretrained(hub_folder)
    path = golden_image_path("camera")
    with torch.no_grad():
        outputs = model(**processor(str(path), return_tensors="pt"))
    count = int(outputs.num_boxes[0])
    order = np.argsort(-outputs.object_scores[0, :count].numpy(), kind="stable")
    return path, model, processor, outputs.boxes[0, :count].numpy()[order]


def assert_boxes_drawn(original: Image.Image, picture: Image.Image, boxes: np.ndarray):
    diff = changed(original, picture)
    for x1, y1, x2, y2 in np.round(boxes).astype(int):
        middle_y = (y1 + y2) // 2
        assert diff[middle_y, x1 + 1] and diff[middle_y, x2 - 1], f"box {(x1, y1, x2, y2)} is not drawn"
    assert diff.mean() < 0.7, "most of the picture should still be the image"


def test_show_regions_draws_the_best_boxes(camera_regions):
    path, model, processor, boxes = camera_regions
    picture = show_regions(path, model, processor, top_k=5)
    original = Image.open(path)
    assert picture.size == original.size and picture.mode == "RGB"
    assert_boxes_drawn(original, picture, boxes[:5])


def test_show_command_writes_a_picture_of_the_input_size(camera_regions, hub_folder, tmp_path):
    path, _, _, boxes = camera_regions
    output = tmp_path / "camera_boxes.png"
    completed = run_cli(
        "show", path, "--model", hub_folder, "-o", output, "--top-k", "8", cwd=tmp_path, threads=None, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert f"the best 8 drawn in {output}" in completed.stdout
    original = Image.open(path)
    with Image.open(output) as picture:
        assert picture.format == "PNG"
        assert picture.size == original.size
        assert_boxes_drawn(original, picture.convert("RGB"), boxes[:8])


def test_show_command_default_output_and_errors(hub_folder, tmp_path, capsys, caplog, monkeypatch):
    from butd_frcnn.cli import main

    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "missing.jpg"
    assert main(["show", str(missing), "--model", str(hub_folder)]) == 1
    assert f"{missing}: no such file" in caplog.text
    assert main(["show", str(missing), "--model", str(tmp_path / "no-model")]) == 1
    assert "cannot load the model" in caplog.text
    assert main(["show", str(missing), "--model", str(hub_folder), "--top-k", "0"]) == 2
    assert not list(tmp_path.glob("*.png")), "a failed run left a picture behind"


GIVEN = [[40.0, 60.0, 300.0, 420.0], [200.0, 30.0, 480.0, 250.0], [10.0, 300.0, 150.0, 500.0]]


def test_show_regions_draws_given_boxes(camera_regions):
    path, model, processor, _ = camera_regions
    picture = show_regions(path, model, processor, boxes=GIVEN)
    assert_boxes_drawn(Image.open(path), picture, np.array(GIVEN))


def test_show_command_draws_the_boxes_a_file_gives(camera_regions, hub_folder, tmp_path, capsys, caplog):
    """`show IMAGE --boxes-from FILE`: the image's entry (by its file name's stem) drawn, captioned with what the
    model says; an image the file does not name, or a box the model refuses, is an error that says so."""
    from butd_frcnn.cli import main

    path, model, processor, _ = camera_regions
    box_file = tmp_path / "boxes.json"
    box_file.write_text(json.dumps({"camera": GIVEN, "rocket": [[0, 0, 10, 10]]}))
    output = tmp_path / "given.png"
    assert main(["show", str(path), "--model", str(hub_folder), "--boxes-from", str(box_file), "-o", str(output)]) == 0
    assert f"3 regions given, the best 3 drawn in {output}" in capsys.readouterr().out
    with Image.open(output) as picture:
        expected = show_regions(path, model, processor, boxes=GIVEN)
        assert np.array_equal(np.asarray(picture.convert("RGB")), np.asarray(expected))
    box_file.write_text(json.dumps({"rocket": [[0, 0, 10, 10]]}))
    assert main(["show", str(path), "--model", str(hub_folder), "--boxes-from", str(box_file)]) == 1
    assert "has no boxes for" in caplog.text and "(id 'camera')" in caplog.text
    box_file.write_text(json.dumps({"camera": [[600, 0, 700, 10]]}))
    assert main(["show", str(path), "--model", str(hub_folder), "--boxes-from", str(box_file)]) == 1
    assert "box 0 [600.0, 0.0, 700.0, 10.0] has no pixel inside the 512 x 512 image" in caplog.text
