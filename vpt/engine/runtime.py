"""Runtime setup of a run: device, CPU threads and allocator, precision (autocast), seeds.

Multi-process (torchrun) setup is :mod:`.distributed` (``init_distributed``), which picks the device here."""
from __future__ import annotations

import contextlib
import random
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ..cpu import retain_freed_memory, set_cpu_threads
from ..errors import ConfigError

AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


def to_plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from (seed, epoch, ...): independent streams, no dependence on earlier RNG use."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """``trainer.device``; ``local_rank`` (torchrun) picks ``cuda:local_rank`` for auto / cuda."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if local_rank is not None and device.type == "cuda":
        device = torch.device("cuda", local_rank)
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
