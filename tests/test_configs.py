"""The packaged Hydra configs: every group option composes, and every experiment preset runs a step."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import vpt.tools.cli

vpt.tools.cli.register_resolvers()  # ${vpt_asset:...} and ${vpt_pixels:...} in the configs
from vpt.config import METHODS, PromptConfig
from vpt.engine import train

CONFIG_DIR = Path(vpt.tools.cli.__file__).resolve().parent.parent / "configs"
if not CONFIG_DIR.is_dir():  # installed non-editable: configs ship as the vpt.configs package
    import vpt.configs

    CONFIG_DIR = Path(vpt.configs.__file__).parent

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
# detection presets train in tests/detection/test_detection_task.py (their data are boxes, not digits)
CLASSIFICATION_EXPERIMENTS = [e for e in EXPERIMENTS if not e.endswith("_detection")]
GROUPS = ("backbone", "prompt", "data", "task", "optim", "trainer", "logger", "experiment")
# Small enough for one optimisation step of a ViT-B on CPU in a few seconds
TINY = ["trainer.epochs=1", "trainer.limit_train_batches=1", "trainer.limit_eval_batches=1", "trainer.batch_size=2",
        "trainer.eval_batch_size=2", "trainer.progress_bar=false", "trainer.resume=false"]
TINY_DATA = ["data=digits_target", "++data.train_size=6", "++data.num_shots=null", "++data.val_fraction=0.02",
             "++data.max_per_class_test=1"]


def options(group):
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def compose_train(overrides):
    with initialize_config_module("vpt.configs", version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_config_groups_exist():
    for group in GROUPS + ("hparams_search",):
        assert options(group), f"configs/{group}/ has no options"
    assert set(options("prompt")) == set(METHODS)
    assert {"vit_b16_in21k", "vit_s16", "vit_b16", "deit_s16", "dinov2_s14_reg", "clip_vit_b32", "clip_vit_b16",
            "digits_vit"} <= set(options("backbone"))
    assert {"sgd", "adamw"} <= set(options("optim"))
    assert {"csv", "wandb", "none"} <= set(options("logger"))


def test_default_config_is_the_offline_quickstart():
    cfg = compose_train(["output_dir=/tmp/x"])
    assert cfg.backbone.name == "vit_tiny_patch16_224" and cfg.prompt.method == "deep"
    assert Path(cfg.backbone.pretrained).is_file(), "the committed digits ViT weights must ship in vpt/assets"
    assert Path(cfg.backbone.pretrained).stat().st_size <= 2 * 1024 * 1024
    assert list(cfg.data.classes) == [5, 6, 7, 8, 9]


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_composes(group):
    for option in options(group):
        cfg = compose_train([f"{group}={option}", "output_dir=/tmp/x"])
        resolved = OmegaConf.to_container(cfg, resolve=True)
        assert resolved["backbone"]["name"] and resolved["data"]["name"], f"{group}={option}"
        PromptConfig.from_dict(resolved["prompt"])  # validates method, length, size, ...


@pytest.mark.parametrize("method", METHODS)
def test_prompt_options_fit_the_quickstart_backbone(method):
    """Pixel sizes scale to the 32 px digits ViT (a 30 px pad would leave no image)."""
    cfg = compose_train([f"prompt={method}", "output_dir=/tmp/x"])
    prompt = PromptConfig.from_dict(OmegaConf.to_container(cfg.prompt, resolve=True))
    assert prompt.method == method
    if prompt.is_pixel:
        assert 0 < prompt.size < cfg.backbone.image_size // 2
    if prompt.is_token:
        assert compose_train([f"prompt={method}", "prompt.length=50", "output_dir=/tmp/x"]).prompt.length == 50


def test_backbone_configs_name_real_models():
    import open_clip
    import timm

    for option in options("backbone"):
        cfg = compose_train([f"backbone={option}", "output_dir=/tmp/x"]).backbone
        source, _, name = cfg.name.rpartition(":")
        if source == "open_clip":
            assert name in open_clip.list_models(), option
        else:
            assert timm.is_model(name.split(".")[0]), option
    assert compose_train(["backbone=vit_b16_in21k", "output_dir=/tmp/x"]).backbone.name == \
        "vit_base_patch16_224.augreg_in21k"


def test_experiment_presets_override_groups():
    cfg = compose_train(["experiment=digits_pretrain", "output_dir=/tmp/x"])
    assert cfg.prompt.method == "full" and list(cfg.data.classes) == [0, 1, 2, 3, 4]
    assert cfg.backbone.pretrained is False and cfg.trainer.export_backbone
    clip = compose_train(["experiment=clip_b32_pad_cifar100", "output_dir=/tmp/x"])
    assert clip.task.head == "zero_shot" and clip.prompt.train_head is False


@pytest.mark.parametrize("experiment", CLASSIFICATION_EXPERIMENTS)
def test_every_experiment_runs_one_step(experiment, tmp_path):
    cfg = compose_train([f"experiment={experiment}", f"output_dir={tmp_path}"])
    overrides = [f"experiment={experiment}", f"output_dir={tmp_path}", *TINY, *TINY_DATA]
    pretrained = cfg.backbone.get("pretrained", False)  # a _target_ backbone (coop_quickstart) may have none
    if pretrained is not False and not (isinstance(pretrained, str) and Path(pretrained).is_file()):
        overrides.append("backbone.pretrained=false")  # hub weights: not reachable offline
    if cfg.trainer.export_backbone:
        overrides.append(f"trainer.export_backbone={tmp_path}/exported.safetensors")
    results = train(compose_train(overrides))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "completed" and saved["method"] == cfg.prompt.method
    assert 0.0 <= saved["test_top1"] <= 100.0
    assert saved == json.loads(json.dumps(results, default=str))
    assert (tmp_path / "best" / "prompt.safetensors").is_file()
    if cfg.trainer.export_backbone:
        assert (tmp_path / "exported.safetensors").is_file()


def test_optuna_and_slurm_choices_compose():
    with initialize_config_module("vpt.configs", version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=optuna", "hydra/launcher=slurm", "output_dir=/tmp/x"],
                      return_hydra_config=True)
    assert "OptunaSweeper" in cfg.hydra.sweeper._target_
    assert "prompt.length" in cfg.hydra.sweeper.params
    assert "SlurmLauncher" in cfg.hydra.launcher._target_ and cfg.hydra.launcher.gpus_per_node == 1
