"""The wandb tracker labels sweeps well (group, name, tags, job_type), offline, read back from wandb's own files."""
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from vpt.loggers import RUN_ID_FILE, WandbLogger, WandbTracker, read_hydra_run_info, run_labels

# A Hydra app on vpt's train config that only starts the configured tracker the way the trainer does
# (vpt.engine.build_tracker), logs one row and finishes: a real sweep's labels without any training.
TRACKER_APP = textwrap.dedent("""
    import hydra
    from pathlib import Path
    import vpt.tools.cli
    from vpt.engine import build_tracker

    vpt.tools.cli.register_resolvers()

    @hydra.main(version_base="1.3", config_path="pkg://vpt.configs", config_name="train")
    def main(cfg):
        tracker = build_tracker(cfg, Path(cfg.output_dir))
        tracker.log_metrics({"val_top1": 50.0}, step=1)
        tracker.finish()

    main()
""")
RUN_CONFIG = {"name": "deep_digits", "backbone": {"name": "vit_tiny_patch16_224"}, "prompt": {"method": "deep"},
              "data": {"name": "digits"}, "task": {"head": "linear"}}


def wandb_records(path):
    """The protobuf Records of a ``.wandb`` file: wandb's header then a LevelDB-style log (32 KiB blocks of chunks
    with a 7-byte header: crc32, little-endian length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4)."""
    from wandb.proto import wandb_internal_pb2

    data, block, header = Path(path).read_bytes(), 32768, 7
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    position, pending, records = header, b"", []
    while position + header <= len(data):
        if block - position % block < header:  # a block's tail too short for a chunk header is padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        pending += data[position + header:position + header + length]
        position += header + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def offline_run_records(run_dir):
    """Run records (config, group, tags, job_type, name) of the wandb offline runs under ``run_dir``, oldest first.

    Read only once wandb has closed them: ``run.finish()`` returns when the exit record is handled, but it only
    *informs* wandb's service process that the run is done (a message, not a wait); the service closes and flushes
    the run's transaction log after that, on its own time. ``wandb.teardown()`` is wandb's documented "wait for
    W&B to finish": it shuts the service down and waits for it to exit, so every file it wrote is complete.
    A run in a subprocess is complete once the subprocess has exited (wandb tears down at exit)."""
    import wandb

    wandb.teardown()  # no-op when this process started no wandb run
    records = []
    for log_file in sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb")):
        runs = [r.run for r in wandb_records(log_file) if r.WhichOneof("record_type") == "run"]
        assert runs, f"no run record in {log_file}"
        records.append(runs[0])
    return records


def offline_run_record(run_dir):
    (record,) = offline_run_records(run_dir)
    return record


