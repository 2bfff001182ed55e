import os

# Nothing in the test suite may touch the network: hub lookups fail fast, wandb writes offline files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_vit(**kwargs):
    """A small random-init timm ViT (the architecture family of ViT-B/16, shrunk)."""
    import timm

    args = dict(img_size=32, patch_size=8, embed_dim=48, depth=4, num_heads=3, num_classes=0)
    args.update(kwargs)
    return timm.create_model("vit_tiny_patch16_224", **args)


@pytest.fixture
def tiny_vit_factory():
    """``tiny_vit`` as a fixture: ``tiny_vit_factory(**kwargs)`` builds a small random-init timm ViT."""
    return tiny_vit


# One tiny vpt-bench run (every method and comparison, FLOPs on) shared by tests/test_bench.py and
# tests/test_bench_targets.py: a 2-block ViT at 32 px, one thread, so it takes seconds.
TINY_BENCH_ARGS = ["--backbone", "vit_tiny_patch16_224", "--img-size", "32", "--patch-size", "8",
                   "--backbone-kwargs", '{"depth": 2}', "--batch-size", "4", "--warmup", "1", "--steps", "2",
                   "--prompt-length", "5", "--pad-size", "4", "--num-classes", "10", "--tasks", "8", "--threads", "1",
                   "--timeout", "120", "--pipeline-images", "16", "--flops", "--peak-tflops", "0.5"]


@pytest.fixture(scope="session")
def bench_run(tmp_path_factory):
    """(stdout, results) of ``python -m vpt.tools.bench`` with :data:`TINY_BENCH_ARGS`; results read from ``--out``."""
    import json
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("bench") / "results.json"
    cmd = [sys.executable, "-m", "vpt.tools.bench", *TINY_BENCH_ARGS, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return BenchRun((proc.stdout, json.loads(out.read_text())), stderr=proc.stderr)


class BenchRun(tuple):
    """``(stdout, results)``, with what the run said on stderr as ``.stderr``."""

    def __new__(cls, items, stderr: str = ""):
        run = super().__new__(cls, items)
        run.stderr = stderr
        return run


# ---- detection (tests/detection/) ----
def _tiny_timm_vit(dynamic: bool = True, patch_size: int = 8, img_size: int = 64, **kwargs):
    import timm

    args = dict(img_size=img_size, patch_size=patch_size, embed_dim=48, depth=2, num_heads=3, num_classes=0,
                dynamic_img_size=dynamic)
    args.update(kwargs)
    return timm.create_model("vit_tiny_patch16_224", **args)


@pytest.fixture
def make_encoder():
    """Factory: a PromptedModel (no head) on a tiny random-init timm ViT, 64 px, patch 8, width 48, 2 blocks."""
    from vpt.model import PromptedModel

    def make(prompt: str = "deep", length: int = 4, seed: int = 0, dynamic: bool = True, patch_size: int = 8,
             img_size: int = 64, **prompt_overrides):
        torch.manual_seed(seed)  # the same seed gives the same frozen weights
        vit = _tiny_timm_vit(dynamic, patch_size, img_size)
        return PromptedModel(vit, prompt=prompt, length=length, num_classes=0, **prompt_overrides)

    return make


@pytest.fixture(autouse=True)
def _one_thread_for_detection(request):
    """Detection tests (tests/detection/) run on one CPU thread (the machine is shared); restored afterwards."""
    if "detection" not in request.node.path.parts:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- image folders whose pixels encode a sample id (tests/test_data.py, the bench tests) ---------------------
def write_id_image(path, sample_id: int, label: int) -> None:
    """An 8x8 solid PNG whose red/green channels encode ``sample_id`` (lossless, survives resizing)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (sample_id % 256, sample_id // 256, 40 * label)).save(path)


def write_imagefolder(root, classes=("ant", "bee", "cat"), per_class=None):
    """root/<split>/<class>/<id>.png with globally unique ids, numbered split by split, class by class.

    ``per_class`` maps split -> images per class: one count for every class, or one count per class.
    """
    per_class = per_class or {"train": 20, "test": 5}
    next_id = 0
    for split, counts in per_class.items():
        counts = [counts] * len(classes) if isinstance(counts, int) else list(counts)
        for label, (name, count) in enumerate(zip(classes, counts, strict=True)):
            for _ in range(count):
                write_id_image(root / split / name / f"{next_id}.png", next_id, label)
                next_id += 1
    return root


@pytest.fixture(scope="session")
def make_imagefolder():
    """``make_imagefolder(root, classes=..., per_class=...)``: see ``write_imagefolder``."""
    return write_imagefolder


# --- the packaged Hydra configs -------------------------------------------------------------------------------
def compose_train(overrides=(), config_name: str = "train"):
    """The config ``vpt-train <overrides>`` would run (vpt's resolvers registered first)."""
    from hydra import compose, initialize_config_module

    import vpt.tools.cli

    vpt.tools.cli.register_resolvers()
    with initialize_config_module("vpt.configs", version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


@pytest.fixture(scope="session")
def compose_config():
    """``compose_config(overrides, config_name="train")``: see ``compose_train``."""
    return compose_train


# --- run histories without wall-clock values --------------------------------------------------------------------
TIMING_KEYS = ("train_seconds", "train_images_per_s", "eval_seconds", "epoch_seconds")


def without_timing(rows):
    """Rows of metrics.jsonl (or results dicts) minus the keys that measure wall-clock time."""
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


@pytest.fixture(scope="session")
def strip_timing():
    """``strip_timing(rows)``: see ``without_timing``."""
    return without_timing


# --- Slurm submission, stopped before sbatch ----------------------------------------------------------------------
@pytest.fixture
def slurm_submissions(tmp_path, monkeypatch):
    """A dict that fills with what submitit's real Slurm executor was asked to submit (``executor``, ``function``,
    ``calls``: one tuple of arguments per array job); nothing reaches sbatch."""
    import submitit

    captured = {}
    fake_bin = tmp_path / "bin"  # submitit's Slurm executor only checks that srun exists; nothing is run
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")

    class SubmitNothing(submitit.AutoExecutor):
        def map_array(self, function, *arguments):
            captured.update(executor=self._executor, function=function, calls=list(zip(*arguments)))
            return []

    monkeypatch.setattr(submitit, "AutoExecutor", SubmitNothing)
    return captured
