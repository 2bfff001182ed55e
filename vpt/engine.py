"""Config-driven training and evaluation of a :class:`PromptedModel` (plain PyTorch).

``train(cfg)`` runs one experiment described by the composed Hydra config (see ``configs/train.yaml``) and
writes into ``cfg.output_dir``: ``config.yaml`` (resolved), ``metrics.jsonl`` / ``metrics.csv`` (one row per
epoch), ``results.json``, the prompt files ``best/`` and ``last/`` (trainable tensors only), and
``resume.pt`` (optimizer, scheduler, RNG, history) from which ``trainer.resume=true`` continues.

Reproducibility: every epoch reseeds the data order, augmentation and torch RNG from (seed, epoch), so a
run resumed after a kill ends with exactly the metrics of an uninterrupted run on the same device.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from .backbones import BackboneAdapter, create_backbone
from .config import PromptConfig
from .cpu import retain_freed_memory, set_cpu_threads
from .errors import ConfigError, VptError
from .heads import ZeroShotHead
from .loggers import RunFiles, Tracker, write_json
from .model import PromptedModel

log = logging.getLogger(__name__)
SYNC_EVERY = 25  # training steps between host reads of the running loss (NaN check, progress bar)

# Keys of the `data` group that the engine consumes itself instead of passing them to vpt.data.
ENGINE_DATA_KEYS = ("img_size",)
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


class NonFiniteLossError(VptError, FloatingPointError):
    pass


# ---- small helpers ---------------------------------------------------------------------------------------
def to_plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from (seed, epoch, ...): independent streams, no dependence on earlier RNG use."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name} but CUDA is not available here; use trainer.device=cpu or auto")
    return device


def configure_cpu(trainer_cfg: DictConfig, device: torch.device) -> None:
    """Thread count and allocator for CPU runs (see :mod:`vpt.cpu`); nothing on CUDA."""
    if device.type != "cpu":
        return
    set_cpu_threads(trainer_cfg.get("cpu_threads"), device)
    if trainer_cfg.get("cpu_retain_freed_memory", True):
        retain_freed_memory()


def autocast_for(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast on CUDA by default, fp32 on CPU; ``precision=bf16`` also autocasts on CPU."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision not in AUTOCAST_DTYPES:
        raise ConfigError(f"trainer.precision={precision!r}; valid: auto, {', '.join(AUTOCAST_DTYPES)}")
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def reseed_loader(loader: Any, seed: int) -> None:
    """Reseed the generator that drives a vpt.data loader's shuffling and augmentation."""
    generator = getattr(loader, "generator", None)  # DeviceBatchLoader
    if generator is None:
        generator = loader.loader.generator  # DeviceDataLoader wraps a torch DataLoader
    generator.manual_seed(seed)


def limited(loader: Iterable, limit: int | None) -> Iterable:
    for index, batch in enumerate(loader):
        if limit is not None and index >= limit:
            return
        yield batch


def num_batches(loader: Any, limit: int | None) -> int:
    return len(loader) if limit is None else min(len(loader), limit)


# ---- model ---------------------------------------------------------------------------------------------------
def build_backbone(backbone_cfg: Mapping[str, Any]) -> BackboneAdapter:
    cfg = to_plain(backbone_cfg)
    return create_backbone(cfg["name"], pretrained=cfg.get("pretrained", False), **(cfg.get("kwargs") or {}))


def input_data_config(backbone: BackboneAdapter, img_size: int | None) -> dict[str, Any]:
    """The backbone's preprocessing, optionally at another square input size (``data.img_size``)."""
    data_config = dict(backbone.data_config())
    if img_size:
        data_config["input_size"] = (data_config["input_size"][0], int(img_size), int(img_size))
    backbone.check_input_size(*data_config["input_size"][1:])  # before any data is loaded or step taken
    return data_config


