"""What a task type supplies to the training loop: its data, its model, its loss, its metrics.

The loop (:mod:`vpt.engine.loop`) knows nothing of labels or boxes: it asks the task. Classification is
:mod:`vpt.tasks.classification`; a new task type is one module with a :class:`Task` subclass registered here
and a ``configs/task/<name>.yaml`` whose ``name`` selects it.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import torch
from torch import nn

from ..registry import Registry

if TYPE_CHECKING:
    from ..tuned import TunedModel

#: tasks by name; the built-in ones register on the first lookup, a dotted ``module.Class`` name imports a user's
#: task class (``task.name=my_pkg.my_tasks.MyTask`` or ``task._target_=...``)
TASKS: Registry["Task"] = Registry("task", builtins=("vpt.tasks.classification", "vpt.detection.task"),
                                   instantiate=True)


class Task:
    name: str = ""
    #: metric keys shown in the one-line epoch summary (when present)
    summary_keys: tuple[str, ...] = ()
    #: the metric (an unprefixed key of :meth:`evaluate`) that ranks runs: monitored on val to pick best/,
    #: optimised by searches and vpt-tune, reported first on test. A config's ``trainer.monitor`` /
    #: ``optimized_metric`` left null means this one (:func:`metric_setting`).
    primary_metric: str = "top1"
    #: further unprefixed metrics a report shows by default on test, after the primary one
    secondary_metrics: tuple[str, ...] = ()

    def metric(self, split: str) -> str:
        """The primary metric's key on ``split``: ``val_top1``, ``test_map``."""
        return f"{split}_{self.primary_metric}"

    def backbone_options(self, backbone_cfg: Mapping[str, Any]) -> dict[str, Any]:
        """Extra keyword arguments the task needs when the backbone is built (e.g. any-size position embeddings)."""
        return {}

    def build_data(self, data_cfg: dict[str, Any], data_config: Mapping[str, Any], seed: int):
        """A data bundle: ``train`` / ``val`` / ``test`` datasets (or None), ``class_names``, ``val_in_train`` and
        ``loaders(batch_size, num_workers, device, seed, eval_batch_size)`` giving batches on the device."""
        raise NotImplementedError

    def build_model(self, cfg, backbone, data) -> "TunedModel":
        """The model to train: a :class:`vpt.tuned.TunedModel` (trainable state, prompt files)."""
        raise NotImplementedError

    def load_prompt_file(self, path, pretrained: Any = False, backbone: nn.Module | None = None) -> "TunedModel":
        """Rebuild the model a prompt file of this task describes (``vpt-eval``); ``backbone``: the built one when
        the file records none (a ``backbone._target_`` model), else None."""
        raise NotImplementedError

    def model_for_data(self, model: nn.Module, data, path) -> nn.Module:
        """The model ``vpt-eval`` evaluates on ``data``: the loaded one by default (a CLIP prompt file is rebuilt
        for the evaluated classes, e.g. the new classes of base-to-novel)."""
        return model

    def init_prompts(self, model: nn.Module, train_loader, seed: int) -> None:
        """Data-dependent prompt init before the first epoch (``prompt.init=patch``); nothing by default."""

    def training_loss(self, model: Callable, batch: Any, trainer_cfg) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
        """(loss to back-propagate, samples in the batch, running sums kept on the device for the epoch summary)."""
        raise NotImplementedError

    def epoch_summary(self, sums: Mapping[str, float], seen: int) -> dict[str, float]:
        """Train metrics of an epoch from the running sums (``loss`` sum included)."""
        return {"train_loss": sums["loss"] / max(seen, 1)}

    def evaluate(self, model: nn.Module, loader: Iterable, data, autocast, limit: int | None, split: str,
                 run_dir: Path | None) -> dict[str, Any]:
        """Metrics of one split (unprefixed keys); may write files (predictions) into ``run_dir``."""
        raise NotImplementedError

    def check_eval_data(self, model: nn.Module, data, dataset_name: str) -> None:
        """Refuse a dataset the model's head does not fit (``vpt-eval``)."""


def register_task(task: Task, replace: bool = True) -> Task:
    return TASKS.register(task, task.name, replace=replace)


def get_task(name: str) -> Task:
    return TASKS.get(name)


def task_from_config(task_cfg: Mapping[str, Any]) -> Task:
    """The task a ``configs/task`` group selects: its ``_target_`` (a Task class's dotted path) or its ``name``."""
    return get_task(task_cfg.get("_target_") or task_cfg.get("name", "classification"))


def metric_setting(setting: Any, task: Task, split: str = "val") -> str:
    """A config's metric key (``trainer.monitor``, ``optimized_metric``) as set, or the task's primary metric on
    ``split`` when it is null: the one place a null metric setting is read."""
    return str(setting) if setting else task.metric(split)


def recorded_task(results: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> Task:
    """The task a finished run was of: the name its results.json records, else its config's ``task`` group; runs
    that record neither are classification (the only task of older vpt versions)."""
    name = results.get("task")
    if not name and isinstance((config or {}).get("task"), Mapping):
        name = config["task"].get("_target_") or config["task"].get("name")
    return get_task(str(name or "classification"))


def limited(loader: Iterable, limit: int | None) -> Iterable:
    for index, batch in enumerate(loader):
        if limit is not None and index >= limit:
            return
        yield batch
