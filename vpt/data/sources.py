"""Image sources: labelled collections that decode one image on request.

Labels are known up front (no decoding), so class subsets, k-shot and split carving work on label
arrays alone and only the kept images are ever decoded.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np
from PIL import Image

from ..errors import ConfigError

SKIP_HINT = "set data.skip_bad_images=true to skip unreadable images (each is checked once, before training)"
# what PIL raises for a truncated, corrupt or not-an-image file
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class BadImageError(ConfigError):
    """An image file that cannot be decoded (truncated, corrupt, not an image); names the file and the fix."""

    def __init__(self, message: str, image: str | None = None) -> None:
        # a DataLoader worker re-raises with the worker's traceback around the message: keep the message only
        if "Original Traceback" in message:
            message = message.rstrip().splitlines()[-1].partition(f"{type(self).__name__}: ")[2] or message
        super().__init__(message)
        self.image = image  # the file (or dataset item) that failed
        self.index: int | None = None  # its position in the source, set where it is skipped


class ImageSource(Protocol):
    labels: np.ndarray  # int64, one per image

    def __len__(self) -> int: ...

    def load(self, index: int) -> Any:
        """A PIL image, or a float [0, 1] array (C, h, w)."""


class FileImageSource:
    """Images on disk, one path per sample."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int]):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Image.Image:
        try:
            with Image.open(self.paths[index]) as image:
                return image.convert("RGB")
        except DECODE_ERRORS as err:
            raise BadImageError(f"cannot read image {self.paths[index]!r} ({type(err).__name__}: {err}); replace or "
                                f"delete the file, or {SKIP_HINT}", image=self.paths[index]) from err


class ArrayImageSource:
    """Small images already in memory as a float [0, 1] array (N, C, h, w)."""

    def __init__(self, images: np.ndarray, labels: Sequence[int]):
        self.images = np.asarray(images, dtype=np.float32)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> np.ndarray:
        return self.images[index]


class WrappedDatasetSource:
    """A dataset returning ``(PIL image, label)`` (torchvision style) with its labels read up front."""

    def __init__(self, dataset: Any, labels: Sequence[int]):
        self.dataset = dataset
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> Image.Image:
        try:
            return self.dataset[index][0].convert("RGB")
        except DECODE_ERRORS as err:
            raise BadImageError(f"cannot read image #{index} of {type(self.dataset).__name__} ({type(err).__name__}: "
                                f"{err}); re-download the dataset, or {SKIP_HINT}",
                                image=f"{type(self.dataset).__name__}[{index}]") from err


class SubsetSource:
    """Some samples of a source, optionally with new labels (after a class subset)."""

    def __init__(self, base: ImageSource, indices: Sequence[int], labels: Sequence[int] | None = None):
        indices = np.asarray(indices, dtype=np.int64)
        if labels is None:  # before flattening: a subset's labels may be remapped (class subsets)
            labels = base.labels[indices]
        if isinstance(base, SubsetSource):  # flatten so loading stays one lookup deep
            indices, base = base.indices[indices], base.base
        self.base, self.indices = base, indices
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int) -> Any:
        return self.base.load(int(self.indices[index]))


class ConcatSource:
    def __init__(self, parts: Sequence[ImageSource]):
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.labels = np.concatenate([p.labels for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def load(self, index: int) -> Any:
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[part].load(index - int(self.offsets[part]))


@dataclass
class SourceSplits:
    """What a dataset builder returns: the official splits, before any sampling protocol."""

    train: ImageSource | None  # None: an evaluation-only dataset (data.eval_only)
    val: ImageSource | None
    test: ImageSource | None
    class_names: list[str]
    trainval: ImageSource | None = None  # an official train+val list (VTAB's train800val200), if any

    def named(self) -> dict[str, ImageSource | None]:
        return {"train": self.train, "val": self.val, "test": self.test, "trainval": self.trainval}
