"""CPU runtime settings for training: thread count and the C allocator's handling of freed memory."""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import os
import sys
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

# glibc mallopt(3) parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1

_freed_memory_retained = False
_TORCH_DEFAULT_THREADS = torch.get_num_threads()  # at import, before any run set its own count


@dataclass(frozen=True)
class ThreadChoice:
    """How many intra-op threads a CPU run uses, and why."""

    threads: int | None  # None: leave torch's setting alone (an explicit OMP_NUM_THREADS, or nothing to go on)
    cores: int           # cores this process may run on (its affinity)
    load: float | None   # the 1-minute load average on those cores (scaled from the machine's), None if unknown
    busy: bool           # other processes keep cores busy, so fewer threads than cores are used

    def message(self) -> str:
        plural = "s" if self.threads != 1 else ""
        return (f"machine busy: load {self.load:.1f} on {self.cores} cores, using {self.threads} thread{plural}; "
                "set trainer.cpu_threads=N to override")


def available_cores() -> int:
    """Cores this process may run on (``sched_getaffinity``: a container or taskset limit), else all of them."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def load_on_cores(cores: int) -> float | None:
    """The 1-minute load average, scaled to ``cores`` of the machine's CPUs (None where it is unknown)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    return load * cores / max(os.cpu_count() or cores, cores)


def choose_cpu_threads(requested: int | None = None, cores: int | None = None, load: float | None = None,
                       default: int | None = None, environ: dict | None = None) -> ThreadChoice:
    """The thread count for a CPU run: ``requested`` (``trainer.cpu_threads``) when given; else as many threads as
    there are idle cores: ``round(cores - load)``, at least 1, at most ``default`` (torch's, i.e. all cores).

    Every argument but ``requested`` is measured when not given (injectable for tests): ``cores`` from the
    affinity mask, ``load`` from the load average, ``default`` from torch's count at import. An
    ``OMP_NUM_THREADS`` in ``environ`` is an explicit choice too: torch's setting from it is kept.

    Why: PyTorch's OpenMP threads spin-wait for each other; with more threads than free cores, every parallel
    region waits for a thread the OS has descheduled (measured: the 30-second quickstart took 11 minutes on 2
    cores shared with 3 other jobs). One thread per idle core keeps the run near its unloaded speed.
    """
    cores = available_cores() if cores is None else max(1, int(cores))
    if requested:
        return ThreadChoice(int(requested), cores, load, False)
    environ = os.environ if environ is None else environ
    if environ.get("OMP_NUM_THREADS"):
        return ThreadChoice(None, cores, load, False)
    default = _TORCH_DEFAULT_THREADS if default is None else int(default)
    most = max(1, min(cores, default))
    load = load_on_cores(cores) if load is None else float(load)
    if load is None:
        return ThreadChoice(most, cores, None, False)
    threads = max(1, min(most, math.floor(cores - load + 0.5)))
    return ThreadChoice(threads, cores, load, threads < most)


def set_cpu_threads(count: int | None, device: torch.device | str) -> ThreadChoice | None:
    """Set torch's intra-op threads for a CPU run (:func:`choose_cpu_threads`); ``count`` (``trainer.cpu_threads``):
    that many, ``None``/0: one per idle core, said in one line when other processes keep cores busy."""
    if torch.device(device).type != "cpu":
        return None
    choice = choose_cpu_threads(count)
    if choice.threads:
        torch.set_num_threads(choice.threads)
    if choice.busy:
        log.warning("%s", choice.message())
    return choice


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the OS after every tensor.

    A training step allocates its activations (hundreds of MB) anew each step. By default glibc serves blocks
    above 32 MB with ``mmap`` and returns them with ``munmap`` when freed, so every step pays a page fault per
    4 KB page of activations (measured: 8-10% of a ViT-S VPT-deep step on 2 cores; no-grad inference does not
    suffer, it frees blocks as it goes and reuses them). With ``mmap`` off and trimming off, freed memory stays
    in the process's heap and the next step reuses it: the same effect as the jemalloc / tcmalloc that
    PyTorch's CPU tuning guide recommends, without preloading a library. The process's peak memory is
    unchanged; memory is only not returned to the OS until the process exits.

    Process-wide and idempotent. Returns True when applied (Linux with glibc), False elsewhere (macOS, musl),
    where it changes nothing.
    """
    global _freed_memory_retained
    if _freed_memory_retained:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - present only in glibc; AttributeError elsewhere
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _freed_memory_retained = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _INT_MAX))
    return _freed_memory_retained


def freed_memory_retained() -> bool:
    """Whether :func:`retain_freed_memory` is in effect in this process."""
    return _freed_memory_retained
