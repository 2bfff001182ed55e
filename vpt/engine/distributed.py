"""Multi-process training under ``torchrun``: the process group, per-rank data shards, rank-0-only files.

    torchrun --nproc_per_node=N vpt-train ...        # N processes on this machine (NCCL on GPUs, gloo on CPU)

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them (plain ``vpt-train``) nothing here
changes a run. ``trainer.batch_size`` is the *global* batch: every step draws the same global batch on every
rank (same permutation, seeded by (seed, epoch)) and rank r trains on its r-th contiguous slice, about
``batch_size / world_size`` images. Gradients are averaged by DistributedDataParallel, with each rank's loss
weighted by its share of the global batch, so a step equals the single-process step on the same global batch
up to float summation order. lr scaling (``optim.lr_scaling=linear``) uses the global batch. Rank 0 alone
evaluates, logs and writes files; every rank reads the same resume state.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping

import torch
import torch.distributed as dist

from ..errors import ConfigError
from .runtime import resolve_device

log = logging.getLogger(__name__)
TIMEOUT_ENV = "VPT_DIST_TIMEOUT_MIN"  # minutes a rank waits in a collective (others wait while rank 0 evaluates)
DEFAULT_TIMEOUT_MIN = 60
_OWN_GROUP = False  # whether init_distributed made the process group


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context_from_env(env: Mapping[str, str] | None = None) -> DistContext:
    """The ranks torchrun sets in ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (absent: a single process)."""
    env = os.environ if env is None else env
    try:
        values = {key: int(env.get(key, default)) for key, default in
                  (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"))}
    except ValueError:
        raise ConfigError("RANK / WORLD_SIZE / LOCAL_RANK must be integers; start multi-process runs with "
                          "torchrun --nproc_per_node=N vpt-train ...") from None
    if values["WORLD_SIZE"] < 1 or not 0 <= values["RANK"] < values["WORLD_SIZE"]:
        raise ConfigError(f"RANK={values['RANK']} does not fit WORLD_SIZE={values['WORLD_SIZE']}; start multi-process "
                          "runs with torchrun --nproc_per_node=N vpt-train ...")
    return DistContext(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])


def export_slurm_ranks() -> bool:
    """``hydra/launcher=slurm`` with several tasks (tasks_per_node / nodes > 1): each submitit task is one rank;
    write its rank, world size and rendezvous address into torchrun's variables. Nothing when torchrun set them."""
    if "RANK" in os.environ or os.environ.get("SUBMITIT_EXECUTOR") != "slurm" \
            or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return False
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)  # each rank picks cuda:LOCAL_RANK
    return True


def init_distributed(device_name: str) -> tuple[DistContext, torch.device]:
    """This process's rank and device; under torchrun (or a multi-task Slurm job of the submitit launcher)
    also joins the process group (once per process).

    Each rank uses ``cuda:LOCAL_RANK`` on GPUs (backend NCCL), else the CPU (backend gloo).
    """
    export_slurm_ranks()
    context = context_from_env()
    if not context.enabled:
        return context, resolve_device(device_name)
    if device_name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"trainer.device={device_name} under torchrun: each rank picks cuda:LOCAL_RANK itself; "
                          "use trainer.device=auto, cuda or cpu (choose GPUs with CUDA_VISIBLE_DEVICES)")
    device = resolve_device(device_name, local_rank=context.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    global _OWN_GROUP
    if not dist.is_initialized():
        _OWN_GROUP = True  # shut down by shutdown(); a group the caller made stays theirs
        minutes = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_MIN))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=minutes))
    if not context.is_main:  # only rank 0 logs; the others still say what went wrong
        logging.getLogger().setLevel(logging.WARNING)
    return context, device


def shutdown() -> None:
    """Leave the process group init_distributed joined (not one the caller set up)."""
    global _OWN_GROUP
    if _OWN_GROUP and dist.is_initialized():
        dist.destroy_process_group()
    _OWN_GROUP = False


def check_global_batch(batch_size: int, context: DistContext) -> None:
    if batch_size % context.world_size:
        raise ConfigError(f"trainer.batch_size={batch_size} is the global batch and must split evenly over "
                          f"{context.world_size} processes; use a multiple of {context.world_size}")


def wrap_model(model: torch.nn.Module, context: DistContext, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel over the trainable parameters (frozen ones are skipped by DDP itself)."""
    if not context.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   **no_forward_buffer_sync())


def no_forward_buffer_sync() -> dict[str, bool]:
    """DDP's option for no buffer broadcast in forward: buffers of a frozen backbone never change, and a forward
    without collectives lets rank 0 evaluate alone. ``forward_sync_buffers=False`` where torch has it (it
    deprecates ``broadcast_buffers`` with a FutureWarning; the buffers are still synced once at init, which
    changes nothing here: every rank builds the same frozen backbone)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def broadcast_text(text: str, context: DistContext, device: torch.device) -> str:
    """Rank 0's ``text`` on every rank (bytes in a tensor: no pickle, unlike broadcast_object_list)."""
    if not context.enabled:
        return text
    data = torch.tensor(list(text.encode("utf-8")) if context.is_main else [], dtype=torch.uint8)
    length = torch.tensor([len(data)], dtype=torch.long, device=device)
    dist.broadcast(length, src=0)
    buffer = data.to(device) if context.is_main else torch.empty(int(length), dtype=torch.uint8, device=device)
    dist.broadcast(buffer, src=0)
    return bytes(buffer.cpu().tolist()).decode("utf-8")


def sum_over_ranks(sums: Mapping[str, torch.Tensor | float], seen: int, context: DistContext,
                   device: torch.device) -> tuple[dict[str, float], int]:
    """Running epoch sums and the image count added up over all ranks (float64: exact for counts)."""
    keys = sorted(sums)
    values = [float(sums[key]) for key in keys] + [float(seen)]
    if not context.enabled:
        return dict(zip(keys, values[:-1])), seen
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    totals = total.tolist()
    return dict(zip(keys, totals[:-1])), int(totals[-1])


def shard_loader(loader, context: DistContext):
    """The training loader's per-rank view (each vpt loader kind offers ``sharded(rank, world_size)``)."""
    if not context.enabled:
        return loader
    if not hasattr(loader, "sharded"):
        raise ConfigError(f"{type(loader).__name__} cannot be split over processes; multi-process training needs "
                          "a vpt loader (data.loaders of a vpt task)")
    return loader.sharded(context.rank, context.world_size)
