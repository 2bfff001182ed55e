"""What a run saves to continue and to hand on: resume state, best/last prompt files, exported backbone weights."""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from ..files import (RESTART_FIX, ResumeStateError, atomic_save_safetensors, capture_rng_states, load_state,
                     restore_rng_states, save_state, state_paths)
from ..run_files import LEGACY_RESUME, RESUME_STATE

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


def resume_state_exists(run_dir: Path) -> bool:
    return any(p.exists() for p in state_paths(run_dir))


def save_resume_state(run_dir: Path, state: TrainState, model, optimizer, scheduler, config: Mapping[str, Any]) -> None:
    """``resume.safetensors`` (the model's trainable tensors) + ``resume.json`` (optimiser, schedule, RNG, history):
    no pickle; each part written atomically, and a mix of two saves is detected on load."""
    meta = {"train_state": vars(state), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": capture_rng_states(), "config": dict(config)}
    save_state(run_dir / RESUME_STATE, model.trainable_state_dict(), meta)


def load_resume_state(run_dir: Path, model, optimizer, scheduler) -> tuple[TrainState, dict[str, Any]]:
    """Restore model tensors, optimiser, schedule and RNG; returns the train state and the saved config."""
    tensors, meta = load_state(run_dir / RESUME_STATE)
    params = dict(model.named_parameters())
    mismatched = sorted(set(tensors) ^ {k for k, p in params.items() if p.requires_grad})
    if mismatched:
        raise ResumeStateError(f"resume state in {str(run_dir)!r} holds other tensors than this model trains "
                               f"({mismatched[:4]}): it was made by another prompt method or backbone; "
                               f"{RESTART_FIX}")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)
    optimizer.load_state_dict(meta["optimizer"])
    scheduler.load_state_dict(meta["scheduler"])
    restore_rng_states(meta["rng"])
    return TrainState(**meta["train_state"]), meta.get("config", {})


def refuse_legacy_resume_state(run_dir: Path) -> None:
    legacy = run_dir / LEGACY_RESUME  # vpt < 0.2 pickled it; never read (a crafted pickle runs code)
    if legacy.exists() and not resume_state_exists(run_dir):
        raise ResumeStateError(f"{str(legacy)!r} is a resume state of vpt < 0.2, a pickle, which vpt no longer reads "
                               f"(loading a pickle can run code); {RESTART_FIX}")


def export_backbone(model, path: str | os.PathLike) -> Path:
    """Save the (possibly fine-tuned) backbone weights, loadable with ``create_backbone(..., pretrained=path)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(path, {k: v.detach().cpu().contiguous() for k, v in model.backbone.model.state_dict().items()})
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