def config_of(run_record):
    return {item.key: yaml.safe_load(item.value_json) for item in run_record.config.update}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two runs of a real Hydra multirun with logger=wandb (offline), in a sweep dir named lr_search."""
    root = tmp_path_factory.mktemp("sweep")
    app = root / "app.py"
    app.write_text(TRACKER_APP)
    sweep_dir = root / "lr_search"
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HYDRA_FULL_ERROR": "1"}
    result = subprocess.run([sys.executable, str(app), "-m", "logger=wandb", "prompt=shallow,deep", "prompt.length=3",
                             "data=digits", f"hydra.sweep.dir={sweep_dir}"], cwd=root, env=env, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    return sweep_dir, result.stdout + result.stderr


def test_sweep_runs_share_a_group_and_are_named_by_what_varies(sweep):
    sweep_dir, _ = sweep
    for job, method in ((0, "shallow"), (1, "deep")):
        run = offline_run_record(sweep_dir / str(job))
        assert run.run_group == "lr_search" and run.job_type == "train"
        assert run.display_name == f"{method}_digits prompt={method}"  # prompt.length=3 and data=digits are fixed
        assert set(run.tags) == {"backbone:vit_tiny_patch16_224", f"prompt:{method}", "data:digits",
                                 "task:classification"}
        config = config_of(run)
        assert config["prompt"]["method"] == method and config["prompt"]["length"] == 3
        assert config["data"]["name"] == "digits" and config["logger"]["mode"] == "offline"


def test_offline_runs_print_the_sync_command(sweep):
    sweep_dir, output = sweep
    for job in (0, 1):
        (run_folder,) = (sweep_dir / str(job) / "wandb").glob("offline-run-*")
        assert f"upload them with: wandb sync {run_folder.resolve()}" in output


def test_labels_from_the_files_hydra_saved_match_the_live_ones(sweep):
    sweep_dir, _ = sweep
    info = read_hydra_run_info(sweep_dir / "1")  # no live HydraConfig here: reads .hydra/ and multirun.yaml
    assert info.multirun and info.sweep_dir == sweep_dir and info.swept_keys == {"prompt"}
    labels = run_labels(sweep_dir / "1", "deep_digits", RUN_CONFIG)
    assert labels.group == "lr_search" and labels.name == "deep_digits prompt=deep"
    assert labels.tags == ["backbone:vit_tiny_patch16_224", "prompt:deep", "data:digits", "task:classification"]


def write_single_run(run_dir, overrides, choices):
    """The parts of <run_dir>/.hydra that Hydra writes for a single (non-sweep) run."""
    saved = Path(run_dir) / ".hydra"
    saved.mkdir(parents=True)
    hydra = {"mode": "RUN", "overrides": {"task": overrides}, "runtime": {"choices": choices},
             "sweep": {"dir": "${paths.log_dir}/multirun/${now:%Y-%m-%d}"}}  # unresolvable outside Hydra, as saved
    (saved / "hydra.yaml").write_text(yaml.safe_dump({"hydra": hydra}))
    (saved / "overrides.yaml").write_text(yaml.safe_dump(overrides))


def test_single_run_is_grouped_by_experiment_and_named_by_its_overrides(tmp_path):
    overrides = ["experiment=digits_pretrain", "trainer.epochs=3", "logger=wandb", "trainer.resume=auto"]
    write_single_run(tmp_path, overrides, {"experiment": "digits_pretrain", "task": "classification"})
    labels = run_labels(tmp_path, "digits_pretrain", RUN_CONFIG, tags=["mine"])
    assert labels.group == "digits_pretrain"
    assert labels.name == "digits_pretrain trainer.epochs=3"  # experiment is the group; logger/resume change nothing
    assert labels.tags == ["mine", "backbone:vit_tiny_patch16_224", "prompt:deep", "data:digits", "task:classification",
                           "experiment:digits_pretrain"]


def test_labels_without_hydra(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["prompt.length=5"]))
    labels = run_labels(tmp_path, "deep_digits", RUN_CONFIG)
    assert (labels.group, labels.name) == ("deep_digits", "deep_digits prompt.length=5")
    assert run_labels(tmp_path / "elsewhere", "deep_digits", {}, group="mine").group == "mine"


def test_damaged_hydra_record_still_labels_the_run(tmp_path, caplog):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "hydra.yaml").write_text("hydra: [unclosed\n")
    with caplog.at_level(logging.WARNING):
        labels = run_labels(tmp_path, "deep_digits", RUN_CONFIG)
    assert (labels.group, labels.name) == ("deep_digits", "deep_digits")
    assert "wandb labels use the run name only" in caplog.text


def test_eval_job_type_and_resumed_run_keep_one_wandb_id(tmp_path):
    WandbTracker(tmp_path, "deep_digits", RUN_CONFIG, job_type="eval").finish()
    run_id = (tmp_path / "wandb" / RUN_ID_FILE).read_text()
    WandbTracker(tmp_path, "deep_digits", RUN_CONFIG, job_type="eval", resume=True).finish()
    first, resumed = offline_run_records(tmp_path)
    assert first.job_type == "eval" and first.run_id == run_id
    assert resumed.run_id == run_id  # a requeued job continues the same wandb run
    WandbTracker(tmp_path, "deep_digits", RUN_CONFIG, mode="disabled").finish()
    assert (tmp_path / "wandb" / RUN_ID_FILE).read_text() != run_id  # starting over is a new run


def test_earlier_name_still_works():
    assert WandbLogger is WandbTracker
