"""task=detection through the trainer and vpt-eval: configs compose and train, prompt files reproduce predictions."""
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

import vpt
import vpt.tools.cli
from vpt.engine import evaluate_prompt_file, train

vpt.tools.cli.register_resolvers()
TINY = ["logger=none", "trainer.progress_bar=false", "trainer.cpu_threads=1", "trainer.epochs=1",
        "trainer.limit_train_batches=2", "trainer.batch_size=4", "trainer.eval_batch_size=8"]
SHAPES = ["data.train_size=8", "data.val_size=4", "data.test_size=8"]


def config(*overrides, config_name="train"):
    with initialize_config_module("vpt.configs", version_base="1.3"):
        return compose(config_name, overrides=["output_dir=unused", *overrides])  # the tests pass the run dir


@pytest.mark.parametrize("prompt", ["deep", "linear", "pad"])
def test_shapes_quickstart_trains_and_its_prompt_file_reproduces_the_predictions(tmp_path, prompt):
    run = tmp_path / "run"
    results = train(config("experiment=shapes_detection", f"prompt={prompt}", *TINY, *SHAPES), run)
    for key in ("test_map", "test_ap50", "test_ap75", "test_ar100", "val_map"):
        assert 0.0 <= results[key] <= 1.0, key
    assert results["task"] == "detection"
    manifest = json.loads((run / "best" / "prompt.json").read_text())
    assert manifest["task"] == "detection" and manifest["detection"]["class_names"] == ["rectangle", "ellipse", "triangle"]
    names = set(manifest["tensors"])
    assert any(n.startswith("pyramid.") for n in names) and any(n.startswith("detector.") for n in names)
    assert any(n.startswith("encoder.token_prompts") for n in names) == (prompt == "deep")
    assert len(list((run / "predictions_test").glob("*.png"))) == 4

    # vpt-eval rebuilds the detector from the prompt file alone and predicts exactly what training wrote
    evaluation = tmp_path / "eval"
    # README's command: data=shapes (whose defaults are 256/64/128 images) scores the 4/8 split training recorded
    command_line = [f"prompt_file={run / 'best'}", "data=shapes", "trainer.eval_batch_size=8", "trainer.cpu_threads=1"]
    again = evaluate_prompt_file(config(*command_line, config_name="eval"), evaluation, overrides=command_line)
    assert again["images"] == {"val": 4, "test": 8} and again["data_source"] == "the prompt file"
    assert json.loads((evaluation / "predictions_test.json").read_text()) == \
        json.loads((run / "predictions_test.json").read_text())
    assert again["test_map"] == results["test_map"]


def test_detection_prompt_files_are_refused_where_they_do_not_fit(tmp_path):
    run = tmp_path / "run"
    train(config("experiment=shapes_detection", *TINY, *SHAPES), run)
    with pytest.raises(vpt.PromptFileError, match="task 'detection'"):
        vpt.PromptedModel.from_prompt_file(run / "best")
    backbone = vpt.create_backbone("vit_tiny_patch16_224", pretrained=False, image_size=16, patch_size=4, embed_dim=64,
                                   depth=6, num_heads=4)
    with pytest.raises(vpt.ConfigError, match="the bank serves classification"):
        vpt.PromptBank(backbone).add_task("boxes", run / "best")


@pytest.mark.parametrize("backbone, backbone_name", [(None, "vit_p4_d64_l6_16px"),  # the experiment's digits ViT
                                                    ("cifar_vit", "vit_p4_d128_l6_32px")])  # the study's --backbone cifar_vit
def test_pennfudan_experiment_composes_and_trains_a_step(tmp_path, backbone, backbone_name):
    from vpt.detection.io import png_bytes

    root = tmp_path / "PennFudanPed"
    for folder in ("PNGImages", "PedMasks", "Annotation"):
        (root / folder).mkdir(parents=True)
    for i in range(1, 171):  # the fixed split needs the dataset's 170 images
        name = f"FudanPed{i:05d}"
        (root / "PNGImages" / f"{name}.png").write_bytes(png_bytes(torch.randint(0, 255, (3, 40, 48), dtype=torch.uint8)))
        (root / "Annotation" / f"{name}.txt").write_text(
            f'Image size (X x Y x C) : 48 x 40 x 3\n'
            f'Bounding box for object 1 "PASpersonWalking" (Xmin, Ymin) - (Xmax, Ymax) : (5, 4) - (20, 36)\n')
    chosen = [f"backbone={backbone}"] if backbone else []
    results = train(config("experiment=pennfudan_detection", *chosen, "backbone.pretrained=false", f"data.root={root}",
                           "data.image_size=32", *TINY), tmp_path / "run")
    assert results["train_size"] == 120 and results["dataset"] == "pennfudan" and results["backbone"] == backbone_name
    assert "test_map" in results


