"""``vpt-bench``: throughput, memory and prompt-file size of every tuning method, plus two comparisons.

For one backbone / image size / batch size / precision / device it measures, per method (linear, shallow,
deep, pad, full by default):

* train images/s: one step = ``zero_grad`` + forward (autocast) + cross-entropy + backward + SGD step;
* inference images/s: no-grad eval forward;
* step / forward: train-step time over no-grad forward time (train steps and forwards alternate, so
  machine noise hits both alike);
* peak memory: CPU: peak RSS above the process's RSS just before the first step (polled by a thread, and
  cross-checked with ``getrusage``); CUDA: ``torch.cuda.max_memory_allocated`` (total and above the
  allocation before the first step). Every method runs in its own subprocess so methods do not pollute
  each other's memory;
* trainable parameters and prompt-file bytes (``save_prompt`` into a temporary directory).

Comparisons, each in its own subprocess, contenders alternating step by step:

* yardstick: a plain timm-based VPT-deep (timm blocks, prompts concatenated before each block, fp32)
  against vpt's VPT-deep at ``--yardstick-precision`` (``auto``: bf16 autocast where the CPU / GPU has bf16
  arithmetic);
* multi-task: a batch mixing ``--tasks`` tasks (VPT-deep prompt files with different random prompts and
  heads, loaded into one :class:`vpt.PromptBank`) against a single-task batch through the same bank.

The table goes to stdout, everything to ``--out`` (JSON). Timings use the median step (robust to other
processes stealing the CPU); the raw per-step times are in the JSON.

Example (the issue's CPU run): ``vpt-bench --backbone vit_small_patch16_224 --img-size 224 --batch-size 32
--precision fp32 --device cpu --warmup 2 --steps 3 --out results.json``
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

DEFAULT_METHODS = ("linear", "shallow", "deep", "pad", "full")
TOKEN_METHODS = ("shallow", "deep")
PIXEL_METHODS = ("pad", "patch", "random_patch")

# Dense bf16 tensor-core peaks (TFLOP/s) used for model FLOPs utilisation when --peak-tflops is not given.
GPU_PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
                        "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0, "V100": 125.0}

# The targets: (key, description, comparison, threshold).
TARGETS = {
    "yardstick": ("vpt VPT-deep train throughput / plain timm VPT-deep (fp32)", ">=", 1.9),
    "step_forward_cpu": ("VPT-deep train step / no-grad forward, CPU fp32", "<=", 2.1),
    "step_forward_gpu": ("VPT-deep train step / no-grad forward, GPU bf16", "<=", 2.3),
    "memory_cpu": ("VPT-deep peak RSS above baseline / full fine-tuning's, CPU fp32", "<=", 0.8),
    "memory_gpu": ("VPT-deep max memory allocated / full fine-tuning's, GPU bf16", "<=", 0.7),
    "multitask": ("8-task mixed batch throughput / single-task batch", ">=", 0.9),
    "gpu_throughput": ("ViT-B/16 224 VPT-deep bf16 train images/s on GPU", ">=", 3000.0),
    "pipeline": ("VPT-deep train throughput fed by vpt's in-memory data pipeline / data already on the device",
                 ">=", 0.9),
}


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
# models
# ---------------------------------------------------------------------------------------------------------
def backbone_kwargs(spec: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(spec.get("backbone_kwargs") or {})
    name = spec["backbone"]
    if not name.startswith("open_clip:"):
        kwargs.setdefault("img_size", spec["img_size"])
        if spec.get("patch_size"):
            kwargs.setdefault("patch_size", spec["patch_size"])
    return kwargs


def build_backbone(spec: dict[str, Any]):
    import vpt

    return vpt.create_backbone(spec["backbone"], pretrained=False, **backbone_kwargs(spec))


def prompt_config(spec: dict[str, Any], method: str) -> dict[str, Any]:
    cfg: dict[str, Any] = {"method": method}
    if method in TOKEN_METHODS:
        cfg["length"] = spec["prompt_length"]
    if method in PIXEL_METHODS:
        cfg["size"] = spec["pad_size"]
    return cfg


def build_model(spec: dict[str, Any], method: str, backbone=None):
    import vpt

    backbone = backbone if backbone is not None else build_backbone(spec)
    return vpt.PromptedModel(backbone, prompt_config(spec, method), num_classes=spec["num_classes"])


def make_optimizer(params, device: str):
    # VPT's optimiser (SGD + momentum); foreach: one multi-tensor kernel instead of a loop over tensors.
    return torch.optim.SGD(params, lr=1e-3, momentum=0.9, foreach=True)


def make_batch(spec: dict[str, Any], device: str):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(spec["batch_size"], 3, spec["img_size"], spec["img_size"], generator=g)
    labels = torch.randint(0, spec["num_classes"], (spec["batch_size"],), generator=g)
    return images.to(device), labels.to(device)  # data lives on the device: the benchmark measures the model


def train_on_fn(model, optimizer, device: str, precision: str, compiled=None) -> Callable[[Any, Any], None]:
    """``step(images, labels)``: zero_grad + forward (autocast) + cross-entropy + backward + optimiser step."""
    import torch.nn.functional as F

    forward = compiled if compiled is not None else model

    def step(images, labels) -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            logits = forward(images)
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()

    return step


def train_step_fn(model, optimizer, images, labels, device: str, precision: str, compiled=None):
    """A train step on one fixed batch (already on the device)."""
    train_on = train_on_fn(model, optimizer, device, precision, compiled)
    return lambda: train_on(images, labels)


def forward_fn(model, images, device: str, precision: str, compiled=None):
    forward = compiled if compiled is not None else model

    def run() -> None:
        model.eval()
        with torch.no_grad(), autocast(device, precision):
            forward(images)
        model.train()

    return run


class PlainTimmVPT(nn.Module):
    """The yardstick: VPT-deep written directly on a timm ViT, fp32, nothing else.

    ``x = patch_embed; _pos_embed; for each block: x = cat(prefix, prompt[i].expand(B), x[after old prompts]);
    x = block(x); norm; head on the class token``.
    """

    def __init__(self, vit: nn.Module, prompt_length: int, num_classes: int) -> None:
        super().__init__()
        self.vit = vit
        vit.requires_grad_(False).eval()
        depth, dim = len(vit.blocks), vit.embed_dim
        self.prompts = nn.Parameter(torch.empty(depth, prompt_length, dim).uniform_(-0.1, 0.1))
        self.head = nn.Linear(dim, num_classes)

    def train(self, mode: bool = True) -> "PlainTimmVPT":
        super().train(mode)
        self.vit.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        vit, n = self.vit, self.vit.num_prefix_tokens
        x = vit._pos_embed(vit.patch_embed(images))
        b, p = x.shape[0], self.prompts.shape[1]
        for i, block in enumerate(vit.blocks):
            x = torch.cat([x[:, :n], self.prompts[i].expand(b, -1, -1), x[:, n + (p if i else 0):]], dim=1)
            x = block(x)
        x = vit.norm(x)
        return self.head(x[:, 0])


def prompt_file_bytes(model) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        path = model.save_prompt(Path(tmp) / "prompt")
        sizes = {p.name: p.stat().st_size for p in Path(path).iterdir()}
    return {"prompt_file_bytes": sum(sizes.values()), "prompt_weights_bytes": sizes.get("prompt.safetensors", 0)}


def flops_per_image(fn: Callable[[], Any], batch_size: int) -> float:
    """FLOPs of one call of ``fn`` counted by ``torch.utils.flop_counter`` (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / batch_size


# ---------------------------------------------------------------------------------------------------------
# workers (each runs in its own process)
# ---------------------------------------------------------------------------------------------------------
def _prepare(spec: dict[str, Any]) -> None:
    torch.manual_seed(spec.get("seed", 0))
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    if spec["device"] == "cpu" and spec.get("cpu_allocator", "retain") == "retain":
        from .cpu import retain_freed_memory

        retain_freed_memory()


def time_alternating(contenders: dict[str, Callable[[], None]], spec: dict[str, Any], device: str) -> dict[str, list[float]]:
    """Per-call times of each contender, called in turn round after round, so machine noise hits all alike."""
    timer = Timer(device)
    for i in range(spec["warmup"] + spec["steps"]):
        for name, fn in contenders.items():
            timer.run(name, fn, i >= spec["warmup"])
    return timer.times()


def worker_method(spec: dict[str, Any]) -> dict[str, Any]:
    """One method: train / inference throughput, step/forward ratio, peak memory, parameters, file size."""
    _prepare(spec)
    device, precision, method = spec["device"], spec["precision"], spec["method"]
    model = build_model(spec, method).to(device)
    model.train()
    images, labels = make_batch(spec, device)
    optimizer = make_optimizer(model.trainable_parameters(), device)
    compiled = torch.compile(model) if spec.get("compile") else None
    step = train_step_fn(model, optimizer, images, labels, device, precision, compiled)
    forward = forward_fn(model, images, device, precision, compiled)
    result: dict[str, Any] = {"method": method, "trainable_params": model.num_trainable_params,
                              "total_params": model.param_summary()["total"]}
    result.update(prompt_file_bytes(model))

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
        times = time_alternating({"train": step, "forward": forward}, spec, device)  # synchronises on CUDA
    if device == "cuda":
        peak_total = torch.cuda.max_memory_allocated()
        result.update(peak_mem_bytes=peak_total - base_alloc, peak_mem_total_bytes=peak_total,
                      baseline_mem_bytes=base_alloc, memory_kind="cuda max_memory_allocated")
    else:
        ru_peak = ru_maxrss_bytes()
        peak = monitor.peak
        if ru_peak > base_ru:  # the process high-water mark rose during the steps: a peak the poller may have missed
            peak = max(peak, ru_peak)
        result.update(peak_mem_bytes=peak - base_rss, peak_mem_total_bytes=peak, baseline_mem_bytes=base_rss,
                      memory_kind="peak RSS above pre-step baseline")
    bs = spec["batch_size"]
    train_t, fwd_t = median(times["train"]), median(times["forward"])
    result.update(train_step_s=train_t, forward_s=fwd_t, train_img_s=bs / train_t, infer_img_s=bs / fwd_t,
                  step_forward_ratio=train_t / fwd_t, train_times_s=times["train"], forward_times_s=times["forward"])
    if spec.get("flops"):  # counted on the eager model (the counter does not see inside compiled graphs)
        try:
            result["train_flops_per_image"] = flops_per_image(
                train_step_fn(model, optimizer, images, labels, device, precision), bs)
            result["forward_flops_per_image"] = flops_per_image(forward_fn(model, images, device, precision), bs)
        except Exception as err:  # keep the timings; say why there is no MFU
            result["flops_error"] = f"{type(err).__name__}: {err}"
        peak_tflops = spec.get("peak_tflops")
        if peak_tflops and result.get("train_flops_per_image"):
            result["mfu"] = result["train_flops_per_image"] * result["train_img_s"] / (peak_tflops * 1e12)
    return result


def worker_yardstick(spec: dict[str, Any]) -> dict[str, Any]:
    """vpt VPT-deep (at the yardstick precision) vs the plain timm implementation (fp32), alternating steps."""
    _prepare(spec)
    device, precision = spec["device"], spec["yardstick_precision"]
    model = build_model(spec, "deep").to(device).train()
    vit = model.backbone.model  # the same frozen timm ViT (weights shared, never modified)
    if not hasattr(vit, "_pos_embed"):
        return {"skipped": f"the plain yardstick needs a timm VisionTransformer, not {type(vit).__name__}"}
    plain = PlainTimmVPT(vit, spec["prompt_length"], spec["num_classes"]).to(device).train()
    images, labels = make_batch(spec, device)
    contenders = {f"vpt_{precision}": train_step_fn(model, make_optimizer(model.trainable_parameters(), device),
                                                    images, labels, device, precision)}
    plain_opt = make_optimizer([p for p in plain.parameters() if p.requires_grad], device)
    contenders["plain_fp32"] = train_step_fn(plain, plain_opt, images, labels, device, "fp32")
    if precision != "fp32" and spec.get("plain_at_precision", True):  # how much of the gain is precision alone
        contenders[f"plain_{precision}"] = train_step_fn(plain, plain_opt, images, labels, device, precision)
    times = time_alternating(contenders, spec, device)
    bs = spec["batch_size"]
    out: dict[str, Any] = {"vpt_precision": precision, "times_s": times,
                           "img_s": {k: bs / median(v) for k, v in times.items()}}
    vpt_key = f"vpt_{precision}"
    out["speedup_vs_plain_fp32"] = out["img_s"][vpt_key] / out["img_s"]["plain_fp32"]
    if f"plain_{precision}" in out["img_s"] and precision != "fp32":
        out[f"plain_{precision}_vs_plain_fp32"] = out["img_s"][f"plain_{precision}"] / out["img_s"]["plain_fp32"]
        out[f"speedup_vs_plain_{precision}"] = out["img_s"][vpt_key] / out["img_s"][f"plain_{precision}"]
    return out


def worker_multitask(spec: dict[str, Any]) -> dict[str, Any]:
    """A batch mixing ``tasks`` VPT-deep tasks vs a single-task batch through one PromptBank (no-grad)."""
    import vpt

    _prepare(spec)
    device, precision, num_tasks = spec["device"], spec["precision"], spec["tasks"]
    backbone = build_backbone(spec)
    bank = vpt.PromptBank(backbone)
    with tempfile.TemporaryDirectory() as tmp:
        for t in range(num_tasks):
            torch.manual_seed(1000 + t)  # different random prompts and heads per task
            model = build_model(spec, "deep", backbone=backbone)
            bank.add_task(f"task{t}", model.save_prompt(Path(tmp) / f"task{t}"))
    bank.to(device)
    images, _ = make_batch(spec, device)
    bs = spec["batch_size"]
    g = torch.Generator().manual_seed(0)
    mixed = torch.arange(bs) % num_tasks
    mixed = mixed[torch.randperm(bs, generator=g)].to(device)
    single = torch.zeros(bs, dtype=torch.long, device=device)

    def run(index):
        def fn() -> None:
            with torch.no_grad(), autocast(device, precision):
                bank(images, index)

        return fn

    contenders = {"mixed": run(mixed), "single": run(single)}
    times = time_alternating(contenders, spec, device)
    img_s = {k: bs / median(v) for k, v in times.items()}
    return {"tasks": num_tasks, "precision": precision, "times_s": times, "img_s": img_s,
            "mixed_vs_single": img_s["mixed"] / img_s["single"]}


def pipeline_dataset(spec: dict[str, Any], data_config: dict[str, Any]):
    """The in-memory training set of the pipeline row: an ImageFolder (``--pipeline-data``, decoded once into
    the uint8 cache) or random uint8 images at the backbone's input size (same cost: nothing depends on pixels)."""
    from vpt.data import build_data
    from vpt.data.datasets import CachedImageDataset
    from vpt.data.preprocess import Preprocess

    count = spec["pipeline_images"]
    if spec.get("pipeline_data"):
        bundle = build_data({"name": "imagefolder", "root": spec["pipeline_data"], "train_size": count,
                             "val_fraction": 0, "cache": True, "augment": "flip_crop"}, data_config)
        return bundle.train
    preprocess = Preprocess.from_data_config(data_config)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, *preprocess.size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, spec["num_classes"], (count,), generator=g)
    return CachedImageDataset(images, labels, preprocess, augment="flip_crop")


