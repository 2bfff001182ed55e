"""Run the offline quickstart (digits ViT pretrained on digits 0-4, tuned on digits 5-9) with every prompt
method and print / write a markdown comparison table.

    python experiments/quickstart_table.py                       # all methods, seed 0
    python experiments/quickstart_table.py --seeds 0 1 2         # mean ± std over seeds
    python experiments/quickstart_table.py --methods linear deep -- trainer.epochs=10

Each run is exactly ``vpt-train prompt=<method> seed=<seed> [overrides]``; run dirs, ``table.md`` and
``table.json`` go under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the quickstart needs no network

from hydra import compose, initialize_config_module

import vpt.tools.cli

vpt.tools.cli.register_resolvers()  # ${vpt_asset:...} and ${vpt_pixels:...} in the configs
from vpt.config import METHODS
from vpt.engine import NonFiniteLossError, train

COLUMNS = ("method", "test top-1 (%)", "trainable params", "prompt file bytes", "train seconds")


def run(method: str, seed: int, overrides: list[str], out: Path) -> dict:
    with initialize_config_module("vpt.configs", version_base="1.3"):
        cfg = compose("train", overrides=[f"prompt={method}", f"seed={seed}", "trainer.progress_bar=false",
                                          f"output_dir={out / method / f'seed{seed}'}", *overrides])
    return train(cfg)


def mean_std(values: list[float], digits: int = 1) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(rows: dict[str, list[dict]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for method, results in rows.items():
        lines.append("| " + " | ".join([
            method,
            mean_std([r["test_top1"] for r in results]),
            f"{results[0]['trainable_params']:,}",
            f"{results[0]['prompt_file_bytes']:,}",
            mean_std([r["train_seconds"] for r in results], 0),
        ]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/quickstart_table"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    args = parser.parse_args(argv)

    rows: dict[str, list[dict]] = {}
    start = time.perf_counter()
    for method in args.methods:
        for seed in args.seeds:
            try:
                results = run(method, seed, args.overrides, args.out)
            except NonFiniteLossError as error:  # one diverging method should not cost the whole table
                print(f"{method} seed {seed}: {error}", file=sys.stderr)
                results = {"test_top1": math.nan, "train_seconds": math.nan, "trainable_params": 0,
                           "prompt_file_bytes": 0}
            rows.setdefault(method, []).append(results)
            print(f"{method:>12} seed {seed}: test top-1 {results['test_top1']:.1f}%  "
                  f"({results['train_seconds']:.0f} s training)", file=sys.stderr, flush=True)
    markdown = table(rows)
    seeds = ", ".join(map(str, args.seeds))
    header = (f"Quickstart: digits ViT pretrained on digits 0-4, tuned on digits 5-9 (seeds {seeds}; "
              f"{time.perf_counter() - start:.0f} s in total)\n\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(header + markdown + "\n")
    (args.out / "table.json").write_text(json.dumps(rows, indent=2, default=str))
    print(header + markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
