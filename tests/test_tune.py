"""vpt-tune: the pick and the edge extension, reuse/resume/move-aside by record, both runners, the reports, the CLI;
end to end on the digits quickstart with a kill -9 in the middle."""
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from vpt.errors import ConfigError
from vpt.tasks import TASKS, Task, register_task
from vpt.tools.tune import (Grid, Protocol, SubprocessRunner, TrainRun, TuneRunError, TuneSettings, best_point, load_grid,
                      next_points, run_record, search)
from vpt.tools.tune.cli import parse_args
from vpt.tools.tune.protocol import TrainInfo, task_overrides
from vpt.tools.tune.records import REUSE, RESUME, START, prepare_run_dir

LR, WD = "optim.base_lr", "optim.optimizer.weight_decay"


def lr_grid(values, wds=(0.0001,), extend=(LR,)):
    return Grid("test", {LR: list(values), WD: list(wds)}, tuple(extend))


def peaked_at(best_lr, best_wd=0.0001):
    """A val score that falls off with the distance in log(lr) (and a little with the weight decay) from the best."""
    return lambda lr, wd: 70.0 - abs(math.log(lr / best_lr)) - (0.0 if wd == best_wd else 0.5)


def serial_search(grid, score, max_extend):
    calls = []

    def evaluate(points):
        calls.extend(points)
        return {point: score(*point) for point in points}

    return search(grid, evaluate, max_extend), calls


# ---- grid: pick and extension -----------------------------------------------------------------------------
def test_search_extends_past_an_edge_until_the_pick_is_inside():
    scores, calls = serial_search(lr_grid([0.5, 2.0, 8.0]), peaked_at(0.03), max_extend=3)
    # 0.5 is the grid's best, so 0.125 (ratio 4), then 0.0312 (the best), then 0.00779 shows 0.0312 is inside
    assert sorted(lr for lr, _ in scores) == [0.00779, 0.0312, 0.125, 0.5, 2.0, 8.0]
    assert best_point(lr_grid([0.5]), scores) == (0.0312, 0.0001)
    assert len(calls) == len(set(calls))  # no point is trained twice


def test_search_stops_after_max_extend_and_keeps_an_inside_pick():
    grid = lr_grid([0.5, 2.0, 8.0])
    scores, _ = serial_search(grid, peaked_at(1000.0), max_extend=1)
    assert sorted(lr for lr, _ in scores) == [0.5, 2.0, 8.0, 32.0]
    assert next_points(grid, scores) == [(128.0, 0.0001)]  # still at the edge
    inside, calls = serial_search(grid, peaked_at(2.0), max_extend=2)
    assert sorted(lr for lr, _ in inside) == [0.5, 2.0, 8.0] and len(calls) == 3


def test_two_keys_extend_along_the_lr_line_through_the_pick_only():
    grid = lr_grid([1.0, 10.0], wds=[0.001, 0.0], extend=(LR,))
    scores, calls = serial_search(grid, peaked_at(1000.0, best_wd=0.0), max_extend=1)
    assert calls[4:] == [(100.0, 0.0)]  # one new run at the pick's weight decay, not one per weight decay
    assert best_point(grid, scores) == (100.0, 0.0)


def test_ties_go_to_the_smaller_lr_then_the_smaller_weight_decay():
    grid = lr_grid([0.5, 2.0], wds=[0.01, 0.0])
    scores = {(2.0, 0.0): 65.5, (0.5, 0.01): 65.5, (0.5, 0.0): 65.5, (2.0, 0.01): 60.0}
    assert best_point(grid, scores) == (0.5, 0.0)
    assert best_point(grid, {(2.0, 0.0): 65.5, (0.5, 0.01): 65.5}) == (0.5, 0.01)  # the lr decides first


def test_failed_runs_are_never_picked_and_all_failed_is_an_error():
    grid = lr_grid([0.5, 50.0])
    assert best_point(grid, {(50.0, 0.0001): None, (0.5, 0.0001): 10.0}) == (0.5, 0.0001)
    with pytest.raises(ConfigError, match="every run failed"):
        best_point(grid, {(50.0, 0.0001): None})


