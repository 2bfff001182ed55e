"""Pretrain -> prompt-tune transfer study on real data (CIFAR-10 subset in ../shared/data/cifar10).

1. Pretrain a small ViT from scratch on 5 source classes (full training): `vpt-train experiment=cifar10_pretrain`.
2. Freeze it and adapt it to the 5 disjoint target classes with 1,000 training images (VTAB-1k style) by
   linear probe, VPT-shallow, VPT-deep, pixel padding and full fine-tuning. Each method's learning rate is
   picked from a small grid on seed 0 (train on 800 images, score on the other 200); while the best value
   sits at an edge of what was searched, the grid grows one step past that edge (at most --max-extend
   times). Then every seed trains on all 1,000 with the chosen rate (3 seeds each):
   `vpt-train experiment=cifar10_transfer prompt=<method> seed=<s> backbone.pretrained=<source weights>`.
3. Evaluate on the target classes' 5,000 test images at the last epoch (val is part of the training set, so
   it cannot pick a checkpoint); write a markdown table, JSON and a plot.

    python experiments/cifar10_transfer_study.py --jobs 2       # CPU: about 72 minutes on 2 cores
    python experiments/cifar10_transfer_study.py trainer.device=cuda   # extra args go to every vpt-train run

A finished run is reused when it was made from the same vpt-train arguments and source weights (study_run.json),
an interrupted one resumes, and one made otherwise is moved aside, so an interrupted study continues where it stopped.
"""
from __future__ import annotations

import argparse
import hashlib
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
# means the optimum may lie outside it, so the search then extends the grid (see search_learning_rates).
LR_GRID = {
    "linear": [0.5, 2.0, 8.0],
    "shallow": [0.5, 2.0, 8.0],
    "deep": [0.5, 2.0, 8.0],
    "pad": [0.5, 2.0, 8.0],
    "full": [0.0001, 0.0005, 0.002],
}


def best_lr(scores: dict[float, float]) -> float:
    """The lr with the highest score; ties go to the smaller lr."""
    return max(sorted(scores), key=lambda lr: (scores[lr], -lr))


def next_lrs(scores: dict[float, float], extensions_left: int) -> list[float]:
    """One more lr past the searched range when the best one sits at its edge (same ratio as the edge's
    neighbour), or nothing when the best is inside the range or no extension is left."""
    lrs = sorted(scores)
    if extensions_left <= 0 or len(lrs) < 2:
        return []
    best = best_lr(scores)
    if best == lrs[0]:
        return [float(f"{lrs[0] * lrs[0] / lrs[1]:.3g}")]  # rounded: the lr also names the run's folder
    if best == lrs[-1]:
        return [float(f"{lrs[-1] * lrs[-1] / lrs[-2]:.3g}")]
    return []


def search_learning_rates(grids: dict[str, list[float]], score, pool, max_extend: int) -> dict[str, dict[float, float]]:
    """Val score of every (method, lr): each method's grid first, then rounds that extend the grid of every method
    whose best lr is at an edge, up to ``max_extend`` times. ``score(method, lr)`` runs in ``pool``, so the runs of
    one round go in parallel."""
    scores: dict[str, dict[float, float]] = {method: {} for method in grids}
    todo = [(method, lr) for method, grid in grids.items() for lr in grid]
    for round_ in range(max_extend + 1):
        for (method, lr), value in zip(todo, pool.map(lambda job: score(*job), todo)):
            scores[method][lr] = value
        todo = [(method, lr) for method in grids for lr in next_lrs(scores[method], max_extend - round_)]
        if not todo:
            break
    return scores


RUN_RECORD = "study_run.json"  # what a finished run was made from: its vpt-train arguments and source weights