def worker_pipeline(spec: dict[str, Any]) -> dict[str, Any]:
    """VPT-deep training fed by vpt's data pipeline vs the same steps on a batch already on the device.

    The pipeline is what ``vpt-train`` uses for small datasets: a uint8 copy of the decoded images on the
    device, and per batch one index_select, crop + flip augmentation and normalisation, batched on the device
    (:class:`vpt.data.loaders.DeviceBatchLoader`). Both contenders alternate step by step in one process.
    """
    from vpt.data.loaders import DeviceBatchLoader

    _prepare(spec)
    device, precision, bs = spec["device"], spec["precision"], spec["batch_size"]
    model = build_model(spec, "deep").to(device).train()
    dataset = pipeline_dataset(spec, model.data_config)
    if len(dataset) < bs:
        return {"skipped": f"--pipeline-images {len(dataset)} is smaller than the batch ({bs})"}
    loader = DeviceBatchLoader(dataset, bs, shuffle=True, device=device, seed=0, drop_last=True)

    def batches():
        while True:
            yield from loader

    stream = batches()
    train_on = train_on_fn(model, make_optimizer(model.trainable_parameters(), device), device, precision)
    images, labels = make_batch(spec, device)
    contenders = {"on_device": lambda: train_on(images, labels), "pipeline": lambda: train_on(*next(stream))}
    times = time_alternating(contenders, spec, device)
    img_s = {k: bs / median(v) for k, v in times.items()}
    return {"precision": precision, "dataset_images": len(dataset), "data": spec.get("pipeline_data") or "random uint8",
            "dataset_device_bytes": loader.images.numel() * loader.images.element_size(), "times_s": times, "img_s": img_s,
            "pipeline_vs_on_device": img_s["pipeline"] / img_s["on_device"]}