def test_null_values_rank_last_on_a_tie():  # prompt.depth: null means every layer, the largest choice
    grid = Grid("shape", {"prompt.depth": [None, 3]})
    assert best_point(grid, {(None,): 80.0, (3,): 80.0}) == (3,)


def test_packaged_grids_hold_vpts_values():
    vpt = load_grid("vpt")
    assert vpt.params[LR] == [50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05]
    assert vpt.params[WD] == [0.01, 0.001, 0.0001, 0.0] and len(vpt.points()) == 40
    assert load_grid("vpt_full").params[LR] == [0.005, 0.001, 0.0005, 0.0001]
    assert vpt.folder((0.05, 0.0)) == "lr0.05_wd0.0" and vpt.overrides((0.05, 0.0)) == [f"{LR}=0.05", f"{WD}=0.0"]
    assert load_grid("prompt_shape").overrides((10, None)) == ["prompt.length=10", "prompt.depth=null"]


def test_bad_grids_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="valid names: base2new, coop_16shots, coop_fewshot, prompt_shape, tiny, vpt, vpt_full"):
        load_grid("vtp")
    bad = tmp_path / "g.yaml"
    bad.write_text(yaml.safe_dump({"params": {LR: [1.0]}, "extend": [WD]}))
    with pytest.raises(ConfigError, match="not in params"):
        load_grid(str(bad))
    bad.write_text(yaml.safe_dump({"params": {LR: [1.0, 1.0]}}))
    with pytest.raises(ConfigError, match="twice"):
        load_grid(str(bad))


# ---- records ------------------------------------------------------------------------------------------------
def test_record_keeps_what_changes_results_and_knows_weights_by_digest():
    args = ["prompt=deep", "backbone.pretrained=/a/w.safetensors", "logger=wandb", "hydra.launcher.n_jobs=2"]
    moved = ["prompt=deep", "backbone.pretrained=/b/w.safetensors", "logger=csv"]
    assert run_record(args, "abc") == run_record(moved, "abc")  # same weights elsewhere, another logger
    assert run_record(args, "abc") != run_record(args, "abd")
    assert run_record(args, "abc")["args"][0] == "prompt=deep" and len(run_record(args, "abc")["args"]) == 2


def test_run_dir_is_reused_resumed_or_moved_aside(tmp_path):
    run_dir = tmp_path / "search" / "lr0.5"
    record = run_record(["prompt=deep"], None)
    assert prepare_run_dir(run_dir, record) == START
    assert prepare_run_dir(run_dir, record) == RESUME  # no results yet: an interrupted run continues in place
    (run_dir / "results.json").write_text("{}")
    assert prepare_run_dir(run_dir, record) == REUSE
    assert prepare_run_dir(run_dir, run_record(["prompt=shallow"], None)) == START
    stale = [p.name for p in run_dir.parent.iterdir() if p.name != "lr0.5"]
    assert len(stale) == 1 and stale[0].startswith("lr0.5.stale-")
    assert (run_dir.parent / stale[0] / "results.json").is_file() and not (run_dir / "results.json").exists()


# ---- the protocol with a stand-in runner ------------------------------------------------------------------
class FakeRunner:
    """Writes what vpt-train would: config.yaml (the keys the report groups by) and results.json."""

    def __init__(self, score, fail_at=None):
        self.score, self.fail_at, self.batches = score, fail_at, []

    def run(self, runs):
        self.batches.append([run.label for run in runs])
        for run in runs:
            settings = dict(arg.lstrip("+").split("=", 1) for arg in run.args)
            lr, wd, seed = float(settings[LR]), float(settings[WD]), int(settings["seed"])
            val = self.score(lr, wd)
            config = {"seed": seed, "optim": {"base_lr": lr, "optimizer": {"weight_decay": wd}},
                      "prompt": {"method": "deep"}, "paper": {"deep": 78.8, "source": "Jia et al. 2022, Table 1"}}
            (run.dir / "config.yaml").write_text(yaml.safe_dump(config))
            diverged = self.fail_at is not None and lr >= self.fail_at
            results = {"status": "failed" if diverged else "completed", "seed": seed, "val_top1": val,
                       "test_top1": 60.0 + seed, "trainable_params": 100, "train_seconds": 1.0, "method": "deep"}
            (run.dir / "results.json").write_text(json.dumps(results))


