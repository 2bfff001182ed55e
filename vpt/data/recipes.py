"""timm's training recipes as options, wrapped rather than copied.

- ``data.augment=timm``: the train split goes through ``timm.data.create_transform`` (RandAugment via
  ``auto_augment``, random erasing via ``re_prob``, ...), per sample on the host, with ``data.timm_aug`` as its
  arguments; the backbone's input size, mean, std and interpolation are filled in.
- ``trainer.mixup``: Mixup / CutMix through ``timm.data.Mixup`` on each training batch, giving soft targets.

timm draws these from Python's and numpy's global RNGs; :func:`host_rngs_from_torch` seeds them from torch's
per draw, so augmentation depends only on the seeds the training loop sets (a resumed run repeats it).
"""
from __future__ import annotations

import contextlib
import inspect
import random
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.functional import to_pil_image

from ..errors import ConfigError
from .preprocess import Preprocess
from .sources import ImageSource

SET_BY_BACKBONE = ("input_size", "mean", "std", "is_training")


@contextlib.contextmanager
def host_rngs_from_torch() -> Iterator[None]:
    """Seed ``random`` and ``numpy.random`` from torch's default generator for the block; restore them after."""
    seed = int(torch.randint(0, 2**31 - 1, (1,)))
    python_state, numpy_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _checked_call(function: Callable, where: str, kwargs: Mapping[str, Any], **fixed: Any) -> Any:
    """``function(**fixed, **kwargs)``; an unknown argument name is a ConfigError listing the valid ones."""
    valid = set(inspect.signature(function).parameters) - set(fixed)
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]} is not an argument of {function.__module__}.{function.__qualname__}; "
                          f"valid: {', '.join(sorted(valid))}")
    return function(**fixed, **kwargs)


def timm_train_transform(preprocess: Preprocess, options: Mapping[str, Any] | None) -> Callable:
    """timm's training transform (PIL image -> normalised float tensor) for the backbone's input."""
    from timm.data import create_transform

    options = dict(options or {})
    fixed = sorted(set(options) & set(SET_BY_BACKBONE))
    if fixed:
        raise ConfigError(f"data.timm_aug.{fixed[0]} is set from the backbone's preprocessing; remove it "
                          "(change the input size with backbone.image_size)")
    options.setdefault("interpolation", preprocess.interpolation)
    return _checked_call(create_transform, "data.timm_aug", options, input_size=(3, *preprocess.size),
                         is_training=True, mean=preprocess.mean, std=preprocess.std)


class TimmAugmentedDataset(Dataset):
    """A train split decoded per sample and augmented by a timm transform (not cacheable: every epoch differs).

    Original PIL images go to the transform as they are; array images (e.g. 8x8 digits) are first brought to
    the input size by the eval geometry, as the cache would hold them.
    """

    def __init__(self, source: ImageSource, preprocess: Preprocess, transform: Callable):
        self.source, self.preprocess, self.transform = source, preprocess, transform
        self.labels = torch.as_tensor(source.labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.source.load(index)
        if not isinstance(image, Image.Image):
            image = to_pil_image(self.preprocess.to_uint8(image))
        with host_rngs_from_torch():
            return self.transform(image), int(self.labels[index])


def build_mixup(options: Mapping[str, Any], num_classes: int, label_smoothing: float = 0.0):
    """``timm.data.Mixup`` from ``trainer.mixup`` (its own ``label_smoothing`` wins over the trainer's)."""
    from timm.data import Mixup

    options = {"label_smoothing": label_smoothing, **options}
    return _checked_call(Mixup, "trainer.mixup", options, num_classes=num_classes)


def mix_batch(mixup, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mixed images, soft targets). timm mixes a batch with its own reverse, so it needs an even size: an odd
    batch (the last of an epoch) is left unmixed, with label-smoothed targets."""
    from timm.data.mixup import mixup_target

    if len(labels) % 2:
        return images, mixup_target(labels, mixup.num_classes, 1.0, mixup.label_smoothing)
    with host_rngs_from_torch():
        return mixup(images, labels)
