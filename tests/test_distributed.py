"""torchrun: 2 gloo processes train what 1 process trains on the same global batch; resume works across ranks.

Tolerance: each rank's gradient is the mean over its slice of the global batch and DDP averages the slices
(each rank's loss weighted by its share when the slices differ, as in the last batch here), so a step equals
the 1-process step up to float32 summation order (~1e-7 relative). Measured after 2 epochs: prompts within
4e-8, losses within 1e-7 relative. ATOL = 1e-5 and rel 1e-5 on the loss leave a factor of 100 or more, while
the mistakes they guard against show far above: an unweighted uneven last slice alone moves the epoch-2 loss
by 2e-3 relative; one rank's data only or a missing all-reduce, more.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from safetensors.torch import load_file

import vpt.tools.cli
from vpt.data.datasets import CachedImageDataset
from vpt.data.loaders import DeviceBatchLoader, shard_weights, sharded_batch_count, take_shard
from vpt.engine import distributed
from vpt.errors import ConfigError

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
# The digits quickstart; 59 training images: 3 full global batches of 16 and one of 11 (shards of 6 and 5)
ARGS = ["trainer.epochs=2", "data.train_size=59", "trainer.batch_size=16", "trainer.cpu_threads=1",
        "data.val_fraction=0.1", "trainer.progress_bar=false", "prompt.length=2", "logger=csv"]
ATOL = 1e-5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_train(run_dir, *extra):
    """``torchrun --nproc_per_node=2 vpt-train ...`` (gloo: CPU only here)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                f"--master_port={free_port()}", "--no-python", str(BIN / "vpt-train")]
    result = subprocess.run([*launcher, *ARGS, *extra, f"hydra.run.dir={run_dir}"], cwd=run_dir.parent, env=ENV,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def read_run(run_dir):
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    prompts = load_file(run_dir / "last" / "prompt.safetensors")
    return json.loads((run_dir / "results.json").read_text()), history, prompts


def compose_run(run_dir):
    vpt.tools.cli.register_resolvers()
    with initialize_config_module("vpt.configs", version_base="1.3"):
        return compose("train", overrides=[*ARGS, f"output_dir={run_dir}"])


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The 1-process run (in this process: no second interpreter start-up) and a copy of its run dir after
    epoch 1, resume state included."""
    from vpt.engine.loop import Trainer

    # fit()'s steps, with a copy of the run dir between the epochs
    threads, root = torch.get_num_threads(), tmp_path_factory.mktemp("one")
    trainer = Trainer(compose_run(root / "run"), root / "run")
    trainer.init_prompts()
    trainer.run_epoch(0)
    shutil.copytree(root / "run", root / "after_epoch_1")
    trainer.run_epoch(1)
    trainer.finish()
    torch.set_num_threads(threads)
    return read_run(root / "run"), root / "after_epoch_1"


def assert_same_training(got, expected):
    (results, history, prompts), (ref_results, ref_history, ref_prompts) = got, expected
    assert [row["train_loss"] for row in history] == pytest.approx([row["train_loss"] for row in ref_history],
                                                                   rel=1e-5)
    assert results["test_top1"] == pytest.approx(ref_results["test_top1"], abs=1e-9)  # same predictions
    assert results["val_top1"] == pytest.approx(ref_results["val_top1"], abs=1e-9)
    assert sorted(prompts) == sorted(ref_prompts)
    for name, tensor in prompts.items():
        torch.testing.assert_close(tensor, ref_prompts[name], atol=ATOL, rtol=0)
        assert not torch.equal(tensor, torch.zeros_like(tensor))


def test_two_gloo_processes_match_one_process(tmp_path, one_process):
    run_dir = tmp_path / "two"
    result = torchrun_train(run_dir)
    got = read_run(run_dir)
    assert_same_training(got, one_process[0])
    results, history, _ = got
    assert results["train_size"] == 59 and len(history) == 2
    # rank 0 alone writes: one results row per epoch, no second run dir, each file once
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two"]
    assert (result.stdout + result.stderr).count("results: ") == 1  # only rank 0 logs


def test_two_processes_resume_the_state_one_process_saved(tmp_path, one_process):
    """Epoch 1 by one process (its resume state), epoch 2 by two ranks that both load it: the uninterrupted run."""
    run_dir = tmp_path / "run"
    shutil.copytree(one_process[1], run_dir)
    assert not (run_dir / "results.json").exists()
    torchrun_train(run_dir, "trainer.resume=true")
    assert_same_training(read_run(run_dir), one_process[0])


# -- the pieces, without processes ------------------------------------------------------------------------
@pytest.mark.parametrize("count, batch, world, sizes", [
    (64, 16, 2, [16, 16, 16, 16]),
    (58, 16, 2, [16, 16, 16, 10]),
    (11, 4, 2, [4, 4, 3]),      # an odd tail: shards of 2 and 1
    (9, 4, 2, [4, 4]),          # a tail of 1 < world size: dropped (a rank would get no image)
])
def test_shards_cover_each_global_batch_and_weights_restore_its_mean(count, batch, world, sizes):
    assert sharded_batch_count(count, batch, world) == len(sizes)
    losses = torch.arange(count, dtype=torch.float64)  # a per-image loss, to check the weighting by hand
    weights = [shard_weights(count, batch, rank, world) for rank in range(world)]
    for step, size in enumerate(sizes):
        indices = torch.arange(step * batch, step * batch + size)
        shards = [take_shard(indices, rank, world) for rank in range(world)]
        assert torch.equal(torch.cat(shards), indices)
        ddp_mean = sum(weights[rank][step] * losses[shard].mean() for rank, shard in enumerate(shards)) / world
        assert float(ddp_mean) == pytest.approx(float(losses[indices].mean()))


def test_sharded_device_loader_splits_the_unsharded_batches():
    images = torch.randint(0, 255, (22, 3, 4, 4), dtype=torch.uint8)
    dataset = CachedImageDataset.__new__(CachedImageDataset)
    dataset.images, dataset.labels = images, torch.arange(22)
    dataset.preprocess, dataset.augment = _IdentityPreprocess(), "none"
    whole = DeviceBatchLoader(dataset, 8, shuffle=True, seed=3)
    ranks = [whole.sharded(rank, 2) for rank in range(2)]
    for loader in (whole, *ranks):
        loader.reseed(7)
    expected = [labels for _, labels in whole]
    got = list(zip(*[[labels for _, labels in loader] for loader in ranks]))
    assert len(got) == len(expected) == 3
    for (first, second), labels in zip(got, expected):
        assert torch.equal(torch.cat([first, second]), labels)
    assert ranks[1].shard_weight == pytest.approx(2 * 3 / 6)  # last batch: 6 images, shards of 3


def test_sharded_dataloader_ranks_split_one_permutation_per_epoch():
    from torch.utils.data import TensorDataset

    from vpt.data.loaders import DeviceDataLoader

    dataset = TensorDataset(torch.zeros(21, 1), torch.arange(21))
    ranks = [DeviceDataLoader(dataset, 8, shuffle=True, seed=5).sharded(rank, 2) for rank in range(2)]
    epochs = []
    for epoch in range(2):
        for loader in ranks:
            loader.reseed(100 + epoch)
        batches = list(zip(*[[labels for _, labels in loader] for loader in ranks]))
        assert [(len(a), len(b)) for a, b in batches] == [(4, 4), (4, 4), (3, 2)]
        order = torch.cat([torch.cat(pair) for pair in batches])
        assert sorted(order.tolist()) == list(range(21))  # both ranks drew the same permutation: no image twice
        epochs.append(order)
    assert not torch.equal(*epochs)  # a new order each epoch
    assert ranks[1].shard_weight == pytest.approx(2 * 2 / 5)


class _IdentityPreprocess:
    def prepare_batch(self, images, augment, generator):
        return images.float()


def test_global_batch_must_split_over_the_processes():
    with pytest.raises(ConfigError, match="multiple of 4"):
        distributed.check_global_batch(30, distributed.DistContext(rank=0, world_size=4))
    distributed.check_global_batch(32, distributed.DistContext(rank=0, world_size=4))


def test_torchrun_environment_is_read_and_checked():
    context = distributed.context_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (context.rank, context.world_size, context.enabled, context.is_main) == (1, 2, True, False)
    assert distributed.context_from_env({}) == distributed.DistContext()
    with pytest.raises(ConfigError, match="torchrun"):
        distributed.context_from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_a_multi_task_slurm_job_of_the_launcher_becomes_ranks(monkeypatch):
    """hydra/launcher=slurm with nodes=2 tasks_per_node=2: task 3 is rank 3 of 4, local rank 1, rendezvous on node1."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "0")  # recorded as unset, so whatever the export writes is undone afterwards
        monkeypatch.delenv(key)
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "node[1-2]",
             "SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_JOB_NUM_NODES": "2",
             "SLURM_NODEID": "1"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    assert distributed.export_slurm_ranks()
    assert distributed.context_from_env() == distributed.DistContext(rank=3, world_size=4, local_rank=1)
    assert os.environ["MASTER_ADDR"] == "node1"
    assert not distributed.export_slurm_ranks()  # RANK set now (as torchrun would): left alone
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.delenv("RANK")
    assert not distributed.export_slurm_ranks()  # one task: a single-process run


def test_ddp_wrapping_raises_no_deprecation_warning(tmp_path):
    """DDP without buffer sync in forward, through the option this torch offers (no FutureWarning on every rank)."""
    import warnings

    import torch.distributed as dist

    from vpt.engine import distributed

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            wrapped = distributed.wrap_model(torch.nn.Linear(2, 2), distributed.DistContext(world_size=2),
                                             torch.device("cpu"))
        assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)
        assert not getattr(wrapped, "forward_sync_buffers", getattr(wrapped, "broadcast_buffers", True))
    finally:
        dist.destroy_process_group()
