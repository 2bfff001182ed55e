"""Mutation check: named one-line bugs in vpt, each of which the test suite must catch.

Each mutant replaces one line of one file in a copy of the repository (vpt/, configs/, tests/, pyproject.toml);
the tests that guard that line run on the copy with ``pytest -x -q -p no:cacheprovider`` and must fail. A mutant
that survives is a test that passes on broken code. The unmutated copy runs the same tests first (they must pass,
or a "kill" would mean nothing).

    python experiments/mutation_check.py                  # every mutant
    python experiments/mutation_check.py --only resume_ignored bank_mask_dropped
    python experiments/mutation_check.py --list

Prints a table (mutant, tests run, killed, seconds), writes experiments/results/mutation_check.json and exits 1
if a mutant survives, no longer applies (its line changed: update the list) or the baseline fails.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COPIED = ("vpt", "configs", "tests", "pyproject.toml")
DEFAULT_JSON = REPO / "experiments" / "results" / "mutation_check.json"
PYTEST_ARGS = ("-x", "-q", "-p", "no:cacheprovider")
TIMEOUT_S = 900

ENGINE = "tests/test_engine.py::"
DATA = "tests/test_data.py::"
CRASH_RESUME = ENGINE + "test_crash_then_resume_trains_only_the_missing_epochs_and_uses_the_saved_tensors"
RESUME_STATE = ENGINE + "test_resume_state_restores_tensors_optimizer_schedule_and_random_state"
LR_FORMULA = ENGINE + "test_lr_follows_scaling_warmup_then_cosine_to_the_floor"
TRAINER_LR = ENGINE + "test_trainer_schedules_with_its_batch_size_and_limited_step_count"
STRATIFIED = DATA + "test_stratified_quota_on_uneven_classes"


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]
    breaks: str  # what a user would lose


MUTANTS = (
    Mutant("resume_ignored", "vpt/engine/loop.py",
           "resumed = bool(self.trainer_cfg.resume) and self.load_resume_state()", "resumed = False",
           ("tests/test_cli.py::test_kill_9_then_resume_matches_an_uninterrupted_run",),
           "trainer.resume=true silently restarts from scratch"),
    Mutant("resume_tensors_dropped", "vpt/engine/checkpoints.py",
           "            params[name].copy_(value)", "            pass", (CRASH_RESUME,),
           "a resumed run continues from freshly initialised prompts"),
    Mutant("resume_optimizer_dropped", "vpt/engine/checkpoints.py",
           '    optimizer.load_state_dict(meta["optimizer"])', "    pass", (RESUME_STATE,),
           "momentum buffers are lost on resume"),
    Mutant("resume_rng_dropped", "vpt/engine/checkpoints.py",
           '    restore_rng_states(meta["rng"])', "    pass", (RESUME_STATE,),
           "random draws after a resume differ from an uninterrupted run's"),
    Mutant("epoch_not_reseeded", "vpt/engine/loop.py",
           '        reseed_loader(self.loaders["train"], epoch_seed)', "        pass", (CRASH_RESUME,),
           "the data order after a resume differs from an uninterrupted run's"),
    Mutant("k_shot_with_replacement", "vpt/data/sampling.py",
           "rng.choice(members, shots, replace=False)", "rng.choice(members, shots, replace=True)",
           (DATA + "test_k_shot_draws_distinct_images_of_their_class",),
           "k-shot training sets repeat images"),
    Mutant("stratified_with_replacement", "vpt/data/sampling.py",
           "rng.choice(np.flatnonzero(labels == c), n, replace=False)",
           "rng.choice(np.flatnonzero(labels == c), n, replace=True)", (STRATIFIED,),
           "data.train_size samples repeat images"),
    Mutant("stratified_remainder_to_smallest", "vpt/data/sampling.py",
           "-(quota - per_class)", "(quota - per_class)", (STRATIFIED,),
           "class proportions of a sample drift from the dataset's"),
    Mutant("min_lr_ratio_ignored", "vpt/engine/build.py",
           "    floor = float(optim_cfg.min_lr_ratio)", "    floor = 0.0", (LR_FORMULA,),
           "optim.min_lr_ratio has no effect"),
    Mutant("lr_scaling_ignored", "vpt/engine/build.py",
           '    scaling = {"linear": batch_size / 256, "none": 1.0}',
           '    scaling = {"linear": batch_size / 256, "none": batch_size / 256}', (LR_FORMULA,),
           "optim.lr_scaling=none still scales the lr by batch_size / 256"),
    Mutant("warmup_ignored", "vpt/engine/build.py",
           "    if warmup == 0:", "    if True:", (LR_FORMULA,),
           "optim.warmup_epochs has no effect"),
    Mutant("trainer_batch_size_ignored", "vpt/engine/loop.py",
           "self.optimizer = build_optimizer(cfg.optim, self.params, batch_size)",
           "self.optimizer = build_optimizer(cfg.optim, self.params, 256)", (TRAINER_LR,),
           "the lr is scaled for batch 256 whatever trainer.batch_size is"),
    Mutant("trainer_steps_ignore_batch_limit", "vpt/engine/loop.py",
           "self.scheduler = build_scheduler(cfg.optim, self.optimizer, self.steps_per_epoch * ",
           'self.scheduler = build_scheduler(cfg.optim, self.optimizer, len(self.loaders["train"]) * ', (TRAINER_LR,),
           "with trainer.limit_train_batches the cosine never reaches its end"),
    Mutant("cli_hint_table_emptied", "vpt/tools/cli.py",
           '    WeightsUnavailableError: "on the command line: backbone.pretrained=false or '
           'backbone.pretrained=/path/to/weights",', "",
           ("tests/test_cli.py::test_offline_hub_weights_give_one_clear_message",),
           "an offline user sees only the Python argument name, not the override to type"),
    Mutant("bank_mask_dropped", "vpt/bank.py",
           '        if not prompt_length or not self.stack["needs_mask"][layer]:', "        if True:",
           ("tests/test_bank.py::test_mixed_batch_equals_each_task_alone",),
           "a task in a mixed bank batch attends to other tasks' padding slots"),
    Mutant("prompts_inserted_not_replaced", "vpt/backbones/base.py",
           "prompts.to(tokens.dtype), tokens[:, num_prefix + current_length:]], dim=1)",
           "prompts.to(tokens.dtype), tokens[:, num_prefix:]], dim=1)",
           ("tests/test_bank.py::test_mixed_batch_equals_each_task_alone",
            "tests/test_encoder.py::test_bank_rows_equal_each_task_concatenate_then_block"),
           "new prompts are inserted in front of the previous layer's instead of replacing them"),
    Mutant("frozen_backbone_in_train_mode", "vpt/model.py",
           "            self.backbone.eval()  # dropout", "            pass  # dropout",
           ("tests/test_core.py::test_frozen_backbone_stays_in_eval_mode",),
           "dropout / drop-path run inside the frozen encoder"),
    Mutant("top5_is_top1", "vpt/tasks/classification.py",
           "    k = min(5, num_classes)", "    k = 1", (ENGINE + "test_evaluate_reports_top1_top5_and_per_class",),
           "test_top5 reports top-1"),
    Mutant("bf16_autocast_ignored", "vpt/engine/runtime.py",
           "    dtype = AUTOCAST_DTYPES[precision]", "    dtype = None",
           (ENGINE + "test_bf16_autocast_on_cpu_trains_like_fp32_but_is_really_bf16",),
           "trainer.precision=bf16 runs in fp32"),
    Mutant("prompt_file_pair_unchecked", "vpt/prompt_file.py",
           "    _check_same_save(manifest, weights_meta, tensors, weights_path, manifest_path)", "    pass",
           ("tests/test_prompt_file.py::test_corrupt_or_truncated_file_gives_one_clear_error",),
           "weights of another save load without the message that says so"),
)


@dataclass
class Outcome:
    name: str
    file: str
    breaks: str
    tests: list[str]
    tests_run: int
    killed: bool
    status: str  # killed | survived | stale (line not found once) | error (pytest could not run the tests)
    seconds: float
    summary: str


def copy_repository(destination: Path) -> Path:
    """The files the tests need, without caches, virtual environments or git data."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=ignore)
        else:
            shutil.copy2(source, destination / name)
    return destination


