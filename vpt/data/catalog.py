"""Dataset registry: ``data.name`` -> a builder returning the official splits as image sources."""
from __future__ import annotations

import socket
import urllib.error
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import ConfigError
from ..registry import Registry
from .files import build_fgvc, build_imagefolder, build_list, build_zhou_split, require_root
from .sampling import holdout_test_split
from .sources import ArrayImageSource, ImageSource, SourceSplits, WrappedDatasetSource
from .spec import DataSpec


def build_digits(spec: DataSpec) -> SourceSplits:
    """scikit-learn's 8x8 digits (ships with the package, so it works offline): 1797 images, 10 classes."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images / 16.0)[:, None]  # values 0..16 -> [0, 1], one channel
    train, test = holdout_test_split(ArrayImageSource(pixels, digits.target))
    return SourceSplits(train, None, test, [str(d) for d in range(10)])


# --- torchvision ---------------------------------------------------------------------------------------
POOL = "pool"  # a dataset that ships as one pool of images: the test split is held out at a fixed seed


@dataclass(frozen=True)
class TorchvisionEntry:
    class_name: str  # attribute of torchvision.datasets
    split_kwargs: Mapping[str, Mapping[str, Any]]  # our split (train/val/test, or POOL) -> constructor kwargs
    common_kwargs: Mapping[str, Any] = field(default_factory=dict)


def _train_flag() -> dict[str, dict[str, bool]]:
    return {"train": {"train": True}, "test": {"train": False}}


def _split_names(**ours_to_theirs: str) -> dict[str, dict[str, str]]:
    return {ours: {"split": theirs} for ours, theirs in ours_to_theirs.items()}


TORCHVISION_DATASETS: dict[str, TorchvisionEntry] = {
    "cifar10": TorchvisionEntry("CIFAR10", _train_flag()),
    "cifar100": TorchvisionEntry("CIFAR100", _train_flag()),
    "mnist": TorchvisionEntry("MNIST", _train_flag()),
    "fashion_mnist": TorchvisionEntry("FashionMNIST", _train_flag()),
    "svhn": TorchvisionEntry("SVHN", _split_names(train="train", test="test")),
    "stl10": TorchvisionEntry("STL10", _split_names(train="train", test="test")),
    "flowers102": TorchvisionEntry("Flowers102", _split_names(train="train", val="val", test="test")),
    "oxford_iiit_pet": TorchvisionEntry("OxfordIIITPet", _split_names(train="trainval", test="test")),
    "dtd": TorchvisionEntry("DTD", _split_names(train="train", val="val", test="test")),
    "food101": TorchvisionEntry("Food101", _split_names(train="train", test="test")),
    "stanford_cars": TorchvisionEntry("StanfordCars", _split_names(train="train", test="test")),
    "fgvc_aircraft": TorchvisionEntry("FGVCAircraft", _split_names(train="train", val="val", test="test")),
    "gtsrb": TorchvisionEntry("GTSRB", _split_names(train="train", test="test")),
    "country211": TorchvisionEntry("Country211", _split_names(train="train", val="valid", test="test")),
    "eurosat": TorchvisionEntry("EuroSAT", {POOL: {}}),
    "caltech101": TorchvisionEntry("Caltech101", {POOL: {}}, {"target_type": "category"}),
    "sun397": TorchvisionEntry("SUN397", {POOL: {}}),
}
_LABEL_ATTRIBUTES = ("targets", "_labels", "labels", "y")


def _dataset_labels(dataset: Any) -> np.ndarray:
    """Labels without decoding images, from whichever attribute this torchvision class keeps them in."""
    for attribute in _LABEL_ATTRIBUTES:
        if getattr(dataset, attribute, None) is not None:
            return np.asarray(getattr(dataset, attribute), dtype=np.int64)
    if getattr(dataset, "_samples", None) is not None:
        return np.asarray([label for _, label in dataset._samples], dtype=np.int64)
    return np.asarray([dataset[i][1] for i in range(len(dataset))], dtype=np.int64)  # slow: decodes all


def _is_network_error(error: BaseException | None) -> bool:
    network_types = (urllib.error.URLError, ConnectionError, socket.gaierror, socket.timeout, TimeoutError)
    while error is not None:
        if isinstance(error, network_types) or "ConnectionError" in type(error).__name__:
            return True
        error = error.__cause__ or error.__context__
    return False


def _instantiate(spec: DataSpec, dataset_class: type, root: str, kwargs: Mapping[str, Any]) -> Any:
    """Build one split; turn torchvision's missing-file and download failures into actionable errors."""
    try:
        return dataset_class(root=root, download=spec.download, **kwargs)
    except Exception as error:
        if spec.download and _is_network_error(error):
            raise ConfigError(
                f"downloading {spec.name} failed ({error}); this machine looks offline. Download the files on "
                f"a machine with internet access, copy them here and pass data.root=/path/to/{spec.name}"
            ) from error
        if not spec.download and isinstance(error, RuntimeError):
            raise ConfigError(
                f"{spec.name} files not found under {root!r} ({error}); pass data.root=/path/to/{spec.name} "
                "pointing at a downloaded copy, or data.download=true when online"
            ) from error
        raise


