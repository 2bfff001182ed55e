"""The measurements, each run in its own process so that one's memory does not pollute another's: one method's
row, the yardstick, the multi-task bank and the data pipeline; and how a worker process is started."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from .detection import worker_detection
from .models import (PlainTimmVPT, build_backbone, build_model, count_flops, forward_fn, make_batch, make_optimizer,
                     prompt_file_bytes, train_on_fn, train_step_fn, TEXT_TOWER)
from .runtime import autocast, median, prepare_worker, time_alternating, time_with_peak_memory


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def worker_method(spec: dict[str, Any]) -> dict[str, Any]:
    """One method: train / inference throughput, step/forward ratio, peak memory, parameters, file size."""
    prepare_worker(spec)
    device, precision, method = spec["device"], spec["precision"], spec["method"]
    model = build_model(spec, method).to(device)
    model.train()
    images, labels = make_batch(spec, device)
    optimizer = make_optimizer(model.trainable_parameters(), device)
    compiled = torch.compile(model) if spec.get("compile") else None
    step = train_step_fn(model, optimizer, images, labels, device, precision, compiled)
    forward = forward_fn(model, images, device, precision, compiled)
    result: dict[str, Any] = {"method": method, "trainable_params": model.num_trainable_params,
                              "total_params": model.param_summary()["total"],
                              "prompt": _jsonable(model.prompt_config.to_dict())}
    if method in TEXT_TOWER:
        result["text_tower"] = TEXT_TOWER[method]
    result.update(prompt_file_bytes(model))
    times, memory = time_with_peak_memory({"train": step, "forward": forward}, spec, device)
    result.update(memory)
    bs = spec["batch_size"]
    train_t, fwd_t = median(times["train"]), median(times["forward"])
    result.update(train_step_s=train_t, forward_s=fwd_t, train_img_s=bs / train_t, infer_img_s=bs / fwd_t,
                  step_forward_ratio=train_t / fwd_t, train_times_s=times["train"], forward_times_s=times["forward"])
    if spec.get("flops"):
        try:
            count_flops(model, optimizer, images, labels, device, precision, into=result)
        except Exception as err:  # keep the timings; say why there is no MFU
            result["flops_error"] = f"{type(err).__name__}: {err}"
        peak_tflops = spec.get("peak_tflops")
        if peak_tflops and result.get("train_flops_per_image"):
            result["mfu"] = result["train_flops_per_image"] * result["train_img_s"] / (peak_tflops * 1e12)
    return result


def worker_yardstick(spec: dict[str, Any]) -> dict[str, Any]:
    """vpt VPT-deep (at the yardstick precision) vs the plain timm implementation (fp32), alternating steps."""
    prepare_worker(spec)
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


def _bank_of_random_tasks(spec: dict[str, Any], num_tasks: int):
    """A PromptBank holding ``num_tasks`` VPT-deep prompt files with different random prompts and heads."""
    import vpt

    backbone = build_backbone(spec)
    bank = vpt.PromptBank(backbone)
    with tempfile.TemporaryDirectory() as tmp:
        for t in range(num_tasks):
            torch.manual_seed(1000 + t)  # different random prompts and heads per task
            model = build_model(spec, "deep", backbone=backbone)
            bank.add_task(f"task{t}", model.save_prompt(Path(tmp) / f"task{t}"))
    return bank


def worker_multitask(spec: dict[str, Any]) -> dict[str, Any]:
    """A batch mixing ``tasks`` VPT-deep tasks vs a single-task batch through one PromptBank (no-grad)."""
    prepare_worker(spec)
    device, precision, num_tasks = spec["device"], spec["precision"], spec["tasks"]
    bank = _bank_of_random_tasks(spec, num_tasks).to(device)
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
    from ...data import build_data
    from ...data.datasets import CachedImageDataset
    from ...data.preprocess import Preprocess

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
    from ...data.loaders import DeviceBatchLoader

    prepare_worker(spec)
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
           "pipeline": worker_pipeline, "detection": worker_detection}


# ---------------------------------------------------------------------------------------------------------
# worker processes
# ---------------------------------------------------------------------------------------------------------
def run_worker(kind: str, spec: dict[str, Any], timeout: float | None = None, start: str = "spawn") -> dict[str, Any]:
    """Run one worker in its own process and return its result (or an ``error`` entry).

    ``spawn``: a fresh interpreter (``python -m vpt.tools.bench --worker ...``), nothing shared with this process.
    ``fork``: a forked child of this process, which has imported torch but run no tensor op, so the child
    starts its own thread pool; it saves the ~5-15 s interpreter + torch import per worker. Either way each
    worker has its own address space, so the peak RSS of one method is not polluted by another's.
    """
    if start == "fork":
        return _run_forked(kind, spec, timeout)
    return _run_spawned(kind, spec, timeout)


def _fork_child(kind: str, spec: dict[str, Any], conn) -> None:
    try:
        conn.send(WORKERS[kind](spec))
    except BaseException as err:  # report, never hang the parent
        import traceback

        conn.send({"error": f"{kind} worker failed: {type(err).__name__}: {err}\n{traceback.format_exc()[-2000:]}"})
    finally:
        conn.close()


def _run_forked(kind: str, spec: dict[str, Any], timeout: float | None) -> dict[str, Any]:
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


def _run_spawned(kind: str, spec: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "vpt.tools.bench", "--worker", kind, "--spec", json.dumps(spec)]
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
