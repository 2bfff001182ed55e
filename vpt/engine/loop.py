"""The training loop: one experiment, any task type (the task supplies data, model, loss and metrics).

``train(cfg)`` runs one experiment described by the composed Hydra config (see ``configs/train.yaml``) and
writes into ``cfg.output_dir``: ``config.yaml`` (resolved), ``metrics.jsonl`` / ``metrics.csv`` (one row per
epoch), ``results.json``, the prompt files ``best/`` and ``last/`` (trainable tensors only), and the resume
state from which ``trainer.resume=true`` continues.

Reproducibility: every epoch reseeds the data order, augmentation and torch RNG from (seed, epoch), so a
run resumed after a kill ends with exactly the metrics of an uninterrupted run on the same device.

Multi-process (``torchrun --nproc_per_node=N vpt-train ...``): see :mod:`.distributed`; ``trainer.batch_size``
is the global batch, rank 0 alone evaluates and writes the files above.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from omegaconf import DictConfig

from ..backbones.portable import portable_config_yaml
from ..errors import ConfigError, VptError
from ..files import RunLock, atomic_write, check_run_dir, update_latest_link
from ..loggers import RunFiles, Tracker
from ..prompt_file import WEIGHTS_NAME
from .sweep import in_multirun, run_position
from ..tasks import limited, metric_setting, task_from_config
from ..tuned import TunedModel
from . import checkpoints, distributed
from .build import build_backbone, build_optimizer, build_scheduler, input_data_config
from .console import format_metrics, progress_bar
from .runtime import autocast_for, configure_cpu, derive_seed, seed_everything, to_plain
from .validate import check_run_config

log = logging.getLogger(__name__)
SYNC_EVERY = 25  # training steps between host reads of the running loss (NaN check, progress bar)


class NonFiniteLossError(VptError, FloatingPointError):
    pass


def reseed_loader(loader: Any, seed: int) -> None:
    """Reseed the generator that drives a vpt.data loader's shuffling and augmentation."""
    if hasattr(loader, "reseed"):  # vpt loaders; a sharded one also reseeds its per-rank augmentation
        loader.reseed(seed)
        return
    generator = getattr(loader, "generator", None)  # DeviceBatchLoader
    if generator is None:
        generator = loader.loader.generator  # DeviceDataLoader wraps a torch DataLoader
    generator.manual_seed(seed)


def num_batches(loader: Any, limit: int | None) -> int:
    return len(loader) if limit is None else min(len(loader), limit)


def task_of(cfg: DictConfig):
    return task_from_config(cfg.task)


LAST_EPOCH = "last"  # trainer.monitor=last: best/ is the last epoch even with a held-out val split


