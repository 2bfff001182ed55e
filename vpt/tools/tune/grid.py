"""Search grids: the values to try per config key, the pick (ties to smaller values) and the edge extension.

A grid file (``configs/tune/<name>.yaml``, or any YAML path) reads::

    params:                               # config key -> values; the order of keys orders the tie-break
      optim.base_lr: [50, 25, 10, 5, 2.5, 1, 0.5, 0.25, 0.1, 0.05]
      optim.optimizer.weight_decay: [0.01, 0.001, 0.0001, 0.0]
    extend: [optim.base_lr]              # keys whose range grows one step past an edge that holds the pick

A *point* is one value per key (a tuple in the order of ``params``); its scores come from stage-1 runs.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from ...errors import ConfigError

Point = tuple  # one value per grid key, in the grid's key order
Scores = dict  # Point -> float, or None for a run that failed (e.g. a diverged lr)
# Short names for the run folders of well-known keys; other keys use their last component.
FOLDER_NAMES = {"optim.base_lr": "lr", "optim.optimizer.weight_decay": "wd", "prompt.length": "len",
                "prompt.depth": "depth", "prompt.size": "size"}
GRID_PACKAGE = "vpt.configs"  # configs/ ships as vpt.configs; grids live in its tune/ folder


@dataclass(frozen=True)
class Grid:
    name: str
    params: dict[str, list]
    extend: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.params:
            raise ConfigError(f"grid {self.name!r} has no params; give 'params: {{config.key: [values]}}'")
        for key, values in self.params.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"grid {self.name!r}: params.{key} must be a non-empty list, got {values!r}")
            if len({json.dumps(v) for v in values}) != len(values):
                raise ConfigError(f"grid {self.name!r}: params.{key} lists a value twice: {values}")
        unknown = [key for key in self.extend if key not in self.params]
        if unknown:
            raise ConfigError(f"grid {self.name!r}: extend names {unknown}, which are not in params "
                              f"({', '.join(self.params)})")

    @property
    def keys(self) -> list[str]:
        return list(self.params)

    def points(self) -> list[Point]:
        """Every combination, in the order of the lists (first key slowest)."""
        return list(itertools.product(*self.params.values()))

    def as_dict(self, point: Point) -> dict[str, Any]:
        return dict(zip(self.keys, point))

    def overrides(self, point: Point) -> list[str]:
        """``key=value`` command-line overrides that set ``point``."""
        return [f"{key}={override_value(value)}" for key, value in zip(self.keys, point)]

    def folder(self, point: Point) -> str:
        """A run-folder name such as ``lr0.5_wd0.0001``."""
        return "_".join(f"{FOLDER_NAMES.get(key, key.rsplit('.', 1)[-1])}{folder_value(value)}"
                        for key, value in zip(self.keys, point))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params, "extend": list(self.extend)}


def override_value(value: Any) -> str:
    """A value as Hydra's override grammar reads it back (null, true, lists, floats with exponents)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    return str(value)


def folder_value(value: Any) -> str:
    text = override_value(value)
    return "".join(c if c.isalnum() or c in ".-+" else "-" for c in text)


def load_grid(name_or_path: str | Mapping[str, Any]) -> Grid:
    """A grid by name (``configs/tune/<name>.yaml``), by YAML path, or from a mapping."""
    if isinstance(name_or_path, Mapping):
        return _grid_from(dict(name_or_path), "inline")
    text = str(name_or_path)
    path = Path(text).expanduser()
    if text.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise ConfigError(f"grid file {text!r} does not exist; pass tune.grid=<name> ({', '.join(grid_names())}) "
                              "or the path of a YAML file with 'params:'")
        return _grid_from(yaml.safe_load(path.read_text()), str(path))
    packaged = resources.files(GRID_PACKAGE) / "tune" / f"{text}.yaml"
    if not packaged.is_file():
        raise ConfigError(f"unknown grid {text!r}; valid names: {', '.join(grid_names())} "
                          "(or the path of a YAML file with 'params:')")
    return _grid_from(yaml.safe_load(packaged.read_text()), text)


