"""timm's training recipes as options (timm augmentation, Mixup/CutMix) and the lr schedule from torch's schedulers."""
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import vpt.tools.cli

vpt.tools.cli.register_resolvers()
from vpt.data import Preprocess  # noqa: E402
from vpt.data.recipes import build_mixup, mix_batch, timm_train_transform  # noqa: E402
from vpt.engine import build_optimizer, build_scheduler, train  # noqa: E402
from vpt.errors import ConfigError  # noqa: E402
from vpt.tasks import get_task  # noqa: E402

# The digits quickstart, one step
ONE_STEP = ["trainer.epochs=1", "trainer.limit_train_batches=1", "trainer.cpu_threads=1", "trainer.batch_size=16",
            "trainer.limit_eval_batches=1", "data.train_size=40", "trainer.progress_bar=false", "prompt.length=2"]


def compose_train(overrides):
    with initialize_config_module("vpt.configs", version_base="1.3"):
        return compose("train", overrides=list(overrides))


# --- schedule ---------------------------------------------------------------------------------------
def reference_factor(step, total, warmup, floor, shape):
    """The schedule vpt has always had (the LambdaLR it replaced), written out by hand."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if shape == "cosine" else 1.0
    return floor + (1.0 - floor) * decay


def optim_cfg(scheduler="cosine", warmup_epochs=2.0, min_lr_ratio=0.0):
    return OmegaConf.create({"optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "momentum": 0.9},
                             "base_lr": 0.1, "lr_scaling": "none", "scheduler": scheduler,
                             "warmup_epochs": warmup_epochs, "min_lr_ratio": min_lr_ratio})


def lrs_of(cfg, total, steps_per_epoch, steps=None):
    optimizer = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))], batch_size=256)
    scheduler = build_scheduler(cfg, optimizer, total, steps_per_epoch)
    lrs = []
    for _ in range(total + 1 if steps is None else steps):  # the last read is after the final step (logged "lr")
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs, optimizer, scheduler


CASES = [  # (scheduler, warmup_epochs, min_lr_ratio, total steps, steps per epoch)
    ("cosine", 2.0, 0.0, 100, 10), ("cosine", 2.0, 0.1, 100, 10), ("cosine", 0.5, 0.05, 37, 7),
    ("cosine", 0.0, 0.0, 20, 5), ("cosine", 0.1, 0.0, 20, 10), ("cosine", 50.0, 0.0, 12, 4),
    ("constant", 2.0, 0.0, 30, 5), ("constant", 0.0, 0.0, 8, 4), ("cosine", 1.0, 0.0, 3, 3),
]


@pytest.mark.parametrize("case", CASES)
def test_lr_per_step_matches_the_hand_written_schedule(case):
    shape, warmup_epochs, floor, total, per_epoch = case
    lrs, _, _ = lrs_of(optim_cfg(shape, warmup_epochs, floor), total, per_epoch)
    warmup = min(int(round(warmup_epochs * per_epoch)), max(total - 1, 0))
    expected = [0.1 * reference_factor(step, total, warmup, floor, shape) for step in range(total + 1)]
    assert max(abs(a - b) for a, b in zip(lrs, expected)) < 1e-9, (lrs[:5], expected[:5])


def test_schedule_resumes_from_its_json_state():
    cfg = optim_cfg("cosine", 2.0, 0.1)
    full, _, _ = lrs_of(cfg, 60, 10)
    first, optimizer, scheduler = lrs_of(cfg, 60, 10, steps=25)
    state = json.loads(json.dumps({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}))
    resumed_optimizer = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))], batch_size=256)
    resumed = build_scheduler(cfg, resumed_optimizer, 60, 10)
    resumed_optimizer.load_state_dict(state["optimizer"])
    resumed.load_state_dict(state["scheduler"])
    rest = []
    for _ in range(36):
        rest.append(resumed_optimizer.param_groups[0]["lr"])
        resumed_optimizer.step()
        resumed.step()
    assert max(abs(a - b) for a, b in zip(first + rest, full)) < 1e-12


def test_unknown_schedule_is_a_config_error():
    with pytest.raises(ConfigError, match="optim.scheduler='step'; valid: cosine, constant"):
        lrs_of(optim_cfg("step"), 10, 5)


# --- Mixup / CutMix ----------------------------------------------------------------------------------
def test_mixup_mixes_images_and_targets_with_the_same_weight():
    images, labels = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    mixup = build_mixup({"mixup_alpha": 0.8}, num_classes=5)
    mixed, targets = mix_batch(mixup, images.clone(), labels)
    lam = float(targets[0, 0])  # timm mixes sample i with sample B-1-i
    assert 0.0 < lam < 1.0 and float(targets[0, 3]) == pytest.approx(1 - lam)
    assert torch.allclose(mixed[0], lam * images[0] + (1 - lam) * images[3], atol=1e-6)
    assert torch.allclose(targets.sum(1), torch.ones(4))


def test_odd_batch_is_left_unmixed_with_smoothed_targets():
    images, labels = torch.rand(3, 3, 8, 8), torch.tensor([0, 1, 4])
    mixup = build_mixup({"mixup_alpha": 0.8, "cutmix_alpha": 1.0}, num_classes=5, label_smoothing=0.1)
    mixed, targets = mix_batch(mixup, images.clone(), labels)
    assert torch.equal(mixed, images)
    expected = torch.full((3, 5), 0.1 / 5)
    expected[torch.arange(3), labels] += 0.9
    assert torch.allclose(targets, expected)


def test_training_loss_with_mixup_is_soft_target_cross_entropy():
    task = get_task("classification")
    model = torch.nn.Linear(12, 4)
    model.class_names = ["a", "b", "c", "d"]
    images, labels = torch.randn(6, 12), torch.tensor([0, 1, 2, 3, 0, 1])
    trainer_cfg = OmegaConf.create({"label_smoothing": 0.1, "mixup": {"mixup_alpha": 0.5, "cutmix_alpha": 0.0}})
    torch.manual_seed(3)
    loss, count, sums = task.training_loss(model, (images.clone(), labels), trainer_cfg)
    torch.manual_seed(3)  # the same draw, by hand
    mixed, targets = mix_batch(build_mixup({"mixup_alpha": 0.5, "cutmix_alpha": 0.0}, 4, 0.1), images.clone(), labels)
    expected = -(targets * F.log_softmax(model(mixed), dim=1)).sum(1).mean()
    assert count == 6 and torch.allclose(loss, expected) and 0 <= int(sums["correct"]) <= 6
    assert not torch.allclose(mixed, images)


def test_unknown_mixup_key_names_the_valid_ones():
    with pytest.raises(ConfigError, match="trainer.mixup.alpha is not an argument of timm.data.mixup.Mixup; valid:.*"
                                          "cutmix_alpha"):
        build_mixup({"alpha": 0.8}, num_classes=5)


# --- timm augmentation ---------------------------------------------------------------------------------
PREPROCESS = Preprocess(size=(16, 16), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0)


def test_timm_transform_is_seeded_by_torch_and_leaves_host_rngs_alone():
    from vpt.data.recipes import TimmAugmentedDataset
    from vpt.data.sources import ArrayImageSource

    source = ArrayImageSource(np.random.default_rng(0).random((2, 3, 8, 8)), [0, 1])
    dataset = TimmAugmentedDataset(source, PREPROCESS, timm_train_transform(
        PREPROCESS, {"auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 0.5}))
    random.seed(7)
    expected_next = random.random()
    random.seed(7)
    torch.manual_seed(1)
    first = dataset[0][0]
    torch.manual_seed(1)
    again = dataset[0][0]
    torch.manual_seed(2)
    other = dataset[0][0]
    assert first.shape == (3, 16, 16) and first.dtype == torch.float32
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert random.random() == expected_next  # Python's RNG state was restored around the draws


@pytest.mark.parametrize("options, message", [
    ({"input_size": 32}, "data.timm_aug.input_size is set from the backbone's preprocessing"),
    ({"rand_augment": "m9"},
     "data.timm_aug.rand_augment is not an argument of .*create_transform; valid:.*auto_augment"),
])
def test_bad_timm_aug_keys_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        timm_train_transform(PREPROCESS, options)


# --- each option runs one training step ------------------------------------------------------------------
@pytest.mark.parametrize("recipe", [
    ["data.augment=timm"],
    ["trainer.mixup={mixup_alpha:0.8,cutmix_alpha:1.0}", "trainer.label_smoothing=0.1"],
    ["data.augment=timm", "data.timm_aug.re_prob=0.5", "trainer.mixup={cutmix_alpha:1.0}", "optim=adamw",
     "optim.scheduler=constant"],
])
def test_recipe_options_compose_and_train_one_step(recipe, tmp_path):
    results = train(compose_train([*ONE_STEP, *recipe, f"output_dir={tmp_path}"]))
    assert results["status"] == "completed" and math.isfinite(results["test_top1"])
    history = [json.loads(line) for line in Path(tmp_path, "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 1 and math.isfinite(history[0]["train_loss"])