WORKERS = {"method": worker_method, "yardstick": worker_yardstick, "multitask": worker_multitask,
           "pipeline": worker_pipeline}


def _fork_child(kind: str, spec: dict[str, Any], conn) -> None:
    try:
        conn.send(WORKERS[kind](spec))
    except BaseException as err:  # report, never hang the parent
        import traceback

        conn.send({"error": f"{kind} worker failed: {type(err).__name__}: {err}\n{traceback.format_exc()[-2000:]}"})
    finally:
        conn.close()


def run_worker(kind: str, spec: dict[str, Any], timeout: float | None = None, start: str = "spawn") -> dict[str, Any]:
    """Run one worker in its own process and return its result (or an ``error`` entry).

    ``spawn``: a fresh interpreter (``python -m vpt.bench --worker ...``), nothing shared with this process.
    ``fork``: a forked child of this process, which has imported torch but run no tensor op, so the child
    starts its own thread pool; it saves the ~5-15 s interpreter + torch import per worker. Either way each
    worker has its own address space, so the peak RSS of one method is not polluted by another's.
    """
    if start == "fork":
        import multiprocessing as mp

        ctx = mp.get_context("fork")
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_fork_child, args=(kind, spec, child), daemon=False)
        proc.start()
        child.close()
        result = None
        if parent.poll(timeout):
            try:
                result = parent.recv()
            except EOFError:
                result = None
        proc.join(5 if result is not None else 0.1)
        if proc.is_alive():
            proc.kill()
            proc.join()
        if result is None:
            return {"error": f"{kind} worker {'timed out' if proc.exitcode is None or proc.exitcode < 0 and timeout else 'died'}"
                             f" (exit code {proc.exitcode})"}
        return result
    cmd = [sys.executable, "-m", "vpt.bench", "--worker", kind, "--spec", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"{kind} worker timed out after {timeout} s"}
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
    return {"error": f"{kind} worker failed (exit {proc.returncode}): " + "\n".join(tail)}


