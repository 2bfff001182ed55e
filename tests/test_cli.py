"""vpt-train / vpt-eval end to end, as a user runs them (subprocesses, from a foreign directory)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

import vpt
from vpt.files import load_state

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
# One short run on digits 5-9 with the committed digits ViT
QUICK = ["trainer.epochs=1", "trainer.limit_train_batches=2", "data.train_size=64", "data.val_fraction=0.1",
         "trainer.batch_size=32", "trainer.progress_bar=false", "prompt.length=2"]
DIGITS_VIT = Path(vpt.__file__).parent / "assets" / "digits_vit.safetensors"


def vpt(command, *args, cwd, timeout=300, check=None):
    result = subprocess.run([str(BIN / command), *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                            timeout=timeout)
    if check is not None:
        assert result.returncode == check, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def read_results(run_dir):
    return json.loads((Path(run_dir) / "results.json").read_text())


def read_history(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def epochs_trained(stdout):
    """The epochs a vpt-train process trained, from its log lines ``epoch 3/5  train_loss ...``."""
    return [int(epoch) for epoch in re.findall(r"\] - epoch (\d+)/\d+ ", stdout)]


def test_train_then_eval_the_saved_prompt_file(tmp_path):
    run = tmp_path / "run"
    trained = vpt("vpt-train", *QUICK, f"hydra.run.dir={run}", cwd=tmp_path, check=0)
    assert epochs_trained(trained.stdout) == [1]
    results = read_results(run)
    for key in ("method", "backbone", "dataset", "seed", "test_top1", "val_top1", "trainable_params", "total_params",
                "prompt_file_bytes", "train_seconds", "train_images_per_s"):
        assert key in results, key
    assert results["method"] == "deep" and results["dataset"] == "digits" and results["best_epoch"] == 1
    # deep prompts: 2 tokens x 64 dims in each of the digits ViT's 6 blocks, plus the 64 -> 5 head
    assert results["trainable_params"] == 6 * 2 * 64 + 64 * 5 + 5
    backbone_params = sum(t.numel() for t in load_file(DIGITS_VIT).values())
    assert results["total_params"] == backbone_params + results["trainable_params"]
    assert results["prompt_file_bytes"] == (run / "best" / "prompt.safetensors").stat().st_size
    assert "prompt:" in (run / "config.yaml").read_text() and "${" not in (run / "config.yaml").read_text()
    history = read_history(run)
    assert [row["epoch"] for row in history] == [1] and history[0]["test_top1"] == results["test_top1"]
    csv_header, csv_row = (run / "metrics.csv").read_text().splitlines()
    assert csv_header.startswith("epoch,") and csv_row.startswith("1,")
    # best/ and last/ are the epoch-1 prompts, which is also what the resume state would continue from
    assert json.loads((run / "best" / "prompt.json").read_text())["epoch"] == 1
    tensors, meta = load_state(run / "resume")
    assert meta["train_state"]["epoch"] == 1 and meta["train_state"]["history"] == history
    last = load_file(run / "last" / "prompt.safetensors")
    assert set(last) == set(tensors) and all(last[name].equal(tensors[name]) for name in last)

    evaluation = tmp_path / "eval"
    vpt("vpt-eval", f"prompt_file={run}/best", "data=digits_target", "data.train_size=64", "data.val_fraction=0.1",
        f"hydra.run.dir={evaluation}", cwd=tmp_path, check=0)
    evaluated = read_results(evaluation)
    assert evaluated["test_top1"] == pytest.approx(results["test_top1"])
    assert evaluated["val_top1"] == pytest.approx(results["val_top1"])


def test_eval_of_the_latest_run_scores_the_splits_it_was_trained_on(tmp_path):
    """No <date> to type and no data settings to repeat: outputs/<name>/latest/best, scored on the recorded split."""
    trained = vpt("vpt-train", *QUICK, "seed=3", cwd=tmp_path, check=0)  # default run dir outputs/deep_digits/<date>
    latest = tmp_path / "outputs" / "deep_digits" / "latest"
    assert latest.is_symlink() and not Path(os.readlink(latest)).is_absolute()
    (run,) = [p for p in latest.parent.iterdir() if p.name != "latest"]
    assert latest.resolve() == run.resolve()
    results = read_results(run)
    evaluated = vpt("vpt-eval", "prompt_file=outputs/deep_digits/latest/best", "hydra.run.dir=eval", cwd=tmp_path,
                    check=0)
    scores = read_results(tmp_path / "eval")
    assert scores["val_top1"] == results["val_top1"] and scores["test_top1"] == results["test_top1"]
    assert scores["data_seed"] == 3 and scores["images"]["val"] > 0 and scores["images"]["test"] > 0
    line = (f"scoring digits: val {scores['images']['val']} images, test {scores['images']['test']} images; "
            "data settings from the prompt file")
    assert line in evaluated.stdout + evaluated.stderr
    # a setting given on the command line changes that setting only, and the line says so
    vpt("vpt-eval", "prompt_file=outputs/deep_digits/latest/best", "data.val_fraction=0.25", "hydra.run.dir=eval2",
        cwd=tmp_path, check=0)
    changed = read_results(tmp_path / "eval2")
    assert changed["images"]["val"] > scores["images"]["val"] and changed["images"]["test"] == scores["images"]["test"]
    assert changed["data_source"] == "the prompt file, with data.val_fraction from the command line"


def test_a_date_placeholder_or_a_missing_prompt_file_is_one_message(tmp_path):
    result = vpt("vpt-eval", "prompt_file=outputs/deep_digits/<date>/best", cwd=tmp_path, check=2)
    assert "holds the placeholder <date>" in result.stderr and "prompt_file=outputs/deep_digits/latest/best" in result.stderr
    assert "Lexer" not in result.stderr + result.stdout and "Traceback" not in result.stderr
    (tmp_path / "outputs" / "deep_digits" / "2026-01-02_10-00-00" / "best").mkdir(parents=True)
    (tmp_path / "outputs" / "deep_digits" / "2026-01-02_10-00-00" / "best" / "prompt.json").write_text("{}")
    result = vpt("vpt-eval", "prompt_file=outputs/deep_digits/2026-01-03/best", cwd=tmp_path, check=2)
    assert result.stderr.count("error:") == 1 and "does not exist" in result.stderr
    assert "2026-01-02_10-00-00" in result.stderr and "Traceback" not in result.stderr


def test_unknown_group_option_lists_the_valid_names(tmp_path):
    result = vpt("vpt-train", "prompt=nope", cwd=tmp_path)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    for name in ("deep", "shallow", "linear", "random_patch"):
        assert name in output


def test_offline_hub_weights_give_one_clear_message(tmp_path):
    result = vpt("vpt-train", "backbone=vit_b16_in21k", "prompt=deep", "prompt.length=50", "data=cifar100",
                 cwd=tmp_path, check=2)
    assert "could not fetch pretrained weights" in result.stderr and "offline" in result.stderr
    # the library's message names the Python argument; the CLI adds the override to type
    assert "vpt-train: hint: on the command line: backbone.pretrained=false" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_missing_dataset_path_says_what_to_pass(tmp_path):
    result = vpt("vpt-train", "data=imagefolder", cwd=tmp_path, check=2)
    assert "data.root=" in result.stderr and "Traceback" not in result.stderr


def test_indivisible_image_size_is_reported_before_training(tmp_path):
    run = tmp_path / "run"
    result = vpt("vpt-train", "backbone.image_size=30", f"hydra.run.dir={run}", cwd=tmp_path, check=2)
    assert "not divisible by the patch size" in result.stderr
    assert not (run / "metrics.jsonl").exists()


def test_sweep_runs_every_combination(tmp_path):
    sweep = tmp_path / "sweep"
    vpt("vpt-train", "-m", "prompt=shallow,deep", "prompt.length=1,3", *QUICK[:-1], "trainer.limit_train_batches=1",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path, check=0)
    runs = sorted(sweep.glob("*/results.json"))
    assert len(runs) == 4
    seen = {(r["method"], r["prompt"]["length"]) for r in map(lambda p: json.loads(p.read_text()), runs)}
    assert seen == {("shallow", 1), ("shallow", 3), ("deep", 1), ("deep", 3)}
    # each run's log says which of the sweep's 4 runs it is (Hydra numbers the run folders from 0)
    for number in range(4):
        assert f"run {number + 1}/4 epoch 1/" in (sweep / str(number) / "train.log").read_text()


def test_optuna_search_runs_and_reports_the_best_trial(tmp_path):
    sweep = tmp_path / "optuna"
    vpt("vpt-train", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "trainer=debug",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path, check=0)
    trials = [read_results(path.parent) for path in sweep.glob("*/results.json")]
    assert len(trials) == 2
    # the sweeper maximises optimized_metric=val_top1: its best trial is the better of the two runs
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(trial["val_top1"] for trial in trials))


def test_optuna_search_refuses_to_score_on_trained_val(tmp_path):
    sweep = tmp_path / "optuna"
    result = vpt("vpt-train", "hparams_search=optuna", "hydra.sweeper.n_trials=1", "trainer=debug",
                 "++data.train_on_trainval=true", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode != 0
    assert "set data.train_on_trainval=false for the search" in result.stdout + result.stderr
    assert not list(sweep.glob("*/results.json"))


def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path, strip_timing):
    # prompt dropout exercises the RNG; 4 epochs of 3 batches leave time to kill after the first one
    args = ["trainer.epochs=4", "data.train_size=120", "data.val_fraction=0.1", "trainer.batch_size=40",
            "prompt.dropout=0.1", "prompt.length=4", "trainer.progress_bar=false",
            "trainer.cpu_threads=1"]  # one count for both runs: by default it follows the machine's load
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    vpt("vpt-train", *args, f"hydra.run.dir={reference}", cwd=tmp_path, check=0)

    process = subprocess.Popen([str(BIN / "vpt-train"), *args, f"hydra.run.dir={resumed}"], cwd=tmp_path, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (resumed / "resume.json").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)  # resume.json is written last (atomically): from here on the state is complete
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (resumed / "results.json").exists()
    saved_epochs = load_state(resumed / "resume")[1]["train_state"]["epoch"]
    assert 1 <= saved_epochs < 4

    finished = vpt("vpt-train", *args, "trainer.resume=true", f"hydra.run.dir={resumed}", cwd=tmp_path, check=0)
    # only the epochs after the saved state are trained again; a restart from scratch would train all four and,
    # as each epoch reseeds from (seed, epoch), could still end with the same numbers
    assert epochs_trained(finished.stdout) == list(range(saved_epochs + 1, 5)), finished.stdout
    assert f"after epoch {saved_epochs}/4" in finished.stdout
    expected, got = read_results(reference), read_results(resumed)
    for key in ("test_top1", "test_top5", "val_top1", "best_epoch", "epochs", "test_per_class_top1"):
        assert got[key] == expected[key], key
    assert strip_timing(read_history(resumed)) == strip_timing(read_history(reference))
    assert [row["epoch"] for row in read_history(resumed)] == [1, 2, 3, 4]


def test_wandb_offline_run_holds_the_metrics(tmp_path):
    run = tmp_path / "run"
    vpt("vpt-train", *QUICK, "logger=wandb", f"hydra.run.dir={run}", cwd=tmp_path, check=0)
    offline_runs = list((run / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1, f"expected one offline wandb run under {run / 'wandb'}"
    (log_file,) = offline_runs[0].glob("*.wandb")
    # `wandb sync` uploads this record log; its history and summary items carry the values JSON-encoded
    records = log_file.read_bytes()
    results, (row,) = read_results(run), read_history(run)
    for value in (row["train_loss"], row["val_top1"], results["test_top1"]):
        assert json.dumps(value).encode() in records, value
    assert results["status"] == "completed"
