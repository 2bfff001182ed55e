"""Pretrain -> prompt-tune transfer study on real data (CIFAR-10 subset in ../shared/data/cifar10).

1. Pretrain a small ViT from scratch on 5 source classes (full training): `vpt-train experiment=cifar10_pretrain`.
2. Freeze it and adapt it to the 5 disjoint target classes with 1,000 training images (VTAB-1k style) by
   linear probe, VPT-shallow, VPT-deep, pixel padding and full fine-tuning, each with `vpt-tune` (vpt.tools.tune): the
   method's learning rate is picked from a small grid on seed 0 (train on 800 images, score on the other 200);
   while the best value sits at an edge of what was searched, the grid grows one step past that edge (at most
   --max-extend times). Then every seed trains on all 1,000 with the chosen rate (3 seeds each):
   `vpt-train experiment=cifar10_transfer prompt=<method> seed=<s> backbone.pretrained=<source weights>`.
3. Evaluate on the target classes' 5,000 test images at the last epoch (val is part of the training set, so
   it cannot pick a checkpoint); write a markdown table, JSON and a plot.

    python experiments/cifar10_transfer_study.py --jobs 2       # CPU: about 72 minutes on 2 cores
    python experiments/cifar10_transfer_study.py trainer.device=cuda   # extra args go to every vpt-train run

The same as `vpt-tune experiment=cifar10_transfer prompt=<method> backbone.pretrained=<source> tune.grid=<the
method's lr grid> tune.seeds=[0,1,2] tune.out=<out>/<method>` per method, run side by side. vpt-tune's reuse rules
hold: a finished run is reused when it was made from the same vpt-train arguments and source weights (by digest,
tune_run.json), an interrupted one resumes, and one made otherwise is moved aside, so an interrupted study
continues where it stopped. Run folders: <out>/pretrain, <out>/<method>/search/lr<lr>,
<out>/<method>/final/lr<lr>_seed<s>.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from vpt.files import atomic_write
from vpt.tools.tune import Grid, SubprocessRunner, TuneResult, train_once, tune

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["linear", "shallow", "deep", "pad", "full"]
LABELS = {"linear": "linear probe", "shallow": "VPT-shallow", "deep": "VPT-deep", "pad": "pixel padding", "full": "full fine-tuning"}
# Per-method settings (SGD, lr = base_lr * batch / 256; full fine-tuning: AdamW, unscaled lr).
METHOD_OVERRIDES = {
    "linear": [],
    "shallow": ["prompt.length=10"],
    "deep": ["prompt.length=10"],
    "pad": ["prompt.size=4"],
    "full": ["optim=adamw", "optim.lr_scaling=none"],
}
# base_lr grid per method, searched on seed 0: train on the 800, score on the 200 val images (the VPT protocol).
# The chosen lr then trains on all 1,000 images for every seed. Prompts want large learning rates (VPT, Bahng et
# al.), full fine-tuning a small one. --no-lr-search uses the middle value. A best value at the grid's edge
# means the optimum may lie outside it, so the search then extends the grid (vpt.tools.tune.grid.next_points).
LR_GRID = {
    "linear": [0.5, 2.0, 8.0],
    "shallow": [0.5, 2.0, 8.0],
    "deep": [0.5, 2.0, 8.0],
    "pad": [0.5, 2.0, 8.0],
    "full": [0.0001, 0.0005, 0.002],
}
LR_KEY = "optim.base_lr"


def lr_grid(method: str, search: bool) -> Grid:
    """The method's lr grid (extendable past an edge), or its middle value alone when not searching."""
    values = LR_GRID[method] if search else [LR_GRID[method][1]]
    return Grid(f"{method}_lr", {LR_KEY: values}, (LR_KEY,))


def transfer_args(method: str, weights: Path, epochs: int, overrides: list[str]) -> list[str]:
    """The vpt-train arguments every run of ``method`` shares (vpt-tune adds the lr, the seed and the data split)."""
    return ["experiment=cifar10_transfer", f"prompt={method}", f"backbone.pretrained={weights}",
            f"trainer.epochs={epochs}", *METHOD_OVERRIDES[method], "logger=csv", *overrides]


def row_of(method: str, result: TuneResult) -> dict[str, Any]:
    """One line of the study's table from the method's tuning."""
    runs = result.final_results
    accs = [r["test_top1"] for r in runs]
    by_lr = {point[0]: score for point, score in sorted(result.scores.items())} if result.scores else None
    return {
        "method": method, "label": LABELS[method], "seeds": len(runs), "base_lr": result.pick_settings[LR_KEY],
        "val_top1_by_lr": by_lr,
        "test_top1_mean": statistics.mean(accs), "test_top1_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "trainable_params": runs[0]["trainable_params"], "prompt_file_bytes": runs[0]["prompt_file_bytes"],
        "train_seconds_mean": statistics.mean(r["train_seconds"] for r in runs),
    }