def build_torchvision(entry: TorchvisionEntry, spec: DataSpec) -> SourceSplits:
    import torchvision.datasets

    if spec.download and spec.root is not None:
        root = str(Path(spec.root).expanduser())  # torchvision creates it
    else:
        root = str(require_root(spec, hint=" (or data.download=true to fetch it when online)"))
    dataset_class = getattr(torchvision.datasets, entry.class_name)
    sources: dict[str, ImageSource] = {}
    class_names: list[str] | None = None
    for split, kwargs in entry.split_kwargs.items():
        dataset = _instantiate(spec, dataset_class, root, {**entry.common_kwargs, **kwargs})
        sources[split] = WrappedDatasetSource(dataset, _dataset_labels(dataset))
        class_names = class_names or list(getattr(dataset, "classes", None) or getattr(dataset, "categories", None) or [])
    if POOL in sources:
        sources["train"], sources["test"] = holdout_test_split(sources.pop(POOL))
    if not class_names:
        class_names = [str(i) for i in range(int(max(s.labels.max(initial=0) for s in sources.values())) + 1)]
    return SourceSplits(sources["train"], sources.get("val"), sources.get("test"), class_names)


DatasetBuilder = Callable[[DataSpec], SourceSplits]
#: dataset formats by ``data.name``: a builder ``DataSpec -> SourceSplits`` each (``register_dataset_format`` adds one)
DATASET_BUILDERS: Registry[DatasetBuilder] = Registry("dataset")
for _name, _builder in {
    "digits": build_digits,
    "imagefolder": build_imagefolder,
    "list": build_list,
    "vtab": build_list,
    "fgvc": build_fgvc,
    "zhou_split": build_zhou_split,
    **{name: partial(build_torchvision, entry) for name, entry in TORCHVISION_DATASETS.items()},
}.items():
    DATASET_BUILDERS.register(_builder, _name)


def register_dataset_format(name: str, builder: DatasetBuilder, replace: bool = False) -> DatasetBuilder:
    """Make ``data.name=<name>`` build its splits with ``builder(spec) -> SourceSplits``."""
    return DATASET_BUILDERS.register(builder, name, replace=replace)


def load_splits(spec: DataSpec) -> SourceSplits:
    if spec.is_custom:  # data._target_: the user's own Dataset; data.name only labels the results
        from .custom import build_custom

        return build_custom(spec)
    if spec.name not in DATASET_BUILDERS:
        raise DATASET_BUILDERS.unknown(spec.name)
    return DATASET_BUILDERS.get(spec.name)(spec)