class Trainer:
    """One experiment: data, model, optimiser and the epoch loop, configured by the composed config."""

    def __init__(self, cfg: DictConfig, output_dir: str | os.PathLike) -> None:
        check_run_config(cfg)
        self.cfg, self.trainer_cfg = cfg, cfg.trainer
        self.task = task_of(cfg)
        self.files = RunFiles(output_dir)
        self.seed = int(cfg.seed)
        seed_everything(self.seed)
        self.dist, self.device = distributed.init_distributed(self.trainer_cfg.device)
        configure_cpu(self.trainer_cfg, self.device)
        self.autocast = autocast_for(self.trainer_cfg.precision, self.device)
        position = run_position()  # "run 3/12 " in a multirun: which job of the sweep these lines belong to
        self.run_prefix = f"{position} " if position else ""

        backbone = build_backbone(cfg.backbone, **self.task.backbone_options(cfg.backbone))
        self.data = self.task.build_data(to_plain(cfg.data), input_data_config(backbone), self.seed)
        if self.data.train is None:  # data.eval_only: a dataset that is only scored
            raise ConfigError(f"data {cfg.data.name} has no training split (data.eval_only=true): score a prompt file "
                              "on it with vpt-eval prompt_file=<run dir>/best, and train on another dataset")
        self.model: TunedModel = self.task.build_model(cfg, backbone, self.data).to(self.device)
        compile_model = torch.compile if self.trainer_cfg.compile else (lambda module: module)
        self.forward = compile_model(distributed.wrap_model(self.model, self.dist, self.device))
        # evaluation runs on rank 0 alone: never through DDP, whose collectives would wait for the other ranks
        self.eval_forward = compile_model(self.model) if self.dist.enabled else self.forward

        batch_size = int(self.trainer_cfg.batch_size)  # the global batch: lr scaling and steps per epoch use it
        distributed.check_global_batch(batch_size, self.dist)
        self.loaders = self.data.loaders(batch_size, num_workers=int(self.trainer_cfg.num_workers), device=self.device,
                                         seed=self.seed, eval_batch_size=self.trainer_cfg.eval_batch_size)
        self.init_loader = self.loaders["train"]  # whole global batches: prompt init alike on every rank
        self.loaders["train"] = distributed.shard_loader(self.loaders["train"], self.dist)
        self.steps_per_epoch = num_batches(self.loaders["train"], self.trainer_cfg.limit_train_batches)
        if self.steps_per_epoch == 0:
            raise ConfigError("the training split is empty; check data.classes / data.num_shots / data.train_size")
        self.params = self.model.trainable_parameters()
        self.optimizer = build_optimizer(cfg.optim, self.params, batch_size)
        self.scheduler = build_scheduler(cfg.optim, self.optimizer, self.steps_per_epoch * int(self.trainer_cfg.epochs),
                                         self.steps_per_epoch)
        self.state = checkpoints.TrainState()
        self.tracker: Tracker = Tracker()

    # -- state -------------------------------------------------------------------------------------------
    def save_resume_state(self) -> None:
        checkpoints.save_resume_state(self.files.dir, self.state, self.model, self.optimizer, self.scheduler,
                                      to_plain(self.cfg))

    def load_resume_state(self) -> bool:
        path = self.files.dir
        checkpoints.refuse_legacy_resume_state(path)
        if not checkpoints.resume_state_exists(path):
            log.info("trainer.resume: no resume state in %s yet, starting from scratch", path)
            return False
        self.state, saved_config = checkpoints.load_resume_state(path, self.model, self.optimizer, self.scheduler)
        changed = checkpoints.changed_keys(saved_config, to_plain(self.cfg), ignore=("trainer.resume", "output_dir"))
        if changed:
            log.warning("resuming with a changed config (%s); results may differ from an uninterrupted run",
                        ", ".join(changed[:8]))
        if self.dist.is_main:
            self.files.write_history(self.state.history)  # drop rows of an epoch that did not finish saving
        log.info("resumed from %s after epoch %d/%d", path, self.state.epoch, self.trainer_cfg.epochs)
        return True

    # -- loop ----------------------------------------------------------------------------------------------
    def init_prompts(self) -> None:
        reseed_loader(self.init_loader, derive_seed(self.seed, 1 << 20))
        self.task.init_prompts(self.model, self.init_loader, self.seed)

    def train_step(self, batch) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
        with self.autocast():
            loss, count, sums = self.task.training_loss(self.forward, batch, self.trainer_cfg)
        self.optimizer.zero_grad(set_to_none=True)
        weight = getattr(self.loaders["train"], "shard_weight", 1.0)  # unequal shards: mean over the global batch
        (loss * weight if weight != 1.0 else loss).backward()
        if self.trainer_cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, float(self.trainer_cfg.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach(), count, sums

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg, total = self.trainer_cfg, self.steps_per_epoch
        epoch_seed = derive_seed(self.seed, epoch)
        reseed_loader(self.loaders["train"], epoch_seed)
        # prompt dropout, random patch placement, lazy-dataset augmentation: a stream per rank under torchrun
        torch.manual_seed(derive_seed(epoch_seed, self.dist.rank) if self.dist.enabled else epoch_seed)
        self.model.train()
        progress = progress_bar(total, f"{self.run_prefix}epoch {epoch + 1}/{cfg.epochs}",
                                enabled=cfg.progress_bar if self.dist.is_main else False)
        # running sums stay on the device; the host reads them every SYNC_EVERY steps (progress bar, NaN check)
        # rather than every step, so a GPU never waits on the Python loop
        sums: dict[str, torch.Tensor] = {"loss": torch.zeros((), device=self.device)}
        seen, shown, start = 0, 0, time.perf_counter()
        for step, batch in enumerate(limited(self.loaders["train"], total)):
            loss, count, step_sums = self.train_step(batch)
            sums["loss"] += loss * count
            for key, value in step_sums.items():
                sums[key] = sums.get(key, 0) + value
            seen += count
            if (step + 1) % SYNC_EVERY == 0 or step + 1 == total:
                # summed over ranks: every rank takes the same NaN decision at the same step
                totals, seen_all = distributed.sum_over_ranks(sums, seen, self.dist, self.device)
                self._check_finite(totals["loss"] / seen_all, epoch, step, progress)
                summary = self.task.epoch_summary(totals, seen_all)
                elapsed = time.perf_counter() - start
                progress.set_postfix({k.removeprefix("train_"): f"{v:.4g}" for k, v in summary.items()},
                                     img_s=f"{seen_all / max(elapsed, 1e-9):.0f}", refresh=False)
                progress.update(step + 1 - shown)
                shown = step + 1
        progress.close()
        seconds = time.perf_counter() - start
        seen = seen_all  # images of all ranks
        return {**self.task.epoch_summary(totals, seen), "train_images": seen,
                "train_seconds": seconds, "train_images_per_s": seen / max(seconds, 1e-9),
                "lr": self.optimizer.param_groups[0]["lr"]}

    def _check_finite(self, mean_loss: float, epoch: int, step: int, progress) -> None:
        if math.isfinite(mean_loss):
            return
        progress.close()
        raise NonFiniteLossError(
            f"loss became {mean_loss} in epoch {epoch + 1} (by step {step + 1}): training stopped. "
            f"The last good checkpoint ({self.state.epoch} epochs) is in {self.files.last}. "
            "Lower optim.base_lr, keep trainer.grad_clip on, or use trainer.precision=fp32."
        )

    def evaluate_splits(self, splits: Iterable[str]) -> dict[str, Any]:
        metrics = {}
        for split in splits:
            if split in self.loaders:
                result = self.task.evaluate(self.eval_forward, self.loaders[split], self.data, self.autocast,
                                            self.trainer_cfg.limit_eval_batches, split, self.files.dir)
                metrics.update({f"{split}_{key}": value for key, value in result.items()})
        return metrics

    def epoch_eval_splits(self) -> list[str]:
        return ["val", "test"] if self.trainer_cfg.test_every_epoch and self.tests else ["val"]

    @property
    def tests(self) -> bool:
        """trainer.test=false: the test split is never scored (vpt-tune's stage 1 reads val alone)."""
        return bool(self.trainer_cfg.get("test", True))

    @property
    def val_held_out(self) -> bool:
        return "val" in self.loaders and not self.data.val_in_train

    def monitor_score(self, metrics: Mapping[str, Any]) -> float | None:
        monitor = metric_setting(self.trainer_cfg.get("monitor"), self.task, "val")
        if monitor == LAST_EPOCH:
            return None  # best/ = the last epoch, as CoOp / Dassl test the final model
        if monitor.startswith("val_") and not self.val_held_out:
            return None  # val is trained on (or absent): picking a checkpoint on it would select on training data
        if monitor not in metrics:  # a misspelt key would otherwise keep the last epoch without a word
            known = ", ".join(sorted(k for k, v in metrics.items() if isinstance(v, (int, float))))
            raise ConfigError(f"trainer.monitor={monitor} is not a metric of this run's epochs ({known}); pick one of "
                              f"them, or trainer.monitor={LAST_EPOCH} for the last epoch")
        return metrics.get(monitor)

    def save_checkpoints(self, metrics: dict[str, Any]) -> None:
        # the data settings it was scored on: vpt-eval scores the same splits unless told otherwise
        extra = {"epoch": self.state.epoch, "metrics": {k: v for k, v in metrics.items() if not isinstance(v, list)},
                 "dataset": self.cfg.data.name, "data": to_plain(self.cfg.data), "data_seed": self.seed,
                 "data_choice": data_choice()}
        self.model.save_prompt(self.files.last, **extra)
        score = self.monitor_score(metrics)
        if score is None:  # no held-out val: best = last, never picked on the test set
            score = float(self.state.epoch)
        if score > self.state.best_score:
            self.state.best_score, self.state.best_epoch = score, self.state.epoch
            self.model.save_prompt(self.files.best, **extra)

    def fit(self) -> dict[str, Any]:
        """Train all epochs and finish; under torchrun the other ranks train alongside rank 0 and return {}."""
        main = self.dist.is_main
        if main:
            atomic_write(self.files.config, portable_config_yaml(self.cfg))  # weights file by name + sha256
        resumed = bool(self.trainer_cfg.resume) and self.load_resume_state()  # every rank: the same state
        if not resumed:
            self.init_prompts()
        if not main:
            for epoch in range(self.state.epoch, int(self.trainer_cfg.epochs)):
                self.train_epoch(epoch)
            return {}
        if "val" not in self.loaders:
            log.info("no val split: best/ is the last epoch (set data.val_fraction to select by val)")
        elif self.data.val_in_train:
            log.info("val is trained on (data.train_on_trainval): best/ is the last epoch, val is reported only")
        self.tracker = build_tracker(self.cfg, self.files.dir, resume=resumed)
        failed = True
        try:
            for epoch in range(self.state.epoch, int(self.trainer_cfg.epochs)):
                self.run_epoch(epoch)
            results = self.finish()
            failed = False
            return results
        except NonFiniteLossError as error:  # raised on every rank alike (sums over ranks)
            self.files.write_results({**self.summary(), "status": "failed", "error": str(error)})
            raise
        finally:
            self.tracker.finish(failed=failed)

    def run_epoch(self, epoch: int) -> None:
        train_metrics = self.train_epoch(epoch)
        start = time.perf_counter()
        eval_metrics = self.evaluate_splits(self.epoch_eval_splits())
        self.state.epoch = epoch + 1
        self.state.train_seconds += train_metrics["train_seconds"]
        self.state.train_images += train_metrics.pop("train_images")
        row = {"epoch": epoch + 1, **train_metrics, **eval_metrics, "eval_seconds": time.perf_counter() - start}
        self.state.history.append(row)
        self.save_checkpoints(row)
        self.files.write_history(self.state.history)
        self.save_resume_state()  # last: a kill before this point replays the epoch identically
        self.tracker.log_metrics(self.state.history[-1], step=epoch + 1)
        log.info("%sepoch %d/%d  %s", self.run_prefix, epoch + 1, self.trainer_cfg.epochs,
                 format_metrics(row, self.task.summary_keys))

    def summary(self) -> dict[str, Any]:
        cfg, params = self.cfg, self.model.param_summary()
        best = next((row for row in self.state.history if row["epoch"] == self.state.best_epoch), {})
        weights = self.files.best / WEIGHTS_NAME
        return {
            "status": "completed", "task": self.task.name, "method": self.model.prompt_config.method,
            "backbone": self.model.backbone.name, "dataset": cfg.data.name, "seed": self.seed,
            "prompt": self.model.prompt_config.to_dict(), "epochs": self.state.epoch, "best_epoch": self.state.best_epoch,
            **{k: v for k, v in best.items() if k.startswith(("val_", "test_"))},
            "trainable_params": params["trainable"], "total_params": params["total"], "prompt_params": params["prompt"],
            "prompt_file_bytes": weights.stat().st_size if weights.is_file() else None,
            "train_seconds": self.state.train_seconds,
            "train_images_per_s": self.state.train_images / max(self.state.train_seconds, 1e-9),
            "train_size": len(self.data.train), "val_in_train": self.data.val_in_train, "device": str(self.device),
            "best_checkpoint": str(self.files.best),
        }

    def finish(self) -> dict[str, Any]:
        results = self.summary()
        if self.tests and not self.trainer_cfg.test_every_epoch and "test" in self.loaders:
            self.model.load_prompt(self.files.best)  # test once, on the checkpoint val picked
            results.update(self.evaluate_splits(["test"]))
        self.files.write_results(results)  # before the tracker: results never depend on it
        self.tracker.log_summary(results)
        if self.trainer_cfg.export_backbone:
            checkpoints.export_backbone(self.model, self.trainer_cfg.export_backbone)
        log.info("%sresults: %s  (%s)", self.run_prefix, format_metrics(results, self.task.summary_keys),
                 self.files.results)
        return results


def data_choice() -> str | None:
    """The data config group a Hydra run chose (``digits_target``, ``shapes``), None outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get("data") if HydraConfig.initialized() else None


def build_tracker(cfg: DictConfig, run_dir, resume: bool = False) -> Tracker:
    """The experiment tracker of ``cfg.logger`` (``resume``: continue the tracker run this run dir started)."""
    from hydra.utils import instantiate

    logger_cfg = cfg.get("logger")
    if not logger_cfg or "_target_" not in logger_cfg:
        return Tracker()
    extra = {"resume": resume} if resume else {}
    return instantiate(logger_cfg, run_dir=str(run_dir), name=cfg.get("name") or run_dir.name,
                       run_config=to_plain(cfg), _recursive_=False, **extra)  # run_config holds _target_ keys itself


RESUME_FLAGS = {"true": True, "auto": True, "false": False}  # auto: continue if there is a state (requeued jobs)


def train(cfg: DictConfig, output_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run the experiment in ``cfg``; returns the contents of results.json.

    One process per run dir (a lock), and never over another run's results: ``trainer.resume`` continues the run
    there (true / auto / a run dir), ``trainer.overwrite=true`` moves its results aside first. Under torchrun
    rank 0 holds the lock and the other ranks use its run dir; they return {}.
    """
    check_run_config(cfg)  # before the run dir is locked or checked: a bad value never moves results aside
    resume = cfg.trainer.resume
    if isinstance(resume, str) and resume.lower() not in RESUME_FLAGS:
        output_dir = resume  # trainer.resume=<run dir>: continue that run in place
    elif isinstance(resume, str):
        resume = RESUME_FLAGS[resume.lower()]
    output_dir = Path(output_dir or cfg.output_dir)
    context, device = distributed.init_distributed(cfg.trainer.device)
    try:
        with RunLock(output_dir) if context.is_main else contextlib.nullcontext():
            if context.is_main:  # rank 0 alone owns the run dir; the others wait here until it is checked
                check_run_dir(output_dir, resume=bool(resume), overwrite=bool(cfg.trainer.get("overwrite", False)))
                if output_dir.parent.name == str(cfg.get("name")) and not in_multirun():
                    update_latest_link(output_dir)  # outputs/<name>/latest: no <date> to type
            # rank 0's dir on every rank (Hydra's timestamped run dir can differ by a second between ranks)
            output_dir = Path(distributed.broadcast_text(str(output_dir), context, device))
            return Trainer(cfg, output_dir).fit()
    finally:
        distributed.shutdown()
