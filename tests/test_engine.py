"""vpt.engine pieces: optimiser over trainables, schedule, metrics, divergence, trackers, repeatability."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import json
import math

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import vpt.cli

vpt.cli.register_resolvers()  # ${vpt_asset:...} and ${vpt_pixels:...} in the configs
from vpt.engine import (NonFiniteLossError, Trainer, build_optimizer, build_scheduler, derive_seed, evaluate, train)
from vpt.errors import VptError
from vpt.loggers import WandbLogger

TINY = ["trainer.epochs=2", "trainer.limit_train_batches=2", "data.train_size=40", "trainer.batch_size=20",
        "trainer.progress_bar=false", "prompt.length=2"]
TIMING = ("train_seconds", "train_images_per_s", "eval_seconds")


def compose_train(overrides):
    with initialize_config_module("vpt.configs", version_base="1.3"):
        return compose("train", overrides=list(overrides))


def without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def test_optimizer_covers_exactly_the_trainable_parameters(tmp_path):
    trainer = Trainer(compose_train([*TINY, f"output_dir={tmp_path}"]), tmp_path)
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in trainer.model.trainable_parameters()}
    frozen = {id(p) for p in trainer.model.backbone.parameters()}
    assert in_optimizer == trainable and not in_optimizer & frozen
    assert isinstance(trainer.optimizer, torch.optim.SGD) and trainer.optimizer.defaults["momentum"] == 0.9


def test_lr_is_scaled_by_batch_and_follows_warmup_then_cosine():
    optim = OmegaConf.create({"optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "momentum": 0.9},
                              "base_lr": 2.0, "lr_scaling": "linear", "scheduler": "cosine", "warmup_epochs": 2,
                              "min_lr_ratio": 0.0})
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer(optim, [param], batch_size=128)
    peak = 2.0 * 128 / 256
    scheduler = build_scheduler(optim, optimizer, total_steps=100, steps_per_epoch=10)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(peak / 20) and lrs[19] == pytest.approx(peak)  # linear warmup over 20 steps
    assert lrs[20] == pytest.approx(peak) and lrs[60] == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 0.5)))
    # torch's LinearLR accumulates ~1e-16 of rounding over the warmup: monotone up to that
    assert all(a >= b - 1e-12 for a, b in zip(lrs[19:], lrs[20:])) and lrs[-1] < 0.01 * peak


def test_evaluate_reports_top1_top5_and_per_class():
    logits = torch.tensor([[5.0, 1, 0, 0, 0, 0], [0, 5.0, 1, 0, 0, 0], [1.0, 0, 5, 0, 0, 0], [0, 0, 0, 0, 0, 5.0]])
    labels = torch.tensor([0, 2, 2, 1])  # right, top-2, right, wrong (label 1 is not in the top 5 of row 4)
    model = torch.nn.Module()
    model.forward = lambda images: images
    metrics = evaluate(model, [(logits, labels)], num_classes=6)
    assert metrics["top1"] == pytest.approx(50.0) and metrics["top5"] == pytest.approx(75.0)
    assert metrics["per_class_top1"][:3] == [100.0, 0.0, 50.0]
    assert metrics["mean_class_top1"] == pytest.approx(50.0)  # mean over the classes present


def test_epoch_seeds_do_not_depend_on_history():
    assert derive_seed(0, 3) == derive_seed(0, 3)
    assert len({derive_seed(s, e) for s in range(3) for e in range(50)}) == 150


def test_same_seed_same_metrics_and_other_seed_differs(tmp_path):
    runs = [train(compose_train([*TINY, f"seed={seed}", f"output_dir={tmp_path / str(i)}"]))
            for i, seed in enumerate((0, 0, 1))]
    histories = [[json.loads(line) for line in (tmp_path / str(i) / "metrics.jsonl").read_text().splitlines()]
                 for i in range(3)]
    assert without_timing(histories[0]) == without_timing(histories[1])
    assert without_timing(histories[0]) != without_timing(histories[2])
    assert runs[0]["test_top1"] == runs[1]["test_top1"]


def test_non_finite_loss_stops_keeps_last_good_checkpoint(tmp_path):
    trainer = Trainer(compose_train([*TINY, "trainer.epochs=3", f"output_dir={tmp_path}"]), tmp_path)
    run_epoch = trainer.run_epoch

    def poisoned_after_first_epoch(epoch):
        run_epoch(epoch)
        with torch.no_grad():
            trainer.model.head.weight.fill_(float("nan"))

    trainer.run_epoch = poisoned_after_first_epoch
    with pytest.raises(NonFiniteLossError, match="epoch 2"):
        trainer.fit()
    manifest = json.loads((tmp_path / "last" / "prompt.json").read_text())
    assert manifest["epoch"] == 1
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "last" / "prompt.safetensors").values())
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "failed" and "epoch 2" in results["error"]
    with pytest.raises(SystemExit) as exit_info, vpt.cli.exit_on_user_error("vpt-train"):
        raise NonFiniteLossError("loss became nan")
    assert exit_info.value.code == 2 and issubclass(NonFiniteLossError, VptError)


def test_patch_init_and_bf16_on_cpu(tmp_path):
    results = train(compose_train([*TINY, "trainer.epochs=1", "prompt.init=patch", "trainer.precision=bf16",
                                   f"output_dir={tmp_path}"]))
    assert results["status"] == "completed" and 0 <= results["test_top1"] <= 100


def test_results_survive_a_failing_wandb(tmp_path, monkeypatch):
    import wandb

    def broken_init(*args, **kwargs):
        raise wandb.errors.UsageError("api_key not configured (no-tty)")

    monkeypatch.setattr(wandb, "init", broken_init)
    results = train(compose_train([*TINY, "trainer.epochs=1", "logger=wandb", "logger.mode=online",
                                   f"output_dir={tmp_path}"]))
    assert json.loads((tmp_path / "results.json").read_text())["test_top1"] == results["test_top1"]

    class FlakyRun:
        def log(self, *args, **kwargs):
            raise ConnectionError("wandb server unreachable")

    logger = WandbLogger.__new__(WandbLogger)
    logger.run = FlakyRun()
    logger.log_metrics({"loss": 1.0}, step=1)  # warns and switches itself off instead of raising
    assert logger.run is None


@pytest.mark.parametrize("train_on_trainval", [False, True])
def test_best_checkpoint_is_never_picked_on_val_that_was_trained_on(tmp_path, train_on_trainval):
    cfg = compose_train([*TINY, "data.val_fraction=0.2", f"++data.train_on_trainval={train_on_trainval}",
                         f"output_dir={tmp_path}"])
    trainer = Trainer(cfg, tmp_path)
    assert trainer.data.val_in_train is train_on_trainval
    assert len(trainer.data.train) == 40 + (len(trainer.data.val) if train_on_trainval else 0)
    for epoch, val_top1 in ((1, 90.0), (2, 10.0)):  # val peaks at epoch 1
        trainer.state.epoch = epoch
        trainer.save_checkpoints({"val_top1": val_top1})
    assert trainer.state.best_epoch == (2 if train_on_trainval else 1)


def test_optuna_search_turns_train_on_trainval_off():
    # hparams_search comes last in the defaults, so its train_on_trainval=false beats an experiment's true
    cfg = compose_train(["hparams_search=optuna", "experiment=vtab_cifar100_vpt_deep"])
    assert cfg.data.train_on_trainval is False and cfg.optimized_metric == "val_top1"