def settings(tmp_path, grid, **kwargs):
    values = dict(seeds=[0, 1, 2], out=tmp_path / "tune", metric="val_top1", search_seed=0, max_extend=2)
    values.update(kwargs)
    return TuneSettings(grid=grid, **values)


def test_protocol_searches_picks_retrains_and_writes_the_table(tmp_path):
    runner = FakeRunner(peaked_at(2.0))
    result = Protocol(["prompt=deep"], settings(tmp_path, lr_grid([0.5, 2.0, 8.0])), runner, None).run()
    assert result.pick_settings == {LR: 2.0, WD: 0.0001}
    assert runner.batches == [["search/lr0.5_wd0.0001", "search/lr2.0_wd0.0001", "search/lr8.0_wd0.0001"],
                              [f"final/lr2.0_wd0.0001_seed{s}" for s in (0, 1, 2)]]
    final_args = result.final_runs[1].args
    assert final_args[-3:] == [f"{WD}=0.0001", "seed=1", "++data.train_on_trainval=true"]
    assert result.search_runs[0].args[-1] == "++data.train_on_trainval=false"
    summary = json.loads((tmp_path / "tune" / "tune.json").read_text())
    assert [entry["score"] for entry in summary["search"]] == [pytest.approx(peaked_at(2.0)(lr, 0.0001))
                                                               for lr in (0.5, 2.0, 8.0)]
    assert summary["test_top1_mean"] == pytest.approx(61.0) and summary["test_top1_std"] == pytest.approx(1.0)
    table = (tmp_path / "tune" / "table.md").read_text()  # vpt-report's table, the paper's number beside
    assert "| 2 | 0.0001 | 3 | 61.00 ± 1.00 | 78.80 |" in table and "Jia et al. 2022, Table 1" in table
    assert (tmp_path / "tune" / "search" / "table.md").is_file()

    again = FakeRunner(peaked_at(2.0))
    Protocol(["prompt=deep"], settings(tmp_path, lr_grid([0.5, 2.0, 8.0])), again, None).run()
    assert again.batches == [[], []]  # everything reused


def test_search_test_false_keeps_the_test_split_out_of_stage_1_only(tmp_path):
    runner = FakeRunner(peaked_at(2.0))
    result = Protocol([], settings(tmp_path, lr_grid([0.5, 2.0, 8.0]), search_test=False), runner, None).run()
    assert all(run.args[-1] == "++trainer.test=false" for run in result.search_runs)
    assert not any("trainer.test" in arg for run in result.final_runs for arg in run.args)
    default = TuneSettings.resolve({"out": str(tmp_path)}, TrainInfo(name="x", log_dir=str(tmp_path), seed=0,
                                                                     metric="val_top1", weights=None))
    assert default.search_test is True
    assert parse_args(["tune.search_test=false"])[0]["search_test"] is False


