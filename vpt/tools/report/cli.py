"""``vpt-report RUN_OR_SWEEP_DIR...``: the table (printed and written) and plots of finished runs.

    vpt-report outputs/multirun/2026-01-01_12-00-00
    vpt-report sweep_a sweep_b --out report --metric test_top1 test_top5 --group-by prompt.method --no-plots

User errors (a path without results, an unknown metric or key) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ...errors import ConfigError, VptError
from .plots import write_plots
from .runs import collect_runs
from .suites import means_markdown, suite_means
from .table import accuracy_metric, summarise
from .writers import FORMATS, parse_formats, to_markdown, write_tables

PROGRAM = "vpt-report"
USER_ERROR_EXIT_CODE = 2  # as vpt-train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description="Tabulate (mean ± std over seeds) and plot the results of vpt-train runs.",
        epilog="--metric and --group-by take several values: give the directories first (or write --metric=M).")
    parser.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP_DIR",
                        help="run directories, sweep directories holding them, or results.json files")
    parser.add_argument("--out", type=Path, default=None,
                        help="where table.* and the plots go (default: <first directory>/report)")
    parser.add_argument("--metric", nargs="+", action="extend", dest="metrics", metavar="M",
                        help="results.json keys to tabulate (default: test/val top-1 or mAP/AP50, "
                             "trainable_params, train_seconds)")
    parser.add_argument("--group-by", nargs="+", action="extend", dest="group_by", metavar="KEY",
                        help="config keys (e.g. prompt.method prompt.length) for the rows "
                             "(default: the keys that vary across runs, except the seed)")
    parser.add_argument("--format", default=",".join(FORMATS),
                        help=f"comma-separated table files to write, from {', '.join(FORMATS)} (default: all)")
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    return parser


def default_out_dir(first_path: str | Path) -> Path:
    first = Path(first_path)
    return (first.parent if first.is_file() else first) / "report"


def report(args: argparse.Namespace) -> list[Path]:
    """Collect, print the markdown table to stdout, write the files; return the paths written."""
    formats = parse_formats(args.format)  # a typo fails before any work
    runs = collect_runs(args.paths)
    if not runs:
        raise ConfigError(f"no completed runs under {', '.join(map(str, args.paths))} ({runs.skipped_summary()}); "
                          "rerun or resume them (trainer.resume=true) first")
    if runs.skipped:
        print(f"{PROGRAM}: {runs.skipped_summary()}", file=sys.stderr)
    rows = summarise(runs, args.metrics, args.group_by)
    print(to_markdown(rows), end="")
    means = means_markdown(suite_means(runs))
    if means:
        print("\nbenchmark group means (mean over the group's tasks of each task's mean):\n" + means, end="")
    out = args.out or default_out_dir(args.paths[0])
    written = write_tables(rows, out, formats, skipped=runs.skipped)
    if not args.no_plots:
        written += write_plots(runs, out, args.group_by, accuracy_metric(runs, args.metrics or ()))
    for path in written:
        print(f"{PROGRAM}: wrote {path}", file=sys.stderr)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        report(args)
    except VptError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
