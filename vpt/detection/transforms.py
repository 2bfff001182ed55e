"""Box-aware augmentation (torchvision.transforms.v2 on tv_tensors) and batching for detection.

The detector resizes every image itself (torchvision's GeneralizedRCNNTransform: shorter side to ``min_size``,
longer side at most ``max_size``). Scale jitter must therefore survive that resize: the training pipeline
resizes the image to fit ``size`` x ``size`` times a random scale, then crops or pads it to exactly
``size`` x ``size`` (large-scale jitter, as ViTDet trains); with ``PromptedDetector(min_size=size,
max_size=size)`` the detector leaves that scale alone, and at evaluation fits each whole image in ``size``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torchvision.transforms import v2

from ..errors import ConfigError


def _check_range(scale_range: Sequence[float]) -> tuple[float, float]:
    low, high = (float(s) for s in scale_range)
    if not 0 < low <= high:
        raise ConfigError(f"scale_range {tuple(scale_range)} must be two positive numbers, low <= high "
                          "(e.g. 0.75, 1.25)")
    return low, high


def train_transforms(size: int | None = None, scale_range: Sequence[float] = (0.75, 1.25),
                     flip_p: float = 0.5) -> v2.Compose:
    """Flip; if ``size``: scale jitter to fit ``size * s`` (s uniform in ``scale_range``) and a random
    ``size`` x ``size`` crop (padding with black where the image is smaller); drop boxes left with no area; float."""
    steps: list[Any] = [v2.RandomHorizontalFlip(flip_p)]
    if size is not None:
        steps += [v2.ScaleJitter((size, size), _check_range(scale_range)),
                  v2.RandomCrop(size, pad_if_needed=True, fill=0)]
    steps += [v2.SanitizeBoundingBoxes(min_size=1), v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose(steps)


def eval_transforms(size: int | None = None) -> v2.Compose:
    """Float pixels; if ``size``: resize to fit ``size`` x ``size`` keeping the aspect ratio (the detector
    does the same with ``min_size=max_size=size``, so this only saves work on large images)."""
    steps: list[Any] = [v2.Resize(size=None, max_size=size)] if size is not None else []
    return v2.Compose(steps + [v2.ToDtype(torch.float32, scale=True)])


def collate_detection(batch: Sequence[tuple[Any, dict[str, Any]]]) -> tuple[list[Any], list[dict[str, Any]]]:
    """DataLoader ``collate_fn``: images differ in size, so keep lists (torchvision detectors take lists)."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def move_detection_batch(batch: tuple[list[Any], list[dict[str, Any]]],
                         device: torch.device) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """A :func:`collate_detection` batch onto ``device`` (the ``move`` of :class:`vpt.data.loaders.DeviceDataLoader`):
    every image, and every tensor of each target (``image_id`` and other plain values stay as they are)."""
    images, targets = batch
    return ([image.to(device, non_blocking=True) for image in images],
            [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in target.items()} for target in targets])