def test_no_search_trains_every_point_with_every_seed(tmp_path):
    """tune.search=false over several points is a sweep (CoOp's shots x seeds): no pick, one table row per point."""
    runner = FakeRunner(peaked_at(2.0))
    result = Protocol([], settings(tmp_path, lr_grid([0.5, 2.0]), seeds=[1, 2], search=False), runner, None).run()
    assert result.pick is None and result.pick_settings is None and result.search_runs == []
    assert runner.batches == [[f"final/lr{lr}_wd0.0001_seed{s}" for lr in (0.5, 2.0) for s in (1, 2)]]
    table = (tmp_path / "tune" / "table.md").read_text()
    assert "| 0.5 | 0.0001 | 2 | 61.50 ± 0.71 |" in table and "| 2 | 0.0001 | 2 | 61.50 ± 0.71 |" in table
    summary = json.loads((tmp_path / "tune" / "tune.json").read_text())
    assert summary["pick"] is None and len(summary["final"]) == 4
    assert load_grid("coop_fewshot").points() == [(1,), (2,), (4,), (8,), (16,)]


def test_eval_new_scores_each_final_run_on_the_new_classes_and_reports_the_hm(tmp_path):
    """Base-to-novel as one vpt-tune (base2new_maple's tune: block): base = test_top1 (60, 61), new from
    <run>/new/results.json (40, 42): HM of the means 2 * 60.5 * 41 / 101.5 = 48.876..."""
    evaluated = []

    def fake_eval(run, folder, overrides):
        assert (folder, overrides) == ("new", ["data.subsample_classes=new"])
        evaluated.append(run.label)
        (run.dir / "new").mkdir()
        (run.dir / "new" / "results.json").write_text(json.dumps({"test_top1": 40.0 + 2 * run.seed}))

    grid = lr_grid([2.0])
    result = Protocol([], settings(tmp_path, grid, seeds=[0, 1], search=False, eval_new=True), FakeRunner(peaked_at(2.0)),
                      None, evaluate=fake_eval).run()
    assert evaluated == ["final/lr2.0_wd0.0001_seed0", "final/lr2.0_wd0.0001_seed1"]
    (row,) = result.rows
    assert row.stats["new_top1"].mean == pytest.approx(41.0)
    assert row.stats["hm_top1"].mean == pytest.approx(2 * 60.5 * 41.0 / 101.5)
    assert "| hm_top1 |" in (tmp_path / "tune" / "table.md").read_text()
    tuned = compose_train_tune_block()
    assert tuned == {"grid": "base2new", "search": False, "seeds": [1, 2, 3], "final_on_trainval": False,
                     "eval_new": True}
    assert load_grid("base2new").points() == [("base",)]


def compose_train_tune_block():
    from vpt.tools.tune.protocol import read_train_config

    return read_train_config(["experiment=base2new_maple", "output_dir=/tmp/x"]).tune_block


def test_changed_arguments_or_weights_retrain_and_keep_the_old_runs(tmp_path):
    grid = lr_grid([0.5, 2.0, 8.0])
    Protocol(["prompt=deep"], settings(tmp_path, grid, seeds=[0]), FakeRunner(peaked_at(2.0)), "aaa").run()
    other_weights = FakeRunner(peaked_at(2.0))
    Protocol(["prompt=deep"], settings(tmp_path, grid, seeds=[0]), other_weights, "bbb").run()
    assert sum(len(batch) for batch in other_weights.batches) == 4
    assert len(list((tmp_path / "tune" / "search").glob("lr0.5_wd0.0001.stale-*"))) == 1


def test_a_diverged_lr_is_skipped_and_a_missing_val_score_is_explained(tmp_path):
    result = Protocol([], settings(tmp_path, lr_grid([0.5, 2.0, 8.0]), seeds=[0]),
                      FakeRunner(peaked_at(100.0), fail_at=8.0), None).run()
    assert result.scores[(8.0, 0.0001)] is None and result.pick_settings[LR] == 2.0

    class NoVal(FakeRunner):
        def run(self, runs):
            super().run(runs)
            for run in runs:
                (run.dir / "results.json").write_text(json.dumps({"status": "completed", "test_top1": 50.0}))

    with pytest.raises(ConfigError, match="data.val_fraction"):
        Protocol([], settings(tmp_path / "b", lr_grid([0.5])), NoVal(peaked_at(1.0)), None).run()


