"""The table ``vpt-bench`` prints: one row per method, then a line or two per comparison. Figures only; judging
them against targets is the experiments' business (``experiments/bench_targets.py``)."""
from __future__ import annotations

from typing import Any


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}"


def format_table(results: dict[str, Any]) -> str:
    cfg = results["config"]
    lines = [f"vpt-bench  backbone={cfg['backbone']}  img={cfg['img_size']}  batch={cfg['batch_size']}  "
             f"precision={cfg['precision']}  device={cfg['device']}  warmup={cfg['warmup']}  steps={cfg['steps']}  "
             f"threads={results['environment'].get('torch_threads')}"
             + (f"  cpu_allocator={cfg.get('cpu_allocator', 'system')}" if cfg["device"] == "cpu" else "")]
    lines += method_lines(results)
    lines += comparison_lines(results)
    return "\n".join(lines)


def method_lines(results: dict[str, Any]) -> list[str]:
    """Column header, rule, and per method its row (plus FLOPs / MFU or why they are missing)."""
    cfg = results["config"]
    w = max([8] + [len(name) for name in results["methods"]])  # zoo names (adaptformer) are longer
    mem_label = "peak GPU MB" if cfg["device"] == "cuda" else "peak RSS MB"
    header = (f"{'method':<{w}} {'trainable':>11} {'file bytes':>11} {'train img/s':>11} {'infer img/s':>11} "
              f"{'step/fwd':>8} {mem_label:>11} {'mem/full':>8}")
    lines = [header, "-" * len(header)]
    full_mem = (results["methods"].get("full") or {}).get("peak_mem_bytes")
    for name, r in results["methods"].items():
        if "error" in r:
            lines.append(f"{name:<{w}} ERROR: {r['error'].splitlines()[-1] if r['error'] else ''}")
            continue
        rel = f"{r['peak_mem_bytes'] / full_mem:.2f}" if full_mem else "-"
        lines.append(f"{name:<{w}} {r['trainable_params']:>11,} {r['prompt_file_bytes']:>11,} {r['train_img_s']:>11.2f} "
                     f"{r['infer_img_s']:>11.2f} {r['step_forward_ratio']:>8.2f} {_mb(r['peak_mem_bytes']):>11} {rel:>8}")
        if r.get("mfu") is not None:
            lines.append(f"{'':<{w}} train FLOPs/image {r['train_flops_per_image'] / 1e9:.1f} G, MFU {100 * r['mfu']:.1f}% "
                         f"of {cfg.get('peak_tflops')} TFLOP/s")
        if r.get("text_tower"):
            lines.append(f"{'':<{w}} text tower: {r['text_tower']}")
        if r.get("flops_error"):
            lines.append(f"{'':<{w}} FLOPs not counted: {r['flops_error'].splitlines()[0]}")
    return lines


def _yardstick_lines(yard: dict[str, Any]) -> list[str]:
    parts = ", ".join(f"{k} {v:.2f} img/s" for k, v in yard["img_s"].items())
    out = [f"yardstick (VPT-deep train, alternating steps): {parts}; "
           f"vpt/plain_fp32 = {yard['speedup_vs_plain_fp32']:.2f}x"]
    prec = yard["vpt_precision"]
    if f"plain_{prec}_vs_plain_fp32" in yard:
        out.append(f"  {prec} autocast alone makes plain {yard[f'plain_{prec}_vs_plain_fp32']:.2f}x faster; "
                   f"vpt/plain_{prec} = {yard[f'speedup_vs_plain_{prec}']:.2f}x")
    return out


def _multitask_lines(m: dict[str, Any]) -> list[str]:
    return [f"multi-task bank ({m['tasks']} VPT-deep tasks, no-grad, {m['precision']}): mixed batch "
            f"{m['img_s']['mixed']:.2f} img/s, single-task batch {m['img_s']['single']:.2f} img/s, "
            f"ratio {m['mixed_vs_single']:.2f}"]


def _pipeline_lines(p: dict[str, Any]) -> list[str]:
    return [f"data pipeline (VPT-deep train, {p['dataset_images']} images in memory, crop+flip on the device, "
            f"{p['precision']}): {p['img_s']['pipeline']:.2f} img/s vs data already on the device "
            f"{p['img_s']['on_device']:.2f} img/s, ratio {p['pipeline_vs_on_device']:.2f}"]


# (results key, title when the row has an error or was skipped, lines of a measured row)
COMPARISONS = (("yardstick", "yardstick", _yardstick_lines), ("multitask", "multi-task", _multitask_lines),
               ("pipeline", "data pipeline", _pipeline_lines))


def comparison_lines(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for key, title, render in COMPARISONS:
        row = results.get(key)
        if row:
            lines.extend(render(row) if "img_s" in row else [f"{title}: {row.get('error') or row.get('skipped')}"])
    return lines