def test_environment(copy: Path) -> dict[str, str]:
    # PYTHONPATH puts the copy ahead of the editable install, also in the vpt-train subprocesses the CLI tests
    # start; no .pyc files, so a mutant and its revert within one second never share a stale cache entry
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(copy), os.environ.get("PYTHONPATH")])),
           "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    imported = subprocess.run([sys.executable, "-c", "import vpt.tools.cli; print(vpt.tools.cli.__file__)"], cwd=copy, env=env,
                              capture_output=True, text=True, check=True).stdout.strip()
    if not Path(imported).resolve().is_relative_to(copy.resolve()):
        raise SystemExit(f"mutation check: the copy's vpt is not the one imported ({imported}); "
                         "install vpt in editable mode (pip install -e .) or unset PYTHONPATH")
    return env


def run_tests(tests: tuple[str, ...], copy: Path, env: dict[str, str]) -> tuple[int, int, str]:
    """(pytest exit code, tests run, pytest's summary line)."""
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", *tests, *PYTEST_ARGS], cwd=copy, env=env,
                                capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return -1, 0, f"timed out after {TIMEOUT_S} s"
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else result.stderr.strip()[-300:]
    counts = re.findall(r"(\d+) (passed|failed|errors?)\b", summary)
    return result.returncode, sum(int(n) for n, _ in counts), summary.strip("= ")