def test_overrides_the_protocol_sets_are_refused():
    grid = lr_grid([0.5])
    assert task_overrides(["prompt=deep", "seed=3", "hydra/launcher=joblib"], grid) == ["prompt=deep"]
    with pytest.raises(ConfigError, match="optim.base_lr"):
        task_overrides(["optim.base_lr=2"], grid)
    with pytest.raises(ConfigError, match="data.train_on_trainval"):
        task_overrides(["data.train_on_trainval=true"], grid)


def test_settings_come_from_defaults_then_the_experiment_then_the_command_line(tmp_path):
    info = TrainInfo(name="deep_vtab", log_dir=str(tmp_path), seed=4, metric="val_top1", weights=None,
                     tune_block={"grid": "tiny", "seeds": 3, "final_on_trainval": False})
    resolved = TuneSettings.resolve({"seeds": [7, 8]}, info)
    assert resolved.seeds == [7, 8] and resolved.grid.name == "tiny" and resolved.final_on_trainval is False
    assert resolved.search_seed == 4 and resolved.out == tmp_path / "tune" / "deep_vtab"
    assert TuneSettings.resolve({}, info).seeds == [0, 1, 2]
    with pytest.raises(ConfigError, match="valid: grid, seeds"):
        TuneSettings.resolve({"seed": 3}, info)


def test_cli_splits_tune_options_from_vpt_train_overrides():
    options, train = parse_args(["experiment=vtab/cifar100", "tune.seeds=[0,1]", "--jobs", "2", "--max-extend=1",
                                 "tune.grid=vpt", "prompt=deep"])
    assert options == {"seeds": [0, 1], "jobs": 2, "max_extend": 1, "grid": "vpt"}
    assert train == ["experiment=vtab/cifar100", "prompt=deep"]
    with pytest.raises(ConfigError, match="tune.seeds"):
        parse_args(["tune.seed=3"])


# ---- runners ------------------------------------------------------------------------------------------------
FAKE_VPT_TRAIN = """#!{python}
import glob, json, os, sys, time
args = dict(a.split("=", 1) for a in sys.argv[1:])
run_dir = args["hydra.run.dir"]
open(os.path.join(run_dir, "..", "started-" + os.path.basename(run_dir)), "w").write(str(time.time()))
meet = int(os.environ.get("FAKE_VPT_TRAIN_MEET", "0"))  # wait until this many runs have started (a barrier, so
deadline = time.time() + 60                             # overlap does not depend on how fast processes start)
while meet and len(glob.glob(os.path.join(run_dir, "..", "started-*"))) < meet and time.time() < deadline:
    time.sleep(0.01)
if not meet:
    time.sleep(0.3)
if args.get("fail") == "yes":
    print("Traceback: something broke"); sys.exit(1)
json.dump({{"status": "completed", "argv": sys.argv[1:]}}, open(os.path.join(run_dir, "results.json"), "w"))
open(os.path.join(run_dir, "..", "ended-" + os.path.basename(run_dir)), "w").write(str(time.time()))
"""


@pytest.fixture
def fake_vpt_train(tmp_path):
    exe = tmp_path / "fake-vpt-train"
    exe.write_text(FAKE_VPT_TRAIN.format(python=sys.executable))
    exe.chmod(0o755)
    return str(exe)


def test_subprocess_runner_runs_at_most_jobs_at_a_time(tmp_path, fake_vpt_train, monkeypatch):
    # each fake run waits until two have started: two at once happens by construction, however slow the machine
    # (with a fixed sleep, a loaded machine could start the second run after the first had ended)
    monkeypatch.setenv("FAKE_VPT_TRAIN_MEET", "2")
    runs = [TrainRun(f"r{i}", tmp_path / "runs" / f"r{i}", [f"seed={i}"]) for i in range(4)]
    for run in runs:
        run.dir.mkdir(parents=True)
    SubprocessRunner(jobs=2, executable=fake_vpt_train, extra_args=["hydra.verbose=true"]).run(runs)
    argv = json.loads((runs[3].dir / "results.json").read_text())["argv"]
    assert argv == ["seed=3", "hydra.verbose=true", f"hydra.run.dir={runs[3].dir}", "trainer.resume=true",
                    "trainer.progress_bar=false"]
    times = lambda kind: [float((tmp_path / "runs" / f"{kind}-r{i}").read_text()) for i in range(4)]  # noqa: E731
    intervals = list(zip(times("started"), times("ended")))
    most_at_once = max(sum(start <= t < end for start, end in intervals) for t, _ in intervals)
    assert most_at_once == 2


