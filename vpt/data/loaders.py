"""Batch iterables that yield ``(images float32 (B, 3, H, W), labels int64 (B,))`` on a device."""
from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from .datasets import CachedImageDataset
from .preprocess import to_device_async


Batch = tuple[torch.Tensor, torch.Tensor]


class DeviceBatchLoader:
    """Batches a :class:`CachedImageDataset` straight from a uint8 copy on ``device``.

    No per-sample Python: each batch is one index_select, one float conversion, batched augmentation
    and normalisation. A seeded CPU generator drives shuffling and augmentation, so the batch sequence
    is reproducible and identical across devices; each pass over the loader draws a new permutation.
    """

    def __init__(self, dataset: CachedImageDataset, batch_size: int, shuffle: bool = False,
                 device: str | torch.device = "cpu", seed: int = 0, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.images = dataset.images.to(self.device)
        self.labels = dataset.labels.to(self.device)
        self.preprocess, self.augment = dataset.preprocess, dataset.augment
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        count = len(self.labels)
        return count // self.batch_size if self.drop_last else math.ceil(count / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        count = len(self.labels)
        order = torch.randperm(count, generator=self.generator) if self.shuffle else torch.arange(count)
        order = to_device_async(order, self.device)
        for batch_index in range(len(self)):
            indices = order[batch_index * self.batch_size:(batch_index + 1) * self.batch_size]
            images = self.preprocess.prepare_batch(self.images.index_select(0, indices), self.augment, self.generator)
            yield images, self.labels.index_select(0, indices)


class DeviceDataLoader:
    """A torch DataLoader whose batches are moved to ``device`` (so both loader kinds yield alike)."""

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool = False, num_workers: int = 0,
                 device: str | torch.device = "cpu", seed: int = 0, drop_last: bool = False):
        self.device = torch.device(device)
        self.loader = DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, drop_last=drop_last,
            generator=torch.Generator().manual_seed(seed), pin_memory=self.device.type == "cuda",
            persistent_workers=num_workers > 0,
        )

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for images, labels in self.loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int = 0,
                device: str | torch.device = "cpu", seed: int = 0) -> DeviceBatchLoader | DeviceDataLoader:
    if isinstance(dataset, CachedImageDataset):
        return DeviceBatchLoader(dataset, batch_size, shuffle=shuffle, device=device, seed=seed)
    return DeviceDataLoader(dataset, batch_size, shuffle=shuffle, num_workers=num_workers, device=device, seed=seed)
