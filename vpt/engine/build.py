"""Building a run's pieces from the composed config: backbone, input size, optimiser and lr schedule."""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
from omegaconf import DictConfig

from ..backbones import BackboneAdapter, create_backbone
from ..errors import ConfigError
from .runtime import to_plain


def build_backbone(backbone_cfg: Mapping[str, Any], **task_options: Any) -> BackboneAdapter:
    """``backbone.image_size`` is the one home of the input size: the backbone is built for it. ``task_options``:
    keyword arguments the task needs (``Task.backbone_options``), under the config's own ``kwargs``."""
    cfg = to_plain(backbone_cfg)
    kwargs = {**task_options, **(cfg.get("kwargs") or {})}
    return create_backbone(cfg["name"], pretrained=cfg.get("pretrained", True), image_size=cfg.get("image_size"),
                           allow_partial_weights=bool(cfg.get("allow_partial_weights", False)), **kwargs)


def input_data_config(backbone: BackboneAdapter) -> dict[str, Any]:
    """The backbone's preprocessing (input size, mean, std, ...), checked against its patch size before any
    data is loaded or step taken."""
    data_config = dict(backbone.data_config())
    backbone.check_input_size(*data_config["input_size"][1:])
    return data_config


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
