"""Batches of images of one resized size: the model runs them as one tensor without padding.

The model handles each image's regions on their own; only its backbone and RPN head see the whole batch. On a CPU
each image then gets the bits it gets alone: where PyTorch would run a batch on other kernels than a single image
(small maps), the model runs those layers one image at a time, and oneDNN computes an image the same way in any
batch (measured at 64x80 to 600x1000; tested). On a GPU, cuDNN may pick another algorithm for another batch size,
which rounds differently: `extract` batches by default on CPUs only (`DEFAULT_BATCH_SIZES`).
"""

import torch

from .decoding import PreparedImage


class SizeBatcher:
    """Collects images into per-size buckets and hands out a batch when a bucket is full.

    At most `max_pending` images wait in buckets: beyond that the fullest bucket goes out as it is, so mixed sizes
    cannot pile up in memory.
    """

    def __init__(self, batch_size: int, max_pending: int | None = None):
        self.batch_size = batch_size
        self.max_pending = max(max_pending or 4 * batch_size, batch_size)
        self._buckets: dict[tuple[int, int], list[PreparedImage]] = {}
        self._pending = 0

    def add(self, image: PreparedImage) -> list[list[PreparedImage]]:
        """Add one image; returns the batches that are ready (possibly none)."""
        bucket = self._buckets.setdefault(image.resized_size, [])
        bucket.append(image)
        self._pending += 1
        ready = []
        if len(bucket) == self.batch_size:
            ready.append(self._take(image.resized_size))
        while self._pending > self.max_pending:
            ready.append(self._take(max(self._buckets, key=lambda size: len(self._buckets[size]))))
        return ready

    def drain(self) -> list[list[PreparedImage]]:
        """Every waiting image, as batches."""
        return [self._take(size) for size in list(self._buckets)]

    @property
    def pending(self) -> int:
        return self._pending

    def _take(self, size: tuple[int, int]) -> list[PreparedImage]:
        batch = self._buckets.pop(size)
        self._pending -= len(batch)
        return batch


def collate(images: list[PreparedImage]) -> dict[str, torch.Tensor]:
    """The model's inputs for images of one resized size (what the image processor returns for them)."""
    return {
        "pixel_values": torch.stack([image.pixel_values for image in images]),
        "image_sizes": torch.tensor([image.resized_size for image in images], dtype=torch.long),
        "scales": torch.tensor([image.scale for image in images], dtype=torch.float64),
        "original_sizes": torch.tensor([image.original_size for image in images], dtype=torch.long),
    }
