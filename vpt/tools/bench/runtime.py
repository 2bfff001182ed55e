"""Where and how the benchmark runs: device, precision, autocast, the machine's description, GPU peak TFLOP/s,
the clocks and memory probes the measurements read, and what every worker process does first and how it
times its contenders (shared by the classification and detection workers)."""
from __future__ import annotations

import contextlib
import gc
import os
import platform
import statistics
import sys
import threading
import time
from typing import Any, Callable

import torch

# Dense bf16 tensor-core peaks (TFLOP/s) used for model FLOPs utilisation when --peak-tflops is not given.
GPU_PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
                        "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0, "V100": 125.0}


# ---------------------------------------------------------------------------------------------------------
# environment
# ---------------------------------------------------------------------------------------------------------
def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_bf16() -> bool:
    """bf16 arithmetic in hardware (AVX512-BF16 or AMX), so bf16 autocast is a speed-up, not an emulation."""
    flags = cpu_flags()
    if flags:
        return bool({"avx512_bf16", "amx_bf16"} & flags)
    return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("vpt-bench: --device cuda but torch.cuda.is_available() is False")
    return device


def resolve_precision(precision: str, device: str) -> str:
    if precision != "auto":
        return precision
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def autocast(device: str, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device, dtype=dtype)


def environment(device: str) -> dict[str, Any]:
    env = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cpu_bf16": cpu_has_bf16()}
    try:
        import timm

        env["timm"] = timm.__version__
    except ImportError:
        pass
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["gpu_capability"] = list(torch.cuda.get_device_capability())
    return env


def default_peak_tflops(device: str, precision: str) -> float | None:
    """Dense bf16 peak of a known GPU (fp32 is not tensor-core math, so no default there)."""
    if device != "cuda" or precision == "fp32":
        return None
    name = torch.cuda.get_device_name()
    for key, value in GPU_PEAK_BF16_TFLOPS.items():  # more specific names first
        if key in name:
            return value
    return None


# ---------------------------------------------------------------------------------------------------------
# timing and memory
# ---------------------------------------------------------------------------------------------------------
class Timer:
    """Per-call wall time. CUDA: events around each call, one synchronisation at the end (no per-step
    host sync); CPU: ``perf_counter``."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.cpu_times: dict[str, list[float]] = {}
        self.events: dict[str, list[tuple[Any, Any]]] = {}

    def run(self, name: str, fn: Callable[[], Any], record: bool = True) -> None:
        if self.device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            if record:
                self.events.setdefault(name, []).append((start, end))
        else:
            t0 = time.perf_counter()
            fn()
            if record:
                self.cpu_times.setdefault(name, []).append(time.perf_counter() - t0)

    def times(self) -> dict[str, list[float]]:
        if self.device == "cuda":
            torch.cuda.synchronize()
            return {k: [s.elapsed_time(e) / 1000.0 for s, e in v] for k, v in self.events.items()}
        return dict(self.cpu_times)


def time_alternating(contenders: dict[str, Callable[[], None]], spec: dict[str, Any], device: str) -> dict[str, list[float]]:
    """Per-call times of each contender, called in turn round after round, so machine noise hits all alike."""
    timer = Timer(device)
    for i in range(spec["warmup"] + spec["steps"]):
        for name, fn in contenders.items():
            timer.run(name, fn, i >= spec["warmup"])
    return timer.times()


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def ru_maxrss_bytes() -> int:
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class PeakRSS:
    """Peak resident set size while active, polled by a thread (every ``interval`` s)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        import psutil

        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


# ---------------------------------------------------------------------------------------------------------
# what every worker does (classification and detection alike)
# ---------------------------------------------------------------------------------------------------------
def prepare_worker(spec: dict[str, Any]) -> None:
    """A worker process's first step, before it builds anything: seed, thread count, CPU allocator."""
    torch.manual_seed(spec.get("seed", 0))
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    if spec["device"] == "cpu" and spec.get("cpu_allocator", "retain") == "retain":
        from ...cpu import retain_freed_memory

        retain_freed_memory()


def time_with_peak_memory(contenders, spec: dict[str, Any], device: str) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Alternating per-call times plus the peak memory above the allocation / RSS just before the first call.
    CUDA: ``max_memory_allocated``; CPU: peak RSS polled by a thread, cross-checked with ``getrusage``."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_alloc = torch.cuda.memory_allocated()
        monitor = contextlib.nullcontext()
    else:
        base_rss, base_ru = rss_bytes(), ru_maxrss_bytes()
        monitor = PeakRSS()
    with monitor:
        times = time_alternating(contenders, spec, device)  # synchronises on CUDA
    if device == "cuda":
        peak_total = torch.cuda.max_memory_allocated()
        return times, dict(peak_mem_bytes=peak_total - base_alloc, peak_mem_total_bytes=peak_total,
                           baseline_mem_bytes=base_alloc, memory_kind="cuda max_memory_allocated")
    ru_peak = ru_maxrss_bytes()
    peak = monitor.peak
    if ru_peak > base_ru:  # the process high-water mark rose during the steps: a peak the poller may have missed
        peak = max(peak, ru_peak)
    return times, dict(peak_mem_bytes=peak - base_rss, peak_mem_total_bytes=peak, baseline_mem_bytes=base_rss,
                       memory_kind="peak RSS above pre-step baseline")