def test_missing_detection_data_root_names_the_option(tmp_path):
    with pytest.raises(vpt.ConfigError, match="data.root"):
        train(config("experiment=pennfudan_detection", "backbone.pretrained=false",
                      f"data.root={tmp_path / 'nowhere'}", *TINY), tmp_path / "run")


def test_evaluation_images_keep_their_size_so_boxes_match_the_annotations():
    """The detector resizes to data.image_size itself and maps boxes back to each image's own pixels, where the
    ground truth is; an eval transform that resized first would score boxes in the wrong frame (mAP 0)."""
    from vpt.tasks import get_task

    data_cfg = {"name": "shapes", "format": "shapes", "train_size": 2, "val_size": 2, "test_size": 2,
                "shapes_size": 64, "image_size": 32}
    data = get_task("detection").build_data(data_cfg, {"input_size": (3, 16, 16)}, seed=0)
    image, target = data.test[0]
    assert tuple(image.shape[-2:]) == (64, 64)
    assert torch.equal(target["boxes"].as_subclass(torch.Tensor),
                       torch.tensor(data.test.records[0].boxes, dtype=torch.float32).reshape(-1, 4))
    assert tuple(data.train[0][0].shape[-2:]) == (32, 32)  # training crops to the detector's size


def test_detection_batches_come_from_the_one_device_loader():
    """Lists of images and target dicts through vpt.data's DeviceDataLoader (pinning, sharding, reseeding alike)."""
    from vpt.data.loaders import DeviceDataLoader
    from vpt.tasks import get_task

    data_cfg = {"name": "shapes", "format": "shapes", "train_size": 6, "val_size": 0, "test_size": 6, "shapes_size": 32}
    loaders = get_task("detection").build_data(data_cfg, {"input_size": (3, 32, 32)}, seed=0).loaders(4, seed=0)
    assert {split: type(loader) for split, loader in loaders.items()} == {"train": DeviceDataLoader,
                                                                          "test": DeviceDataLoader}
    images, targets = next(iter(loaders["test"]))
    assert len(images) == len(targets) == 4 and all(image.dtype == torch.float32 for image in images)
    assert torch.is_tensor(targets[0]["boxes"]) and isinstance(targets[0]["image_id"], int)
    halves = [next(iter(loaders["test"].sharded(rank, 2)))[1] for rank in range(2)]  # torchrun's two ranks
    assert [t["image_id"] for half in halves for t in half] == [t["image_id"] for t in targets]
    loaders["train"].reseed(7)
    first = [t["image_id"] for _, batch in loaders["train"] for t in batch]
    loaders["train"].reseed(7)
    assert [t["image_id"] for _, batch in loaders["train"] for t in batch] == first


def test_overwrite_moves_every_output_of_a_detection_run_aside(tmp_path):
    """trainer.overwrite=true moves the finished run's predictions with its results: none is left to be taken for
    the new run's (vpt.run_files names them all)."""
    from vpt import run_files

    run, settings = tmp_path / "run", ("experiment=shapes_detection", "prompt=linear", *TINY, *SHAPES)
    train(config(*settings), run)
    written = {p.name for p in run.iterdir()} - {run_files.LOCK, run_files.HYDRA}
    assert {"predictions_val.json", "predictions_val", "predictions_test.json", "predictions_test"} <= written
    train(config(*settings, "trainer.overwrite=true"), run)
    [aside] = [p for p in run.iterdir() if p.name.startswith(run_files.REPLACED_PREFIX)]
    assert {p.name for p in aside.iterdir()} == written  # every output of the first run, nothing left behind
    assert len(list((aside / "predictions_test").glob("*.png"))) == 4
    assert (run / "predictions_test.json").is_file() and (run / run_files.RESULTS).is_file()  # the new run's own