def test_a_run_without_results_stops_the_tuning_with_its_log(tmp_path, fake_vpt_train):
    run = TrainRun("bad", tmp_path / "bad", ["fail=yes"])
    run.dir.mkdir()
    with pytest.raises(TuneRunError, match="(?s)exit status 1.*something broke.*run the same command again"):
        SubprocessRunner(executable=fake_vpt_train).run([run])


def test_slurm_launcher_gets_one_job_per_run_in_the_tune_dir(tmp_path, slurm_submissions):
    """Through hydra/launcher=slurm (submitit stopped at submission, as in test_slurm.py): every run of the batch
    becomes one array job whose overrides place it in <tune dir>/<run label> and resume it there."""
    from vpt.tools.tune import HydraLauncherRunner

    out = tmp_path / "tune"
    runs = [TrainRun(f"search/lr{lr}", out / "search" / f"lr{lr}", ["prompt=deep", f"{LR}={lr}"]) for lr in (1, 2)]
    runner = HydraLauncherRunner(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], out)
    with pytest.raises(TuneRunError, match="search/lr1 job stopped without results"):
        runner.run(runs)  # nothing ran: submission was stopped
    overrides = [call[0] for call in slurm_submissions["calls"]]
    assert overrides == [["prompt=deep", f"{LR}={lr}", f"hydra.sweep.subdir=search/lr{lr}", "trainer.resume=true",
                          "trainer.progress_bar=false"] for lr in (1, 2)]
    assert [call[2] for call in slurm_submissions["calls"]] == [0, 1]  # job numbers
    assert str(slurm_submissions["executor"].folder).startswith(str(out / ".submitit"))


