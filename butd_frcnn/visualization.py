"""Pictures of what the model selects (or says about given boxes): each region's box in its own colour, captioned
"attribute object score".

Drawn with Pillow on the pixels the model itself decoded (EXIF orientation, grey, 16-bit and CMYK images as the
original reads them), so that the boxes sit where the model saw them. Line width and text size follow the image
size; captions sit on a box-coloured band with black or white text, whichever contrasts more, so they stay
readable on any background.
"""

import argparse
import colorsys
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .extraction.box_files import read_box_file
from .extraction.inputs import image_id_from_path
from .extraction.records import ExtractionError
from .hub_errors import failure_line, show_traceback

# torch and the model files load where the model runs: `butd-frcnn show --help` needs neither

logger = logging.getLogger(__name__)

GOLDEN_RATIO_CONJUGATE = 0.618033988749895
BLACK, WHITE = (0, 0, 0), (255, 255, 255)
# sizes relative to the image's shorter side, so that small and large pictures look alike
LINE_WIDTH_DIVISOR = 300
FONT_SIZE_DIVISOR = 30
MIN_FONT_SIZE = 11


def distinct_colors(count: int) -> list[tuple[int, int, int]]:
    """`count` saturated colours whose hues step by the golden ratio around the colour wheel: consecutive colours are
    far apart, and the hues never repeat however many boxes there are."""
    colors = []
    for i in range(count):
        hue = (i * GOLDEN_RATIO_CONJUGATE) % 1.0
        value = 1.0 if i % 2 == 0 else 0.8
        red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, value)
        colors.append((round(red * 255), round(green * 255), round(blue * 255)))
    return colors


def _relative_luminance(color: tuple[int, int, int]) -> float:
    """WCAG relative luminance of an sRGB colour."""
    linear = [c / 255 / 12.92 if c <= 10 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in color]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def text_color_on(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever has the higher WCAG contrast ratio against `background`."""
    luminance = _relative_luminance(background)
    return BLACK if (luminance + 0.05) / 0.05 >= 1.05 / (luminance + 0.05) else WHITE


def display_name(name: str) -> str:
    """The first of a vocabulary entry's synonyms ("gray,grey" -> "gray"): captions have little room."""
    return name.split(",")[0].strip()


def region_caption(attribute: str, object_name: str, score: float) -> str:
    return f"{display_name(attribute)} {display_name(object_name)} {score:.2f}"


def draw_regions(image: Image.Image, boxes: Sequence[Sequence[float]], captions: Sequence[str]) -> Image.Image:
    """Draw boxes and their captions on an RGB copy of `image`.

    Args:
        image (`PIL.Image.Image`): the picture; left unchanged.
        boxes: `(x1, y1, x2, y2)` per region in the image's pixels, inclusive (the model's convention).
        captions: one text per box. The first region is drawn on top: pass the best first.

    Returns:
        `PIL.Image.Image`: an RGB image of the same size.
    """
    if len(boxes) != len(captions):
        raise ValueError(f"got {len(boxes)} boxes but {len(captions)} captions")
    canvas = image.convert("RGB")
    width, height = canvas.size
    short_side = min(width, height)
    line_width = max(1, round(short_side / LINE_WIDTH_DIVISOR))
    font = ImageFont.load_default(size=max(MIN_FONT_SIZE, round(short_side / FONT_SIZE_DIVISOR)))
    padding = max(1, line_width)
    draw = ImageDraw.Draw(canvas)
    colors = distinct_colors(len(boxes))
    regions = list(zip(boxes, captions, colors))[::-1]  # the best region last, so that it lies on top

    for box, _, color in regions:
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        # a black rim on both sides of the coloured line keeps it visible on light and on dark backgrounds
        draw.rectangle((x1, y1, x2, y2), outline=BLACK, width=line_width + 2)
        if x2 - x1 > 2 and y2 - y1 > 2:
            draw.rectangle((x1 + 1, y1 + 1, x2 - 1, y2 - 1), outline=color, width=line_width)

    for box, caption, color in regions:
        x1, y1 = round(float(box[0])), round(float(box[1]))
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        band_width, band_height = right - left + 2 * padding, bottom - top + 2 * padding
        band_x = min(max(x1, 0), max(width - band_width, 0))
        band_y = y1 - band_height if y1 - band_height >= 0 else max(min(y1, height - band_height), 0)
        draw.rectangle((band_x, band_y, band_x + band_width - 1, band_y + band_height - 1), fill=color)
        draw.text((band_x + padding - left, band_y + padding - top), caption, fill=text_color_on(color), font=font)
    return canvas


def draw_detections(
    image: Image.Image, detections: dict, id2label: dict[int, str], attribute_names: Sequence[str], top_k: int = 20
) -> Image.Image:
    """Draw the `top_k` highest-scoring regions of one image's `post_process_object_detection` result."""
    import torch

    scores = detections["scores"]
    order = torch.sort(scores, descending=True, stable=True).indices[:top_k].tolist()
    boxes = [detections["boxes"][i].tolist() for i in order]
    captions = [
        region_caption(
            attribute_names[int(detections["attributes"][i])],
            id2label[int(detections["labels"][i])],
            float(scores[i]),
        )
        for i in order
    ]
    return draw_regions(image, boxes, captions)


def detect_regions(
    image: str | os.PathLike | Image.Image, model, processor, boxes: Sequence[Sequence[float]] | None = None
) -> tuple[Image.Image, dict]:
    """Decode one image as the original reads it and run the model on it: detecting, or describing the given `boxes`
    (`(x1, y1, x2, y2)` in the image's pixels, inclusive).

    Returns:
        The decoded image (RGB, the pixels the model saw) and its selected (or given) regions as
        `post_process_object_detection` gives them (no score threshold).
    """
    import torch

    from .image_processing_butd_frcnn import load_image_bgr, pil_to_bgr

    bgr = pil_to_bgr(image) if isinstance(image, Image.Image) else load_image_bgr(image)
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    inputs = processor(rgb, input_channel_order="rgb", boxes=boxes, return_tensors="pt").to(model.device)
    with torch.inference_mode():
        outputs = model(**inputs)
    return Image.fromarray(rgb), processor.post_process_object_detection(outputs, threshold=0.0)[0]


def show_regions(
    image: str | os.PathLike | Image.Image,
    model,
    processor,
    top_k: int = 20,
    boxes: Sequence[Sequence[float]] | None = None,
) -> Image.Image:
    """Run the model on one image (a path or a PIL image) and draw its `top_k` best selected regions, or the `top_k`
    best of the given `boxes` (image pixels, inclusive) with what the model says they are.

    Returns:
        `PIL.Image.Image`: the decoded image (RGB, its own size) with the boxes drawn.
    """
    picture, detections = detect_regions(image, model, processor, boxes)
    return draw_detections(picture, detections, model.config.id2label, model.config.attribute_names, top_k)


# ---------------------------------------------------------------------------------------------------------------
# `butd-frcnn show`
# ---------------------------------------------------------------------------------------------------------------


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "show",
        help="draw the regions the model selects in an image (or given boxes, with what the model says they are)",
        description="Run the model on IMAGE and write a picture of its best regions, captioned "
        '"attribute object score"; with --boxes-from, of the boxes FILE gives for IMAGE.',
    )
    parser.add_argument("image", type=Path, metavar="IMAGE", help="the image file")
    parser.add_argument("--model", required=True, help="a converted model folder or a Hub id")
    parser.add_argument(
        "-o", "--output", type=Path, help="where to write the picture (default: IMAGE_boxes.png in the current folder)"
    )
    parser.add_argument("--top-k", type=int, default=20, help="how many regions to draw, best first (default: 20)")
    parser.add_argument(
        "--boxes-from",
        type=Path,
        metavar="FILE",
        help="describe the boxes FILE gives for IMAGE instead of detecting: JSON {id: [[x1, y1, x2, y2], ...]}, "
        "JSON lines, COCO annotations or a feature file (as extract --boxes-from)",
    )
    parser.add_argument(
        "--image-ids",
        choices=("stem", "number"),
        default="stem",
        help="IMAGE's id in FILE: its file name without extension (stem), or the last number in it (number)",
    )
    parser.set_defaults(func=run_show)


