"""Bring your own dataset and backbone through config (``_target_``), and honest backbone names."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import Dataset

import vpt
import vpt.tools.cli

vpt.tools.cli.register_resolvers()
from vpt.data import build_data  # noqa: E402
from vpt.engine import build_backbone, train  # noqa: E402
from vpt.errors import ConfigError  # noqa: E402

HERE = Path(__file__).parent
ONE_STEP = ["trainer.epochs=1", "trainer.limit_train_batches=1", "trainer.cpu_threads=1", "trainer.batch_size=16",
            "trainer.limit_eval_batches=1", "trainer.progress_bar=false", "prompt.length=2"]
# the quickstart backbone's preprocessing: 16 px, crop_pct 1 (no resize for 16 px images), mean = std = 0.5
DIGITS_VIT_INPUT = {"input_size": (3, 16, 16), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                    "interpolation": "bicubic", "crop_pct": 1.0}


class ToySquares(Dataset):
    """uint8 (16, 16, 3) images with a bright square in the corner given by the label (4 classes)."""

    classes = ["top_left", "top_right", "bottom_left", "bottom_right"]

    def __init__(self, split: str, size: int = 40, as_dict: bool = False):
        offset = {"train": 0, "val": 1000, "test": 2000}[split]
        self.targets = [(offset + i) % 4 for i in range(size)]
        self.as_dict = as_dict

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        label = self.targets[index]
        image = np.full((16, 16, 3), 20, dtype=np.uint8)
        row, col = divmod(label, 2)
        image[row * 8:row * 8 + 8, col * 8:col * 8 + 8] = 200 + index % 50
        return {"img": image, "y": label} if self.as_dict else (image, label)


class NoLabelAttribute(Dataset):
    """Float (1, 8, 8) tensors and tensor labels, no label attribute: labels are read item by item."""

    def __init__(self, split: str):
        self.count = 12 if split == "train" else 6

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        return torch.full((1, 8, 8), index / self.count), torch.tensor(index % 3)


def forty_two(split: str):
    """Neither a dataset nor a module."""
    return 42


class SmallViT(VisionTransformer):
    """A user's own model class: a timm VisionTransformer subclass, so vpt's ViT adapter accepts it."""

    def __init__(self, img_size: int = 16, width: int = 32, **kwargs):
        super().__init__(img_size=img_size, patch_size=4, embed_dim=width, depth=2, num_heads=2, **kwargs)


@pytest.fixture(autouse=True)
def importable_test_module(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))  # `_target_: test_byo.ToySquares` must import


def compose_train(overrides):
    with initialize_config_module("vpt.configs", version_base="1.3"):
        return compose("train", overrides=list(overrides))


def custom_data(**extra):
    return {"name": "toy", "_target_": "test_byo.ToySquares", **extra}


# --- datasets ---------------------------------------------------------------------------------------
def test_target_dataset_goes_through_the_backbones_preprocessing():
    data = build_data(custom_data(kwargs={"size": 20}), DIGITS_VIT_INPUT)
    reference = ToySquares("train", 20)
    assert data.sizes == {"train": 20, "test": 20} and data.class_names == ToySquares.classes
    for index in (0, 5):
        image, label = data.train[index]
        raw = torch.as_tensor(reference[index][0]).permute(2, 0, 1).float()
        assert label == reference.targets[index]
        assert torch.allclose(image, (raw / 255 - 0.5) / 0.5, atol=1e-6)  # identity resize, then normalised


def test_dict_items_per_split_targets_and_protocol_keys():
    cfg = {"name": "toy", "image_key": "img", "label_key": "y", "class_names": ["a", "b", "c", "d"],
           "splits": {"train": {"_target_": "test_byo.ToySquares", "split": "train", "size": 40, "as_dict": True},
                      "test": {"_target_": "test_byo.ToySquares", "split": "test", "size": 8, "as_dict": True}},
           "classes": ["b", "d"], "num_shots": 3, "val_fraction": 0.25}
    data = build_data(cfg, DIGITS_VIT_INPUT, seed=0)
    assert data.class_names == ["b", "d"] and data.sizes == {"train": 6, "val": 5, "test": 4}
    assert sorted(int(data.train[i][1]) for i in range(6)) == [0, 0, 0, 1, 1, 1]


def test_float_tensor_images_and_labels_read_item_by_item():
    data = build_data({"name": "plain", "_target_": "test_byo.NoLabelAttribute"}, DIGITS_VIT_INPUT)
    assert data.class_names == ["0", "1", "2"] and data.sizes == {"train": 12, "test": 6}
    image, label = data.test[4]
    assert label == 1 and image.shape == (3, 16, 16)
    assert torch.allclose(image, torch.full((3, 16, 16), (4 / 6 - 0.5) / 0.5), atol=1 / 255)


@pytest.mark.parametrize("cfg, message", [
    (custom_data(_target_="test_byo.Missing"), r"building the train split with test_byo.Missing failed.*importable"),
    (custom_data(_target_="test_byo.forty_two"), "returned a value of type int, not a map-style dataset"),
    (custom_data(class_names=["only", "three", "names"]), r"labels must lie in 0..2 \(3 class names\), found up to 3"),
    (custom_data(splits={"val": {"split": "val"}}), "data.splits needs a train entry"),
    (custom_data(splits={"train": {"split": "train"}, "dev": {}}), "data.splits has dev; valid split names"),
    ({"name": "toy", "splits": {"train": {"split": "train"}}}, "no _target_ builds the train split"),
    (custom_data(kwargs={"as_dict": True}), r"items have no 'image' key \(keys: img, y\); set data.image_key"),
])
def test_bad_custom_data_is_one_config_error(cfg, message):
    with pytest.raises(ConfigError, match=message):
        data = build_data(cfg, DIGITS_VIT_INPUT)
        data.train[0]


def test_custom_data_trains_through_vpt_train_config(tmp_path):
    cfg = compose_train([*ONE_STEP, "data=custom", "data._target_=test_byo.ToySquares", "+data.kwargs.size=40",
                         "data.name=toy_squares", f"output_dir={tmp_path}"])
    results = train(cfg)
    assert results["dataset"] == "toy_squares" and results["train_size"] == 36  # 10% carved out as val
    assert json.loads((tmp_path / "best" / "prompt.json").read_text())["class_names"] == ToySquares.classes


def test_readme_fakedata_command_runs_offline():
    overrides = ["data=custom", "data._target_=torchvision.datasets.FakeData", "+data.kwargs.num_classes=5",
                 "+data.kwargs.image_size=[3,32,32]",
                 "data.splits={train:{size:100},test:{size:50,random_offset:9999}}"]
    data = build_data(compose_train([*overrides, "output_dir=/tmp/x"]).data, DIGITS_VIT_INPUT)
    assert data.sizes == {"train": 90, "val": 10, "test": 50} and data.num_classes == 5


def test_custom_data_without_target_says_what_to_set():
    with pytest.raises(ConfigError, match="data._target_ is not set: pass your Dataset class"):
        build_data(compose_train(["data=custom", "output_dir=/tmp/x"]).data, DIGITS_VIT_INPUT)


def test_own_config_files_through_hydra_searchpath(tmp_path):
    """A user's data and backbone config files, found through hydra.searchpath (the README's way)."""
    (tmp_path / "my_configs" / "data").mkdir(parents=True)
    (tmp_path / "my_configs" / "backbone").mkdir()
    (tmp_path / "my_configs" / "data" / "squares.yaml").write_text(
        "name: squares\n_target_: test_byo.ToySquares\nkwargs: {size: 24}\n")
    (tmp_path / "my_configs" / "backbone" / "small.yaml").write_text(
        "_target_: test_byo.SmallViT\nwidth: 32\nname: small_vit\nimage_size: 16\n")
    run = tmp_path / "run"
    results = train(compose_train([*ONE_STEP, f"hydra.searchpath=[file://{tmp_path / 'my_configs'}]", "data=squares",
                                   "backbone=small", f"output_dir={run}"]))
    manifest = json.loads((run / "best" / "prompt.json").read_text())
    assert results["dataset"] == "squares" and results["train_size"] == 24
    assert results["backbone"] == "small_vit" == manifest["backbone"]["name"]
    assert manifest["backbone"]["adapter"] == "TimmViTAdapter" and manifest["backbone"]["embed_dim"] == 32
    assert manifest["backbone"]["create_args"] is None  # loaded with the backbone passed in


# --- backbones ---------------------------------------------------------------------------------------
def test_timm_create_model_target_is_named_by_its_shape():
    adapter = build_backbone({"_target_": "timm.create_model", "model_name": "vit_tiny_patch16_224",
                              "pretrained": False, "num_classes": 0, "img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2,
                              "num_heads": 2, "name": "vit_tiny_patch16_224", "image_size": 16})
    assert adapter.name == "vit_p4_d32_l2_16px" and adapter.num_layers == 2


@pytest.mark.parametrize("cfg, message", [
    ({"_target_": "test_byo.SmallViT", "image_size": 32}, r"backbone.image_size=32 but the model built by "
                                                          r"backbone._target_ takes 16x16 inputs"),
    ({"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 2},
     "no backbone adapter for Linear.*register_adapter"),
    ({"_target_": "test_byo.forty_two", "split": "x"}, "returned a value of type int, not a torch module"),
    ({"_target_": "test_byo.SmallViT", "heads": 3}, r"backbone._target_=test_byo.SmallViT failed"),
])
def test_bad_target_backbone_is_one_config_error(cfg, message):
    with pytest.raises(ConfigError, match=message):
        build_backbone(cfg)


# --- honest names --------------------------------------------------------------------------------------
def test_quickstart_vit_is_recorded_by_shape_and_rebuilt_by_registry_name(tmp_path):
    results = train(compose_train([*ONE_STEP, "data.train_size=40", f"output_dir={tmp_path}"]))
    manifest = json.loads((tmp_path / "best" / "prompt.json").read_text())
    assert results["backbone"] == "vit_p4_d64_l6_16px" == manifest["backbone"]["name"]
    assert manifest["backbone"]["create_args"]["name"] == "vit_tiny_patch16_224"
    rebuilt = vpt.PromptedModel.from_prompt_file(tmp_path / "best")  # registry name + kwargs; fingerprint checked
    assert rebuilt.backbone.num_layers == 6 and rebuilt.backbone.embed_dim == 64


def test_cifar_vit_shape_name_and_label_override():
    cifar = compose_train(["backbone=cifar_vit", "backbone.kwargs.depth=2", "output_dir=/tmp/x"]).backbone
    assert build_backbone(cifar).name == "vit_p4_d128_l2_32px"
    labelled = compose_train(["backbone=digits_vit", "backbone.label=digits_vit_v1", "output_dir=/tmp/x"]).backbone
    assert build_backbone(labelled).name == "digits_vit_v1"
    plain = compose_train(["backbone=vit_s16", "backbone.pretrained=false", "backbone.image_size=32",
                           "output_dir=/tmp/x"]).backbone
    assert build_backbone(plain).name == "vit_small_patch16_224"  # only resized: the registry name still fits
