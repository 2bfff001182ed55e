"""Reproduction presets (configs/experiment/vtab/*, fgvc/*): VPT's recipe, the paper's numbers, and one training
step each on a stand-in backbone (digits ViT) and a stand-in dataset in the VTAB / FGVC file layout."""
import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from PIL import Image

import vpt.tools.cli
from vpt.engine import train
from vpt.tools.report import collect_runs, summarise, to_markdown

EXPERIMENTS = Path(__file__).resolve().parents[1] / "configs" / "experiment"
VTAB = sorted(p.stem for p in (EXPERIMENTS / "vtab").glob("*.yaml") if not p.stem.startswith("_"))
FGVC = sorted(p.stem for p in (EXPERIMENTS / "fgvc").glob("*.yaml") if not p.stem.startswith("_"))
VTAB_TASKS = ["caltech101", "cifar100", "clevr_count", "clevr_dist", "diabetic_retinopathy", "dmlab", "dsprites_loc",
              "dsprites_ori", "dtd", "eurosat", "kitti", "oxford_flowers102", "oxford_iiit_pet", "patch_camelyon",
              "resisc45", "smallnorb_azi", "smallnorb_ele", "sun397", "svhn"]
FGVC_TASKS = ["cub", "nabirds", "oxford_flowers", "stanford_cars", "stanford_dogs"]
METHODS = ("deep", "shallow", "linear", "full")
ONE_STEP = ["backbone=digits_vit", "trainer.epochs=1", "trainer.limit_train_batches=1", "trainer.limit_eval_batches=1",
            "trainer.batch_size=4", "trainer.eval_batch_size=8", "trainer.cpu_threads=1", "trainer.progress_bar=false",
            "logger=none"]


def compose_preset(*overrides):
    vpt.tools.cli.register_resolvers()
    with initialize_config_module("vpt.configs", version_base="1.3"):
        return compose("train", overrides=list(overrides))


def _image(folder: Path, name: str, label: int, rng) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    pixels = (rng.random((20, 20, 3)) * 80 + label * 60).astype(np.uint8)  # each class its own brightness
    Image.fromarray(pixels).save(folder / name)
    return name