def run_show(args: argparse.Namespace) -> int:
    from transformers import AutoImageProcessor, AutoModel

    if args.top_k < 1:
        logger.error("--top-k must be at least 1, got %d", args.top_k)
        return 2
    output = args.output or Path(f"{args.image.stem}_boxes.png")
    try:
        boxes = None if args.boxes_from is None else boxes_for_image(args.boxes_from, args.image, args.image_ids)
    except ExtractionError as error:
        logger.error("%s", error)
        return 1
    try:
        # the installed code, never a prompt about the folder's own copy of it
        model = AutoModel.from_pretrained(args.model, trust_remote_code=False).eval()
        processor = AutoImageProcessor.from_pretrained(args.model, trust_remote_code=False)
    except Exception as error:
        action = f"cannot load the model {args.model}: fetching it"
        message = failure_line(error, action, "Nothing was written.", "rerun this command")
        if message is None:
            raise
        logger.error("%s", message)
        show_traceback(logger)
        return 1
    try:
        picture, detections = detect_regions(args.image, model, processor, boxes)
    except ValueError as error:  # an unreadable image, or a given box the model refuses
        logger.error("%s", error)
        return 1
    config = model.config
    picture = draw_detections(picture, detections, config.id2label, config.attribute_names, args.top_k)
    try:
        picture.save(output)
    except (OSError, ValueError) as error:
        logger.error("cannot write %s: %s", output, error)
        return 1
    selected = len(detections["scores"])
    kind = "selected" if boxes is None else "given"
    print(f"{args.image}: {selected} regions {kind}, the best {min(selected, args.top_k)} drawn in {output}")
    return 0


def boxes_for_image(box_file: Path, image: Path, id_style: str) -> np.ndarray:
    """The boxes `box_file` gives for `image` (known by its id, as `extract` names it); an `ExtractionError` when the
    file is malformed or has no entry for the image."""
    given = read_box_file(box_file, id_style)
    image_id = image_id_from_path(str(image), id_style)
    if image_id not in given.boxes:
        listed = ", ".join(repr(name) for name in list(given.boxes)[:5]) + (", ..." if len(given.boxes) > 5 else "")
        raise ExtractionError(
            f"{box_file} has no boxes for {image} (id {image_id!r}); it gives boxes for {len(given.boxes)} images: "
            f"{listed}"
        )
    return given.boxes[image_id]
