"""Batch iterables that yield ``(images float32 (B, 3, H, W), labels int64 (B,))`` on a device."""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .datasets import CachedImageDataset
from .preprocess import to_device_async


Batch = tuple[torch.Tensor, torch.Tensor]


# -- torchrun shards (see vpt.engine.distributed) ------------------------------------------------------
def sharded_batch_count(count: int, batch_size: int, world_size: int) -> int:
    """Global batches per epoch; a last partial batch smaller than the world size is dropped (a rank would
    get no image)."""
    full, tail = divmod(count, batch_size)
    return full + (1 if tail >= world_size else 0)


def global_batches(count: int, batch_size: int, world_size: int, shuffle: bool,
                   generator: torch.Generator | None) -> Iterator[torch.Tensor]:
    """The dataset indices of each global batch: one permutation per pass, the same on every rank."""
    order = torch.randperm(count, generator=generator) if shuffle else torch.arange(count)
    for start in range(0, sharded_batch_count(count, batch_size, world_size) * batch_size, batch_size):
        yield order[start:start + batch_size]


def take_shard(indices: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous slice of a global batch (sizes differ by at most one)."""
    return indices.tensor_split(world_size)[rank]


def shard_weights(count: int, batch_size: int, rank: int, world_size: int) -> list[float]:
    """Per step: this rank's loss weight ``world_size * shard / global batch``, so DDP's mean of the
    weighted per-rank mean losses is the mean over the global batch (1.0 whenever shards are equal)."""
    weights = []
    for step in range(sharded_batch_count(count, batch_size, world_size)):
        size = min(batch_size, count - step * batch_size)
        shard = len(range(size)[rank::world_size])  # tensor_split's sizes: the first size % world get one more
        weights.append(world_size * shard / size)
    return weights


class ShardedBatchSampler(Sampler[list[int]]):
    """A DataLoader ``batch_sampler``: this rank's slice of each global batch."""

    def __init__(self, count: int, batch_size: int, shuffle: bool, rank: int, world_size: int,
                 generator: torch.Generator) -> None:
        self.count, self.batch_size, self.shuffle = count, batch_size, shuffle
        self.rank, self.world_size, self.generator = rank, world_size, generator

    def __len__(self) -> int:
        return sharded_batch_count(self.count, self.batch_size, self.world_size)

    def __iter__(self) -> Iterator[list[int]]:
        for indices in global_batches(self.count, self.batch_size, self.world_size, self.shuffle, self.generator):
            yield take_shard(indices, self.rank, self.world_size).tolist()


class DeviceBatchLoader:
    """Batches a :class:`CachedImageDataset` straight from a uint8 copy on ``device``.

    No per-sample Python: each batch is one index_select, one float conversion, batched augmentation
    and normalisation. A seeded CPU generator drives shuffling and augmentation, so the batch sequence
    is reproducible and identical across devices; each pass over the loader draws a new permutation.
    ``sharded(rank, world_size)``: one torchrun rank's slice of every batch (see :mod:`vpt.engine.distributed`).
    """

    rank, world_size = 0, 1
    shard_weight = 1.0  # this rank's loss weight for the batch last yielded (1.0 unsharded)

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
        if self.world_size > 1:
            return sharded_batch_count(count, self.batch_size, self.world_size)
        return count // self.batch_size if self.drop_last else math.ceil(count / self.batch_size)

    def sharded(self, rank: int, world_size: int) -> "DeviceBatchLoader":
        """This rank's view: same global batches (``generator`` orders them alike on every rank), its own
        slice of each, augmented with ``augment_generator`` (reseeded per rank by :meth:`reseed`)."""
        if self.drop_last:
            raise ValueError("a sharded loader keeps the last partial batch; build it with drop_last=False")
        from ..engine.runtime import derive_seed

        view = copy.copy(self)  # shares the images on the device
        view.rank, view.world_size = rank, world_size
        view.generator = torch.Generator().manual_seed(self.generator.initial_seed())
        view.augment_generator = torch.Generator().manual_seed(derive_seed(self.generator.initial_seed(), rank))
        return view

    def reseed(self, seed: int) -> None:
        from ..engine.runtime import derive_seed

        self.generator.manual_seed(seed)
        if self.world_size > 1:
            self.augment_generator.manual_seed(derive_seed(seed, self.rank))

    def __iter__(self) -> Iterator[Batch]:
        if self.world_size > 1:
            yield from self._iter_shards()
            return
        count = len(self.labels)
        order = torch.randperm(count, generator=self.generator) if self.shuffle else torch.arange(count)
        order = to_device_async(order, self.device)
        for batch_index in range(len(self)):
            indices = order[batch_index * self.batch_size:(batch_index + 1) * self.batch_size]
            images = self.preprocess.prepare_batch(self.images.index_select(0, indices), self.augment, self.generator)
            yield images, self.labels.index_select(0, indices)

    def _iter_shards(self) -> Iterator[Batch]:
        count = len(self.labels)
        weights = shard_weights(count, self.batch_size, self.rank, self.world_size)
        batches = global_batches(count, self.batch_size, self.world_size, self.shuffle, self.generator)
        for weight, indices in zip(weights, batches):
            indices = to_device_async(take_shard(indices, self.rank, self.world_size), self.device)
            images = self.preprocess.prepare_batch(self.images.index_select(0, indices), self.augment,
                                                   self.augment_generator)
            self.shard_weight = weight
            yield images, self.labels.index_select(0, indices)


def move_pair(batch: Batch, device: torch.device) -> Batch:
    """``(images, labels)`` onto ``device``; from pinned memory (CUDA) the copies overlap the next batch's work."""
    images, labels = batch
    return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


class DeviceDataLoader:
    """A torch DataLoader whose batches are moved to ``device`` (so both loader kinds yield alike).

    ``collate_fn`` and ``move(batch, device)`` say how samples become a batch and how a batch moves to the device
    (default: stacked ``(images, labels)``; detection passes lists of images and target dicts). On CUDA the
    batches come from pinned memory. ``sharded(rank, world_size)``: one torchrun rank's slice of every batch (see
    :mod:`vpt.engine.distributed`).
    """

    shard_weight = 1.0  # this rank's loss weight for the batch last yielded (1.0 unsharded)

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool = False, num_workers: int = 0,
                 device: str | torch.device = "cpu", seed: int = 0, drop_last: bool = False,
                 collate_fn: Callable[[list[Any]], Any] | None = None,
                 move: Callable[[Any, torch.device], Any] = move_pair):
        self.device = torch.device(device)
        self.options = dict(dataset=dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                            device=device, seed=seed, collate_fn=collate_fn, move=move)
        self.move = move
        self.sampler: ShardedBatchSampler | None = None
        self.weights: list[float] = []
        self.loader = self._data_loader(torch.Generator().manual_seed(seed), batch_size=batch_size, shuffle=shuffle,
                                        drop_last=drop_last)

    def _data_loader(self, generator: torch.Generator, **batching: Any) -> DataLoader:
        options = self.options
        return DataLoader(options["dataset"], num_workers=options["num_workers"], collate_fn=options["collate_fn"],
                          generator=generator, pin_memory=self.device.type == "cuda",
                          # workers start afresh each epoch, seeded from the generator reseed() set: a resumed
                          # run's augmentation equals an uninterrupted one's (persistent workers keep epoch 1's)
                          persistent_workers=False, **batching)

    def sharded(self, rank: int, world_size: int) -> "DeviceDataLoader":
        """This rank's view: a batch sampler slicing the global batches (the same on every rank); the
        DataLoader's own generator (worker seeds, hence augmentation) is per rank."""
        from ..engine.runtime import derive_seed

        options = self.options
        view = DeviceDataLoader.__new__(DeviceDataLoader)
        view.device, view.options, view.move = self.device, options, self.move
        count, batch_size = len(options["dataset"]), options["batch_size"]
        view.sampler = ShardedBatchSampler(count, batch_size, options["shuffle"], rank, world_size,
                                           torch.Generator().manual_seed(options["seed"]))
        view.weights = shard_weights(count, batch_size, rank, world_size)
        view.loader = view._data_loader(torch.Generator().manual_seed(derive_seed(options["seed"], rank)),
                                        batch_sampler=view.sampler)
        return view

    def reseed(self, seed: int) -> None:
        from ..engine.runtime import derive_seed

        if self.sampler is None:
            self.loader.generator.manual_seed(seed)
            return
        self.sampler.generator.manual_seed(seed)
        self.loader.generator.manual_seed(derive_seed(seed, self.sampler.rank))

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for step, batch in enumerate(self.loader):
            if self.sampler is not None:
                self.shard_weight = self.weights[step]
            yield self.move(batch, self.device)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int = 0,
                device: str | torch.device = "cpu", seed: int = 0) -> DeviceBatchLoader | DeviceDataLoader:
    if isinstance(dataset, CachedImageDataset):
        return DeviceBatchLoader(dataset, batch_size, shuffle=shuffle, device=device, seed=seed)
    return DeviceDataLoader(dataset, batch_size, shuffle=shuffle, num_workers=num_workers, device=device, seed=seed)
