"""The decode-and-preprocess stage: runs in DataLoader worker processes and never dies on a bad image.

The images come from an `ImageSource` iterated in the main process: each `ImageEntry` travels to a worker as the
DataLoader's "index" (the sampler is the source itself), so the source is read lazily, as far ahead as the workers
prefetch. Each item coming back is either a `PreparedImage` (the resized, mean-subtracted pixels the model takes) or
a `FailedImage` naming the image and the reason, which the main process writes to the errors file.
"""

import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from ..image_processing_butd_frcnn import ImageDecodeError, ImageTooLargeError, decode_image_bytes, load_image_bgr
from .inputs import ImageEntry


@dataclass
class PreparedImage:
    entry: ImageEntry
    pixel_values: torch.Tensor  # (3, H, W): BGR, mean-subtracted, resized
    scale: float
    original_size: tuple[int, int]  # decoded (height, width)
    seconds: float  # decoding and preprocessing

    @property
    def resized_size(self) -> tuple[int, int]:
        return tuple(self.pixel_values.shape[1:])


@dataclass
class FailedImage:
    entry: ImageEntry
    reason: str
    seconds: float = 0.0


class ImageDataset(Dataset):
    """A map-style dataset keyed by `ImageEntry`: decodes and preprocesses the entry's image with `processor`; a
    failure becomes a `FailedImage`, never an exception."""

    def __init__(self, processor, max_pixels: int):
        self.processor = processor
        self.max_pixels = max_pixels

    def __getitem__(self, entry: ImageEntry) -> PreparedImage | FailedImage:
        start = time.perf_counter()
        if entry.problem is not None:
            return FailedImage(entry, f"{entry.path}: {entry.problem}")
        exif = self.processor.apply_exif_orientation
        try:
            if entry.data is not None:
                bgr = decode_image_bytes(entry.data, exif, max_pixels=self.max_pixels)
            else:
                bgr = load_image_bgr(entry.path, exif, max_pixels=self.max_pixels)
            inputs = self.processor(bgr, input_channel_order="bgr", return_tensors="pt")
        except ImageDecodeError as error:
            reason = str(error) if str(error).startswith(entry.path) else f"{entry.path}: {error}"
            if isinstance(error, ImageTooLargeError):
                reason += "; raise --max-pixels to read it"
            return FailedImage(entry, reason, time.perf_counter() - start)
        except Exception as error:  # noqa: BLE001 (one image must never stop the run; the reason goes to the errors file)
            return FailedImage(entry, f"{entry.path}: {type(error).__name__}: {error}", time.perf_counter() - start)
        return PreparedImage(
            entry=entry,
            pixel_values=inputs["pixel_values"][0],
            scale=float(inputs["scales"][0]),
            original_size=tuple(int(v) for v in inputs["original_sizes"][0]),
            seconds=time.perf_counter() - start,
        )

    def worker_init(self, worker_id: int) -> None:
        """Workers leave Ctrl-C and SIGTERM (sent to the whole process group) to the main process, which stops
        cleanly after the current batch and then shuts them down; they also exit if it dies."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def image_loader(
    dataset: ImageDataset, entries: Iterable[ImageEntry], num_workers: int, prefetch_factor: int = 4
) -> DataLoader:
    """The items of `entries`, one at a time, in order; with `num_workers` > 0 they are decoded ahead in worker
    processes, at most `prefetch_factor` per worker."""
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=entries,
        num_workers=num_workers,
        worker_init_fn=dataset.worker_init if num_workers else None,
        prefetch_factor=prefetch_factor if num_workers else None,
        collate_fn=_identity,
    )


def _identity(item):
    return item