@pytest.fixture(scope="module")
def vtab_root(tmp_path_factory):
    """VTAB-1k's extracted layout: images plus train800.txt, val200.txt, train800val200.txt, test.txt."""
    root, rng = tmp_path_factory.mktemp("vtab"), np.random.default_rng(0)
    sizes = {"train800": 6, "val200": 3, "test": 3}
    lines = {split: [f"images/{_image(root / 'images', f'{split}_{i}.png', i % 3, rng)} {i % 3}" for i in range(n)]
             for split, n in sizes.items()}
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, rows in lines.items():
        (root / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def fgvc_root(tmp_path_factory):
    """VPT's FGVC layout: root/images/<class>/<file> plus {train,val,test}.json mapping path -> label."""
    root, rng = tmp_path_factory.mktemp("fgvc"), np.random.default_rng(1)
    for split, n in {"train": 6, "val": 3, "test": 3}.items():
        labels = {f"c{i % 3}/{split}_{i}.png": 10 + i % 3 for i in range(n)}  # labels need not start at 0
        for path, label in labels.items():
            _image(root / "images" / path.split("/")[0], path.split("/")[1], label - 10, rng)
        (root / f"{split}.json").write_text(json.dumps(labels))
    return root


def test_there_is_a_preset_for_every_vtab_and_fgvc_task():
    assert VTAB == VTAB_TASKS and FGVC == FGVC_TASKS


@pytest.mark.parametrize("preset", [f"vtab/{t}" for t in VTAB_TASKS] + [f"fgvc/{t}" for t in FGVC_TASKS])
def test_preset_follows_vpts_recipe_and_holds_the_papers_numbers(preset):
    cfg = compose_preset(f"experiment={preset}")
    assert cfg.backbone.name.startswith("vit_base_patch16_224") and "in21k" in cfg.backbone.name
    assert (cfg.prompt.method, cfg.prompt.length) == ("deep", 50)
    assert compose_preset(f"experiment={preset}", "prompt=shallow").prompt.length == 10
    assert cfg.optim.optimizer._target_ == "torch.optim.SGD" and cfg.optim.optimizer.momentum == 0.9
    assert (cfg.optim.warmup_epochs, cfg.trainer.epochs, cfg.optim.scheduler) == (10, 100, "cosine")
    assert cfg.trainer.batch_size == (64 if preset.startswith("vtab") else 128)
    assert cfg.data.name == ("vtab" if preset.startswith("vtab") else "fgvc")
    assert cfg.tune.grid == "vpt" and cfg.tune.seeds == 5
    assert compose_preset(f"experiment={preset}", "prompt=full").tune.grid == "vpt_full"
    paper = cfg.paper
    assert "Jia et al." in paper.source and "metric" not in paper  # the numbers are of the task's primary metric
    for method in METHODS:
        assert paper[method] is None or 0.0 < paper[method] < 100.0


def test_paper_numbers_average_to_table_1():
    """The per-task numbers must give back the group means printed in Table 1 of the paper (within rounding)."""
    groups = {"natural": ["caltech101", "cifar100", "dtd", "oxford_flowers102", "oxford_iiit_pet",
                          "svhn", "sun397"],
              "specialized": ["patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"],
              "structured": ["clevr_count", "clevr_dist", "dmlab", "kitti", "dsprites_loc", "dsprites_ori",
                             "smallnorb_azi", "smallnorb_ele"]}
    table_1 = {"full": (75.88, 83.36, 47.64, 88.54), "linear": (68.93, 77.16, 26.84, 79.32),
               "shallow": (76.81, 79.66, 46.98, 84.62), "deep": (78.48, 82.43, 54.98, 89.11)}
    papers = {name: compose_preset(f"experiment={name}").paper
              for name in [f"vtab/{t}" for t in VTAB_TASKS] + [f"fgvc/{t}" for t in FGVC_TASKS]}
    for method, means in table_1.items():
        for (group, tasks), mean in zip(groups.items(), means):
            measured = np.mean([papers[f"vtab/{t}"][method] for t in tasks])
            assert measured == pytest.approx(mean, abs=0.05), (method, group)
        assert np.mean([papers[f"fgvc/{t}"][method] for t in FGVC_TASKS]) == pytest.approx(means[3], abs=0.05), method


@pytest.mark.parametrize("preset", [f"vtab/{t}" for t in VTAB_TASKS] + [f"fgvc/{t}" for t in FGVC_TASKS])
def test_preset_trains_one_step_on_a_stand_in(preset, vtab_root, fgvc_root, tmp_path):
    root = vtab_root if preset.startswith("vtab") else fgvc_root
    cfg = compose_preset(f"experiment={preset}", *ONE_STEP, f"data.root={root}", f"output_dir={tmp_path}")
    results = train(cfg)
    assert results["status"] == "completed" and results["epochs"] == 1
    assert results["train_size"] == (9 if preset.startswith("vtab") else 6)  # VTAB: train800val200; FGVC: train
    assert results["prompt"]["length"] == 50 and results["test_count"] == 3


def test_report_prints_the_papers_number_beside_the_measured_one(vtab_root, tmp_path):
    for seed in (0, 1):
        cfg = compose_preset("experiment=vtab/cifar100", *ONE_STEP, f"data.root={vtab_root}", f"seed={seed}",
                             f"output_dir={tmp_path / str(seed)}")
        train(cfg)
    rows = summarise(collect_runs([tmp_path]), ["test_top1"], [])
    text = to_markdown(rows)
    assert text.splitlines()[0] == "| n | test_top1 | paper |" and rows[0].paper == {"test_top1": 78.8}
    assert "| 78.80 |" in text.splitlines()[2] and "Jia et al., VPT, ECCV 2022" in text
