"""Pretrain -> prompt-tune transfer study on real data (CIFAR-10 subset in ../shared/data/cifar10).

1. Pretrain a small ViT from scratch on 5 source classes (full training): `vpt-train experiment=cifar10_pretrain`.
2. Freeze it and adapt it to the 5 disjoint target classes with 1,000 training images (VTAB-1k style) by
   linear probe, VPT-shallow, VPT-deep, pixel padding and full fine-tuning, 3 seeds each:
   `vpt-train experiment=cifar10_transfer prompt=<method> seed=<s> backbone.pretrained=<source weights>`.
3. Evaluate on the target classes' 5,000 test images; write a markdown table, JSON and a plot.

    python experiments/cifar10_transfer_study.py --jobs 2       # CPU: about an hour on 2 cores
    python experiments/cifar10_transfer_study.py trainer.device=cuda   # extra args go to every vpt-train run

Finished runs (their results.json) are reused, so an interrupted study continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["linear", "shallow", "deep", "pad", "full"]
LABELS = {"linear": "linear probe", "shallow": "VPT-shallow", "deep": "VPT-deep", "pad": "pixel padding", "full": "full fine-tuning"}
# Per-method settings (SGD, lr = base_lr * batch / 256): prompts want large learning rates (VPT, Bahng et al.),
# full fine-tuning a small one.
METHOD_OVERRIDES = {
    "linear": ["optim.base_lr=2.0"],
    "shallow": ["optim.base_lr=2.0", "prompt.length=10"],
    "deep": ["optim.base_lr=2.0", "prompt.length=10"],
    "pad": ["optim.base_lr=2.0", "prompt.size=4"],
    "full": ["optim=adamw", "optim.base_lr=0.0005", "optim.lr_scaling=none"],
}


def vpt_train(args: list[str], run_dir: Path) -> dict:
    """Run vpt-train into run_dir unless it already finished there; return its results.json."""
    results = run_dir / "results.json"
    if results.is_file():
        return json.loads(results.read_text())
    exe = Path(sys.executable).with_name("vpt-train")
    cmd = [str(exe) if exe.exists() else "vpt-train", *args, f"hydra.run.dir={run_dir}", "logger=csv", "trainer.progress_bar=false"]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return json.loads(results.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("VPT_SHARED_DATA", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "cifar10_transfer"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--jobs", type=int, default=1, help="target runs at a time (each uses one CPU thread)")
    parser.add_argument("overrides", nargs="*", help="extra vpt-train overrides for every run, e.g. trainer.device=cuda")
    args = parser.parse_args()

    data_root = Path(args.data_root).resolve()
    if not (data_root / "cifar10" / "train").is_dir():
        sys.exit(f"CIFAR-10 subset not found under {data_root}/cifar10 (expected train/<class>/ folders). "
                 "Pass --data-root /path/to/data or set VPT_SHARED_DATA.")
    os.environ["VPT_SHARED_DATA"] = str(data_root)
    out = Path(args.out).resolve()
    started = time.time()

    source = vpt_train(["experiment=cifar10_pretrain", f"trainer.epochs={args.pretrain_epochs}", *args.overrides], out / "pretrain")
    weights = out / "pretrain" / "cifar_vit_source.safetensors"
    jobs = [(["experiment=cifar10_transfer", f"prompt={method}", f"seed={seed}", f"backbone.pretrained={weights}",
              f"trainer.epochs={args.epochs}", *METHOD_OVERRIDES[method], *args.overrides],
             out / "runs" / f"{method}_seed{seed}")
            for method in args.methods for seed in args.seeds]
    # each run uses one CPU thread (trainer.cpu_threads=1), so --jobs 2 keeps both cores of a 2-core machine busy
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(lambda job: vpt_train(*job), jobs))

    rows = []
    for method in args.methods:
        mine = [r for r in runs if r["method"] == method]
        accs = [r["test_top1"] for r in mine]
        rows.append({
            "method": method, "label": LABELS[method], "seeds": len(mine),
            "test_top1_mean": statistics.mean(accs), "test_top1_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "trainable_params": mine[0]["trainable_params"], "prompt_file_bytes": mine[0]["prompt_file_bytes"],
            "train_seconds_mean": statistics.mean(r["train_seconds"] for r in mine),
        })
    summary = {"source_test_top1": source.get("test_top1"), "source_train_seconds": source.get("train_seconds"),
               "rows": rows, "runs": runs, "total_seconds": time.time() - started,
               "device": runs[0].get("device", "cpu") if runs else "cpu"}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    table = ["| method | test top-1 (%) | trainable params | prompt file | train time |", "|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['label']} | {r['test_top1_mean']:.1f} ± {r['test_top1_std']:.1f} | {r['trainable_params']:,} | "
                     f"{r['prompt_file_bytes'] / 1024:,.1f} KiB | {r['train_seconds_mean']:.0f} s |")
    text = "\n".join(table)
    (out / "table.md").write_text(text + "\n")
    print(text)
    print(f"source task (5 classes) test top-1: {source.get('test_top1')}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

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
        fig.savefig(out / "accuracy.png", dpi=120)
        print(f"wrote {out / 'accuracy.png'}")
    except ImportError:
        print("matplotlib not installed: no plot (pip install -e '.[plot]')")


if __name__ == "__main__":
    main()
