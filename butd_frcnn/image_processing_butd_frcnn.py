"""Image processor of the bottom-up-attention Faster R-CNN: decode like OpenCV, subtract the BGR means, resize like
`cv2.resize(..., interpolation=INTER_LINEAR)`, batch.

The original (`_get_image_blob` of py-faster-rcnn, fed by `cv2.imread`):
1. decodes to BGR uint8 (grey, palette, alpha, CMYK and 16-bit images all end as 3 x uint8; EXIF orientation applied);
2. converts to float32 and subtracts the BGR pixel means (in float64, rounded once);
3. scales the shorter side to 600 unless the longer would exceed 1000 (then the longer side to 1000);
4. resizes bilinearly without antialiasing: output `round(W*s) x round(H*s)`, source coordinate
   `(dst + 0.5) / s - 0.5` clamped at the borders, computed with the factor `s` itself.
"""

import contextlib
import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers.image_processing_base import BatchFeature
from transformers.image_utils import PILImageResampling
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import TensorType

from .compat_butd_frcnn import TorchvisionBackend

PIXEL_MEANS_BGR = (102.9801, 115.9465, 122.7717)
# Largest image (in pixels) the processor decodes unless told otherwise: one image at this size stays under 3 GB of
# peak memory in a process running the full-size model (docs/hosted-inference.md has the measurement).
DEFAULT_MAX_PIXELS = 25_000_000


class ImageDecodeError(ValueError):
    """An image could not be read; the message names the image and the reason."""


class ButdFrcnnImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    pixel_means_bgr (`list[float]`, defaults to `[102.9801, 115.9465, 122.7717]`):
        Means subtracted from the B, G and R channels (in that order) before resizing.
    input_channel_order (`str`, defaults to `"rgb"`):
        Channel order of numpy arrays and tensors passed in: `"rgb"` (the Hugging Face convention, what
        `np.array(pil_image)` gives) or `"bgr"` (what `cv2.imread` gives). Paths and PIL images are unaffected.
    apply_exif_orientation (`bool`, defaults to `True`):
        Rotate images by their EXIF orientation tag, as `cv2.imread` does.
    max_pixels (`int`, defaults to `DEFAULT_MAX_PIXELS`):
        Refuse (with `ImageTooLargeError`, a `ValueError`) image files, encoded bytes and PIL images of more pixels,
        checked from the file's header before anything is decoded: preprocessing needs about 60 bytes per input
        pixel at its peak, the model only ever sees at most 1000 pixels on the longer side. 0: no limit; `None`:
        Pillow's own (`PIL.Image.MAX_IMAGE_PIXELS`). Arrays and tensors, already decoded, are not checked.
    """

    pixel_means_bgr: list[float] | tuple[float, ...]
    input_channel_order: str
    apply_exif_orientation: bool
    max_pixels: int | None


# inputs that keep their precision when a batch is cast to the model's dtype: the original computes with float32
# (and float64) image scales and box coordinates
FULL_PRECISION_INPUTS = ("scales", "boxes")


class ButdFrcnnBatchFeature(BatchFeature):
    """A `BatchFeature` whose `.to(dtype)` casts `pixel_values` only: `scales` and `boxes` must keep float32/float64
    precision (pipelines cast their inputs to the model's dtype); `.to(device)` moves them all."""

    def to(self, *args, **kwargs) -> "ButdFrcnnBatchFeature":
        kept = {key: self.data[key] for key in FULL_PRECISION_INPUTS if key in self.data}
        super().to(*args, **kwargs)
        pixel_values = self.data["pixel_values"]
        if isinstance(pixel_values, torch.Tensor):
            for key, value in kept.items():
                if isinstance(value, torch.Tensor):
                    self.data[key] = value.to(device=pixel_values.device)
                elif isinstance(value, list):
                    self.data[key] = [item.to(device=pixel_values.device) for item in value]
        return self


# ---------------------------------------------------------------------------------------------------------------
# Decoding (like cv2.imread(path, IMREAD_COLOR))
# ---------------------------------------------------------------------------------------------------------------


def _cmyk_to_bgr(cmyk: np.ndarray) -> np.ndarray:
    """OpenCV's CMYK conversion (`icvCvt_CMYK2BGR_8u_C4C3R`) applied to Pillow's (non-inverted) CMYK values.

    libjpeg hands OpenCV Adobe's inverted values `v' = 255 - v`; each colour becomes `k' - ((255 - v') * k' >> 8)`.
    Pillow's own `convert("RGB")` computes `255 - (v + k)` instead, which differs by up to ~60 levels.
    """
    values = cmyk.astype(np.int32)
    inverted_k = 255 - values[..., 3:4]
    colours = inverted_k - ((values[..., :3] * inverted_k) >> 8)  # C, M, Y -> R, G, B
    return colours[..., ::-1].astype(np.uint8)  # -> B, G, R


def pil_to_bgr(image: Image.Image, apply_exif_orientation: bool = True) -> np.ndarray:
    """Decode a PIL image into the H x W x 3 BGR uint8 array that `cv2.imread(path)` returns.

    Grey and bi-level images repeat their channel; palette images expand their palette; alpha is dropped (not
    composited); 16-bit samples keep their high byte; CMYK uses OpenCV's formula; animations give their first frame.
    """
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    if apply_exif_orientation:
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "CMYK":
        return _cmyk_to_bgr(np.asarray(image))
    if mode.startswith("I"):  # 16-bit (and 32-bit integer) grey: keep the high byte of 16 bits, as libpng strips
        grey = np.clip(np.asarray(image).astype(np.int64) >> 8, 0, 255).astype(np.uint8)
    elif mode == "F":
        raise ImageDecodeError("floating-point images are not supported (OpenCV's colour decode rejects them too)")
    elif mode in ("1", "L", "LA", "La"):
        grey = np.asarray(image.convert("L"))
    else:
        rgb = np.asarray(image.convert("RGB"))
        return np.ascontiguousarray(rgb[..., ::-1])
    return np.repeat(grey[..., None], 3, axis=2)


class ImageTooLargeError(ImageDecodeError):
    """The image has more pixels than the caller allows (a decompression bomb, or just more than wanted)."""


@contextlib.contextmanager
def _pillow_bomb_check_off():
    """Pillow's decompression-bomb limit is a process-wide global; switch it off for one decode (we check the size
    ourselves) and put it back, so a caller's limit never leaks into the rest of the process."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def check_pixel_count(image: Image.Image, max_pixels: int | None) -> None:
    """Raise `ImageTooLargeError` if `image` has more than `max_pixels` pixels (0 or `None`: no limit).

    An image opened by `Image.open` knows its size from the file's header alone: checked before `load()`, nothing
    has been decoded yet. The one size check of image files, encoded bytes and PIL images.
    """
    width, height = image.size
    if max_pixels and width * height > max_pixels:
        raise ImageTooLargeError(
            f"refused as a decompression bomb: {width} x {height} = {width * height} pixels is above the limit of "
            f"{max_pixels} (max_pixels)"
        )


def opened_image_to_bgr(image: Image.Image, max_pixels: int | None, apply_exif_orientation: bool) -> np.ndarray:
    """Refuse an opened image whose header claims more than `max_pixels` (0 or `None`: no limit) before decoding it,
    then decode it into BGR uint8: the one path of image files and of encoded bytes held in memory (datasets)."""
    check_pixel_count(image, max_pixels)
    image.load()
    return pil_to_bgr(image, apply_exif_orientation)


def load_image_bgr(
    path: str | os.PathLike, apply_exif_orientation: bool = True, max_pixels: int | None = None
) -> np.ndarray:
    """Read an image file into BGR uint8, or raise `ImageDecodeError` naming the file and the reason.

    `max_pixels` refuses (with `ImageTooLargeError`) any image whose header claims more pixels, before decoding it
    into memory; 0 means no limit, `None` keeps Pillow's own process-wide limit (`PIL.Image.MAX_IMAGE_PIXELS`).
    """
    path = os.fspath(path)
    limit = contextlib.nullcontext() if max_pixels is None else _pillow_bomb_check_off()
    try:
        with limit, Image.open(path) as image:
            return opened_image_to_bgr(image, max_pixels, apply_exif_orientation)
    except ImageDecodeError as error:  # ours, raised without the path (ImageTooLargeError keeps its class)
        raise type(error)(f"{path}: {error}") from None
    except FileNotFoundError:
        raise ImageDecodeError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageDecodeError(f"{path}: is a directory, not an image") from None
    except UnidentifiedImageError:
        size = os.path.getsize(path)
        reason = "the file is empty" if size == 0 else f"not an image Pillow can read ({size} bytes)"
        raise ImageDecodeError(f"{path}: {reason}") from None
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"{path}: refused as a decompression bomb: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(f"{path}: cannot decode: {error}") from error


def decode_image_bytes(data: bytes, apply_exif_orientation: bool = True, max_pixels: int | None = None) -> np.ndarray:
    """Decode an encoded image held in memory exactly as `load_image_bgr` decodes a file holding the same bytes (the
    same decoder, checks and conversion to OpenCV's BGR); errors say why, without a path. `max_pixels` as there."""
    if not data:
        raise ImageDecodeError("the image is empty (0 bytes)")
    limit = contextlib.nullcontext() if max_pixels is None else _pillow_bomb_check_off()
    try:
        with limit, Image.open(io.BytesIO(data)) as image:
            return opened_image_to_bgr(image, max_pixels, apply_exif_orientation)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(f"not an image Pillow can read ({len(data)} bytes)") from None
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"refused as a decompression bomb: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(f"cannot decode the image: {error}") from error


def array_to_bgr(array, channel_order: str = "rgb") -> np.ndarray:
    """Bring a numpy array or tensor (H x W, H x W x C or C x H x W; uint8 or uint16) to H x W x 3 BGR uint8."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    if array.dtype != np.uint8:
        raise ImageDecodeError(
            f"image arrays must hold uint8 (or uint16) pixels, got {array.dtype}: pass the decoded 0..255 pixels"
        )
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[2] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ImageDecodeError(f"cannot read an image array of shape {array.shape}")
    colour = array[..., :3]
    if channel_order == "rgb":
        colour = colour[..., ::-1]
    elif channel_order != "bgr":
        raise ValueError(f"input_channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    return np.ascontiguousarray(colour)


# ---------------------------------------------------------------------------------------------------------------
# Scale and resize (like py-faster-rcnn's _get_image_blob and cv2.resize INTER_LINEAR)
# ---------------------------------------------------------------------------------------------------------------


def compute_scale(height: int, width: int, shortest_edge: int, longest_edge: int) -> float:
    """`s = shortest / min(H, W)`, unless `round(s * max(H, W)) > longest`: then `s = longest / max(H, W)`."""
    scale = float(shortest_edge) / float(min(height, width))
    if round(scale * max(height, width)) > longest_edge:
        scale = float(longest_edge) / float(max(height, width))
    return scale


def resized_size(size: int, scale: float) -> int:
    """OpenCV's output size for a factor: round half to even, as `cvRound` does."""
    return round(size * scale)


def _linear_taps(in_size: int, out_size: int, scale: float):
    """Source indices and float32 weights of OpenCV's bilinear resize along one axis.

    The source coordinate `(dst + 0.5) / scale - 0.5` and its fraction are computed in float64; positions outside
    the image clamp to the edge pixel with weight 1.
    """
    coordinate = (torch.arange(out_size, dtype=torch.float64) + 0.5) * (1.0 / scale) - 0.5
    index = torch.floor(coordinate)
    fraction = coordinate - index
    index = index.long()
    below, above = index < 0, index >= in_size - 1
    fraction[below | above] = 0.0
    index = torch.where(below, torch.zeros_like(index), torch.where(above, torch.full_like(index, in_size - 1), index))
    return index, (index + 1).clamp(max=in_size - 1), (1.0 - fraction), fraction


def resize_like_opencv(image: torch.Tensor, scale: float) -> torch.Tensor:
    """Bilinear resize of a (C, H, W) float32 image by `scale`, as `cv2.resize(im, None, fx=s, fy=s)` does.

    Horizontal pass then vertical pass, each in float64 rounded to float32. The result agrees with OpenCV's
    (IPP-accelerated) output to a few float32 ulps; the test suite states the bound.
    """
    _, height, width = image.shape
    out_height, out_width = resized_size(height, scale), resized_size(width, scale)
    if out_height < 1 or out_width < 1:
        raise ImageDecodeError(
            f"a {width}x{height} image resizes to {out_width}x{out_height} at scale {scale:.6g}: too elongated"
        )
    x0, x1, wx0, wx1 = _linear_taps(width, out_width, scale)
    y0, y1, wy0, wy1 = _linear_taps(height, out_height, scale)
    source = image.double()
    rows = (source[:, :, x0] * wx0 + source[:, :, x1] * wx1).float().double()
    return (rows[:, y0, :] * wy0[:, None] + rows[:, y1, :] * wy1[:, None]).float()


def subtract_means(bgr: np.ndarray, means: Sequence[float]) -> torch.Tensor:
    """(H, W, 3) uint8 BGR -> (3, H, W) float32 minus the means, computed in float64 and rounded once (numpy's
    `float32_image -= float64_means` does the same)."""
    pixels = torch.from_numpy(np.ascontiguousarray(bgr)).permute(2, 0, 1).double()
    return (pixels - torch.tensor(means, dtype=torch.float64).view(3, 1, 1)).float()


# ---------------------------------------------------------------------------------------------------------------
# Processor
# ---------------------------------------------------------------------------------------------------------------


# transformers' standard image-processor flags that the original's preprocessing has no room for: the values that
# mean "not asked for", and why another one cannot be honoured. `rescale_factor` (used only with `do_rescale`) and
# `disable_grouping` (a speed setting of batched backends) change nothing here and are accepted as they are.
FIXED_FLAGS: dict[str, tuple[tuple, str]] = {
    "do_convert_rgb": (
        (None, False),
        "the model reads BGR, decoded as OpenCV does (input_channel_order is for arrays)",
    ),
    "do_rescale": ((None, False), "the original feeds 0..255 pixels minus the means, unscaled"),
    "do_normalize": ((None, False), "the original only subtracts the BGR means: set pixel_means_bgr instead"),
    "image_mean": ((None,), "the original subtracts BGR means: set pixel_means_bgr (B, G, R order) instead"),
    "image_std": ((None,), "the original divides by nothing"),
    "do_center_crop": ((None, False), "the original never crops"),
    "crop_size": ((None,), "the original never crops"),
    "do_pad": (
        (None, True),
        "a batch is zero-padded at the bottom and right to its largest image, as image_sizes says",
    ),
    "pad_size": ((None,), "a batch is padded to its largest image only"),
    "default_to_square": ((None, False), "images keep their aspect ratio: size gives shortest_edge and longest_edge"),
    "data_format": ((None, "channels_first"), "pixel_values are channels first"),
    "input_data_format": ((None,), "arrays are read by their shape (H x W x C or C x H x W)"),
    "image_seq_length": ((None,), "this processor has no text"),
}
BILINEAR_NAMES = ("bilinear", PILImageResampling.BILINEAR)


def check_fixed_flags(flags: dict[str, Any], owner: str) -> None:
    """Raise a `ValueError` naming the first standard flag of `flags` set to something the original's preprocessing
    cannot do (see `FIXED_FLAGS`; `resample` must be bilinear, `device` the CPU)."""
    for name, value in flags.items():
        if name in FIXED_FLAGS:
            allowed, reason = FIXED_FLAGS[name]
            if not any(value is ok or (isinstance(value, (bool, str)) and value == ok) for ok in allowed):
                raise ValueError(f"{owner} cannot honour {name}={value!r}: {reason}")
        elif name == "resample" and value is not None and getattr(value, "value", value) not in BILINEAR_NAMES:
            raise ValueError(
                f"{owner} cannot honour resample={value!r}: it resizes bilinearly without antialiasing, as OpenCV's "
                "INTER_LINEAR does"
            )
        elif name == "device" and value is not None and torch.device(value).type != "cpu":
            raise ValueError(
                f"{owner} cannot honour device={value!r}: preprocessing runs on the CPU, in float64 where the "
                "original's arithmetic needs it; move the result with `.to(device)`"
            )


def edges_of(size: Any) -> tuple[int, int]:
    """`(shortest_edge, longest_edge)` of a `size` dict (or transformers' `SizeDict`)."""
    try:
        shortest, longest = size["shortest_edge"], size["longest_edge"]
    except (KeyError, TypeError):
        shortest = longest = None
    if not isinstance(shortest, int) or not isinstance(longest, int) or not 0 < shortest <= longest:
        raise ValueError(
            f"size must be {{'shortest_edge': S, 'longest_edge': L}} with 0 < S <= L (the original's 600 and "
            f"1000), got {size!r}"
        )
    return shortest, longest


def flatten_images(images: Any) -> list:
    """One image, a list of them, or a list of lists (one level deep) as one flat list."""
    if not isinstance(images, (list, tuple)):
        return [images]
    flat = []
    for image in images:
        flat.extend(image if isinstance(image, (list, tuple)) else [image])
    return flat


def boxes_per_image(boxes: Any, images: Any, count: int) -> list[torch.Tensor]:
    """The processor's `boxes` argument as one float32 tensor per image: `boxes` is one image's `(K, 4)` when
    `images` is one image, else a list with one `(K_i, 4)` per image. Shapes and values are the model's to check."""
    per_image = [boxes] if not isinstance(images, (list, tuple)) else list(boxes)
    if len(per_image) != count:
        raise ValueError(f"boxes gives {len(per_image)} entries for {count} images: pass one (K, 4) per image")
    tensors = []
    for index, image_boxes in enumerate(per_image):
        try:
            tensor = torch.as_tensor(image_boxes, dtype=torch.float32).clone()
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(f"boxes of image {index}: not an array of x1, y1, x2, y2 rows: {error}") from None
        tensors.append(tensor.reshape(0, 4) if tensor.numel() == 0 else tensor)  # `[]`: no box
    return tensors


class ButdFrcnnImageProcessor(TorchvisionBackend):
    r"""
    Prepares images for [`ButdFrcnnModel`] exactly as the original `generate_tsv.py` did (see the module docstring).

    Accepts image paths, image files' bytes, PIL images, numpy arrays and tensors, one or a list. Returns a
    [`BatchFeature`] with:
    - `pixel_values` (`(B, 3, H, W)` float32): BGR, mean-subtracted, resized, zero-padded to the batch's largest;
    - `image_sizes` (`(B, 2)` int64): each image's resized `(height, width)`;
    - `scales` (`(B,)` float64): each image's resize factor;
    - `original_sizes` (`(B, 2)` int64): each image's decoded `(height, width)`;
    - `boxes` (a list of `B` float32 `(K_i, 4)` tensors), only when regions are given (`boxes=`): the model then
      describes those regions instead of detecting (see [`ButdFrcnnModel.forward`]).
    All of them can be passed to the model: `model(**processor(images, return_tensors="pt"))`.

    Args (at construction, saved in `preprocessor_config.json`, or per call):
        do_resize (`bool`, defaults to `True`): resize by the original's rule; `False` keeps each image at its own
            size (scale 1: still decoded, mean-subtracted and batched).
        size (`dict[str, int]`, defaults to `{"shortest_edge": 600, "longest_edge": 1000}`):
            The original's `TEST.SCALES` (600) and `TEST.MAX_SIZE` (1000).
        pixel_means_bgr, input_channel_order, apply_exif_orientation, max_pixels: see
            [`ButdFrcnnImageProcessorKwargs`].
        return_tensors (`str`, *optional*): `"pt"` (also the default) or `"np"`.
        boxes (per call only, *optional*): regions to describe instead of detecting, `(x1, y1, x2, y2)` in the
            image's own (original) pixels, inclusive: for one image, its `(K, 4)` boxes; for a list of images, a
            list of one `(K_i, 4)` per image. Passed on as `boxes` (float32); the model checks them.

    The other standard flags of transformers' image processors are accepted only with values that ask for nothing
    the original did not do (see `FIXED_FLAGS`): `do_normalize=True`, `image_mean`, `do_rescale=True`, cropping,
    another resampling filter, ... raise a `ValueError`, at construction as at a call.
    """

    valid_kwargs = ButdFrcnnImageProcessorKwargs
    # saved as remote code (this file and its `auto_map` entry), as transformers saves the classes it loads as such
    _auto_class = "AutoImageProcessor"
    model_input_names = ["pixel_values", "image_sizes", "scales", "original_sizes"]  # noqa: RUF012 (transformers class attributes)
    size = {"shortest_edge": 600, "longest_edge": 1000}  # noqa: RUF012 (transformers class attributes)
    default_to_square = False
    pixel_means_bgr = list(PIXEL_MEANS_BGR)  # noqa: RUF012 (transformers class attributes)
    input_channel_order = "rgb"
    apply_exif_orientation = True
    max_pixels = DEFAULT_MAX_PIXELS
    do_resize = True
    do_rescale = False
    do_normalize = False
    do_convert_rgb = False

    def __init__(self, **kwargs: Unpack[ButdFrcnnImageProcessorKwargs]):
        super().__init__(**kwargs)
        owner = type(self).__name__
        check_fixed_flags({name: getattr(self, name, None) for name in (*FIXED_FLAGS, "resample", "device")}, owner)
        edges_of(self.size)

    def preprocess(
        self,
        images: Any,
        *,
        do_resize: bool | None = None,
        size: dict[str, int] | None = None,
        pixel_means_bgr: Sequence[float] | None = None,
        input_channel_order: str | None = None,
        apply_exif_orientation: bool | None = None,
        max_pixels: int | None = None,
        return_tensors: str | TensorType | None = None,
        boxes: Any = None,
        **flags: Any,
    ) -> "ButdFrcnnBatchFeature":
        """Decode, subtract the means, resize and batch `images` (see the class docstring); every argument defaults
        to the processor's own setting."""
        unknown = sorted(set(flags) - set(FIXED_FLAGS) - {"resample", "device", "rescale_factor", "disable_grouping"})
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected keyword arguments {unknown}")
        check_fixed_flags(flags, type(self).__name__)
        do_resize = self.do_resize if do_resize is None else do_resize
        shortest_edge, longest_edge = edges_of(self.size if size is None else size)
        means = self.pixel_means_bgr if pixel_means_bgr is None else pixel_means_bgr
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}")

        flat_images = flatten_images(images)
        given_boxes = None if boxes is None else boxes_per_image(boxes, images, len(flat_images))
        resized, image_sizes, scales, original_sizes = [], [], [], []
        for image in flat_images:
            bgr = self.process_image(image, input_channel_order, apply_exif_orientation, max_pixels)
            height, width = bgr.shape[:2]
            scale = compute_scale(height, width, shortest_edge, longest_edge) if do_resize else 1.0
            blob = subtract_means(bgr, means)
            if do_resize:
                blob = resize_like_opencv(blob, scale)
            resized.append(blob)
            image_sizes.append(blob.shape[1:])
            scales.append(scale)
            original_sizes.append((height, width))
        pixel_values = torch.zeros(
            (len(resized), 3, max(s[0] for s in image_sizes), max(s[1] for s in image_sizes)), dtype=torch.float32
        )
        for i, blob in enumerate(resized):
            pixel_values[i, :, : blob.shape[1], : blob.shape[2]] = blob
        data = {
            "pixel_values": pixel_values,
            "image_sizes": torch.tensor(image_sizes, dtype=torch.long),
            "scales": torch.tensor(scales, dtype=torch.float64),
            "original_sizes": torch.tensor(original_sizes, dtype=torch.long),
        }
        if given_boxes is not None:
            data["boxes"] = given_boxes
        if return_tensors == "np":
            data = {
                key: [v.numpy() for v in value] if isinstance(value, list) else value.numpy()
                for key, value in data.items()
            }
        return ButdFrcnnBatchFeature(data=data)

    def process_image(
        self,
        image: Any,
        input_channel_order: str | None = None,
        apply_exif_orientation: bool | None = None,
        max_pixels: int | None = None,
    ) -> np.ndarray:
        """Decode one input (a path, an image file's bytes, a PIL image, an array or a tensor) into H x W x 3 BGR
        uint8; paths, bytes and PIL images of more than `max_pixels` are refused before they are decoded."""
        input_channel_order = input_channel_order or self.input_channel_order
        if apply_exif_orientation is None:
            apply_exif_orientation = self.apply_exif_orientation
        if max_pixels is None:
            max_pixels = self.max_pixels
        if isinstance(image, (str, os.PathLike)):
            return load_image_bgr(image, apply_exif_orientation, max_pixels)
        if isinstance(image, (bytes, bytearray)):
            return decode_image_bytes(bytes(image), apply_exif_orientation, max_pixels)
        if isinstance(image, Image.Image):
            check_pixel_count(image, max_pixels)
            return pil_to_bgr(image, apply_exif_orientation)
        if isinstance(image, (np.ndarray, torch.Tensor)):
            return array_to_bgr(image, input_channel_order)
        raise TypeError(
            f"cannot read an image from a {type(image).__name__}: pass a path, bytes, a PIL image or an array"
        )

    def post_process_object_detection(
        self,
        outputs,
        threshold: float = 0.5,
        target_sizes: torch.Tensor | Sequence[Sequence[int]] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """The selected regions of [`ButdFrcnnModel`] as detections, in the layout of the `object-detection`
        pipeline.

        The model has already chosen the regions (the original's selection: 10-100 or 36 per image, padding beyond
        `num_boxes`); this keeps those whose object score reaches `threshold`, in the model's order. Pass
        `threshold=0` to keep every selected region.

        Args:
            outputs ([`ButdFrcnnModelOutput`] or a mapping with its fields):
                The model's output.
            threshold (`float`, *optional*, defaults to 0.5):
                Minimum object score (probability of the region's most probable class) of a kept region.
            target_sizes (`torch.Tensor` of shape `(batch_size, 2)` or a list of `(height, width)`, *optional*):
                Image sizes to express the boxes in. The model's boxes are already in original-image pixels, so they
                are rescaled only where a target size differs from the `original_sizes` the model was given.

        Returns:
            `list[dict]`, one per image, with tensors for its kept regions:
            - `"scores"` `(N,)`: object scores;
            - `"labels"` `(N,)`: object class ids, keys of `config.id2label` (1..num_labels-1);
            - `"boxes"` `(N, 4)`: `(x1, y1, x2, y2)` pixels, inclusive convention (width = x2 - x1 + 1);
            - `"attributes"` `(N,)`: attribute ids, indices of `config.attribute_names` (1..num_attributes-1);
            - `"attribute_scores"` `(N,)`: their probabilities.
        """
        num_boxes = outputs["num_boxes"].tolist()
        if target_sizes is not None:
            target_sizes = torch.as_tensor(target_sizes).reshape(-1, 2).cpu()
            if target_sizes.shape[0] != len(num_boxes):
                raise ValueError(
                    f"target_sizes gives {target_sizes.shape[0]} sizes for a batch of {len(num_boxes)} images"
                )
            original_sizes = outputs.get("original_sizes")
            if original_sizes is None:
                raise ValueError(
                    "target_sizes needs the size the boxes refer to: pass the processor's `original_sizes` to the "
                    "model (`model(**processor(images, return_tensors='pt'))` does)"
                )
            original_sizes = original_sizes.cpu()
        results = []
        for i, count in enumerate(num_boxes):
            scores = outputs["object_scores"][i, :count].cpu()
            boxes = outputs["boxes"][i, :count].cpu()
            if target_sizes is not None and not torch.equal(target_sizes[i], original_sizes[i]):
                height_ratio, width_ratio = (target_sizes[i].double() / original_sizes[i].double()).tolist()
                boxes = boxes * torch.tensor([width_ratio, height_ratio, width_ratio, height_ratio])
            keep = scores.double() >= threshold
            results.append(
                {
                    "scores": scores[keep],
                    "labels": outputs["object_ids"][i, :count].cpu()[keep],
                    "boxes": boxes[keep],
                    "attributes": outputs["attribute_ids"][i, :count].cpu()[keep],
                    "attribute_scores": outputs["attribute_scores"][i, :count].cpu()[keep],
                }
            )
        return results


__all__ = ["ButdFrcnnImageProcessor"]