def grid_names() -> list[str]:
    folder = resources.files(GRID_PACKAGE) / "tune"
    return sorted(entry.name[:-5] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def _grid_from(data: Any, name: str) -> Grid:
    if not isinstance(data, dict) or not isinstance(data.get("params"), dict):
        raise ConfigError(f"grid {name!r} must be a mapping with 'params: {{config.key: [values]}}'")
    extend = data.get("extend") or []
    if isinstance(extend, str):
        extend = [extend]
    return Grid(name, {str(k): list(v) if isinstance(v, (list, tuple)) else v for k, v in data["params"].items()},
                tuple(extend))


# ---- picking and extending --------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _tie_rank(grid: Grid, key: str, value: Any) -> float:
    """Smaller is preferred on a tie: numbers by value, null (e.g. depth = every layer) last, others by grid order."""
    if _is_number(value):
        return float(value)
    if value is None:
        return math.inf
    listed = grid.params[key]
    return float(listed.index(value)) if value in listed else math.inf


def best_point(grid: Grid, scores: Mapping[Point, float | None]) -> Point:
    """The point with the highest score; ties go to the smaller value of the first key, then the second, ..."""
    scored = [point for point, score in scores.items() if score is not None and not math.isnan(score)]
    if not scored:
        raise ConfigError("no stage-1 run has a score (every run failed); check the runs' train.log and the grid")

    def preference(point: Point) -> tuple:
        return (scores[point], *(-_tie_rank(grid, key, value) for key, value in zip(grid.keys, point)))

    return max(scored, key=preference)


def _step_past(edge: float, neighbour: float) -> float | None:
    """One step past ``edge`` at the ratio of ``edge`` to its neighbour, rounded to 3 significant digits (the value
    also names the run's folder); None when the ratio is undefined (a zero)."""
    if edge <= 0 or neighbour <= 0:
        return None
    return float(f"{edge * edge / neighbour:.3g}")


def next_points(grid: Grid, scores: Mapping[Point, float | None]) -> list[Point]:
    """Points one step past the searched range of each ``extend`` key whose best value sits at an edge of it (the
    line through the pick, other keys held at the pick's values); nothing when the pick is inside."""
    best = best_point(grid, scores)
    new: list[Point] = []
    for index, key in enumerate(grid.keys):
        if key not in grid.extend or not _is_number(best[index]):
            continue
        line = sorted({point[index] for point in scores if _is_number(point[index])
                       and all(point[j] == best[j] for j in range(len(best)) if j != index)})
        if len(line) < 2:
            continue
        step = None
        if best[index] == line[0]:
            step = _step_past(line[0], line[1])
        elif best[index] == line[-1]:
            step = _step_past(line[-1], line[-2])
        point = best[:index] + (step,) + best[index + 1:]
        if step is not None and point not in scores and point not in new:
            new.append(point)
    return new


def search(grid: Grid, evaluate: Callable[[Sequence[Point]], Mapping[Point, float | None]],
           max_extend: int) -> Scores:
    """Score every grid point, then (up to ``max_extend`` rounds) the points past an edge that holds the pick.
    ``evaluate(points)`` runs one round (in parallel if it likes) and returns each point's score."""
    scores: Scores = {}
    todo: list[Point] = grid.points()
    for round_ in range(max_extend + 1):
        scores.update(evaluate(todo))
        todo = next_points(grid, scores) if round_ < max_extend else []
        if not todo:
            break
    return scores


def at_edge(grid: Grid, scores: Mapping[Point, float | None]) -> list[str]:
    """The extendable keys whose pick still sits at an edge of the searched range (worth a warning)."""
    return [key for point in next_points(grid, scores) for key, old, new in zip(grid.keys, best_point(grid, scores),
                                                                                  point) if old != new]