# ---------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------
def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}"


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets that this run's device and precision speak to."""
    cfg, methods = results["config"], results["methods"]
    device, precision = cfg["device"], cfg["precision"]
    deep, full = methods.get("deep", {}), methods.get("full", {})
    found: list[tuple[str, float | None]] = []
    yard = results.get("yardstick") or {}
    if "speedup_vs_plain_fp32" in yard:
        found.append(("yardstick", yard["speedup_vs_plain_fp32"]))
    if "step_forward_ratio" in deep:
        if device == "cpu" and precision == "fp32":
            found.append(("step_forward_cpu", deep["step_forward_ratio"]))
        if device == "cuda" and precision == "bf16":
            found.append(("step_forward_gpu", deep["step_forward_ratio"]))
    if "peak_mem_bytes" in deep and "peak_mem_bytes" in full:
        if device == "cpu" and precision == "fp32":
            found.append(("memory_cpu", deep["peak_mem_bytes"] / max(full["peak_mem_bytes"], 1)))
        if device == "cuda" and precision == "bf16":
            found.append(("memory_gpu", deep["peak_mem_total_bytes"] / max(full["peak_mem_total_bytes"], 1)))
    multi = results.get("multitask") or {}
    if "mixed_vs_single" in multi:
        found.append(("multitask", multi["mixed_vs_single"]))
    pipe = results.get("pipeline") or {}
    if "pipeline_vs_on_device" in pipe:
        found.append(("pipeline", pipe["pipeline_vs_on_device"]))
    vit_b = cfg["backbone"].split(".")[0] == "vit_base_patch16_224" and cfg["img_size"] == 224
    if device == "cuda" and precision == "bf16" and "train_img_s" in deep:
        found.append(("gpu_throughput", deep["train_img_s"]))
    # the setting each target was stated for (the numbers are still reported for any other setting)
    cpu_setup = (cfg["backbone"].split(".")[0] == "vit_small_patch16_224" and cfg["img_size"] == 224
                 and cfg["batch_size"] == 32 and device == "cpu" and cfg["prompt_length"] == 50)
    gpu_setup = vit_b and device == "cuda"
    setup = {"yardstick": cpu_setup, "step_forward_cpu": cpu_setup, "memory_cpu": cpu_setup,
             "multitask": multi.get("tasks") == 8 and (cpu_setup or gpu_setup),
             "step_forward_gpu": device == "cuda", "memory_gpu": device == "cuda", "gpu_throughput": vit_b,
             "pipeline": gpu_setup and precision == "bf16"}
    out = []
    for key, value in found:
        description, op, threshold = TARGETS[key]
        ok = value is not None and (value >= threshold if op == ">=" else value <= threshold)
        out.append({"target": key, "description": description, "value": value, "op": op, "threshold": threshold,
                    "pass": bool(ok), "issue_setup": setup[key]})
    return out


