"""The sampling protocol applied to a dataset's official splits: class subset, test cap, val carving,
train size / k-shot, train-on-trainval. Selections depend only on the labels and the run seed."""
from __future__ import annotations

import math

import numpy as np

from .sampling import cap_per_class, k_shot, keep_classes, resolve_classes, split_stratified
from .sources import ConcatSource, SourceSplits, SubsetSource
from .spec import DataSpec

# Separate random streams per decision, so e.g. changing num_shots does not move the val split
_VAL_STREAM, _TRAIN_STREAM = 1, 2


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def base_new_classes(num_classes: int, which: str) -> list[int]:
    """Base-to-novel (CoCoOp's ``subsample_classes``): labels sorted, the first ceil(n/2) are base, the rest new."""
    split = math.ceil(num_classes / 2)
    return list(range(split)) if which == "base" else list(range(split, num_classes))


def _restrict_classes(splits: SourceSplits, spec: DataSpec) -> SourceSplits:
    if spec.classes is not None:
        splits = _keep(splits, resolve_classes(spec.classes, splits.class_names))
    if spec.subsample_classes != "all":
        splits = _keep(splits, base_new_classes(len(splits.class_names), spec.subsample_classes))
    return splits


def _keep(splits: SourceSplits, classes: list[int]) -> SourceSplits:
    subset = {split: keep_classes(src, classes) if src is not None else None for split, src in splits.named().items()}
    return SourceSplits(class_names=[splits.class_names[c] for c in classes], **subset)


def apply_protocol(splits: SourceSplits, spec: DataSpec, seed: int) -> SourceSplits:
    splits = _restrict_classes(splits, spec)
    train, val, test = splits.train, splits.val, splits.test

    if test is not None and spec.max_per_class_test is not None:
        test = SubsetSource(test, cap_per_class(test.labels, spec.max_per_class_test))

    if train is None:  # an evaluation-only dataset (data.eval_only): nothing to sample
        return SourceSplits(None, val, test, splits.class_names)
    if val is not None:
        if spec.val_size is not None:
            val, _ = split_stratified(val, spec.val_size, _rng(seed, _VAL_STREAM))
    else:  # no official val split: carve one out of train
        val_count = spec.val_size if spec.val_size is not None else round(spec.val_fraction * len(train))
        if val_count > 0:
            val, train = split_stratified(train, val_count, _rng(seed, _VAL_STREAM))

    if val is not None and spec.val_shots is not None:  # CoOp's few-shot val: min(num_shots, 4) per class
        val = SubsetSource(val, k_shot(val.labels, spec.val_shots, _rng(seed, _VAL_STREAM), fewer=True))
    if spec.train_size is not None:
        train, _ = split_stratified(train, spec.train_size, _rng(seed, _TRAIN_STREAM))
    elif spec.num_shots is not None:
        train = SubsetSource(train, k_shot(train.labels, spec.num_shots, _rng(seed, _TRAIN_STREAM)))

    if spec.train_on_trainval and val is not None:
        untouched = train is splits.train and val is splits.val
        # The official train+val list (VTAB's train800val200) only matches when nothing was resampled
        train = splits.trainval if untouched and splits.trainval is not None else ConcatSource([train, val])
    return SourceSplits(train, val, test, splits.class_names)

