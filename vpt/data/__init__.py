"""Data layer: datasets, sampling protocols (class subsets, k-shot, VTAB-1k sizes) and fast loaders.

Entry point: :func:`build_data` -> :class:`DataBundle`.
"""
from .bundle import DataBundle, build_data
from .catalog import DATASET_BUILDERS, TORCHVISION_DATASETS, register_dataset_format
from .datasets import CachedImageDataset, LazyImageDataset
from .loaders import DeviceBatchLoader, DeviceDataLoader
from .preprocess import Preprocess, random_resized_crop_flip
from .spec import DataSpec

__all__ = [
    "DATASET_BUILDERS", "TORCHVISION_DATASETS", "register_dataset_format", "CachedImageDataset", "DataBundle", "DataSpec",
    "DeviceBatchLoader", "DeviceDataLoader", "LazyImageDataset", "Preprocess", "build_data",
    "random_resized_crop_flip",
]