def format_table(results: dict[str, Any]) -> str:
    cfg = results["config"]
    lines = [f"vpt-bench  backbone={cfg['backbone']}  img={cfg['img_size']}  batch={cfg['batch_size']}  "
             f"precision={cfg['precision']}  device={cfg['device']}  warmup={cfg['warmup']}  steps={cfg['steps']}  "
             f"threads={results['environment'].get('torch_threads')}"
             + (f"  cpu_allocator={cfg.get('cpu_allocator', 'system')}" if cfg["device"] == "cpu" else "")]
    mem_label = "peak GPU MB" if cfg["device"] == "cuda" else "peak RSS MB"
    header = (f"{'method':<8} {'trainable':>11} {'file bytes':>11} {'train img/s':>11} {'infer img/s':>11} "
              f"{'step/fwd':>8} {mem_label:>11} {'mem/full':>8}")
    lines += [header, "-" * len(header)]
    full_mem = (results["methods"].get("full") or {}).get("peak_mem_bytes")
    for name, r in results["methods"].items():
        if "error" in r:
            lines.append(f"{name:<8} ERROR: {r['error'].splitlines()[-1] if r['error'] else ''}")
            continue
        rel = f"{r['peak_mem_bytes'] / full_mem:.2f}" if full_mem else "-"
        lines.append(f"{name:<8} {r['trainable_params']:>11,} {r['prompt_file_bytes']:>11,} {r['train_img_s']:>11.2f} "
                     f"{r['infer_img_s']:>11.2f} {r['step_forward_ratio']:>8.2f} {_mb(r['peak_mem_bytes']):>11} {rel:>8}")
        if r.get("mfu") is not None:
            lines.append(f"{'':<8} train FLOPs/image {r['train_flops_per_image'] / 1e9:.1f} G, MFU {100 * r['mfu']:.1f}% "
                         f"of {cfg.get('peak_tflops')} TFLOP/s")
        if r.get("flops_error"):
            lines.append(f"{'':<8} FLOPs not counted: {r['flops_error'].splitlines()[0]}")
    def comparison(key: str, title: str, render: Callable[[dict[str, Any]], list[str]]) -> None:
        row = results.get(key)
        if row:
            lines.extend(render(row) if "img_s" in row else [f"{title}: {row.get('error') or row.get('skipped')}"])

    def yardstick_lines(yard: dict[str, Any]) -> list[str]:
        parts = ", ".join(f"{k} {v:.2f} img/s" for k, v in yard["img_s"].items())
        out = [f"yardstick (VPT-deep train, alternating steps): {parts}; "
               f"vpt/plain_fp32 = {yard['speedup_vs_plain_fp32']:.2f}x"]
        prec = yard["vpt_precision"]
        if f"plain_{prec}_vs_plain_fp32" in yard:
            out.append(f"  {prec} autocast alone makes plain {yard[f'plain_{prec}_vs_plain_fp32']:.2f}x faster; "
                       f"vpt/plain_{prec} = {yard[f'speedup_vs_plain_{prec}']:.2f}x")
        return out

    comparison("yardstick", "yardstick", yardstick_lines)
    comparison("multitask", "multi-task", lambda m: [
        f"multi-task bank ({m['tasks']} VPT-deep tasks, no-grad, {m['precision']}): mixed batch "
        f"{m['img_s']['mixed']:.2f} img/s, single-task batch {m['img_s']['single']:.2f} img/s, ratio {m['mixed_vs_single']:.2f}"])
    comparison("pipeline", "data pipeline", lambda p: [
        f"data pipeline (VPT-deep train, {p['dataset_images']} images in memory, crop+flip on the device, "
        f"{p['precision']}): {p['img_s']['pipeline']:.2f} img/s vs data already on the device "
        f"{p['img_s']['on_device']:.2f} img/s, ratio {p['pipeline_vs_on_device']:.2f}"])
    for t in results.get("targets", []):
        note = "" if t.get("issue_setup", True) else "  [not the issue's setting]"
        lines.append(f"target {t['target']:<16} {'PASS' if t['pass'] else 'FAIL'}  {t['value']:.3f} {t['op']} "
                     f"{t['threshold']}  ({t['description']}){note}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vpt-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backbone", default="vit_small_patch16_224", help="timm name (random init; pretrained=False)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--patch-size", type=int, default=None, help="override the backbone's patch size (tiny runs)")
    p.add_argument("--backbone-kwargs", type=json.loads, default=None,
                   help='extra timm.create_model kwargs as JSON, e.g. \'{"depth": 2}\'')
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16", "auto"], default="fp32",
                   help="precision of the per-method table; auto = bf16 autocast where the CPU/GPU has bf16 arithmetic")
    p.add_argument("--yardstick-precision", choices=["fp32", "bf16", "fp16", "auto"], default="auto",
                   help="vpt's precision in the yardstick comparison (the plain implementation is always fp32)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before measuring")
    p.add_argument("--steps", type=int, default=5, help="measured steps (the median is reported)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated tuning methods")
    p.add_argument("--prompt-length", type=int, default=50, help="prompt tokens for shallow / deep")
    p.add_argument("--pad-size", type=int, default=30, help="pixel prompt size for pad / patch / random_patch")
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--tasks", type=int, default=8, help="tasks in the multi-task bank row (0: skip)")
    p.add_argument("--no-yardstick", action="store_true", help="skip the plain timm VPT comparison")
    p.add_argument("--pipeline-images", type=int, default=0,
                   help="images in the in-memory dataset of the data-pipeline row (0: skip the row)")
    p.add_argument("--pipeline-data", default=None,
                   help="ImageFolder for the data-pipeline row (e.g. ../shared/data/cifar10); default: random uint8 images")
    p.add_argument("--no-plain-at-precision", action="store_true",
                   help="in the yardstick, skip timing the plain implementation at vpt's precision")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (per-method rows)")
    p.add_argument("--flops", action="store_true", help="count FLOPs per image (torch.utils.flop_counter); on by default on CUDA")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="device peak TFLOP/s at the run's precision for model FLOPs utilisation (default: known GPUs, bf16)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in every worker")
    p.add_argument("--cpu-allocator", choices=["retain", "system"], default="retain",
                   help="retain: glibc keeps freed memory for the next step, as vpt-train does on CPU "
                        "(vpt.cpu.retain_freed_memory); system: glibc's defaults")
    p.add_argument("--workers", choices=["auto", "fork", "spawn"], default="auto",
                   help="how each measurement gets its own process: fork (fast start; auto on CPU) or spawn "
                        "(fresh interpreter; auto on CUDA, where a forked CUDA context is unusable)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per worker process")
    p.add_argument("--out", default=None, help="write the JSON results here")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``vpt-bench``)."""
    run(argv)
    return 0


def run(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Parse ``argv``, run the benchmark, print the table; returns the results dict (None in a worker)."""
    args = build_parser().parse_args(argv)
    if args.worker:  # inside a spawned worker: run one measurement and print its JSON on the last line
        result = WORKERS[args.worker](json.loads(args.spec))
        sys.stdout.write("\n" + json.dumps(result) + "\n")
        sys.stdout.flush()
        return None

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    yard_precision = resolve_precision(args.yardstick_precision, device)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.pipeline_images > 0 and args.pipeline_data and not Path(args.pipeline_data).is_dir():
        raise SystemExit(f"vpt-bench: --pipeline-data {args.pipeline_data} is not a folder; pass an ImageFolder "
                         "(e.g. ../shared/data/cifar10) or leave it out for random uint8 images")
    import vpt

    unknown = [m for m in methods if m not in vpt.METHODS]
    if unknown:
        raise SystemExit(f"vpt-bench: unknown method(s) {unknown}; valid: {', '.join(vpt.METHODS)}")
    peak_tflops = args.peak_tflops if args.peak_tflops is not None else default_peak_tflops(device, precision)
    spec = {"backbone": args.backbone, "img_size": args.img_size, "patch_size": args.patch_size,
            "backbone_kwargs": args.backbone_kwargs, "batch_size": args.batch_size, "precision": precision,
            "yardstick_precision": yard_precision, "device": device, "warmup": args.warmup, "steps": args.steps,
            "prompt_length": args.prompt_length, "pad_size": args.pad_size, "num_classes": args.num_classes,
            "tasks": args.tasks, "compile": args.compile, "flops": args.flops or device == "cuda",
            "peak_tflops": peak_tflops, "threads": args.threads, "cpu_allocator": args.cpu_allocator,
            "plain_at_precision": not args.no_plain_at_precision, "pipeline_images": args.pipeline_images,
            "pipeline_data": args.pipeline_data}
    results: dict[str, Any] = {"config": {**spec, "methods": methods}, "environment": environment(device),
                               "methods": {}}
    start = args.workers if args.workers != "auto" else ("spawn" if device == "cuda" else "fork")
    results["config"]["workers"] = start
    started = time.time()
    for method in methods:
        print(f"[vpt-bench] {method} ...", file=sys.stderr, flush=True)
        results["methods"][method] = run_worker("method", {**spec, "method": method}, args.timeout, start)
    if not args.no_yardstick:
        print("[vpt-bench] yardstick: plain timm VPT-deep vs vpt ...", file=sys.stderr, flush=True)
        results["yardstick"] = run_worker("yardstick", spec, args.timeout, start)
    if args.tasks > 0:
        print(f"[vpt-bench] multi-task bank ({args.tasks} tasks) ...", file=sys.stderr, flush=True)
        results["multitask"] = run_worker("multitask", spec, args.timeout, start)
    if args.pipeline_images > 0:
        print(f"[vpt-bench] data pipeline ({args.pipeline_images} images in memory) ...", file=sys.stderr, flush=True)
        results["pipeline"] = run_worker("pipeline", spec, args.timeout, start)
    results["targets"] = evaluate_targets(results)
    results["wall_s"] = time.time() - started
    print(format_table(results))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
        print(f"[vpt-bench] results written to {args.out}", file=sys.stderr)
    return results


if __name__ == "__main__":
    sys.exit(main())
