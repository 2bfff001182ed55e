"""Checks of a run's config before anything is built or any file in the run dir is touched.

Each bad value ends in one :class:`~vpt.errors.ConfigError` that names the key, the value the user gave (never a
value derived from it, such as the batch-scaled learning rate) and a value to pass instead. Called by ``train()``
before the run dir is locked or checked, so a bad value never moves earlier results aside.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from ..errors import ConfigError

# key -> (smallest allowed value, may be null)
WHOLE_NUMBERS = {
    "trainer.epochs": (1, False),
    "trainer.batch_size": (1, False),
    "trainer.eval_batch_size": (1, True),
    "trainer.limit_train_batches": (1, True),
    "trainer.limit_eval_batches": (1, True),
    "trainer.num_workers": (0, False),
}
# key -> (lowest, highest, lowest allowed itself, may be null)
NUMBERS = {
    "optim.base_lr": (0.0, math.inf, True, False),
    "optim.warmup_epochs": (0.0, math.inf, True, False),
    "optim.min_lr_ratio": (0.0, 1.0, True, False),
    "trainer.grad_clip": (0.0, math.inf, False, True),
    "trainer.label_smoothing": (0.0, 1.0, True, True),
}


def check_run_config(cfg: Mapping[str, Any]) -> None:
    """Refuse a config whose trainer / optim values cannot run; keys a config lacks are left to their users."""
    for key, (minimum, optional) in WHOLE_NUMBERS.items():
        found, value = _lookup(cfg, key)
        if found and not (optional and value is None):
            check_whole_number(key, value, minimum)
    for key, (low, high, low_allowed, optional) in NUMBERS.items():
        found, value = _lookup(cfg, key)
        if found and not (optional and value is None):
            check_number(key, value, low, high, low_allowed)


def _lookup(cfg: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) and not hasattr(node, "get"):
            return False, None
        if part not in node:
            return False, None
        node = node[part]
    return True, node


def check_whole_number(key: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum``; 2.5, "ten", True and 0 (for minimum 1) are refused."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
        return value
    raise ConfigError(f"{key} must be a whole number >= {minimum}, got {value!r}{_kind(value)}; "
                      f"pass e.g. {key}={_whole_example(value, minimum)}")


def _whole_example(value: Any, minimum: int) -> int:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return max(minimum, math.ceil(value))
    return max(minimum, 1)


def check_number(key: str, value: Any, low: float, high: float, low_allowed: bool = True) -> float:
    """``value`` as a finite float in [low, high) (or (low, high) without ``low_allowed``), as the user gave it."""
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if number is not None and math.isfinite(number) and (number > low or (low_allowed and number == low)) \
            and (number < high or high == math.inf):
        return float(number)
    bounds = f"{'>=' if low_allowed else '>'} {low:g}" + (f" and < {high:g}" if high != math.inf else "")
    why = "negative" if number is not None and number < 0 else "out of range" if number is not None else "not a number"
    hint = " (vpt scales it by batch_size / 256 with optim.lr_scaling=linear)" if key == "optim.base_lr" else ""
    raise ConfigError(f"{key}={value!r} is {why}{_kind(value)}: it must be a number {bounds}{hint}; "
                      f"pass e.g. {key}={_number_example(key)}")


def _number_example(key: str) -> str:
    return {"optim.base_lr": "0.1", "optim.min_lr_ratio": "0.0", "trainer.grad_clip": "1.0",
            "trainer.label_smoothing": "0.1"}.get(key, "1")


def _kind(value: Any) -> str:
    return f" (a {type(value).__name__})" if not isinstance(value, (int, float)) or isinstance(value, bool) else ""
