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
