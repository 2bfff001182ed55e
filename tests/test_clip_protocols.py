"""CoCoOp's transfer protocols as one vpt-tune each: base-to-novel, cross-dataset and domain generalisation
(tune.eval_on), end to end on a tiny random-init CLIP, plus the presets' targets and paper rows."""
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vpt.data import build_data
from vpt.errors import ConfigError
from vpt.tools.report import collect_runs, summarise
from vpt.tools.report.runs import transfer_metrics
from vpt.tools.tune import TrainRun, tune
from vpt.tools.tune.launch import evaluate_run
from vpt.tools.tune.protocol import TuneSettings, read_train_config

IMAGE = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}


def write_class_folders(root: Path, classes: dict[str, int], seed: int = 0) -> int:
    """<class>/<image>.png folders of noise images; returns the image count."""
    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for index in range(count):
            pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index}.png")
    return sum(classes.values())


def test_one_vpt_tune_trains_on_base_classes_and_scores_new_classes_and_other_datasets(tmp_path):
    """coop_transfer_quickstart: train on digits 5-7, vpt-eval on 8-9 (new), on digits 0-4 (another dataset's
    classes) and on an evaluation-only folder dataset (as ImageNet-Sketch in domain generalisation)."""
    sketch = tmp_path / "sketch"
    images = write_class_folders(sketch, {"seven": 3, "eight": 2, "nine": 4})
    result = tune(["experiment=coop_transfer_quickstart", "trainer.epochs=1", "trainer.cpu_threads=1"], seeds=[1],
                  out=str(tmp_path / "tune"),
                  eval_on={"digits_0_4": ["data=digits_source"],
                           "sketch": ["data=imagefolder", "data.eval_only=true", f"data.root={sketch}"]})
    (run,) = result.final_runs
    new = json.loads((run.dir / "new" / "results.json").read_text())
    digits = json.loads((run.dir / "transfer" / "digits_0_4" / "results.json").read_text())
    folder = json.loads((run.dir / "transfer" / "sketch" / "results.json").read_text())
    assert new["images"] == {"test": 71} and digits["images"] == {"test": 180}  # digits 8-9 and 0-4 test splits
    assert folder["images"] == {"test": images} and folder["dataset"] == "imagefolder"
    assert "context applied to the 3 evaluated classes ['eight', 'nine', 'seven']" in \
        (run.dir / "transfer" / "sketch" / "vpt-eval.log").read_text()
    (row,) = result.rows
    assert row.stats["new_top1"].mean == pytest.approx(new["test_top1"])
    assert row.stats["transfer_digits_0_4_top1"].mean == pytest.approx(digits["test_top1"])
    assert row.stats["transfer_mean_top1"].mean == pytest.approx((digits["test_top1"] + folder["test_top1"]) / 2)
    table = (tmp_path / "tune" / "table.md").read_text()
    assert "| hm_top1 | transfer_digits_0_4_top1 | transfer_sketch_top1 | transfer_mean_top1 |" in table
    # vpt-report reads the same run dir: the evaluations are the run's metrics, not runs of their own
    (reported,) = collect_runs([tmp_path / "tune" / "final"])
    assert reported.results["transfer_sketch_top1"] == folder["test_top1"]


def test_an_evaluation_is_kept_when_finished_and_redone_aside_when_its_overrides_changed(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("vpt.tools.tune.launch.subprocess.run", lambda command, **kw: calls.append(command) or
                        type("Done", (), {"returncode": 0})())
    run = TrainRun("final/x", tmp_path / "run", [])
    out = run.dir / "transfer" / "dtd"
    out.mkdir(parents=True)
    (out / "results.json").write_text("{}")
    (out / "eval_args.json").write_text(json.dumps(["data=zhou_split"]))
    evaluate_run(run, "transfer/dtd", ["data=zhou_split"])
    assert calls == []  # finished with the same overrides: kept
    with pytest.raises(Exception, match="without results"):  # the fake vpt-eval writes nothing
        evaluate_run(run, "transfer/dtd", ["data=zhou_split", "data.root=/elsewhere"])
    assert calls and "data.root=/elsewhere" in calls[0] and "splits=[test]" in calls[0]
    aside = [p for p in (run.dir / "transfer").iterdir() if p.name.startswith("dtd.stale-")]
    assert len(aside) == 1 and (aside[0] / "results.json").is_file()  # the finished one moved aside, not lost


@pytest.mark.parametrize("value, message", [
    (["data=dtd"], "must map a name"),
    ({"dtd": "data=dtd"}, "must be a list"),
    ({"a/b": ["data=dtd"]}, "names a folder"),
    ({"mean": ["data=dtd"]}, "not 'mean'"),
])
def test_bad_eval_on_is_one_message(value, message):
    info = read_train_config(["experiment=coop_quickstart", "output_dir=/tmp/x"])
    with pytest.raises(ConfigError, match=message):
        TuneSettings.resolve({"eval_on": value, "grid": "base2new", "search": False}, info)


def test_an_eval_only_folder_is_a_test_split_and_cannot_be_trained_on(tmp_path):
    from tests.test_coop_presets import compose_preset
    from vpt.engine import train

    count = write_class_folders(tmp_path / "sketch", {"cat": 2, "dog": 3})
    data = build_data({"name": "imagefolder", "root": str(tmp_path / "sketch"), "eval_only": True}, IMAGE, seed=0)
    assert data.train is None and len(data.test) == count and data.class_names == ["cat", "dog"]
    with pytest.raises(ConfigError, match="eval_only=true is for data=imagefolder.*drop data.eval_only"):
        build_data({"name": "digits", "eval_only": True}, IMAGE, seed=0)
    with pytest.raises(ConfigError, match="no training split.*vpt-eval"):
        train(compose_preset("experiment=coop_quickstart", "data=imagefolder", f"data.root={tmp_path / 'sketch'}",
                             "data.eval_only=true", "logger=none"), output_dir=tmp_path / "run")


def test_transfer_metrics_are_each_targets_test_top1_and_their_mean(tmp_path):
    for name, value in {"dtd": 40.0, "eurosat": 50.0}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"test_top1": value}))
    assert transfer_metrics(tmp_path) == {"transfer_dtd_top1": 40.0, "transfer_eurosat_top1": 50.0,
                                          "transfer_mean_top1": 45.0}


