"""Clean consoles: no plugin noise on sweeps, no carriage-return frames in redirected logs, vpt-bench importable."""
import ast
import io
import logging
import os
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from vpt.tools.cli import quiet_plugin_loggers
from vpt.engine.console import PlainProgress, progress_bar, progress_mode
from vpt.errors import ConfigError
from vpt.engine.sweep import sweep_size

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = ["trainer.epochs=1", "trainer.limit_train_batches=1", "trainer.cpu_threads=1", "data.train_size=40",
        "trainer.batch_size=16", "trainer.limit_eval_batches=1", "prompt.length=2"]


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("setting, stream, mode", [
    ("auto", FakeTerminal(), "bar"), ("auto", io.StringIO(), "lines"), (True, io.StringIO(), "bar"),
    (False, FakeTerminal(), "off"), ("lines", FakeTerminal(), "lines"), (None, FakeTerminal(), "off"),
])
def test_progress_mode(setting, stream, mode):
    assert progress_mode(setting, stream) == mode


def test_bad_progress_setting_is_a_config_error():
    with pytest.raises(ConfigError, match="trainer.progress_bar='sometimes'; valid: auto, true, false, lines"):
        progress_mode("sometimes")


def test_auto_progress_is_plain_lines_when_stderr_is_redirected(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert isinstance(progress_bar(10, "epoch 1/2", "auto"), PlainProgress)
    monkeypatch.setattr(sys, "stderr", FakeTerminal())
    assert not isinstance(progress_bar(10, "epoch 1/2", "auto"), PlainProgress)


def test_plain_progress_writes_whole_lines(caplog):
    caplog.set_level(logging.INFO, logger="vpt.progress")
    progress = PlainProgress(total=4, description="epoch 1/3", every_seconds=0.0)
    for step in range(4):
        progress.set_postfix({"loss": f"{1.5 - step / 10:.4g}"}, img_s="120", refresh=False)
        progress.update(1)
    progress.close()
    lines = [record.getMessage() for record in caplog.records]
    # no line for the last step: the epoch summary follows it
    assert lines == ["epoch 1/3: 1/4 steps  loss 1.5  img_s 120", "epoch 1/3: 2/4 steps  loss 1.4  img_s 120",
                     "epoch 1/3: 3/4 steps  loss 1.3  img_s 120"]


def test_plain_progress_is_quiet_within_its_interval(caplog):
    caplog.set_level(logging.INFO, logger="vpt.progress")
    progress = PlainProgress(total=100, description="epoch 1/1", every_seconds=3600.0)
    progress.update(50)
    assert not caplog.records


def test_alembic_info_is_silenced():
    quiet_plugin_loggers()
    assert not logging.getLogger("alembic.runtime.plugins").isEnabledFor(logging.INFO)
    assert logging.getLogger("alembic").isEnabledFor(logging.WARNING)


@pytest.fixture(scope="module")
def sweep_output(tmp_path_factory):
    """A 2-trial Optuna sweep with stdout and stderr redirected to files, as on a cluster."""
    tmp = tmp_path_factory.mktemp("sweep")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    with open(tmp / "stdout.txt", "wb") as out, open(tmp / "stderr.txt", "wb") as err:
        result = subprocess.run([str(BIN / "vpt-train"), "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
                                 *TINY, f"hydra.sweep.dir={tmp / 'sweep'}"], cwd=tmp, env=env, stdout=out,
                                stderr=err, timeout=300)
    stdout, stderr = (tmp / "stdout.txt").read_text(), (tmp / "stderr.txt").read_text()
    assert result.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return stdout, stderr, tmp / "sweep"


def test_sweep_prints_no_alembic_lines(sweep_output):
    stdout, stderr, sweep = sweep_output
    assert "Best value" in stdout and len(list(sweep.glob("*/results.json"))) == 2
    assert "alembic" not in stdout + stderr


def test_redirected_run_has_no_carriage_returns(sweep_output):
    stdout, stderr, _ = sweep_output
    assert "epoch 1/1" in stdout  # the epoch summary line
    assert "run 1/2 epoch 1/1" in stdout and "run 2/2 epoch 1/1" in stdout  # which trial of n_trials=2
    assert "\r" not in stdout + stderr


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_vpt_bench_imports_only_main_dependencies():
    files = sorted((ROOT / "vpt" / "tools" / "bench").rglob("*.py"))
    assert files
    modules = set().union(*(_imported_modules(f) for f in files)) - set(sys.stdlib_module_names) - {"vpt"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {requirement.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].split("!")[0]
                .strip().lower().replace("_", "-") for requirement in project["dependencies"]}
    providers = metadata.packages_distributions()
    for module in sorted(modules):
        distributions = {d.lower().replace("_", "-") for d in providers.get(module, [module])}
        assert distributions & declared, f"vpt-bench imports {module} ({distributions}), not a main dependency"
    assert "psutil" in modules  # the memory probe, the import that used to fail


def _multirun_config(target: str, task: list[str], **sweeper) -> DictConfig:
    return OmegaConf.create({"hydra": {"sweeper": {"_target_": target, **sweeper}, "overrides": {"task": task}}})


BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


@pytest.mark.parametrize("target, task, sweeper, expected", [
    (BASIC, ["prompt=shallow,deep", "prompt.length=1,5,10", "seed=0"], {}, 6),  # 2 x 3 grid, seed fixed
    (BASIC, ["seed=0"], {}, 1),
    (BASIC, ["prompt=shallow,deep"], {"params": {"optim.base_lr": "0.1,1,10"}}, 6),  # config params x command line
    (BASIC, ["prompt.length=range(1,4)"], {}, 3),
    ("hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper", [], {"n_trials": 7}, 7),
    ("my_plugins.RandomSweeper", ["prompt.length=1,2"], {}, None),  # a sweeper we cannot count
])
def test_sweep_size_counts_the_jobs_hydra_will_launch(target, task, sweeper, expected):
    assert sweep_size(_multirun_config(target, task, **sweeper)) == expected
