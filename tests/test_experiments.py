"""Logic of the experiment scripts that decides what they report (no training, no shared data).

The transfer study is a call of vpt-tune per method; the search, pick and reuse rules are tested in test_tune.py."""
import importlib.util
import json
import math
from pathlib import Path

import pytest

from vpt.tools.tune import TrainRun, TuneResult, best_point, search

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "experiments" / "results" / "cifar10_transfer"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def study():
    return _load("cifar10_transfer_study")


def test_committed_table_is_what_the_study_writes_from_its_summary(study):
    rows = json.loads((COMMITTED / "summary.json").read_text())["rows"]
    assert study.table_text(rows) + "\n" == (COMMITTED / "table.md").read_text()


def test_the_lr_search_extends_the_methods_grid_as_the_committed_study_did(study):
    """full fine-tuning's committed search: 0.002 was best of 1e-4, 5e-4, 2e-3, so 0.008 was tried (ratio 4)."""
    committed = json.loads((COMMITTED / "summary.json").read_text())["rows"]
    val = {row["method"]: {float(lr): acc for lr, acc in row["val_top1_by_lr"].items()} for row in committed}
    for method, by_lr in val.items():
        grid = study.lr_grid(method, search=True)
        scores = search(grid, lambda points, m=method: {p: val[m][p[0]] for p in points}, max_extend=2)
        assert sorted(lr for (lr,) in scores) == sorted(by_lr), method  # the same runs, no more, no fewer
        assert best_point(grid, scores) == (next(r["base_lr"] for r in committed if r["method"] == method),)


def _result(study, method, lrs_scores, pick, tests):
    grid = study.lr_grid(method, search=True)
    finals = [TrainRun(f"final/s{s}", Path("."), [], seed=s,
                       results={"test_top1": acc, "trainable_params": 645, "prompt_file_bytes": 2812,
                                "train_seconds": 60.0 + s}) for s, acc in enumerate(tests)]
    return TuneResult(Path("."), grid, "val_top1", {(lr,): v for lr, v in lrs_scores.items()}, (pick,), [], finals)


def test_a_row_is_the_mean_and_sample_std_of_the_final_runs(study):
    row = study.row_of("linear", _result(study, "linear", {8.0: 68.5, 0.5: 68.5, 2.0: 70.0}, 2.0, [66.0, 66.2, 66.6]))
    assert row["base_lr"] == 2.0 and list(row["val_top1_by_lr"]) == [0.5, 2.0, 8.0]
    assert row["test_top1_mean"] == pytest.approx(66.2666, abs=1e-3)
    assert row["test_top1_std"] == pytest.approx(math.sqrt(((66.0 - 66.2667) ** 2 + (66.2 - 66.2667) ** 2
                                                            + (66.6 - 66.2667) ** 2) / 2), abs=1e-3)
    assert row["train_seconds_mean"] == pytest.approx(61.0)
    line = "| linear probe | 66.3 ± 0.3 | 2 (0.5: 68.5, 2: 70.0, 8: 68.5) | 645 | 2.7 KiB | 61 s |"
    assert line in study.table_text([row])


def test_the_study_tunes_every_method_with_its_grid_and_shared_runner(study, tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "cifar10" / "train").mkdir(parents=True)
    calls = {}

    def fake_train_once(args, run_dir, runner):
        assert args[:2] == ["experiment=cifar10_pretrain", "trainer.epochs=40"]
        return {"test_top1": 70.1, "train_seconds": 1.0}

    def fake_tune(args, runner, **options):
        method = args[1].split("=")[1]
        calls[method] = (args, options, runner)
        grid = options["grid"]
        return _result(study, method, {lr: 60.0 for lr in grid.params["optim.base_lr"]},
                       grid.params["optim.base_lr"][1], [60.0, 61.0, 62.0])

    monkeypatch.setattr(study, "train_once", fake_train_once)
    monkeypatch.setattr(study, "tune", fake_tune)
    monkeypatch.setattr("sys.argv", ["study", "--data-root", str(data), "--out", str(tmp_path / "out"), "--jobs", "2",
                                     "trainer.device=cpu"])
    study.main()
    assert sorted(calls) == sorted(study.METHODS)
    args, options, runner = calls["full"]
    assert args == ["experiment=cifar10_transfer", "prompt=full",
                    f"backbone.pretrained={tmp_path / 'out' / 'pretrain' / 'cifar_vit_source.safetensors'}",
                    "trainer.epochs=25", "optim=adamw", "optim.lr_scaling=none", "logger=csv", "trainer.device=cpu"]
    assert options["grid"].params == {"optim.base_lr": [0.0001, 0.0005, 0.002]}
    assert options["seeds"] == [0, 1, 2] and options["search_seed"] == 0 and options["out"] == tmp_path / "out" / "full"
    assert len({id(call[2]) for call in calls.values()}) == 1 and runner.jobs == 2  # one pool of 2 for all methods
    table = (tmp_path / "out" / "table.md").read_text()
    assert table.count("| 61.0 ± 1.0 |") == 5
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["source_test_top1"] == 70.1