def table_text(rows: list[dict[str, Any]]) -> str:
    table = ["| method | test top-1 (%) | base lr (val top-1 per lr) | trainable params | prompt file | train time |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        by_lr = ", ".join(f"{float(lr):g}: {acc:.1f}" for lr, acc in (r["val_top1_by_lr"] or {}).items())
        table.append(f"| {r['label']} | {r['test_top1_mean']:.1f} ± {r['test_top1_std']:.1f} | {r['base_lr']:g}"
                     f"{f' ({by_lr})' if by_lr else ''} | {r['trainable_params']:,} | "
                     f"{r['prompt_file_bytes'] / 1024:,.1f} KiB | {r['train_seconds_mean']:.0f} s |")
    return "\n".join(table)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install -e '.[plot]')")
        return
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar([r["label"] for r in rows], [r["test_top1_mean"] for r in rows], yerr=[r["test_top1_std"] for r in rows],
           capsize=4, color=["#999", "#6a9fd4", "#1f5fa8", "#d48f3a", "#555"][: len(rows)])
    for i, r in enumerate(rows):
        ax.text(i, r["test_top1_mean"] + r["test_top1_std"] + 0.5, f"{r['trainable_params']:,} params", ha="center", fontsize=7)
    ax.set_ylabel("target test top-1 (%)")
    ax.set_title("CIFAR-10: 5 source classes -> 5 target classes, 1,000 images")
    ax.set_ylim(0, 100)
    plt.xticks(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    print(f"wrote {path}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("VPT_SHARED_DATA", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "cifar10_transfer"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--pretrain-epochs", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--jobs", type=int, default=1, help="target runs at a time (each uses one CPU thread)")
    parser.add_argument("--no-lr-search", dest="lr_search", action="store_false",
                        help="skip the per-method learning-rate search on val; use each grid's middle value")
    parser.add_argument("--max-extend", type=int, default=2,
                        help="how many times a method's lr grid may grow past an edge that holds the best val score")
    parser.add_argument("overrides", nargs="*",
                        help="extra vpt-train overrides for every run, e.g. trainer.device=cuda")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    data_root = Path(args.data_root).resolve()
    if not (data_root / "cifar10" / "train").is_dir():
        sys.exit(f"CIFAR-10 subset not found under {data_root}/cifar10 (expected train/<class>/ folders). "
                 "Pass --data-root /path/to/data or set VPT_SHARED_DATA.")
    os.environ["VPT_SHARED_DATA"] = str(data_root)
    out = Path(args.out).resolve()
    started = time.time()

    # the pretraining runs alone on every core (its experiment config); the target runs take one thread each
    source = train_once(["experiment=cifar10_pretrain", f"trainer.epochs={args.pretrain_epochs}", "logger=csv",
                         *args.overrides], out / "pretrain", SubprocessRunner(cwd=ROOT))
    weights = out / "pretrain" / "cifar_vit_source.safetensors"
    # one runner for every method: at most --jobs vpt-train processes at a time, across the methods' tunings
    runner = SubprocessRunner(jobs=args.jobs, cwd=ROOT)

    def tune_method(method: str) -> TuneResult:
        return tune(transfer_args(method, weights, args.epochs, args.overrides), runner=runner,
                    grid=lr_grid(method, args.lr_search), seeds=args.seeds, max_extend=args.max_extend,
                    search_seed=0, search=args.lr_search, out=out / method)

    with ThreadPoolExecutor(max_workers=len(args.methods)) as pool:
        results = dict(zip(args.methods, pool.map(tune_method, args.methods)))
    rows = [row_of(method, result) for method, result in results.items()]
    runs = [r for result in results.values() for r in result.final_results]
    summary = {"source_test_top1": source.get("test_top1"), "source_train_seconds": source.get("train_seconds"),
               "rows": rows, "runs": runs,
               # finished runs are reused, so a resumed study counts only the runs it did this time
               "seconds_this_invocation": time.time() - started,
               "device": runs[0].get("device", "cpu") if runs else "cpu"}
    atomic_write(out / "summary.json", json.dumps(summary, indent=2))
    text = table_text(rows)
    atomic_write(out / "table.md", text + "\n")
    print(text)
    print(f"source task (5 classes) test top-1: {source.get('test_top1')}")
    plot(rows, out / "accuracy.png")


if __name__ == "__main__":
    main()