def file_digest(path: Path) -> str:
    """sha256 of a file (the source weights): a re-trained source makes every target run stale."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run_record(args: list[str], source_digest: str | None) -> dict:
    """The source weights go in by their digest, not their path: a moved study folder is still reused."""
    if source_digest is not None:
        args = ["backbone.pretrained=<source>" if arg.startswith("backbone.pretrained=") else arg for arg in args]
    return {"args": list(args), "source_sha256": source_digest}


def recorded(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return None


def vpt_train(args: list[str], run_dir: Path, source_digest: str | None = None) -> dict:
    """Run vpt-train into run_dir and return its results.json. A run of the same arguments and source weights is
    reused when finished and resumed (trainer.resume) when interrupted; a run made otherwise (older study settings,
    another source) is moved aside, never mixed in."""
    record = run_record(args, source_digest)
    results = run_dir / "results.json"
    same = recorded(run_dir) == record
    if same and results.is_file():
        return json.loads(results.read_text())
    if run_dir.exists() and not same:
        stale = run_dir.with_name(f"{run_dir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
        while stale.exists():  # moved aside twice in one second
            stale = stale.with_name(stale.name + "+")
        print(f"{run_dir} was made with other settings or source weights: moved to {stale.name}", flush=True)
        run_dir.rename(stale)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_RECORD).write_text(json.dumps(record, indent=2))  # first: an interrupted run resumes, not restarts
    exe = Path(sys.executable).with_name("vpt-train")
    cmd = [str(exe) if exe.exists() else "vpt-train", *args, f"hydra.run.dir={run_dir}", "logger=csv",
           "trainer.progress_bar=false", "trainer.resume=true"]  # resume: from resume.pt when there is one
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return json.loads(results.read_text())


def main() -> None:
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
    parser.add_argument("overrides", nargs="*", help="extra vpt-train overrides for every run, e.g. trainer.device=cuda")
    args = parser.parse_args()

    data_root = Path(args.data_root).resolve()
    if not (data_root / "cifar10" / "train").is_dir():
        sys.exit(f"CIFAR-10 subset not found under {data_root}/cifar10 (expected train/<class>/ folders). "
                 "Pass --data-root /path/to/data or set VPT_SHARED_DATA.")
    os.environ["VPT_SHARED_DATA"] = str(data_root)
    out = Path(args.out).resolve()
    started = time.time()

    # the pretraining runs alone on every core (its experiment config); the target runs take one thread each
    source = vpt_train(["experiment=cifar10_pretrain", f"trainer.epochs={args.pretrain_epochs}", *args.overrides], out / "pretrain")
    weights = out / "pretrain" / "cifar_vit_source.safetensors"
    source_digest = file_digest(weights)
    def transfer_run(method: str, seed: int, lr: float, *extra: str) -> list[str]:
        return ["experiment=cifar10_transfer", f"prompt={method}", f"seed={seed}", f"backbone.pretrained={weights}",
                f"trainer.epochs={args.epochs}", *METHOD_OVERRIDES[method], f"optim.base_lr={lr}", *extra,
                *args.overrides]

    # each run uses one CPU thread (trainer.cpu_threads=1), so --jobs 2 keeps both cores of a 2-core machine busy
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        search: dict[str, dict[float, float]] = {}
        if args.lr_search:
            search = search_learning_rates(
                {method: LR_GRID[method] for method in args.methods},
                lambda method, lr: vpt_train(transfer_run(method, 0, lr, "data.train_on_trainval=false"),
                                             out / "search" / f"{method}_lr{lr}", source_digest)["val_top1"],
                pool, args.max_extend)
        chosen = {method: best_lr(search[method]) if method in search else LR_GRID[method][1] for method in args.methods}
        for method, scores in search.items():
            if next_lrs(scores, 1):
                print(f"warning: {method}'s best lr {chosen[method]:g} is still at the edge of the searched range "
                      f"{sorted(scores)}; raise --max-extend to look further", flush=True)
        jobs = [(method, seed) for method in args.methods for seed in args.seeds]
        runs = list(pool.map(lambda job: vpt_train(transfer_run(job[0], job[1], chosen[job[0]]),
                                                   out / "runs" / f"{job[0]}_lr{chosen[job[0]]}_seed{job[1]}",
                                                   source_digest), jobs))

    rows = []
    for method in args.methods:
        mine = [r for r in runs if r["method"] == method]
        accs = [r["test_top1"] for r in mine]
        rows.append({
            "method": method, "label": LABELS[method], "seeds": len(mine), "base_lr": chosen[method],
            "val_top1_by_lr": dict(sorted(search[method].items())) if method in search else None,
            "test_top1_mean": statistics.mean(accs), "test_top1_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "trainable_params": mine[0]["trainable_params"], "prompt_file_bytes": mine[0]["prompt_file_bytes"],
            "train_seconds_mean": statistics.mean(r["train_seconds"] for r in mine),
        })
    summary = {"source_test_top1": source.get("test_top1"), "source_train_seconds": source.get("train_seconds"),
               "rows": rows, "runs": runs,
               # finished runs are reused, so a resumed study counts only the runs it did this time
               "seconds_this_invocation": time.time() - started,
               "device": runs[0].get("device", "cpu") if runs else "cpu"}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    table = ["| method | test top-1 (%) | base lr (val top-1 per lr) | trainable params | prompt file | train time |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        by_lr = ", ".join(f"{lr:g}: {acc:.1f}" for lr, acc in (r["val_top1_by_lr"] or {}).items())
        table.append(f"| {r['label']} | {r['test_top1_mean']:.1f} ± {r['test_top1_std']:.1f} | {r['base_lr']:g}"
                     f"{f' ({by_lr})' if by_lr else ''} | {r['trainable_params']:,} | "
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