def check_mutant(mutant: Mutant, copy: Path, env: dict[str, str]) -> Outcome:
    target = copy / mutant.path
    original = target.read_text()
    start = time.perf_counter()
    if original.count(mutant.old) != 1:
        return Outcome(mutant.name, mutant.path, mutant.breaks, list(mutant.tests), 0, False, "stale", 0.0,
                       f"the line to mutate occurs {original.count(mutant.old)} times in {mutant.path}")
    target.write_text(original.replace(mutant.old, mutant.new))
    try:
        code, tests_run, summary = run_tests(mutant.tests, copy, env)
    finally:
        target.write_text(original)
    status = {0: "survived", 1: "killed"}.get(code, "error")  # 1: a test failed; 2-5: pytest could not run them
    return Outcome(mutant.name, mutant.path, mutant.breaks, list(mutant.tests), tests_run, status == "killed", status,
                   round(time.perf_counter() - start, 1), summary)


def print_table(outcomes: list[Outcome]) -> None:
    width = max(len(o.name) for o in outcomes)
    print(f"{'mutant':{width}}  {'tests run':>9}  {'killed':6}  {'seconds':>7}")
    for o in outcomes:
        killed = "yes" if o.killed else f"NO ({o.status})"
        print(f"{o.name:{width}}  {o.tests_run:>9}  {killed:6}  {o.seconds:>7.1f}")


def write_json(path: Path, report: dict) -> None:
    sys.path.insert(0, str(REPO))
    from vpt.files import atomic_write_json  # temp file + os.replace

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, report)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutants only")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--skip-baseline", action="store_true", help="do not run the tests on the unmutated copy first")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to write results (default {DEFAULT_JSON})")
    return parser.parse_args(argv)


def selected_mutants(only: list[str] | None) -> list[Mutant]:
    if not only:
        return list(MUTANTS)
    unknown = sorted(set(only) - {m.name for m in MUTANTS})
    if unknown:
        raise SystemExit(f"unknown mutant(s) {unknown}; known: {', '.join(m.name for m in MUTANTS)}")
    return [m for m in MUTANTS if m.name in only]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mutants = selected_mutants(args.only)
    if args.list:
        for m in mutants:
            print(f"{m.name:34} {m.path:28} {m.breaks}")
        return 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vpt_mutants_") as tmp:
        copy = copy_repository(Path(tmp))
        env = test_environment(copy)
        baseline = None
        if not args.skip_baseline:
            tests = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
            code, tests_run, summary = run_tests(tests, copy, env)
            baseline = {"tests": list(tests), "tests_run": tests_run, "passed": code == 0, "summary": summary,
                        "seconds": round(time.perf_counter() - start, 1)}
            print(f"baseline (unmutated): {summary}")
            if code != 0:
                print("mutation check: the tests fail without a mutant; fix them first", file=sys.stderr)
                return 1
        outcomes = []
        for mutant in mutants:
            outcomes.append(check_mutant(mutant, copy, env))
            print(f"  {mutant.name}: {outcomes[-1].status} ({outcomes[-1].summary})", flush=True)
    total = round(time.perf_counter() - start, 1)
    print_table(outcomes)
    failed = [o.name for o in outcomes if not o.killed]
    print(f"{len(outcomes) - len(failed)}/{len(outcomes)} mutants killed in {total:.0f} s"
          + (f"; not killed: {', '.join(failed)}" if failed else ""))
    write_json(args.json, {"python": platform.python_version(), "cpu_count": os.cpu_count(), "total_seconds": total,
                           "baseline": baseline, "killed": len(outcomes) - len(failed), "mutants": len(outcomes),
                           "not_killed": failed, "outcomes": [asdict(o) for o in outcomes]})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
