"""hydra/launcher=slurm: jobs are requeued on timeout / preemption and come back to the same run dir."""

import pytest
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

import vpt.tools.cli


def compose_sweep(overrides):
    vpt.tools.cli.register_resolvers()
    with initialize_config_module("vpt.configs", version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def test_slurm_launcher_composes_with_the_requeue_fields():
    launcher = compose_sweep(["hydra/launcher=slurm"]).hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.max_num_timeout >= 1  # 0 would mean: never requeue after a time limit
    assert launcher.additional_parameters.requeue is True
    assert 30 <= launcher.signal_delay_s < launcher.timeout_min * 60
    assert launcher.gpus_per_node == 1


@pytest.fixture
def submitted(tmp_path, slurm_submissions):
    """Launch a 2-job sweep through the real launcher and submitit's real Slurm executor, stopping at submission."""
    cfg = compose_sweep(["hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    launcher.launch([["prompt=shallow", "trainer.resume=auto"], ["prompt=deep", "trainer.resume=auto"]],
                    initial_job_idx=0)
    return slurm_submissions


def test_sbatch_script_asks_for_requeue_and_the_warning_signal(submitted):
    executor = submitted["executor"]
    assert executor.max_num_timeout == 20
    script = executor._make_submission_file_text("python -m submitit.core._submit", "uid")  # what sbatch receives
    assert "#SBATCH --requeue" in script.splitlines()
    assert "#SBATCH --signal=USR2@120" in script.splitlines()
    assert "#SBATCH --gpus-per-node=1" in script.splitlines() and "#SBATCH --time=240" in script.splitlines()


def test_a_requeued_job_repeats_the_same_call(submitted):
    """submitit requeues what the launcher's checkpoint() returns: the same overrides and job number, hence the same
    run dir <sweep dir>/<job number>, where trainer.resume=auto finds its resume state (resume.safetensors + resume.json)."""
    launcher, (first, second) = submitted["function"], submitted["calls"]
    assert first[0] == ["prompt=shallow", "trainer.resume=auto"] and first[2] == 0 and second[2] == 1
    requeued = launcher.checkpoint(*first)
    assert requeued.function is launcher and requeued.args == first
