"""Logic of the experiment scripts that decides what they report (no training, no shared data)."""
import importlib.util
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def study():
    return _load("cifar10_transfer_study")


class _SerialPool:
    map = staticmethod(lambda fn, jobs: [fn(job) for job in jobs])


def _peaked_at(best: float):
    """A val score that falls off with the distance in log(lr) from ``best``."""
    return lambda method, lr: 70.0 - abs(math.log(lr / best))


def test_lr_search_extends_past_an_edge_until_the_best_is_inside(study):
    calls = []

    def score(method, lr):
        calls.append((method, lr))
        return _peaked_at(0.03)(method, lr)

    scores = study.search_learning_rates({"deep": [0.5, 2.0, 8.0], "full": [1e-4, 5e-4, 2e-3]}, score, _SerialPool(), 3)
    # deep: 0.5 is best of the grid, so 0.125, then 0.0312 (best), then 0.00779 shows 0.0312 is inside
    assert sorted(scores["deep"]) == [0.00779, 0.0312, 0.125, 0.5, 2.0, 8.0]
    assert study.best_lr(scores["deep"]) == 0.0312
    # full's grid tops out at 2e-3 < 0.03: it grows upwards
    assert sorted(scores["full"])[-1] > 2e-3
    assert len(calls) == len(set(calls))  # no lr is trained twice


def test_lr_search_stops_after_max_extend_and_keeps_inside_best(study):
    scores = study.search_learning_rates({"pad": [0.5, 2.0, 8.0]}, _peaked_at(1000.0), _SerialPool(), 1)
    assert sorted(scores["pad"]) == [0.5, 2.0, 8.0, 32.0]
    assert study.next_lrs(scores["pad"], 1) == [128.0]  # still at the edge: the study warns
    inside = study.search_learning_rates({"linear": [0.5, 2.0, 8.0]}, _peaked_at(2.0), _SerialPool(), 2)
    assert sorted(inside["linear"]) == [0.5, 2.0, 8.0]


def test_lr_ties_go_to_the_smaller_lr(study):
    assert study.best_lr({2.0: 65.5, 0.5: 65.5, 8.0: 65.0}) == 0.5


class _FakeVptTrain:
    """Stands in for the vpt-train subprocess: records each command and writes results.json unless told to fail."""

    def __init__(self):
        self.commands, self.fail = [], False

    def __call__(self, cmd, check, cwd):
        self.commands.append(cmd)
        run_dir = Path(next(a for a in cmd if a.startswith("hydra.run.dir=")).split("=", 1)[1])
        if self.fail:
            raise RuntimeError("killed")
        (run_dir / "results.json").write_text(f'{{"val_top1": {len(self.commands)}}}')


def test_study_reuses_only_runs_of_the_same_settings_and_source(study, tmp_path, monkeypatch):
    fake = _FakeVptTrain()
    monkeypatch.setattr(study.subprocess, "run", fake)
    run_dir = tmp_path / "search" / "deep_lr0.5"
    args = ["experiment=cifar10_transfer", "prompt=deep", "backbone.pretrained=/here/w.safetensors"]
    assert study.vpt_train(args, run_dir, "aaa") == {"val_top1": 1}
    assert study.vpt_train(args, run_dir, "aaa") == {"val_top1": 1} and len(fake.commands) == 1  # reused
    # the source is known by its digest: the same weights at another path (a moved folder) are still reused
    moved = [*args[:2], "backbone.pretrained=/elsewhere/w.safetensors"]
    assert study.vpt_train(moved, run_dir, "aaa") == {"val_top1": 1} and len(fake.commands) == 1
    # a re-trained source (other weights) or other arguments: the old run is moved aside, never reused
    assert study.vpt_train(args, run_dir, "bbb") == {"val_top1": 2}
    assert study.vpt_train([*args, "trainer.epochs=5"], run_dir, "bbb") == {"val_top1": 3}
    stale = sorted(p.name for p in run_dir.parent.iterdir() if p.name != run_dir.name)
    assert len(stale) == 2 and all(name.startswith("deep_lr0.5.stale-") for name in stale)
    # an interrupted run of the same settings continues in place (vpt-train resumes from its resume.pt)
    other = tmp_path / "runs" / "deep_seed1"
    fake.fail = True
    with pytest.raises(RuntimeError):
        study.vpt_train(args, other, "bbb")
    fake.fail = False
    assert study.vpt_train(args, other, "bbb") == {"val_top1": 5}
    assert "trainer.resume=true" in fake.commands[-1] and list(other.parent.iterdir()) == [other]


def test_file_digest_changes_with_the_weights(study, tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"a" * 3_000_000)
    first = study.file_digest(weights)
    weights.write_bytes(b"a" * 2_999_999 + b"b")
    assert study.file_digest(weights) != first and len(first) == 64
