"""Judge a ``vpt-bench`` run against this project's acceptance figures (the issue's targets).

``vpt-bench`` only reports figures; this script reads its JSON (``--out``), prints one line per target the run's
device and precision speak to, and exits 1 if a target fails in the setting it was stated for, or if a
measurement ended in an error. Targets judged outside their setting (e.g. a tiny model) are printed with
``[not the issue's setting]`` and do not change the exit status unless ``--strict``.

    python experiments/bench_targets.py experiments/results/bench_cpu.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# The issue's targets: key -> (description, comparison, threshold).
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


def measured_values(results: dict[str, Any]) -> list[tuple[str, float | None]]:
    """(target, figure) for each target this run's device and precision speak to."""
    cfg, methods = results["config"], results["methods"]
    device, precision = cfg["device"], cfg["precision"]
    deep, full = methods.get("deep", {}), methods.get("full", {})
    cpu_fp32, gpu_bf16 = device == "cpu" and precision == "fp32", device == "cuda" and precision == "bf16"
    found: list[tuple[str, float | None]] = []
    yard = results.get("yardstick") or {}
    if "speedup_vs_plain_fp32" in yard:
        found.append(("yardstick", yard["speedup_vs_plain_fp32"]))
    if "step_forward_ratio" in deep:
        if cpu_fp32:
            found.append(("step_forward_cpu", deep["step_forward_ratio"]))
        if gpu_bf16:
            found.append(("step_forward_gpu", deep["step_forward_ratio"]))
    if "peak_mem_bytes" in deep and "peak_mem_bytes" in full:
        if cpu_fp32:
            found.append(("memory_cpu", deep["peak_mem_bytes"] / max(full["peak_mem_bytes"], 1)))
        if gpu_bf16:
            found.append(("memory_gpu", deep["peak_mem_total_bytes"] / max(full["peak_mem_total_bytes"], 1)))
    multi = results.get("multitask") or {}
    if "mixed_vs_single" in multi:
        found.append(("multitask", multi["mixed_vs_single"]))
    pipe = results.get("pipeline") or {}
    if "pipeline_vs_on_device" in pipe:
        found.append(("pipeline", pipe["pipeline_vs_on_device"]))
    if gpu_bf16 and "train_img_s" in deep:
        found.append(("gpu_throughput", deep["train_img_s"]))
    return found


def issue_setup(results: dict[str, Any]) -> dict[str, bool]:
    """Per target: whether the run used the setting the target was stated for (figures are judged either way)."""
    cfg, device, precision = results["config"], results["config"]["device"], results["config"]["precision"]
    vit_b = cfg["backbone"].split(".")[0] == "vit_base_patch16_224" and cfg["img_size"] == 224
    cpu_setup = (cfg["backbone"].split(".")[0] == "vit_small_patch16_224" and cfg["img_size"] == 224
                 and cfg["batch_size"] == 32 and device == "cpu" and cfg["prompt_length"] == 50)
    gpu_setup = vit_b and device == "cuda"
    tasks = (results.get("multitask") or {}).get("tasks")
    return {"yardstick": cpu_setup, "step_forward_cpu": cpu_setup, "memory_cpu": cpu_setup,
            "multitask": tasks == 8 and (cpu_setup or gpu_setup),
            "step_forward_gpu": device == "cuda", "memory_gpu": device == "cuda", "gpu_throughput": vit_b,
            "pipeline": gpu_setup and precision == "bf16"}


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets that this run's device and precision speak to, each with its verdict."""
    setup = issue_setup(results)
    out = []
    for key, value in measured_values(results):
        description, op, threshold = TARGETS[key]
        ok = value is not None and (value >= threshold if op == ">=" else value <= threshold)
        out.append({"target": key, "description": description, "value": value, "op": op, "threshold": threshold,
                    "pass": bool(ok), "issue_setup": setup[key]})
    return out


def measurement_errors(results: dict[str, Any]) -> list[str]:
    """``row: message`` for every measurement that failed (its figures, and so its targets, are missing)."""
    rows = {f"method {name}": row for name, row in results.get("methods", {}).items()}
    rows.update({key: results[key] for key in ("yardstick", "multitask", "pipeline") if results.get(key)})
    return [f"{name}: {row['error'].strip().splitlines()[-1] if row['error'] else ''}"
            for name, row in rows.items() if "error" in row]


def format_targets(targets: list[dict[str, Any]]) -> str:
    lines = []
    for t in targets:
        note = "" if t.get("issue_setup", True) else "  [not the issue's setting]"
        lines.append(f"target {t['target']:<16} {'PASS' if t['pass'] else 'FAIL'}  {t['value']:.3f} {t['op']} "
                     f"{t['threshold']}  ({t['description']}){note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="the JSON that vpt-bench --out wrote")
    parser.add_argument("--strict", action="store_true", help="targets outside the issue's setting count too")
    args = parser.parse_args(argv)
    path = Path(args.results)
    if not path.is_file():
        print(f"bench_targets: {path} does not exist; run vpt-bench with --out {path} first", file=sys.stderr)
        return 2
    results = json.loads(path.read_text())
    targets = evaluate_targets(results)
    print(format_targets(targets))
    failed = [t["target"] for t in targets if not t["pass"] and (t["issue_setup"] or args.strict)]
    errors = measurement_errors(results)
    for error in errors:
        print(f"ERROR {error}")
    if failed or errors:
        print(f"bench_targets: failed: {', '.join(failed) or '-'}; measurement errors: {len(errors)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