def _linear_head(task: Mapping[str, Any], backbone: BackboneAdapter, class_names: list[str], prompt: PromptConfig):
    return None  # PromptedModel builds a LinearHead from num_classes


def _zero_shot_head(task: Mapping[str, Any], backbone: BackboneAdapter, class_names: list[str], prompt: PromptConfig):
    clip_model = getattr(backbone, "clip_model", None)
    if clip_model is None:
        raise ConfigError(f"task=zero_shot needs a CLIP backbone with a text tower (e.g. backbone=clip_vit_b32); "
                          f"{backbone.name} has none. Use task=classification for a linear head.")
    templates = task.get("templates") or ["{}"]
    return ZeroShotHead.from_clip(clip_model, backbone.tokenizer, class_names, templates, trainable=prompt.train_head)


HEAD_BUILDERS = {"linear": _linear_head, "zero_shot": _zero_shot_head}


def build_model(cfg: DictConfig, backbone: BackboneAdapter, class_names: list[str]) -> PromptedModel:
    task = to_plain(cfg.task)
    prompt = PromptConfig.from_dict(to_plain(cfg.prompt))
    head_kind = task.get("head", "linear")
    if head_kind not in HEAD_BUILDERS:
        raise ConfigError(f"task.head={head_kind!r}; valid: {', '.join(HEAD_BUILDERS)}")
    head = HEAD_BUILDERS[head_kind](task, backbone, class_names, prompt)
    torch.manual_seed(cfg.seed)  # head and prompt init do not depend on what building the data consumed
    return PromptedModel(backbone, prompt, num_classes=len(class_names), head=head, class_names=class_names)


def build_data_bundle(data_cfg: Any, data_config: Mapping[str, Any], seed: int):
    from .data import build_data

    data = to_plain(data_cfg)
    for key in ENGINE_DATA_KEYS:
        data.pop(key, None)
    return build_data(data, data_config, seed=seed)


# ---- optimisation --------------------------------------------------------------------------------------------
def build_optimizer(optim_cfg: DictConfig, params: list[torch.nn.Parameter], batch_size: int) -> torch.optim.Optimizer:
    from hydra.utils import instantiate

    if not params:
        raise ConfigError("nothing to train: the prompt method leaves no trainable parameters "
                          "(e.g. prompt.train_head=false with prompt=linear)")
    scaling = {"linear": batch_size / 256, "none": 1.0}
    if optim_cfg.lr_scaling not in scaling:
        raise ConfigError(f"optim.lr_scaling={optim_cfg.lr_scaling!r}; valid: {', '.join(scaling)}")
    lr = float(optim_cfg.base_lr) * scaling[optim_cfg.lr_scaling]  # VPT: lr = base_lr * batch / 256
    make_optimizer = instantiate(optim_cfg.optimizer)  # a partial (_partial_: true) awaiting params and lr
    return make_optimizer(params, lr=lr)


SCHEDULE_SHAPES: dict[str, Callable[[float], float]] = {
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
    "constant": lambda progress: 1.0,
}


