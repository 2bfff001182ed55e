"""Index selection on label arrays: stratified samples, k-shot, per-class caps, class subsets.

Every function takes a numpy ``Generator`` (or none) and returns sorted indices, so a selection is a
pure function of (labels, seed).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import ConfigError
from .sources import ImageSource, SubsetSource

# Datasets without an official test split get a held-out test split drawn with this fixed seed, so the
# test set is the same for every run seed and results stay comparable.
HOLDOUT_SEED = 0
HOLDOUT_TEST_FRACTION = 0.2


def stratified_sample(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` indices with class proportions as close to ``labels``' as integers allow."""
    if count > len(labels):
        raise ConfigError(f"cannot sample {count} images from a split of {len(labels)}")
    classes, class_sizes = np.unique(labels, return_counts=True)
    quota = class_sizes * count / len(labels)
    per_class = np.floor(quota).astype(np.int64)
    # Hand the leftover slots to the largest fractional parts; random tie-breaking avoids favouring low ids
    leftover = count - int(per_class.sum())
    order = np.lexsort((rng.permutation(len(classes)), -(quota - per_class)))
    per_class[order[:leftover]] += 1
    chosen = [rng.choice(np.flatnonzero(labels == c), n, replace=False) for c, n in zip(classes, per_class)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def k_shot(labels: np.ndarray, shots: int, rng: np.random.Generator, fewer: bool = False) -> np.ndarray:
    """Exactly ``shots`` random indices per class; ``fewer``: all of a class that has fewer (Dassl's few-shot val,
    ``generate_fewshot_dataset`` without repeat), else that is an error."""
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < shots and not fewer:
            raise ConfigError(f"data.num_shots={shots} but class {label} has only {len(members)} training images")
        chosen.append(rng.choice(members, min(shots, len(members)), replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def cap_per_class(labels: np.ndarray, cap: int) -> np.ndarray:
    """The first ``cap`` indices of each class (deterministic, for quick runs)."""
    keep = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        keep[np.flatnonzero(labels == label)[:cap]] = True
    return np.flatnonzero(keep)


def split_stratified(source: ImageSource, count: int, rng: np.random.Generator) -> tuple[SubsetSource, SubsetSource]:
    """(the sampled ``count`` images, the rest)."""
    picked = stratified_sample(source.labels, count, rng)
    rest = np.setdiff1d(np.arange(len(source)), picked)
    return SubsetSource(source, picked), SubsetSource(source, rest)


def holdout_test_split(source: ImageSource) -> tuple[SubsetSource, SubsetSource]:
    """(train, test) for a dataset that ships as one pool: a fixed-seed stratified 20% test split."""
    test_count = round(HOLDOUT_TEST_FRACTION * len(source))
    test, train = split_stratified(source, test_count, np.random.default_rng(HOLDOUT_SEED))
    return train, test


def resolve_classes(requested: Sequence[int | str], class_names: Sequence[str]) -> list[int]:
    """Class indices for ``data.classes`` entries given as indices or names."""
    by_name = {name: i for i, name in enumerate(class_names)}
    resolved = []
    for entry in requested:
        if isinstance(entry, str) and entry in by_name:
            resolved.append(by_name[entry])
        elif isinstance(entry, (int, np.integer)) and not isinstance(entry, bool) and 0 <= entry < len(class_names):
            resolved.append(int(entry))
        else:
            raise ConfigError(
                f"data.classes entry {entry!r} is neither a class index in 0..{len(class_names) - 1} "
                f"nor a class name; names: {', '.join(class_names)}"
            )
    if len(set(resolved)) != len(resolved):
        raise ConfigError(f"data.classes {list(requested)} names the same class twice")
    return resolved


def keep_classes(source: ImageSource, classes: Sequence[int]) -> SubsetSource:
    """The samples of ``classes``, relabelled 0..k-1 in the order given."""
    new_label = np.full(max(int(source.labels.max(initial=0)), max(classes)) + 1, -1, dtype=np.int64)
    new_label[list(classes)] = np.arange(len(classes))
    indices = np.flatnonzero(new_label[source.labels] >= 0)
    return SubsetSource(source, indices, new_label[source.labels[indices]])
