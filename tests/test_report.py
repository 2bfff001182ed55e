"""vpt-report: collecting runs, grouping by the keys that vary, mean ± std, writers, paper column, plots, CLI."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from vpt.errors import ConfigError
from vpt.tasks import TASKS, Task, register_task
from vpt.tools.report import (NoResultsError, accuracy_metric, collect_runs, default_metrics, harmonic_mean, main,
                              summarise, to_json, to_markdown, varying_keys, write_plots, write_tables)

# test_top1 per (method, prompt length) for seeds 0, 1, 2, and the mean / sample std worked out by hand.
TOP1 = {("deep", 1): [80.0, 82.0, 84.0], ("deep", 10): [90.0, 91.0, 95.0],
        ("shallow", 1): [60.0, 60.0, 60.0], ("shallow", 10): [70.5, 71.5, 72.5]}
# deep 1: devs -2,0,2 → var 8/2 = 4; deep 10: devs -2,-1,3 → var 14/2 = 7; shallow 10: devs -1,0,1 → var 1
EXPECTED = {("deep", 1): (82.0, 2.0), ("deep", 10): (92.0, math.sqrt(7)),
            ("shallow", 1): (60.0, 0.0), ("shallow", 10): (71.5, 1.0)}
PARAMS = {("deep", 1): 709, ("deep", 10): 4165, ("shallow", 1): 389, ("shallow", 10): 965}
PAPER = {"source": "Jia et al. 2022, Table 1", "deep": 93.4, "shallow": 90.1, "linear": 88.2}


def write_run(folder: Path, method: str, length: int | None, seed: int, top1: float, status: str = "completed",
              paper: dict | None = None, **results) -> Path:
    folder.mkdir(parents=True)
    config = {"name": f"{method}_digits", "seed": seed, "output_dir": str(folder),
              "backbone": {"name": "vit_tiny_patch16_224"},
              "prompt": {"method": method, "length": length, "depth": None},
              "data": {"name": "digits", "classes": [5, 6, 7, 8, 9]},
              "optim": {"base_lr": 2.0, "optimizer": {"weight_decay": 0.0001}},
              "trainer": {"epochs": 1, "resume": False}, "paths": {"log_dir": f"outputs/{seed}"}}
    if paper:
        config["paper"] = paper
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    record = {"status": status, "method": method, "dataset": "digits", "seed": seed, "test_top1": top1,
              "trainable_params": PARAMS.get((method, length), 100), "train_seconds": 10.0 * (length or 1) + seed,
              **results}
    (folder / "results.json").write_text(json.dumps(record))
    return folder


@pytest.fixture
def sweep(tmp_path) -> Path:
    """A Hydra-style multirun folder: 2 methods x 2 prompt lengths x 3 seeds, numbered run folders."""
    root = tmp_path / "sweep"
    number = 0
    for (method, length), values in TOP1.items():
        for seed, top1 in enumerate(values):
            write_run(root / str(number), method, length, seed, top1, paper=PAPER)
            number += 1
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_collect_finds_every_run_of_a_sweep_once(sweep):
    runs = collect_runs([sweep, sweep / "0"])  # the run inside the sweep is the same run
    assert len(runs) == 12 and not runs.skipped
    assert {(run.method, run.setting("prompt.length"), run.seed) for run in runs} == {
        (m, length, seed) for (m, length) in TOP1 for seed in range(3)}


def test_varying_keys_are_the_swept_settings(sweep):
    # name differs with the method but adds nothing; seed, output_dir and paths.* are not settings
    assert varying_keys(collect_runs(sweep)) == ["prompt.method", "prompt.length"]


def test_a_label_is_kept_when_it_alone_tells_runs_apart(tmp_path):
    write_run(tmp_path / "a", "deep", 10, 0, 50.0)
    write_run(tmp_path / "b", "deep", 10, 0, 60.0)
    config = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    (tmp_path / "b" / "config.yaml").write_text(yaml.safe_dump({**config, "name": "other"}))
    assert varying_keys(collect_runs(tmp_path)) == ["name"]


def test_summarise_means_and_sample_stds_match_hand_computation(sweep):
    rows = summarise(collect_runs(sweep))
    assert [tuple(row.group.values()) for row in rows] == list(EXPECTED)  # numeric order of lengths
    for row in rows:
        key = (row.group["prompt.method"], row.group["prompt.length"])
        mean, std = EXPECTED[key]
        assert row.stats["test_top1"].mean == pytest.approx(mean)
        assert row.stats["test_top1"].std == pytest.approx(std)
        assert row.stats["test_top1"].n == row.n == 3 and row.seeds == [0, 1, 2]
        assert row.stats["trainable_params"] == (PARAMS[key], 0.0, 3)
        assert row.stats["train_seconds"].mean == pytest.approx(10.0 * key[1] + 1)
        assert row.stats["train_seconds"].std == pytest.approx(1.0)


def test_group_by_a_chosen_key_pools_the_rest(sweep):
    rows = summarise(collect_runs(sweep), metrics=["test_top1"], group_by=["method"])  # a results.json key
    deep = next(row for row in rows if row.group == {"method": "deep"})
    # deep values 80 82 84 90 91 95: mean 87, squared deviations 49+25+9+9+16+64 = 172 over n-1 = 5
    assert deep.n == 6 and list(deep.stats) == ["test_top1"]
    assert deep.stats["test_top1"].mean == pytest.approx(87.0)
    assert deep.stats["test_top1"].std == pytest.approx(math.sqrt(172 / 5))


def test_one_seed_has_zero_std(tmp_path):
    write_run(tmp_path / "r", "deep", 10, 0, 42.0)
    (row,) = summarise(collect_runs(tmp_path))
    assert row.group == {} and row.stats["test_top1"] == (42.0, 0.0, 1)


def test_default_metrics_follow_what_runs_report(tmp_path):
    write_run(tmp_path / "det", "deep", 10, 0, None, task="detection", test_map=40.0, test_ap50=60.0)
    runs = collect_runs(tmp_path)
    assert default_metrics(runs) == ["test_map", "test_ap50", "trainable_params", "train_seconds"]


def test_unknown_metric_or_key_names_the_valid_ones(sweep):
    runs = collect_runs(sweep)
    with pytest.raises(ConfigError, match=r"test_top9.*numeric results keys: test_top1"):
        summarise(runs, metrics=["test_top9"])
    with pytest.raises(ConfigError, match=r"prompt\.lenght.*prompt\.method, prompt\.length"):
        summarise(runs, group_by=["prompt.lenght"])


def test_unfinished_and_unreadable_runs_are_skipped_and_counted(sweep):
    write_run(sweep / "12", "deep", 1, 3, 0.0, status="failed")
    write_run(sweep / "13", "deep", 1, 4, 0.0, status="running")
    (sweep / "14").mkdir()
    (sweep / "14" / "results.json").write_text('{"status": "compl')  # cut off mid-write
    (sweep / "15" / ".hydra").mkdir(parents=True)  # killed before the end: config.yaml, no results.json
    (sweep / "15" / "config.yaml").write_text("seed: 5\n")
    (sweep / "15" / ".hydra" / "config.yaml").write_text("seed: 5\n")
    runs = collect_runs(sweep)
    assert len(runs) == 12
    assert runs.skipped_summary() == "4 runs skipped (failed: 1, running: 1, unfinished: 1, unreadable: 1)"
    assert runs.skipped[(sweep / "15").resolve()] == "unfinished"
    assert summarise(runs)[0].stats["test_top1"].n == 3  # the failed deep/1 run does not count


def test_run_without_config_yaml_is_described_by_its_results(tmp_path):
    folder = write_run(tmp_path / "r", "deep", 10, 0, "nan", prompt={"method": "deep", "length": 10})
    (folder / "config.yaml").unlink()
    (run,) = collect_runs(tmp_path)
    assert run.setting("prompt.length") == 10 and run.setting("data.name") == "digits"
    assert math.isnan(run.metric("test_top1"))  # results.json stores nan as the string "nan"


def test_markdown_table_with_paper_column(sweep):
    text = to_markdown(summarise(collect_runs(sweep)))
    lines = text.splitlines()
    assert lines[0] == ("| prompt.method | prompt.length | n | test_top1 | paper | trainable_params "
                        "| train_seconds |")
    assert "| deep | 10 | 3 | 92.00 ± 2.65 | 93.40 | 4,165 | 101.00 ± 1.00 |" in lines  # sqrt(7) = 2.6458
    assert "| shallow | 1 | 3 | 60.00 | 90.10 | 389 | 11.00 ± 1.00 |" in lines  # equal values: no ± 0
    assert "paper: Jia et al. 2022, Table 1" in lines


def test_paper_numbers_per_metric_and_bad_values(tmp_path):
    write_run(tmp_path / "a", "deep", 10, 0, 50.0, paper={"deep": {"test_top1": 93.4, "test_top5": 99.0}})
    (row,) = summarise(collect_runs(tmp_path), metrics=["test_top1", "train_seconds"])
    assert row.paper == {"test_top1": 93.4} and row.paper_source is None
    write_run(tmp_path / "b", "shallow", 10, 0, 50.0, paper={"shallow": "about 90"})
    with pytest.raises(ConfigError, match=r"paper\.shallow in .*config\.yaml must be a number"):
        summarise(collect_runs(tmp_path))


def test_csv_and_json_files(sweep, tmp_path):
    runs = collect_runs(sweep)
    written = write_tables(summarise(runs), tmp_path / "out", skipped={sweep / "x": "failed"})
    assert [path.name for path in written] == ["table.md", "table.csv", "table.json"]
    assert not list((tmp_path / "out").glob("*.tmp"))
    table = list(csv.DictReader(io.StringIO((tmp_path / "out" / "table.csv").read_text())))
    assert list(table[0]) == ["prompt.method", "prompt.length", "n", "seeds", "test_top1_mean", "test_top1_std",
                              "test_top1_n", "test_top1_paper", "trainable_params_mean", "trainable_params_std",
                              "trainable_params_n", "train_seconds_mean", "train_seconds_std", "train_seconds_n",
                              "paper_source"]
    deep10 = table[1]
    assert (deep10["prompt.method"], deep10["prompt.length"], deep10["seeds"]) == ("deep", "10", "0 1 2")
    assert float(deep10["test_top1_std"]) == pytest.approx(math.sqrt(7))
    assert float(deep10["test_top1_paper"]) == 93.4
    data = json.loads((tmp_path / "out" / "table.json").read_text())
    assert data["group_by"] == ["prompt.method", "prompt.length"]
    row = data["rows"][3]
    assert row["group"] == {"prompt.method": "shallow", "prompt.length": 10}
    assert row["metrics"]["test_top1"] == {"mean": 71.5, "std": 1.0, "n": 3, "paper": 90.1}
    assert len(row["runs"]) == 3 and data["skipped"] == {str(sweep / "x"): "failed"}


def assert_png(path: Path) -> None:
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
        image.verify()


def test_plots_are_valid_pngs(sweep, tmp_path):
    written = write_plots(collect_runs(sweep), tmp_path / "plots")
    assert [path.name for path in written] == ["accuracy_vs_prompt_length.png", "accuracy_vs_trainable_params.png",
                                               "accuracy_vs_train_time.png"]
    for path in written:
        assert_png(path)


def test_only_plots_whose_axes_vary_are_drawn(tmp_path):
    for seed in range(2):  # one method, one length: params and train time vary by seed only, length not at all
        write_run(tmp_path / "runs" / str(seed), "deep", 10, seed, 50.0 + seed)
    assert write_plots(collect_runs(tmp_path / "runs"), tmp_path / "plots") == []
    # a linear probe: no prompt length (one length left, so no length plot) and the deep runs' mean train time
    write_run(tmp_path / "runs" / "linear", "linear", None, 0, 40.0, train_seconds=100.5)
    written = write_plots(collect_runs(tmp_path / "runs"), tmp_path / "plots")
    assert [path.name for path in written] == ["accuracy_vs_trainable_params.png"]


def test_cli_prints_the_table_and_writes_the_chosen_formats(sweep, tmp_path, capsys):
    main([str(sweep), "--out", str(tmp_path / "out"), "--format", "md,csv", "--no-plots",
          "--metric", "test_top1", "--group-by", "prompt.method"])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "| prompt.method | n | test_top1 | paper |"
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["table.csv", "table.md"]
    assert (tmp_path / "out" / "table.md").read_text() == out


def test_cli_default_out_is_report_inside_the_first_dir(sweep, capsys):
    main([str(sweep)])
    assert {path.name for path in (sweep / "report").iterdir()} >= {"table.md", "table.json",
                                                                     "accuracy_vs_prompt_length.png"}
    assert len(collect_runs(sweep)) == 12  # the report folder is not mistaken for a run


@pytest.mark.parametrize("args, message", [
    ([], "vpt-report: error: no results.json under {empty}; pass a run directory written by vpt-train"),
    (["--format", "md,xlsx"], "vpt-report: error: unknown table format xlsx; valid formats: md, csv, json"),
    (["--failed-run"], "vpt-report: error: no completed runs under {empty} (1 run skipped (failed: 1))"),
])
def test_cli_user_errors_exit_2_with_one_message(tmp_path, capsys, args, message):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    if args == ["--failed-run"]:
        write_run(empty / "sub" / "0", "deep", 10, 0, 0.0, status="failed")
        args = []
    with pytest.raises(SystemExit) as exit_info:
        main([str(empty), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(message.format(empty=empty))


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(NoResultsError, match="does not exist"):
        collect_runs([tmp_path / "nope"])


def test_a_real_vpt_train_run_is_read_back(tmp_path):
    run_dir = tmp_path / "real"
    command = [str(Path(sys.executable).with_name("vpt-train")), "trainer.epochs=1", "trainer.limit_train_batches=2",
               "trainer.cpu_threads=1", "trainer.progress_bar=false", f"hydra.run.dir={run_dir}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"})
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = collect_runs([tmp_path])
    assert run.dir == run_dir.resolve() and run.setting("prompt.method") == "deep"
    assert run.setting("trainer.limit_train_batches") == 2
    (row,) = summarise([run])
    assert 0.0 <= row.stats["test_top1"].mean <= 100.0 and row.stats["trainable_params"].mean > 0
    assert row.stats["test_top1"].mean == pytest.approx(json.loads((run_dir / "results.json").read_text())["test_top1"])


def test_vpt_eval_results_without_status_count_as_finished(tmp_path):
    folder = write_run(tmp_path / "eval", "deep", 10, 0, 55.0)
    results = json.loads((folder / "results.json").read_text())
    del results["status"]  # vpt-eval writes no status, and writes results.json only at the end
    (folder / "results.json").write_text(json.dumps(results))
    (run,) = collect_runs(tmp_path)
    assert run.metric("test_top1") == 55.0


B2N_PAPER = {"source": "11-dataset means", "coop": {"test_top1": 82.69, "new_top1": 63.22, "hm_top1": 71.66},
             "maple": {"test_top1": 82.28, "new_top1": 75.14, "hm_top1": 78.55}}


def test_base_to_novel_runs_get_the_harmonic_mean_beside_the_papers(tmp_path):
    # base 80, 84 -> mean 82; new (vpt-eval in <run>/new) 60, 66 -> mean 63; HM = 2*82*63 / 145 = 10332 / 145 = 71.2551...
    for seed, (base, new) in enumerate([(80.0, 60.0), (84.0, 66.0)]):
        run = write_run(tmp_path / f"coop{seed}", "coop", None, seed, base, paper=B2N_PAPER)
        (run / "new").mkdir()
        (run / "new" / "results.json").write_text(json.dumps({"method": "coop", "test_top1": new, "seed": seed}))
    # MaPLe: one run, base 90, new 70 reported in results.json itself: HM = 2*90*70 / 160 = 78.75
    write_run(tmp_path / "maple0", "maple", None, 0, 90.0, paper=B2N_PAPER, new_top1=70.0)
    runs = collect_runs(tmp_path)
    assert len(runs) == 3  # the new/ evaluations are read with their runs, not as runs
    assert default_metrics(runs)[:3] == ["test_top1", "new_top1", "hm_top1"]
    coop, maple = summarise(runs, group_by=["prompt.method"])
    assert coop.stats["new_top1"] == (63.0, pytest.approx(math.sqrt(18)), 2)
    assert coop.stats["hm_top1"].mean == pytest.approx(10332 / 145) and coop.stats["hm_top1"].n == 2
    assert maple.stats["hm_top1"].mean == pytest.approx(78.75)
    assert coop.paper == {"test_top1": 82.69, "new_top1": 63.22, "hm_top1": 71.66}
    table = to_markdown([coop, maple]).splitlines()
    assert table[0].startswith("| prompt.method | n | test_top1 | paper | new_top1 | paper | hm_top1 | paper |")
    assert table[2].startswith("| coop | 2 | 82.00 ± 2.83 | 82.69 | 63.00 ± 4.24 | 63.22 | 71.26 | 71.66 |")
    assert table[3].startswith("| maple | 1 | 90.00 | 82.28 | 70.00 | 75.14 | 78.75 | 78.55 |")
    assert to_json([coop])["rows"][0]["metrics"]["hm_top1"]["paper"] == 71.66
    assert harmonic_mean(82.69, 63.22) == pytest.approx(71.66, abs=0.01) and harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(80.0, None) is None
    only_base = summarise(collect_runs(tmp_path / "maple0"), metrics=["test_top1", "hm_top1"])[0]
    assert only_base.stats["hm_top1"].mean == pytest.approx(78.75)
    with pytest.raises(ConfigError, match="hm_top1"):
        write_run(tmp_path / "other" / "r", "deep", 1, 0, 50.0)
        summarise(collect_runs(tmp_path / "other"), metrics=["hm_top1"])


class F1Task(Task):
    """A toy task ranked by F1: the report and vpt-tune must pick its metric, not top-1."""
    name = "toy_f1"
    primary_metric = "f1"


@pytest.fixture
def f1_task():
    register_task(F1Task())
    yield
    TASKS.unregister(F1Task.name)


def test_each_run_reports_its_tasks_primary_metric(tmp_path, f1_task):
    write_run(tmp_path / "f1", "deep", 10, 0, None, task="toy_f1", test_f1=0.7, val_f1=0.6)
    write_run(tmp_path / "det", "deep", 10, 0, None, task="detection", test_map=40.0, val_map=30.0, test_ap50=60.0)
    write_run(tmp_path / "cls", "deep", 10, 0, 80.0, task="classification", val_top1=70.0)
    by_name = {run.dir.name: run for run in collect_runs(tmp_path)}
    assert {name: run.primary_metric("test") for name, run in by_name.items()} == \
        {"f1": "test_f1", "det": "test_map", "cls": "test_top1"}
    assert by_name["det"].primary_metric("val") == "val_map"
    assert default_metrics([by_name["f1"]]) == ["test_f1", "val_f1", "trainable_params", "train_seconds"]
    assert default_metrics([by_name["det"]]) == ["test_map", "test_ap50", "val_map", "trainable_params",
                                                 "train_seconds"]
    assert accuracy_metric([by_name["f1"]]) == "test_f1"


def test_a_run_found_by_its_configs_task_or_of_old_vpt_is_classification(tmp_path, f1_task):
    old = write_run(tmp_path / "old", "deep", 10, 0, 80.0)  # results.json without a task: vpt before tasks
    assert collect_runs(old)[0].primary_metric() == "test_top1"
    folder = write_run(tmp_path / "cfg", "deep", 10, 0, None, test_f1=0.5)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    (folder / "config.yaml").write_text(yaml.safe_dump({**config, "task": {"name": "toy_f1"}}))
    assert collect_runs(folder)[0].primary_metric() == "test_f1"


def test_a_paper_number_without_a_metric_is_of_the_tasks_primary_one(tmp_path, f1_task):
    write_run(tmp_path / "f1", "deep", 10, 0, None, paper={"source": "toy", "deep": 0.8}, task="toy_f1", test_f1=0.7)
    (row,) = summarise(collect_runs(tmp_path), ["test_f1"])
    assert row.paper == {"test_f1": 0.8}
