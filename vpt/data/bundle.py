"""``build_data``: config -> :class:`DataBundle` of train / val / test datasets and their loaders."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch.utils.data import Dataset

from .catalog import load_splits
from .datasets import CachedImageDataset, LazyImageDataset, readable_only
from .loaders import DeviceBatchLoader, DeviceDataLoader, make_loader
from .preprocess import Preprocess
from .protocol import apply_protocol
from .recipes import TimmAugmentedDataset, timm_train_transform
from .sources import ImageSource
from .spec import DataSpec

log = logging.getLogger(__name__)

# With data.cache unset, cache when all decoded splits together take at most this much memory
CACHE_AUTO_MAX_BYTES = 2 * 1024**3
SPLITS = ("train", "val", "test")


@dataclass
class DataBundle:
    """Datasets return ``(normalised float (3, H, W), int label)``; labels are 0..num_classes-1."""

    train: Dataset
    val: Dataset | None
    test: Dataset | None
    class_names: list[str]
    preprocess: Preprocess | None = None
    #: True when val is also trained on (``train_on_trainval``): it is reported but cannot select checkpoints
    val_in_train: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def sizes(self) -> dict[str, int]:
        return {split: len(ds) for split in SPLITS if (ds := getattr(self, split)) is not None}

    def loaders(self, batch_size: int, num_workers: int = 0, device: str | torch.device = "cpu", seed: int = 0,
                eval_batch_size: int | None = None) -> dict[str, DeviceBatchLoader | DeviceDataLoader]:
        """Loaders for the splits that exist: 'train' is shuffled with a ``seed``-ed generator.

        Cached datasets get a :class:`DeviceBatchLoader` (``num_workers`` unused), others a DataLoader.
        Batches arrive on ``device`` either way.
        """
        loaders = {}
        for split in SPLITS:
            dataset = getattr(self, split)
            if dataset is None:
                continue
            size = batch_size if split == "train" else (eval_batch_size or batch_size)
            loaders[split] = make_loader(dataset, size, shuffle=split == "train", num_workers=num_workers,
                                         device=device, seed=seed)
        return loaders


def _should_cache(spec: DataSpec, sources: Mapping[str, ImageSource], preprocess: Preprocess) -> bool:
    if spec.cache is not None:
        return bool(spec.cache)
    height, width = preprocess.size
    decoded_bytes = sum(len(src) for src in sources.values()) * 3 * height * width
    return decoded_bytes <= CACHE_AUTO_MAX_BYTES


def build_data(data_cfg: Mapping[str, Any], data_config: Mapping[str, Any], seed: int = 0) -> DataBundle:
    """Load ``data_cfg.name``, apply the sampling protocol, and wrap the splits for the backbone.

    data_cfg keys (only ``name`` is required):
        name: digits | imagefolder | list | vtab | fgvc | a torchvision dataset (cifar10, dtd, ...).
        root: dataset folder. download: let torchvision download into root (default false).
        classes: class indices or names to keep, relabelled 0..k-1 in the given order.
        subsample_classes: all | base | new: base-to-novel, the first ceil(n/2) classes (after ``classes``) or
            the rest, relabelled 0..k-1 (CoCoOp's protocol).
        num_shots: k images per class for training (per ``seed``).
        train_size / val_size: VTAB-1k style sizes drawn per ``seed`` (val from train if there is no val
            split); train_on_trainval: train on train + val (val is still reported).
        val_fraction: fraction of train held out as val when the dataset has no val split (default 0).
        cache: decode everything once into memory (default: when it takes <= 2 GiB).
        augment (train only): none | flip_crop (batched on the device: the fast default) | timm (timm's
            create_transform per sample with the arguments in timm_aug, e.g. auto_augment, re_prob).
        max_per_class_test: cap the test split per class.
        _target_ (+ kwargs, splits, class_names, image_key, label_key): your own torch Dataset; see
            :mod:`vpt.data.custom`.
        skip_bad_images: drop unreadable image files (checked before training; one warning with the count)
            instead of stopping at the first, which is named.
    data_config: the backbone's preprocessing (timm ``resolve_data_config``): input_size, mean, std,
        interpolation, crop_pct.
    """
    spec = DataSpec.from_mapping(data_cfg)
    preprocess = Preprocess.from_data_config(data_config)
    splits = apply_protocol(load_splits(spec), spec, seed)
    sources = {split: src for split in SPLITS if (src := getattr(splits, split)) is not None}
    cache = _should_cache(spec, sources, preprocess)
    log.info("data %s: %s, %d classes, %s", spec.name, {k: len(v) for k, v in sources.items()},
             len(splits.class_names), "cached in memory" if cache else "decoded on the fly")

    def wrap(split: str) -> Dataset | None:
        source = sources.get(split)
        if source is None:
            return None
        augment = spec.augment if split == "train" else "none"
        if augment == "timm":
            return TimmAugmentedDataset(source, preprocess, timm_train_transform(preprocess, spec.timm_aug))
        if cache:
            return CachedImageDataset.from_source(source, preprocess, augment, skip_bad=spec.skip_bad_images,
                                                  split=split)
        return LazyImageDataset(readable_only(source, split) if spec.skip_bad_images else source, preprocess, augment)

    return DataBundle(wrap("train"), wrap("val"), wrap("test"), list(splits.class_names), preprocess,
                      val_in_train=bool(spec.train_on_trainval and splits.val is not None))