@pytest.mark.parametrize("preset, targets", [
    ("coop/cross_dataset", ["caltech101", "oxford_pets", "stanford_cars", "flowers102", "food101", "fgvc_aircraft",
                            "sun397", "dtd", "eurosat", "ucf101"]),
    ("coop/domain_generalization", ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]),
])
def test_transfer_presets_train_on_imagenet_and_score_the_papers_targets(preset, targets):
    info = read_train_config([f"experiment={preset}", "output_dir=/tmp/x", "paths.data_dir=/data"])
    block = info.tune_block
    assert list(block["eval_on"]) == targets and block["search"] is False and block["seeds"] == [1, 2, 3]
    assert all(args[0] in ("data=zhou_split", "data=imagefolder") and any(a.startswith("data.root=/data/")
                                                                           for a in args)
               for args in block["eval_on"].values())
    from tests.test_coop_presets import compose_preset

    cfg = compose_preset(f"experiment={preset}", "paths.data_dir=/data")
    assert cfg.data.root == "/data/imagenet/images" and cfg.data.num_shots == 16
    for method in ("coop", "cocoop", "maple"):  # the paper's mean is the mean of its per-target numbers
        row = cfg.paper[method]
        assert set(row) == {"test_top1", "transfer_mean_top1", *(f"transfer_{t}_top1" for t in targets)}
        per_target = statistics.fmean(row[f"transfer_{t}_top1"] for t in targets)
        assert per_target == pytest.approx(row["transfer_mean_top1"], abs=0.006)


@pytest.mark.parametrize("shots, val_shots", [(1, 1), (2, 2), (4, 4), (16, 4)])
def test_coop_recipe_tests_the_final_model_and_draws_a_few_shot_val(shots, val_shots):
    """Dassl's few-shot val is min(shots, 4) images per class and CoOp tests the last epoch (TEST.FINAL_MODEL)."""
    from tests.test_coop_presets import compose_preset

    cfg = compose_preset("experiment=coop/dtd", f"data.num_shots={shots}")
    assert cfg.data.val_shots == val_shots and cfg.trainer.monitor == "last"
    assert compose_preset("experiment=base2new_maple").trainer.monitor == "last"


def test_val_shots_draws_k_per_class_of_the_val_split_per_seed():
    data = {"name": "digits", "val_fraction": 0.3, "val_shots": 2}
    first, again, other = (build_data(data, IMAGE, seed=s) for s in (0, 0, 1))
    labels = [int(first.val[i][1]) for i in range(len(first.val))]
    assert sorted(labels) == sorted(list(range(10)) * 2)
    indices = lambda bundle: [bundle.val[i][0].sum().item() for i in range(len(bundle.val))]  # noqa: E731
    assert indices(first) == indices(again) and indices(first) != indices(other)
    few = build_data({**data, "val_shots": 100}, IMAGE, seed=0)  # more than a class has: all of it, as Dassl
    assert len(few.val) == len(build_data({**data, "val_shots": None}, IMAGE, seed=0).val)
    with pytest.raises(ConfigError, match="val_shots and data.val_size"):
        build_data({**data, "val_size": 10}, IMAGE, seed=0)


def test_monitor_last_keeps_the_last_epoch_with_a_val_split(tmp_path):
    from tests.test_coop_presets import compose_preset
    from vpt.engine import train

    common = ["experiment=coop_quickstart", "trainer.epochs=3", "data.val_fraction=0.3", "trainer.cpu_threads=1",
              "logger=none", "trainer.progress_bar=false", "trainer.limit_train_batches=1"]
    results = train(compose_preset(*common, "trainer.monitor=last"), output_dir=tmp_path / "last")
    assert results["best_epoch"] == 3 and "val_top1" in results
    with pytest.raises(ConfigError, match=r"trainer.monitor=val_acc is not a metric.*val_top1.*monitor=last"):
        train(compose_preset(*common, "trainer.monitor=val_acc"), output_dir=tmp_path / "typo")