def build_scheduler(optim_cfg: DictConfig, optimizer: torch.optim.Optimizer, total_steps: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warmup over ``warmup_epochs``, then the shape decays to ``min_lr_ratio``."""
    if optim_cfg.scheduler not in SCHEDULE_SHAPES:
        raise ConfigError(f"optim.scheduler={optim_cfg.scheduler!r}; valid: {', '.join(SCHEDULE_SHAPES)}")
    shape = SCHEDULE_SHAPES[optim_cfg.scheduler]
    warmup = min(int(round(float(optim_cfg.warmup_epochs) * steps_per_epoch)), max(total_steps - 1, 0))
    floor = float(optim_cfg.min_lr_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total_steps - warmup, 1)
        return floor + (1.0 - floor) * shape(min(progress, 1.0))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---- evaluation ---------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Iterable, num_classes: int, autocast=contextlib.nullcontext,
             limit: int | None = None) -> dict[str, Any]:
    """top-1 / top-5 / mean per-class accuracy (percent), per-class accuracy and mean loss."""
    was_training = model.training
    model.eval()
    k = min(5, num_classes)
    correct_per_class = torch.zeros(num_classes, dtype=torch.long)
    total_per_class = torch.zeros(num_classes, dtype=torch.long)
    top_k_hits, loss_sum = 0, 0.0
    for images, labels in limited(loader, limit):
        with autocast():
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        predicted = logits.topk(k, dim=1).indices
        top1 = (predicted[:, 0] == labels).cpu()
        top_k_hits += int((predicted == labels[:, None]).any(dim=1).sum())
        labels = labels.cpu()
        total_per_class += torch.bincount(labels, minlength=num_classes)
        correct_per_class += torch.bincount(labels[top1], minlength=num_classes)
    model.train(was_training)
    count = int(total_per_class.sum())
    if count == 0:
        return {}
    present = total_per_class > 0
    per_class = (100.0 * correct_per_class / total_per_class.clamp(min=1)).tolist()
    return {
        "top1": 100.0 * int(correct_per_class.sum()) / count,
        "top5": 100.0 * top_k_hits / count,
        "mean_class_top1": float(torch.tensor(per_class)[present].mean()),
        "loss": loss_sum / count,
        "per_class_top1": [round(v, 4) for v in per_class],
        "count": count,
    }


def prefixed(split: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{split}_{key}": value for key, value in metrics.items()}


# ---- training ------------------------------------------------------------------------------------------------
@dataclass
class TrainState:
    """What a resumed run needs beyond the model's trainable tensors."""

    epoch: int = 0  # completed epochs
    history: list[dict[str, Any]] = field(default_factory=list)
    best_score: float = -math.inf
    best_epoch: int = 0
    train_seconds: float = 0.0
    train_images: int = 0


class Trainer:
    """One experiment: data, model, optimiser and the epoch loop, configured by the composed config."""

    def __init__(self, cfg: DictConfig, output_dir: str | os.PathLike) -> None:
        self.cfg = cfg
        self.trainer_cfg = cfg.trainer
        self.files = RunFiles(output_dir)
        self.seed = int(cfg.seed)
        seed_everything(self.seed)
        self.device = resolve_device(self.trainer_cfg.device)
        configure_cpu(self.trainer_cfg, self.device)
        self.autocast = autocast_for(self.trainer_cfg.precision, self.device)

        backbone = build_backbone(cfg.backbone)
        data_config = input_data_config(backbone, cfg.data.get("img_size"))
        self.data = build_data_bundle(cfg.data, data_config, self.seed)
        self.model = build_model(cfg, backbone, self.data.class_names).to(self.device)
        self.forward = torch.compile(self.model) if self.trainer_cfg.compile else self.model

        batch_size = int(self.trainer_cfg.batch_size)
        self.loaders = self.data.loaders(batch_size, num_workers=int(self.trainer_cfg.num_workers), device=self.device,
                                         seed=self.seed, eval_batch_size=self.trainer_cfg.eval_batch_size)
        self.steps_per_epoch = num_batches(self.loaders["train"], self.trainer_cfg.limit_train_batches)
        if self.steps_per_epoch == 0:
            raise ConfigError("the training split is empty; check data.classes / data.num_shots / data.train_size")
        self.params = self.model.trainable_parameters()
        self.optimizer = build_optimizer(cfg.optim, self.params, batch_size)
        self.scheduler = build_scheduler(cfg.optim, self.optimizer, self.steps_per_epoch * int(self.trainer_cfg.epochs),
                                         self.steps_per_epoch)
        self.state = TrainState()
        self.tracker: Tracker = Tracker()

    # -- state -------------------------------------------------------------------------------------------
    def save_resume_state(self) -> None:
        state = {
            "train_state": vars(self.state),
            "trainable": self.model.trainable_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "config": to_plain(self.cfg),
        }
        tmp = self.files.resume_state.with_name(self.files.resume_state.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.files.resume_state)  # atomic: a kill leaves the previous complete state

    def load_resume_state(self) -> bool:
        path = self.files.resume_state
        if not path.is_file():
            log.info("trainer.resume: no %s yet, starting from scratch", path)
            return False
        # our own file: it holds numpy / python RNG states, which weights_only loading rejects
        state = torch.load(path, map_location="cpu", weights_only=False)
        changed = _changed_keys(state.get("config", {}), to_plain(self.cfg), ignore=("trainer.resume", "output_dir"))
        if changed:
            log.warning("resuming with a changed config (%s); results may differ from an uninterrupted run",
                        ", ".join(changed[:8]))
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in state["trainable"].items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.state = TrainState(**state["train_state"])
        self.files.write_history(self.state.history)  # drop rows of an epoch that did not finish saving
        log.info("resumed from %s after epoch %d/%d", path, self.state.epoch, self.trainer_cfg.epochs)
        return True

    # -- loop ----------------------------------------------------------------------------------------------
    def init_prompts(self) -> None:
        if self.model.prompt_config.init != "patch":
            return
        loader = self.loaders["train"]
        reseed_loader(loader, derive_seed(self.seed, 1 << 20))
        images, _ = next(iter(loader))
        self.model.init_prompts_from_patches(images, generator=torch.Generator().manual_seed(self.seed))

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg = self.trainer_cfg
        epoch_seed = derive_seed(self.seed, epoch)
        reseed_loader(self.loaders["train"], epoch_seed)
        torch.manual_seed(epoch_seed)  # prompt dropout, random patch placement, lazy-dataset augmentation
        self.model.train()
        total = self.steps_per_epoch
        progress = _progress_bar(total, f"epoch {epoch + 1}/{cfg.epochs}", enabled=cfg.progress_bar)
        # running sums stay on the device; the host reads them every SYNC_EVERY steps (progress bar, NaN check)
        # rather than every step, so a GPU never waits on the Python loop
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen, shown = 0, 0
        start = time.perf_counter()
        for step, (images, labels) in enumerate(limited(self.loaders["train"], total)):
            with self.autocast():
                logits = self.forward(images)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=float(cfg.label_smoothing))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.params, float(cfg.grad_clip))
            self.optimizer.step()
            self.scheduler.step()
            loss_sum += loss.detach() * len(labels)
            correct += (logits.detach().argmax(dim=1) == labels).sum()
            seen += len(labels)
            if (step + 1) % SYNC_EVERY == 0 or step + 1 == total:
                mean_loss = loss_sum.item() / seen
                if not math.isfinite(mean_loss):
                    progress.close()
                    raise NonFiniteLossError(
                        f"loss became {mean_loss} in epoch {epoch + 1} (by step {step + 1}): training stopped. "
                        f"The last good checkpoint ({self.state.epoch} epochs) is in {self.files.last}. "
                        "Lower optim.base_lr, keep trainer.grad_clip on, or use trainer.precision=fp32."
                    )
                elapsed = time.perf_counter() - start
                progress.set_postfix(loss=f"{mean_loss:.4f}", acc=f"{100 * correct.item() / seen:.1f}",
                                     img_s=f"{seen / max(elapsed, 1e-9):.0f}", refresh=False)
                progress.update(step + 1 - shown)
                shown = step + 1
        progress.close()
        seconds = time.perf_counter() - start
        return {"train_loss": loss_sum.item() / seen, "train_top1": 100.0 * correct.item() / seen, "train_images": seen,
                "train_seconds": seconds, "train_images_per_s": seen / max(seconds, 1e-9),
                "lr": self.optimizer.param_groups[0]["lr"]}

    def evaluate_splits(self, splits: Iterable[str]) -> dict[str, Any]:
        metrics = {}
        for split in splits:
            if split in self.loaders:
                result = evaluate(self.forward, self.loaders[split], self.data.num_classes, self.autocast,
                                  self.trainer_cfg.limit_eval_batches)
                metrics.update(prefixed(split, result))
        return metrics

    def epoch_eval_splits(self) -> list[str]:
        return ["val", "test"] if self.trainer_cfg.test_every_epoch else ["val"]

    @property
    def val_held_out(self) -> bool:
        return "val" in self.loaders and not self.data.val_in_train

    def monitor_score(self, metrics: Mapping[str, Any]) -> float | None:
        monitor = self.trainer_cfg.monitor
        if monitor.startswith("val_") and not self.val_held_out:
            return None  # val is trained on (or absent): picking a checkpoint on it would select on training data
        return metrics.get(monitor)

    def save_checkpoints(self, metrics: dict[str, Any]) -> None:
        extra = {"epoch": self.state.epoch, "metrics": {k: v for k, v in metrics.items() if not isinstance(v, list)},
                 "dataset": self.cfg.data.name}
        self.model.save_prompt(self.files.last, **extra)
        score = self.monitor_score(metrics)
        if score is None:  # no held-out val: best = last, never picked on the test set
            score = float(self.state.epoch)
        if score > self.state.best_score:
            self.state.best_score, self.state.best_epoch = score, self.state.epoch
            self.model.save_prompt(self.files.best, **extra)

    def fit(self) -> dict[str, Any]:
        OmegaConf.save(self.cfg, self.files.config, resolve=True)
        resumed = bool(self.trainer_cfg.resume) and self.load_resume_state()
        if not resumed:
            self.init_prompts()
        if "val" not in self.loaders:
            log.info("no val split: best/ is the last epoch (set data.val_fraction to select by val)")
        elif self.data.val_in_train:
            log.info("val is trained on (data.train_on_trainval): best/ is the last epoch, val is reported only")
        self.tracker = build_tracker(self.cfg, self.files.dir)
        failed = True
        try:
            for epoch in range(self.state.epoch, int(self.trainer_cfg.epochs)):
                self.run_epoch(epoch)
            results = self.finish()
            failed = False
            return results
        except NonFiniteLossError as error:
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
        log.info("epoch %d/%d  %s", epoch + 1, self.trainer_cfg.epochs, _format_metrics(row))

    def summary(self) -> dict[str, Any]:
        cfg, params = self.cfg, self.model.param_summary()
        best = next((row for row in self.state.history if row["epoch"] == self.state.best_epoch), {})
        weights = self.files.best / "prompt.safetensors"
        return {
            "status": "completed",
            "method": self.model.prompt_config.method,
            "backbone": cfg.backbone.name,
            "dataset": cfg.data.name,
            "seed": self.seed,
            "prompt": self.model.prompt_config.to_dict(),
            "epochs": self.state.epoch,
            "best_epoch": self.state.best_epoch,
            **{k: v for k, v in best.items() if k.startswith(("val_", "test_"))},
            "trainable_params": params["trainable"],
            "total_params": params["total"],
            "prompt_params": params["prompt"],
            "prompt_file_bytes": weights.stat().st_size if weights.is_file() else None,
            "train_seconds": self.state.train_seconds,
            "train_images_per_s": self.state.train_images / max(self.state.train_seconds, 1e-9),
            "train_size": len(self.data.train),
            "val_in_train": self.data.val_in_train,
            "device": str(self.device),
            "best_checkpoint": str(self.files.best),
        }

    def finish(self) -> dict[str, Any]:
        results = self.summary()
        if not self.trainer_cfg.test_every_epoch and "test" in self.loaders:
            self.model.load_prompt(self.files.best)  # test once, on the checkpoint val picked
            results.update(self.evaluate_splits(["test"]))
        self.files.write_results(results)  # before the tracker: results never depend on it
        self.tracker.log_summary(results)
        if self.trainer_cfg.export_backbone:
            export_backbone(self.model, self.trainer_cfg.export_backbone)
        log.info("results: %s  (%s)", _format_metrics(results), self.files.results)
        return results


