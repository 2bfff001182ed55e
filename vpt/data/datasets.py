"""Map-style datasets returning ``(normalised float (3, H, W), int label)``.

``LazyImageDataset`` decodes on every access; ``CachedImageDataset`` holds the decoded, resized uint8
images in memory. Both run the same :class:`Preprocess` stages, so they return identical tensors.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.utils.data import Dataset

from .preprocess import Preprocess
from .sources import BadImageError, ImageSource, SubsetSource

log = logging.getLogger(__name__)


class LazyImageDataset(Dataset):
    def __init__(self, source: ImageSource, preprocess: Preprocess, augment: str = "none"):
        self.source, self.preprocess, self.augment = source, preprocess, augment
        self.labels = torch.as_tensor(source.labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.preprocess.to_uint8(self.source.load(index))
        return self.preprocess.prepare_batch(image[None], self.augment)[0], int(self.labels[index])


class CachedImageDataset(Dataset):
    """Decoded images as one uint8 tensor (N, 3, H, W); :class:`DeviceBatchLoader` batches it on a device."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, preprocess: Preprocess, augment: str = "none"):
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"expected uint8 (N, 3, H, W) images matching {len(labels)} labels, got "
                             f"{images.dtype} {tuple(images.shape)}")
        self.images, self.labels = images, labels.to(torch.int64)
        self.preprocess, self.augment = preprocess, augment

    @classmethod
    def from_source(cls, source: ImageSource, preprocess: Preprocess, augment: str = "none",
                    num_threads: int | None = None, skip_bad: bool = False, split: str = "") -> "CachedImageDataset":
        """``skip_bad``: drop images that cannot be decoded (one warning with the count) instead of raising."""
        unreadable: list[BadImageError] | None = [] if skip_bad else None
        images, labels = decode_all(source, preprocess, num_threads, unreadable), torch.as_tensor(source.labels)
        if unreadable:
            keep = torch.ones(len(labels), dtype=torch.bool)
            keep[[error.index for error in unreadable]] = False
            images, labels = images[keep], labels[keep]
            _warn_skipped(unreadable, len(source), split)
        return cls(images, labels, preprocess, augment)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.preprocess.prepare_batch(self.images[index][None], self.augment)[0], int(self.labels[index])


def decode_all(source: ImageSource, preprocess: Preprocess, num_threads: int | None = None,
               unreadable: list[BadImageError] | None = None) -> torch.Tensor:
    """Every image of ``source`` at the model input size, as uint8 (N, 3, H, W).

    Threads help because PIL releases the GIL while decoding and resizing. ``unreadable``: collect the errors of
    images that cannot be decoded there (``error.index``; their rows stay zero) instead of raising the first.
    """
    height, width = preprocess.size
    images = torch.zeros(len(source), 3, height, width, dtype=torch.uint8)

    def decode(index: int) -> None:
        try:
            images[index] = preprocess.to_uint8(source.load(index))
        except BadImageError as error:
            if unreadable is None:
                raise
            error.index = index
            unreadable.append(error)  # list.append is atomic under the GIL

    num_threads = num_threads or min(8, os.cpu_count() or 1)
    log.info("decoding %d images to %dx%d uint8 with %d threads", len(source), height, width, num_threads)
    with ThreadPoolExecutor(num_threads) as pool:
        for _ in pool.map(decode, range(len(source)), chunksize=64):
            pass  # iterating re-raises the first decoding error
    return images


def readable_only(source: ImageSource, split: str = "", num_threads: int | None = None) -> ImageSource:
    """``source`` without the images that cannot be decoded (``data.skip_bad_images`` for data decoded on the fly):
    every image is decoded once, before training, and the skipped ones are said in one warning."""
    unreadable: list[BadImageError] = []

    def check(index: int) -> None:
        try:
            source.load(index)
        except BadImageError as error:
            error.index = index
            unreadable.append(error)

    with ThreadPoolExecutor(num_threads or min(8, os.cpu_count() or 1)) as pool:
        for _ in pool.map(check, range(len(source)), chunksize=64):
            pass
    if not unreadable:
        return source
    _warn_skipped(unreadable, len(source), split)
    bad = {error.index for error in unreadable}
    return SubsetSource(source, [i for i in range(len(source)) if i not in bad])


def _warn_skipped(unreadable: list[BadImageError], total: int, split: str) -> None:
    names = sorted(str(error.image) for error in unreadable)
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    log.warning("data.skip_bad_images: skipped %d unreadable image(s) of %d in %s: %s", len(names), total,
                split or "the data", shown)