def test_vpt_tune_help_and_a_bad_option(capsys):
    from vpt.tools.tune import main

    main(["--help"])
    assert "tune.grid=" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stopped:
        main(["tune.sede=3"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.startswith("vpt-tune: error: unknown option(s) sede; valid: tune.grid")


# ---- end to end: the digits quickstart, killed with SIGKILL and resumed -----------------------------------------
TINY = ["hydra/launcher=basic", "data.val_fraction=0.2", "data.train_size=64", "data.max_per_class_test=20",
        "trainer.epochs=1", "trainer.limit_train_batches=2", "trainer.limit_eval_batches=1", "trainer.cpu_threads=1",
        "logger=none", "tune.grid=tiny", "tune.seeds=3", "tune.max_extend=0"]


def vpt_tune(out: Path) -> list[str]:
    return [str(Path(sys.executable).with_name("vpt-tune")), *TINY, f"tune.out={out}"]


def finished(out: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in out.glob("*/*/results.json")}


def test_vpt_tune_resumes_after_kill_9_without_redoing_finished_runs(tmp_path):
    out, env = tmp_path / "tune", {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(vpt_tune(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                             cwd=tmp_path, start_new_session=True)
    deadline = time.time() + 240
    while not finished(out) and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the whole process group, as a machine that goes down
    first.wait()
    before = finished(out)
    assert before and not (out / "tune.json").exists(), "the tuning ended before it could be killed"

    second = subprocess.run(vpt_tune(out), capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    for path, mtime in before.items():  # finished runs were reused, not trained again
        assert path.stat().st_mtime_ns == mtime
        assert f"{path.parent.parent.name}/{path.parent.name}: reused" in second.stdout
    assert second.stdout.count(": reused") == len(before) and len(finished(out)) == 5  # 2 search + 3 final runs

    summary = json.loads((out / "tune.json").read_text())
    tests = [json.loads((out / row["run_dir"] / "results.json").read_text())["test_top1"] for row in summary["final"]]
    assert [row["seed"] for row in summary["final"]] == [0, 1, 2]
    assert summary["test_top1_mean"] == pytest.approx(statistics.fmean(tests))
    table = json.loads((out / "table.json").read_text())  # vpt-report's table of the three final runs
    assert table["rows"][0]["metrics"]["test_top1"]["mean"] == pytest.approx(statistics.fmean(tests))
    assert table["rows"][0]["metrics"]["test_top1"]["std"] == pytest.approx(statistics.stdev(tests))


@pytest.mark.slow
def test_runs_of_a_stage_go_through_the_joblib_launcher(tmp_path, monkeypatch):
    from vpt.tools.tune import tune

    monkeypatch.chdir(tmp_path)
    train = [arg for arg in TINY if not arg.startswith(("tune.", "hydra/"))]
    result = tune(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *train], grid="tiny", seeds=2, max_extend=0,
                  out=tmp_path / "tune")
    # joblib ran each job in a worker process that Hydra set up: its own .hydra/ record and train.log per run dir
    for run in result.search_runs + result.final_runs:
        assert (run.dir / ".hydra" / "overrides.yaml").is_file() and run.results["status"] == "completed"
    pick = result.grid.folder(result.pick)
    assert result.final_runs[1].dir == tmp_path / "tune" / "final" / f"{pick}_seed1"
    overrides = yaml.safe_load((result.final_runs[1].dir / ".hydra" / "overrides.yaml").read_text())
    assert overrides[-4:] == ["seed=1", "++data.train_on_trainval=true", "trainer.resume=true",
                              "trainer.progress_bar=false"]
    assert [r["seed"] for r in result.final_results] == [0, 1]


# ---- the metric is the task's ---------------------------------------------------------------------------------
class F1Task(Task):
    """A toy task ranked by F1: vpt-tune must search on val_f1 and report test_f1, not top-1."""
    name = "toy_f1"
    primary_metric = "f1"


class F1Runner(FakeRunner):
    def run(self, runs):
        super().run(runs)
        for run in runs:  # the same runs, recorded as the toy task's
            results = json.loads((run.dir / "results.json").read_text())
            val, test = results.pop("val_top1"), results.pop("test_top1")
            results = {"task": "toy_f1", "val_f1": val / 100, "test_f1": test / 100, **results}
            (run.dir / "results.json").write_text(json.dumps(results))


@pytest.fixture
def f1_task():
    register_task(F1Task())
    yield
    TASKS.unregister(F1Task.name)


def test_the_tune_metric_is_the_tasks_primary_one_on_val(f1_task):
    from vpt.tools.tune.protocol import read_train_config

    assert read_train_config(["output_dir=/tmp/x"]).metric == "val_top1"
    assert read_train_config(["task=detection", "output_dir=/tmp/x"]).metric == "val_map"
    assert read_train_config(["task.name=toy_f1", "output_dir=/tmp/x"]).metric == "val_f1"
    assert read_train_config(["task.name=toy_f1", "optimized_metric=val_loss", "output_dir=/tmp/x"]).metric == "val_loss"


def test_tune_json_holds_the_final_runs_primary_test_metric(tmp_path, f1_task):
    result = Protocol([], settings(tmp_path, lr_grid([0.5, 2.0, 8.0]), metric="val_f1"), F1Runner(peaked_at(2.0)),
                      None).run()
    assert result.pick_settings == {LR: 2.0, WD: 0.0001}
    summary = json.loads((tmp_path / "tune" / "tune.json").read_text())
    assert summary["test_f1_mean"] == pytest.approx(0.61) and "test_top1_mean" not in summary
    assert "| test_f1 |" in (tmp_path / "tune" / "table.md").read_text()
