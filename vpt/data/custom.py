"""Bring your own dataset: ``data._target_`` names any torch ``Dataset`` class or factory function.

It is called once per split through Hydra's ``instantiate``, with ``data.kwargs`` plus that split's entry of
``data.splits`` (default: ``split=train`` and ``split=test``); a split entry may name its own ``_target_``.
Items are ``(image, label)`` or a datasets-style dict (``data.image_key`` / ``data.label_key``). Images are
raw: PIL, uint8 arrays/tensors, or float [0, 1] (C, H, W) tensors; vpt applies the backbone's preprocessing,
so the factory must not normalise. The result is an ordinary image source: class subsets, k-shot, val
carving, caching and augmentation work as for the built-in datasets.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError
from .sources import SourceSplits
from .spec import DataSpec

log = logging.getLogger(__name__)

DEFAULT_SPLITS: dict[str, dict[str, Any]] = {"train": {"split": "train"}, "test": {"split": "test"}}
LABEL_ATTRIBUTES = ("targets", "labels", "_labels", "y")  # where torch / torchvision datasets keep labels
IMAGE_HINT = "return a PIL image, a uint8 (H, W, C) / (C, H, W) array or tensor, or a float [0, 1] (C, H, W) tensor"


def build_custom(spec: DataSpec) -> SourceSplits:
    """The splits of a ``_target_`` dataset, as image sources."""
    split_args = DEFAULT_SPLITS if spec.splits is None else spec.splits
    sources = {split: DatasetSource(instantiate_split(spec, split, args), spec.image_key, spec.label_key, split)
               for split, args in split_args.items() if args is not None}
    class_names = list(spec.class_names or _class_names(sources["train"].dataset, spec.label_key) or [])
    largest = max(int(src.labels.max(initial=-1)) for src in sources.values())
    if not class_names:
        class_names = [str(i) for i in range(largest + 1)]
    if largest >= len(class_names) or min(int(src.labels.min(initial=0)) for src in sources.values()) < 0:
        raise ConfigError(f"data {spec.name!r}: labels must lie in 0..{len(class_names) - 1} "
                          f"({len(class_names)} class names), found up to {largest}; fix data.class_names")
    return SourceSplits(sources["train"], sources.get("val"), sources.get("test"), class_names)


def instantiate_split(spec: DataSpec, split: str, args: Any) -> Any:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    if not isinstance(args, Mapping):
        raise ConfigError(f"data.splits.{split} must be a mapping of arguments (or null), got {args!r}")
    call = {**spec.kwargs, **args}
    call.setdefault("_target_", spec.target)
    if call["_target_"] is None:
        raise ConfigError(f"no _target_ builds the {split} split: set data._target_ or data.splits.{split}._target_")
    try:
        dataset = instantiate(call, _convert_="all")
    except InstantiationException as error:
        raise ConfigError(f"data {spec.name!r}: building the {split} split with {call['_target_']} failed: "
                          f"{error}. Check that data._target_ is an importable path (its module on PYTHONPATH) and "
                          f"that data.kwargs / data.splits.{split} are its arguments") from error
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise ConfigError(f"{call['_target_']} returned a value of type {type(dataset).__name__}, not a map-style "
                          "dataset (__getitem__ and __len__)")
    return dataset


class DatasetSource:
    """An image source over a user dataset; labels are read up front (without images where possible)."""

    def __init__(self, dataset: Any, image_key: str = "image", label_key: str = "label", split: str = "train"):
        self.dataset, self.image_key, self.label_key, self.split = dataset, image_key, label_key, split
        self.labels = read_labels(dataset, image_key, label_key, split)

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> Image.Image | np.ndarray:
        image = item_field(self.dataset[index], "image", self.image_key, self.label_key, self.split)
        return as_image(image, self.split, index)


def item_field(item: Any, which: str, image_key: str, label_key: str, split: str) -> Any:
    """The image (``which="image"``) or label of one dataset item: a tuple/list or a dict."""
    key, position = (image_key, 0) if which == "image" else (label_key, 1)
    if isinstance(item, Mapping):
        if key not in item:
            raise ConfigError(f"{split} items have no {key!r} key (keys: {', '.join(map(str, item))}); "
                              f"set data.{which}_key")
        return item[key]
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[position]
    raise ConfigError(f"{split} items are {type(item).__name__}; return (image, label) or a dict with "
                      f"{image_key!r} and {label_key!r}")


def read_labels(dataset: Any, image_key: str, label_key: str, split: str) -> np.ndarray:
    """Labels from a label attribute or a datasets column; else by reading every item (logged: it is slow)."""
    column_names = getattr(dataset, "column_names", None)
    if isinstance(column_names, (list, tuple)) and label_key in column_names:
        return _as_labels(dataset[label_key])
    for attribute in LABEL_ATTRIBUTES:
        values = getattr(dataset, attribute, None)
        if values is not None and not callable(values) and len(values) == len(dataset):
            return _as_labels(values)
    log.info("reading the %d labels of the %s split item by item (a `targets` attribute would skip this)",
             len(dataset), split)
    return _as_labels([item_field(dataset[i], "label", image_key, label_key, split) for i in range(len(dataset))])


def _as_labels(values: Any) -> np.ndarray:
    labels = [int(v.item() if isinstance(v, (torch.Tensor, np.ndarray)) else v) for v in values]
    return np.asarray(labels, dtype=np.int64)


def _class_names(dataset: Any, label_key: str) -> list[str] | None:
    names = getattr(dataset, "classes", None)
    features = getattr(dataset, "features", None)  # Hugging Face datasets: a ClassLabel feature
    if names is None and isinstance(features, Mapping) and label_key in features:
        names = getattr(features[label_key], "names", None)
    return [str(name) for name in names] if names else None


def as_image(image: Any, split: str = "train", index: int = 0) -> Image.Image | np.ndarray:
    """A PIL image (uint8 input, so it gets timm's eval geometry) or a float [0, 1] (C, h, w) array."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (torch.Tensor, np.ndarray)):
        pixels = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels
        if pixels.ndim == 3:
            # (H, W, C) unless the first axis looks like channels and the last does not (a torch (C, H, W) image)
            channels_last = not (pixels.shape[0] in (1, 3, 4) and pixels.shape[-1] not in (1, 3, 4))
            hwc = pixels if channels_last else pixels.transpose(1, 2, 0)
            if pixels.dtype == np.uint8:
                return Image.fromarray(hwc[..., 0] if hwc.shape[-1] == 1 else hwc).convert("RGB")
            if np.issubdtype(pixels.dtype, np.floating) and hwc.shape[-1] in (1, 3):
                return np.ascontiguousarray(hwc.transpose(2, 0, 1), dtype=np.float32)
    raise ConfigError(f"{split} item {index}: an image of type {type(image).__name__} "
                      f"{tuple(getattr(image, 'shape', ()))} is not supported; {IMAGE_HINT}")
