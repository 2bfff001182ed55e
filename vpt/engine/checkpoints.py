"""What a run saves to continue and to hand on: resume state, best/last prompt files, exported backbone weights."""
from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What a resumed run needs beyond the model's trainable tensors."""

    epoch: int = 0  # completed epochs
    history: list[dict[str, Any]] = field(default_factory=list)
    best_score: float = -math.inf
    best_epoch: int = 0
    train_seconds: float = 0.0
    train_images: int = 0


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(rng: Mapping[str, Any]) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def save_resume_state(path: Path, state: TrainState, model, optimizer, scheduler, config: Mapping[str, Any]) -> None:
    payload = {"train_state": vars(state), "trainable": model.trainable_state_dict(),
               "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
               "config": dict(config)}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # atomic: a kill leaves the previous complete state


def load_resume_state(path: Path, model, optimizer, scheduler) -> tuple[TrainState, dict[str, Any]]:
    """Restore model tensors, optimiser, schedule and RNG; returns the train state and the saved config."""
    # our own file: it holds numpy / python RNG states, which weights_only loading rejects
    payload = torch.load(path, map_location="cpu", weights_only=False)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in payload["trainable"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    set_rng_state(payload["rng"])
    return TrainState(**payload["train_state"]), payload.get("config", {})


def export_backbone(model, path: str | os.PathLike) -> Path:
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


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any], ignore: tuple[str, ...]) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not k.startswith(ignore))


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
