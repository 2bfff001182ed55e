"""``vpt-bench``'s command line: arguments, the run (one worker process per measurement), table and JSON."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .detection import DETECTION_METHODS, format_detection_table
from .report import format_table
from .runtime import default_peak_tflops, environment, resolve_device, resolve_precision
from .workers import WORKERS, run_worker

DEFAULT_METHODS = ("linear", "shallow", "deep", "pad", "full")
# the --help line; the package docstring (vpt/tools/bench/__init__.py) opens with it and says the rest
DESCRIPTION = "``vpt-bench``: throughput, memory and prompt-file size of every tuning method, plus two comparisons."


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vpt-bench", description=DESCRIPTION,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_setting_arguments(p)
    _add_run_arguments(p)
    return p


def _add_setting_arguments(p: argparse.ArgumentParser) -> None:
    """What is measured: backbone, input, batch, precision, device, methods, comparisons."""
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
    p.add_argument("--task", choices=["classification", "detection"], default="classification",
                   help="detection: a prompted Faster R-CNN per method (default methods linear,deep,full)")
    p.add_argument("--detector", choices=["faster_rcnn", "retinanet", "fcos"], default="faster_rcnn")
    p.add_argument("--methods", default=None, help="comma-separated tuning methods (default: "
                   + ",".join(DEFAULT_METHODS) + "; with --task detection: " + ",".join(DETECTION_METHODS) + ")")
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


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    """How it is measured and where the results go."""
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
    spec, methods = spec_from_args(args)
    from .models import RANDOM_WEIGHTS_LINE

    _say(RANDOM_WEIGHTS_LINE)  # once here, not once per worker process
    if spec["task"] == "detection":
        results = measure_detection(spec, methods, args.workers, args.timeout)
        print(format_detection_table(results))
    else:
        results = measure(spec, methods, args.workers, args.timeout, yardstick=not args.no_yardstick)
        print(format_table(results))
    if args.out:
        from ...loggers import write_atomic

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(Path(args.out), json.dumps(results, indent=2))
        print(f"[vpt-bench] results written to {args.out}", file=sys.stderr)
    return results


def spec_from_args(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """The settings every worker receives, and the methods to measure; bad input stops here, before any run."""
    from ...methods import method_names

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    default = DETECTION_METHODS if args.task == "detection" else DEFAULT_METHODS
    methods = [m.strip() for m in (args.methods or ",".join(default)).split(",") if m.strip()]
    if args.pipeline_images > 0 and args.pipeline_data and not Path(args.pipeline_data).is_dir():
        raise SystemExit(f"vpt-bench: --pipeline-data {args.pipeline_data} is not a folder; pass an ImageFolder "
                         "(e.g. ../shared/data/cifar10) or leave it out for random uint8 images")
    unknown = [m for m in methods if m not in method_names()]
    if unknown:
        raise SystemExit(f"vpt-bench: unknown method(s) {unknown}; valid: {', '.join(method_names())}")
    peak_tflops = args.peak_tflops if args.peak_tflops is not None else default_peak_tflops(device, precision)
    spec = {"backbone": args.backbone, "img_size": args.img_size, "patch_size": args.patch_size,
            "backbone_kwargs": args.backbone_kwargs, "batch_size": args.batch_size, "precision": precision,
            "yardstick_precision": resolve_precision(args.yardstick_precision, device), "device": device,
            "warmup": args.warmup, "steps": args.steps, "prompt_length": args.prompt_length, "pad_size": args.pad_size,
            "num_classes": args.num_classes, "tasks": args.tasks, "compile": args.compile, "flops": args.flops or device == "cuda",
            "peak_tflops": peak_tflops, "threads": args.threads, "cpu_allocator": args.cpu_allocator,
            "plain_at_precision": not args.no_plain_at_precision, "pipeline_images": args.pipeline_images,
            "pipeline_data": args.pipeline_data, "task": args.task, "detector": args.detector}
    return spec, methods


def measure(spec: dict[str, Any], methods: list[str], workers: str = "auto", timeout: float | None = None,
            yardstick: bool = True) -> dict[str, Any]:
    """Every measurement, each in its own worker process: the method rows, then the comparisons the spec asks
    for (yardstick unless ``yardstick=False``, multi-task bank if ``tasks`` > 0, data pipeline if
    ``pipeline_images`` > 0)."""
    device = spec["device"]
    results: dict[str, Any] = {"config": {**spec, "methods": methods}, "environment": environment(device),
                               "methods": {}}
    start = workers if workers != "auto" else ("spawn" if device == "cuda" else "fork")
    results["config"]["workers"] = start
    started = time.time()
    for method in methods:
        _say(f"{method} ...")
        results["methods"][method] = run_worker("method", {**spec, "method": method}, timeout, start)
    if yardstick:
        _say("yardstick: plain timm VPT-deep vs vpt ...")
        results["yardstick"] = run_worker("yardstick", spec, timeout, start)
    if spec["tasks"] > 0:
        _say(f"multi-task bank ({spec['tasks']} tasks) ...")
        results["multitask"] = run_worker("multitask", spec, timeout, start)
    if spec["pipeline_images"] > 0:
        _say(f"data pipeline ({spec['pipeline_images']} images in memory) ...")
        results["pipeline"] = run_worker("pipeline", spec, timeout, start)
    results["wall_s"] = time.time() - started
    return results


def measure_detection(spec: dict[str, Any], methods: list[str], workers: str = "auto",
                      timeout: float | None = None) -> dict[str, Any]:
    """One detection row per method, each in its own worker process."""
    device = spec["device"]
    start = workers if workers != "auto" else ("spawn" if device == "cuda" else "fork")
    results: dict[str, Any] = {"config": {**spec, "methods": methods, "workers": start},
                               "environment": environment(device), "methods": {}}
    started = time.time()
    for method in methods:
        _say(f"detection {method} ...")
        results["methods"][method] = run_worker("detection", {**spec, "method": method}, timeout, start)
    results["wall_s"] = time.time() - started
    return results


def _say(message: str) -> None:
    print(f"[vpt-bench] {message}", file=sys.stderr, flush=True)