def test_pennfudan_study_table_matches_its_committed_runs_and_names_missing_data(tmp_path, monkeypatch, capsys):
    """The ViT-S/14 table's means are those of the committed per-run numbers; no data is one message."""
    import statistics

    summary = json.loads((ROOT / "experiments/results/pennfudan_vit_s14/summary.json").read_text())
    table = (ROOT / "experiments/results/pennfudan_vit_s14/table.md").read_text()
    deep = [run["test_map"] for run in summary["runs"] if run["setting"] == "VPT-deep (10 tokens)"]
    assert len(deep) == 3 and f"| VPT-deep (10 tokens) | {100 * statistics.mean(deep):.1f} ±" in table
    assert summary["backbone"] == "vit_s14_imgfocus" and "task.detector=retinanet" in summary["overrides"]
    study = _load("pennfudan_study")
    monkeypatch.setattr("sys.argv", ["pennfudan_study.py", "--data-root", str(tmp_path)])
    with pytest.raises(SystemExit, match="no Penn-Fudan data at .*pass --data-root"):
        study.main()


# ---- the VTAB-1k study on the PyPI-weight encoders ----------------------------------------------------------------
@pytest.fixture(scope="module")
def vtab1k():
    return _load("pypi_vtab1k_study")


def test_vtab1k_study_tunes_each_row_with_the_protocols_split_and_its_grid(vtab1k, tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "cifar10" / "train").mkdir(parents=True)
    calls = {}

    def fake_tune(args, runner, **options):
        name = Path(options["out"]).name
        calls[name] = (args, options)
        lrs = options["grid"].params["optim.base_lr"]
        finals = [TrainRun(f"final/s{s}", Path("."), [], seed=s,
                           results={"test_top1": 60.0 + s, "trainable_params": 100, "train_seconds": 10.0,
                                    "test_count": 10000, "train_size": 1000}) for s in range(3)]
        return TuneResult(Path("."), options["grid"], "val_top1", {(lr,): 50.0 + i for i, lr in enumerate(lrs)},
                          (lrs[-1],), [], finals)

    monkeypatch.setattr(vtab1k, "tune", fake_tune)
    monkeypatch.setattr("sys.argv", ["study", "--data-root", str(data), "--out", str(tmp_path / "out"),
                                     "--runs-dir", str(tmp_path / "runs"), "--jobs", "2", "trainer.device=cpu"])
    vtab1k.main()
    assert sorted(calls) == sorted(f"{b}_{m}" for b, m, _, _ in vtab1k.RUNS)
    args, options = calls["effnet_pad_label_map"]
    assert "prompt=pad" in args and "task=label_map" in args and "backbone=efficientnet_lite0_in1k" in args
    for protocol_arg in ("++data.val_size=200", "++data.train_size=800", "data.classes=null", "trainer.monitor=last"):
        assert protocol_arg in args
    assert args[-1] == "trainer.device=cpu" and not any("max_per_class_test" in a for a in args)  # all 10,000 test
    assert options["search_test"] is False and options["seeds"] == [0, 1, 2] and options["max_extend"] == 1
    assert "backbone.image_size=84" in calls["vit_deep"][0] and "prompt.length=10" in calls["vit_deep"][0]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [row["key"] for row in summary["rows"]] == [f"{b}:{m}" for b, m, _, _ in vtab1k.RUNS]  # the RUNS order
    table = (tmp_path / "out" / "table.md").read_text()
    assert table.count("| 61.0 ± 1.0 |") == len(vtab1k.RUNS) and table.count("at the grid's edge") == len(vtab1k.RUNS)
    first = table
    monkeypatch.setattr("sys.argv", ["study", "--data-root", str(data), "--out", str(tmp_path / "out"),
                                     "--runs-dir", str(tmp_path / "runs"), "--only", "vit:deep"])
    vtab1k.main()  # again for one row: the others are kept from summary.json
    assert (tmp_path / "out" / "table.md").read_text() == first


def test_vtab1k_study_names_missing_data_and_unknown_rows(vtab1k, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["study", "--data-root", str(tmp_path)])
    with pytest.raises(SystemExit, match="CIFAR-10 subset not found.*--data-root"):
        vtab1k.main()
    (tmp_path / "cifar10" / "train").mkdir(parents=True)
    monkeypatch.setattr("sys.argv", ["study", "--data-root", str(tmp_path), "--only", "vit:bias"])
    with pytest.raises(SystemExit, match="unknown --only vit:bias; known: effnet:linear"):
        vtab1k.main()


def test_the_committed_vtab1k_table_is_its_runs_under_the_protocol(vtab1k):
    """Every committed row: 3 seeds of 1,000 training images tested on all 10,000 test images, its mean and sample
    std those of its per-seed numbers, the pick the best val score, and the table what the study writes."""
    import argparse
    import statistics

    out = ROOT / "experiments" / "results" / "pypi_vtab1k"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"], "no committed rows"
    for row in summary["rows"]:
        runs = row["test_top1_runs"]
        assert len(runs) == 3 and row["train_size"] == 1000 and row["test_images"] == 10000, row["key"]
        assert row["test_top1_mean"] == pytest.approx(statistics.mean(runs))
        assert row["test_top1_std"] == pytest.approx(statistics.stdev(runs))
        scores = {float(lr): acc for lr, acc in row["val_top1_by_lr"].items() if acc is not None}
        assert row["base_lr"] == min(lr for lr, acc in scores.items() if acc == max(scores.values())), row["key"]
    args = argparse.Namespace(**summary["protocol"])  # the settings the study ran with
    assert vtab1k.table_text(summary["rows"], args) + "\n" == (out / "table.md").read_text()
