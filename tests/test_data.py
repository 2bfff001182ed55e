"""Tests for vpt.data: datasets, sampling protocol, caching and loaders. Tiny synthetic data only."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import math
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from vpt.data import (CachedImageDataset, DataBundle, DeviceBatchLoader, DeviceDataLoader, LazyImageDataset,
                      build_data, random_resized_crop_flip)
from vpt.data.sampling import k_shot, stratified_sample
from vpt.errors import ConfigError, UnknownNameError
from conftest import write_id_image, write_imagefolder

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
# crop_pct=1 keeps whole solid-colour test images, whose pixels encode a sample id
DATA_CONFIG = {"input_size": (3, 16, 16), "mean": MEAN, "std": STD, "interpolation": "bilinear", "crop_pct": 1.0}


def unnormalise(images: torch.Tensor) -> torch.Tensor:
    return images * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


def sample_ids(dataset: CachedImageDataset) -> list[int]:
    pixels = dataset.images[:, :, 0, 0].long()
    return (pixels[:, 0] + 256 * pixels[:, 1]).tolist()


# tests/test_bench.py imports make_imagefolder from here; new tests use the conftest fixture of that name
make_imagefolder = write_imagefolder


@pytest.fixture(scope="module")
def folder(tmp_path_factory, make_imagefolder):
    """train/: ant ids 0-19, bee 20-39, cat 40-59; test/: ids 60-74."""
    return make_imagefolder(tmp_path_factory.mktemp("folder"))


# --- digits, normalisation, class subsets, k-shot ----------------------------------------------------------
def test_digits_batches_are_normalised_model_inputs():
    bundle = build_data({"name": "digits", "cache": True}, DATA_CONFIG)
    assert isinstance(bundle, DataBundle)
    assert bundle.sizes == {"train": 1438, "test": 359}  # fixed stratified 20% test split
    assert bundle.class_names == [str(d) for d in range(10)] and bundle.num_classes == 10
    loader = bundle.loaders(batch_size=64)["test"]
    assert isinstance(loader, DeviceBatchLoader) and len(loader) == math.ceil(359 / 64)
    images, labels = next(iter(loader))
    assert images.shape == (64, 3, 16, 16) and images.dtype == torch.float32 and labels.dtype == torch.int64
    pixels = unnormalise(images)
    torch.testing.assert_close(pixels, bundle.test.images[:64].float() / 255, atol=1e-5, rtol=0)
    stored = bundle.test.images
    assert torch.equal(stored[:, 0], stored[:, 1]) and torch.equal(stored[:, 1], stored[:, 2])  # grey → RGB
    assert pixels.max() > 0.9 and pixels.min() > -1e-6  # the full [0, 1] range is used
    assert labels.tolist() == bundle.test.labels[:64].tolist()
    single, label = bundle.test[3]
    torch.testing.assert_close(single, images[3])
    assert label == int(labels[3])


def test_class_subset_relabels_in_given_order():
    full = build_data({"name": "digits"}, DATA_CONFIG)
    subset = build_data({"name": "digits", "classes": [5, 6, 7, 8, 9]}, DATA_CONFIG)
    assert subset.class_names == ["5", "6", "7", "8", "9"] and subset.num_classes == 5
    assert sorted(set(subset.test.labels.tolist())) == [0, 1, 2, 3, 4]
    assert len(subset.test) == int((full.test.labels >= 5).sum())
    torch.testing.assert_close(subset.test.images[subset.test.labels == 0], full.test.images[full.test.labels == 5])

    reordered = build_data({"name": "digits", "classes": [9, "2"]}, DATA_CONFIG)  # index or name
    assert reordered.class_names == ["9", "2"]
    torch.testing.assert_close(reordered.train.images[reordered.train.labels == 0],
                               full.train.images[full.train.labels == 9])
    with pytest.raises(ConfigError, match="data.classes"):
        build_data({"name": "digits", "classes": [10]}, DATA_CONFIG)


def test_k_shot_is_exact_and_seeded():
    def shots(seed):
        return build_data({"name": "digits", "num_shots": 3}, DATA_CONFIG, seed=seed)

    first, again, other = shots(0), shots(0), shots(1)
    assert torch.bincount(first.train.labels).tolist() == [3] * 10
    assert torch.equal(first.train.images, again.train.images)
    assert not torch.equal(first.train.images, other.train.images)
    assert torch.equal(first.test.images, other.test.images)  # the test split does not depend on the seed
    with pytest.raises(ConfigError, match="num_shots=500"):
        build_data({"name": "digits", "num_shots": 500}, DATA_CONFIG)
    with pytest.raises(ConfigError, match="set only one"):
        build_data({"name": "digits", "num_shots": 3, "train_size": 30}, DATA_CONFIG)


def test_k_shot_draws_distinct_images_of_their_class(folder):
    # 12 of a class's 20 images: drawn with replacement, some image would repeat (P(no repeat) = 20!/(8! 20^12) < 0.1%)
    bundle = build_data({"name": "imagefolder", "root": str(folder), "num_shots": 12}, DATA_CONFIG, seed=0)
    ids, labels = sample_ids(bundle.train), bundle.train.labels.tolist()
    assert len(ids) == 36 and len(set(ids)) == 36
    assert torch.bincount(bundle.train.labels).tolist() == [12, 12, 12]
    assert all(20 * label <= i < 20 * (label + 1) for i, label in zip(ids, labels))  # class c holds ids 20c..20c+19


def test_stratified_quota_on_uneven_classes(tmp_path, make_imagefolder):
    root = make_imagefolder(tmp_path, per_class={"train": (7, 5, 3)})  # ant ids 0-6, bee 7-11, cat 12-14

    def sized(count, seed=0):
        bundle = build_data({"name": "imagefolder", "root": str(root), "train_size": count}, DATA_CONFIG, seed=seed)
        return torch.bincount(bundle.train.labels).tolist(), sample_ids(bundle.train)

    for seed in (0, 1):
        # 6 of 15: exact shares 2.8 / 2.0 / 1.2 -> floors 2/2/1; the leftover slot goes to the largest remainder (ant)
        counts, ids = sized(6, seed)
        assert counts == [3, 2, 1] and len(set(ids)) == 6
        # 14 of 15: shares 6.53 / 4.67 / 2.8 -> floors 6/4/2; the two leftover slots go to cat (.8) and bee (.67),
        # so every bee and cat image is drawn and one ant image is left out
        counts, ids = sized(14, seed)
        assert counts == [6, 5, 3] and len(set(ids)) == 14 and set(range(7, 15)) <= set(ids)


def test_samplers_take_every_index_when_asked_for_all():
    labels = np.array([2, 0, 1, 0, 2, 1, 0, 1, 2, 0])
    rng = np.random.default_rng(0)
    assert stratified_sample(labels, len(labels), rng).tolist() == list(range(10))
    # classes 1 and 2 have exactly 3 images, so 3 shots take all of them, and 3 distinct of class 0's four
    picked = k_shot(labels, 3, rng).tolist()
    assert len(picked) == len(set(picked)) == 9 and {0, 2, 4, 5, 7, 8} <= set(picked)


# --- VTAB-1k style sizes on a train/test dataset -----------------------------------------------------------
def test_train_val_sizes_are_disjoint_stratified_and_seeded(folder):
    def sized(seed, **extra):
        return build_data({"name": "imagefolder", "root": str(folder), "train_size": 12, "val_size": 6, **extra},
                          DATA_CONFIG, seed=seed)

    bundle = sized(0)
    assert bundle.sizes == {"train": 12, "val": 6, "test": 15}
    train_ids, val_ids = sample_ids(bundle.train), sample_ids(bundle.val)
    assert not set(train_ids) & set(val_ids) and max(train_ids + val_ids) < 60  # both drawn from train/
    assert torch.bincount(bundle.val.labels).tolist() == [2, 2, 2]
    assert torch.bincount(bundle.train.labels).tolist() == [4, 4, 4]
    assert sample_ids(sized(0).train) == train_ids
    assert sample_ids(sized(1).train) != train_ids
    assert sample_ids(bundle.test) == sample_ids(sized(1).test) == list(range(60, 75))

    merged = sized(0, train_on_trainval=True)
    assert sorted(sample_ids(merged.train)) == sorted(train_ids + val_ids)
    assert sample_ids(merged.val) == val_ids

    carved = build_data({"name": "imagefolder", "root": str(folder), "val_fraction": 0.25}, DATA_CONFIG)
    assert carved.sizes == {"train": 45, "val": 15, "test": 15}
    assert not set(sample_ids(carved.train)) & set(sample_ids(carved.val))


# --- file layouts ------------------------------------------------------------------------------------------
def test_imagefolder_without_split_folders_and_class_names(tmp_path, make_imagefolder):
    root = make_imagefolder(tmp_path, classes=("zebra", "ant"), per_class={"train": 2})
    bundle = build_data({"name": "imagefolder", "root": str(root / "train"), "classes": ["zebra"]}, DATA_CONFIG)
    assert bundle.class_names == ["zebra"] and bundle.val is None and bundle.test is None
    assert sample_ids(bundle.train) == [0, 1] and bundle.train.labels.tolist() == [0, 0]  # zebra sorts last: ids 0,1


def write_vtab(root):
    """VTAB-1k extracted layout; the trainval list puts val first to tell it apart from a concatenation."""
    entries = {name: [] for name in ("train800", "val200", "test")}
    for sample_id in range(12):
        split = "train800" if sample_id < 6 else "val200" if sample_id < 9 else "test"
        label = sample_id % 3
        write_id_image(root / "images" / split / f"im {sample_id}.png", sample_id, label)  # space in name
        entries[split].append(f"images/{split}/im {sample_id}.png {label}")
    for split, lines in entries.items():
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    (root / "train800val200.txt").write_text("\n".join(entries["val200"] + entries["train800"]))
    (root / "classnames.txt").write_text("red\ngreen\nblue\n")
    return root


def test_vtab_list_files(tmp_path):
    root = write_vtab(tmp_path)
    bundle = build_data({"name": "vtab", "root": str(root)}, DATA_CONFIG)
    assert bundle.sizes == {"train": 6, "val": 3, "test": 3}
    assert bundle.class_names == ["red", "green", "blue"]
    assert sample_ids(bundle.train) == list(range(6)) and bundle.train.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert sample_ids(bundle.test) == [9, 10, 11]
    trainval = build_data({"name": "list", "root": str(root), "train_on_trainval": True}, DATA_CONFIG)
    assert sample_ids(trainval.train) == [6, 7, 8, 0, 1, 2, 3, 4, 5]  # read from train800val200.txt
    assert sample_ids(trainval.val) == [6, 7, 8]

    (root / "test.txt").write_text("images/test/im 9.png 0\nimages/test/im 10.png\n")
    with pytest.raises(ConfigError, match=r"test.txt:2"):
        build_data({"name": "vtab", "root": str(root)}, DATA_CONFIG)


@pytest.mark.parametrize("annotation_format", ["json", "txt"])
def test_fgvc_annotations(tmp_path, annotation_format):
    labels = {"train": [1, 3, 3, 1], "val": [3], "test": [1, 3]}  # VPT's json labels need not start at 0
    next_id = 0
    for split, split_labels in labels.items():
        entries = {}
        for label in split_labels:
            relative = f"c{label}/{next_id}.png"
            write_id_image(tmp_path / "images" / relative, next_id, label)
            entries[relative] = label
            next_id += 1
        if annotation_format == "json":
            (tmp_path / f"{split}.json").write_text(json.dumps(entries))
        else:
            (tmp_path / f"{split}.txt").write_text("".join(f"{p} {lab}\n" for p, lab in entries.items()))
    bundle = build_data({"name": "fgvc", "root": str(tmp_path)}, DATA_CONFIG)
    assert bundle.class_names == ["1", "3"]
    assert bundle.train.labels.tolist() == [0, 1, 1, 0] and bundle.test.labels.tolist() == [0, 1]
    assert sample_ids(bundle.train) == [0, 1, 2, 3] and sample_ids(bundle.val) == [4]


# --- torchvision wrapper (a stand-in class, no downloads) --------------------------------------------------
class FakeTorchvisionDataset:
    classes = ["cat", "dog"]

    def __init__(self, root, download=False, train=True):
        self.targets = [0, 1] * (6 if train else 2)
        self.train = train

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return Image.new("L", (8, 8), index), self.targets[index]


def test_torchvision_datasets_are_wrapped(tmp_path, monkeypatch):
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeTorchvisionDataset)
    bundle = build_data({"name": "cifar10", "root": str(tmp_path), "num_shots": 2}, DATA_CONFIG)
    assert bundle.class_names == ["cat", "dog"] and bundle.sizes == {"train": 4, "test": 4}
    assert torch.bincount(bundle.train.labels).tolist() == [2, 2]
    assert bundle.test.images[:, :, 0, 0].tolist() == [[i] * 3 for i in range(4)]  # greyscale → RGB

    monkeypatch.setattr(torchvision.datasets, "EuroSAT", lambda root, download: FakeTorchvisionDataset(root))
    pooled = build_data({"name": "eurosat", "root": str(tmp_path)}, DATA_CONFIG)
    assert pooled.sizes == {"train": 10, "test": 2}  # fixed 20% held-out test split


def test_offline_download_error_says_what_to_do(tmp_path, monkeypatch):
    import torchvision.datasets

    def unreachable(**kwargs):
        raise RuntimeError("download failed") from urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", unreachable)
    with pytest.raises(ConfigError, match="offline") as error:
        build_data({"name": "cifar10", "root": str(tmp_path / "new"), "download": True}, DATA_CONFIG)
    assert "data.root=" in str(error.value)


# --- errors --------------------------------------------------------------------------------------------------
def test_unknown_dataset_lists_valid_names():
    with pytest.raises(UnknownNameError) as error:
        build_data({"name": "imagenet42"}, DATA_CONFIG)
    message = str(error.value)
    for name in ("digits", "imagefolder", "vtab", "fgvc", "cifar10", "oxford_iiit_pet"):
        assert name in message


def test_missing_root_names_the_fix(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match="data.root=") as error:
        build_data({"name": "imagefolder", "root": str(missing)}, DATA_CONFIG)
    assert str(missing) in str(error.value) and "does not exist" in str(error.value)
    with pytest.raises(ConfigError, match="data.download=true"):
        build_data({"name": "cifar10", "root": str(missing)}, DATA_CONFIG)
    with pytest.raises(ConfigError, match="data.root="):
        build_data({"name": "vtab"}, DATA_CONFIG)


# --- caching and loaders ---------------------------------------------------------------------------------------
def test_cached_and_lazy_paths_give_the_same_batches(tmp_path):
    rng = np.random.default_rng(0)
    for index in range(10):  # noise images of an odd size so resize + centre crop really change them
        path = tmp_path / "train" / f"class{index % 2}" / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (21, 27, 3), dtype=np.uint8)).save(path)
    config = {**DATA_CONFIG, "interpolation": "bicubic", "crop_pct": 0.875}
    cached = build_data({"name": "imagefolder", "root": str(tmp_path), "cache": True}, config)
    lazy = build_data({"name": "imagefolder", "root": str(tmp_path), "cache": False}, config)
    assert isinstance(cached.train, CachedImageDataset) and isinstance(lazy.train, LazyImageDataset)
    fast, slow = cached.loaders(4, seed=3)["train"], lazy.loaders(4, seed=3)["train"]
    assert isinstance(fast, DeviceBatchLoader) and isinstance(slow, DeviceDataLoader)
    assert len(fast) == len(slow) == 3
    fast_images = torch.cat([images for images, _ in fast])
    assert fast_images.shape == (10, 3, 16, 16)
    # Same content, shuffled differently: compare in label-then-content order via the unshuffled datasets
    expected = torch.stack([lazy.train[i][0] for i in range(10)])
    torch.testing.assert_close(torch.stack([cached.train[i][0] for i in range(10)]), expected, atol=1e-5, rtol=0)
    manual = (cached.train.images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(expected, manual, atol=1e-5, rtol=0)
    assert sorted(fast_images.sum(dim=(1, 2, 3)).tolist()) == pytest.approx(sorted(manual.sum(dim=(1, 2, 3)).tolist()), abs=1e-3)


def test_device_batch_loader_shuffles_reproducibly():
    bundle = build_data({"name": "digits", "classes": [0, 1, 2]}, DATA_CONFIG)
    def epoch_labels(loader):
        return torch.cat([labels for _, labels in loader])

    loader = DeviceBatchLoader(bundle.train, batch_size=50, shuffle=True, seed=7)
    assert len(loader) == math.ceil(len(bundle.train) / 50)
    first, second = epoch_labels(loader), epoch_labels(loader)
    assert sorted(first.tolist()) == sorted(bundle.train.labels.tolist())  # every sample once
    assert not torch.equal(first, second)  # a new permutation each pass
    assert torch.equal(first, epoch_labels(DeviceBatchLoader(bundle.train, 50, shuffle=True, seed=7)))
    assert not torch.equal(first, epoch_labels(DeviceBatchLoader(bundle.train, 50, shuffle=True, seed=8)))
    assert torch.equal(epoch_labels(bundle.loaders(50)["test"]), bundle.test.labels)  # eval keeps order


def test_flip_crop_geometry():
    images = torch.rand(32, 3, 8, 8)
    # Full-area square crops leave only the flip: each output is the image or its mirror, exactly
    flipped_only = random_resized_crop_flip(images, torch.Generator().manual_seed(0), area=(1, 1), aspect=(1, 1))
    is_same = (flipped_only - images).abs().amax(dim=(1, 2, 3)) < 1e-5
    is_mirror = (flipped_only - images.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert bool((is_same | is_mirror).all()) and is_same.any() and is_mirror.any()
    crops = random_resized_crop_flip(images, torch.Generator().manual_seed(1))
    assert crops.shape == images.shape and not torch.allclose(crops, images)
    assert torch.equal(crops, random_resized_crop_flip(images, torch.Generator().manual_seed(1)))


def test_augmentation_applies_to_train_only_and_accepts_dictconfig():
    from omegaconf import OmegaConf

    data_cfg = OmegaConf.create({"name": "digits", "augment": "flip_crop", "val_fraction": 0.1})
    bundle = build_data(data_cfg, OmegaConf.create(DATA_CONFIG))
    assert (bundle.train.augment, bundle.val.augment, bundle.test.augment) == ("flip_crop", "none", "none")
    images, labels = next(iter(bundle.loaders(32, seed=0)["train"]))
    again, _ = next(iter(bundle.loaders(32, seed=0)["train"]))
    torch.testing.assert_close(images, again)  # augmentation draws from the seeded generator
    # Same seed without augmentation: the same permutation comes first, so the same samples, unaugmented
    plain = DeviceBatchLoader(bundle.train, 32, shuffle=True, seed=0)
    plain.augment = "none"
    plain_images, plain_labels = next(iter(plain))
    assert torch.equal(labels, plain_labels) and images.shape == plain_images.shape == (32, 3, 16, 16)
    assert (images - plain_images).abs().amax() > 0.5
    pixels = unnormalise(images)
    assert pixels.min() > -1e-5 and pixels.max() < 1 + 1e-5  # interpolation stays in the pixel range
    with pytest.raises(ConfigError, match="data.augment"):
        build_data({"name": "digits", "augment": "mixup"}, DATA_CONFIG)


def test_class_subset_labels_survive_resampling():
    """Regression: VTAB-style resampling of a class subset kept the original (un-remapped) labels."""
    from vpt.data import build_data

    data_config = {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}
    for extra in ({"train_size": 50, "val_size": 20}, {"train_size": 50, "val_size": 20, "train_on_trainval": True}, {"num_shots": 3}):
        bundle = build_data({"name": "digits", "classes": [5, 6, 7, 8, 9], **extra}, data_config, seed=1)
        labels = {int(bundle.train[i][1]) for i in range(len(bundle.train))}
        assert labels == {0, 1, 2, 3, 4}, extra
        if bundle.val is not None:
            assert {int(bundle.val[i][1]) for i in range(len(bundle.val))} <= {0, 1, 2, 3, 4}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_batches_never_block_the_host():
    """Cached batches on a GPU (index_select, crop + flip, normalisation) queue without a host sync."""
    bundle = build_data({"name": "digits", "classes": [0, 1, 2], "augment": "flip_crop"}, DATA_CONFIG)
    loader = DeviceBatchLoader(bundle.train, batch_size=50, shuffle=True, device="cuda", seed=0)
    batches = iter(loader)
    next(batches)  # the epoch's permutation goes to the GPU here
    torch.cuda.set_sync_debug_mode("error")
    try:
        images, labels = next(batches)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert images.is_cuda and images.shape[0] == 50 and labels.is_cuda


class _RandomSamples(torch.utils.data.Dataset):
    """Each sample a draw of torch's global generator, as a random augmentation in a loader worker is."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.rand(3), index


def test_loader_workers_draw_from_the_epoch_seed_so_a_resumed_epoch_matches():
    loader = DeviceDataLoader(_RandomSamples(), batch_size=4, num_workers=1, seed=0)

    def epoch(seed):
        loader.reseed(seed)
        return next(iter(loader))[0]

    first, other = epoch(5), epoch(7)
    assert not torch.equal(first, other)
    assert torch.equal(epoch(5), first)  # epoch 5 again (a resumed run): the same draws, not the worker's next ones