def export_backbone(model: PromptedModel, path: str | os.PathLike) -> Path:
    """Save the (possibly fine-tuned) backbone weights, loadable with ``create_backbone(..., pretrained=path)``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.backbone.model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)
    log.info("exported backbone weights to %s (%.1f kB)", path, path.stat().st_size / 1024)
    return path


def build_tracker(cfg: DictConfig, run_dir: Path) -> Tracker:
    from hydra.utils import instantiate

    logger_cfg = cfg.get("logger")
    if not logger_cfg or "_target_" not in logger_cfg:
        return Tracker()
    return instantiate(logger_cfg, run_dir=str(run_dir), name=cfg.get("name") or run_dir.name,
                       run_config=to_plain(cfg), _recursive_=False)  # run_config holds _target_ keys itself


def train(cfg: DictConfig, output_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run the experiment in ``cfg``; returns the contents of results.json."""
    resume = cfg.trainer.resume
    if isinstance(resume, str) and resume.lower() not in ("true", "false"):
        output_dir = resume  # trainer.resume=<run dir>: continue that run in place
    output_dir = output_dir or cfg.output_dir
    return Trainer(cfg, output_dir).fit()


# ---- evaluation of a saved prompt file -----------------------------------------------------------------------
def evaluate_prompt_file(cfg: DictConfig, output_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """``vpt-eval``: rebuild the model a prompt file describes and evaluate it on ``cfg.data``."""
    from .prompt_file import load_prompted_model

    files = RunFiles(output_dir or cfg.output_dir)
    OmegaConf.save(cfg, files.config, resolve=True)
    seed_everything(int(cfg.seed))
    device = resolve_device(cfg.trainer.device)
    configure_cpu(cfg.trainer, device)
    model = load_prompted_model(cfg.prompt_file, pretrained=cfg.get("pretrained") or False)
    data_config = input_data_config(model.backbone, cfg.data.get("img_size"))
    data = build_data_bundle(cfg.data, data_config, int(cfg.seed))
    num_outputs = getattr(model.head, "out_features", None)
    if num_outputs is not None and num_outputs != data.num_classes:
        raise ConfigError(f"the prompt file's head has {num_outputs} classes but data={cfg.data.name} has "
                          f"{data.num_classes}; evaluate on the dataset (and data.classes) it was trained for")
    model.to(device)
    loaders = data.loaders(int(cfg.trainer.eval_batch_size), num_workers=int(cfg.trainer.num_workers), device=device,
                           seed=int(cfg.seed))
    autocast = autocast_for(cfg.trainer.precision, device)
    results: dict[str, Any] = {"prompt_file": str(cfg.prompt_file), "method": model.prompt_config.method,
                               "backbone": model.backbone.name, "dataset": cfg.data.name, "seed": int(cfg.seed)}
    for split in cfg.splits:
        if split in loaders:
            results.update(prefixed(split, evaluate(model, loaders[split], data.num_classes, autocast,
                                                    cfg.trainer.limit_eval_batches)))
    write_json(files.results, results)
    log.info("results: %s  (%s)", _format_metrics(results), files.results)
    return results


# ---- formatting ---------------------------------------------------------------------------------------------
def _progress_bar(total: int, description: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, leave=False, dynamic_ncols=True, disable=not enabled)


def _format_metrics(metrics: Mapping[str, Any]) -> str:
    keys = ("train_loss", "train_top1", "val_top1", "test_top1", "test_top5", "train_images_per_s")
    return "  ".join(f"{k} {metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), (int, float)))


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _changed_keys(old: Mapping[str, Any], new: Mapping[str, Any], ignore: tuple[str, ...]) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not k.startswith(ignore))
