"""Prompt configuration: one dataclass that says which parameters train and how prompts are built."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

from .errors import ConfigError

TOKEN_METHODS = ("shallow", "deep")
PIXEL_METHODS = ("pad", "patch", "random_patch")
BASELINE_METHODS = ("linear", "full", "bias")
METHODS = BASELINE_METHODS + TOKEN_METHODS + PIXEL_METHODS


@dataclass
class PromptConfig:
    """What to tune on a frozen backbone.

    method: ``linear`` (head only), ``full`` (everything), ``bias`` (biases + head), ``shallow`` /
        ``deep`` (VPT token prompts), ``pad`` / ``patch`` / ``random_patch`` (Bahng et al. pixel prompts).
    length: number of prompt tokens P (token methods).
    depth: which layers receive fresh prompts: ``None`` means the method's default (``shallow`` → [0],
        ``deep`` → every layer); an int ``k`` means the first k layers; a list means those layers.
    init: ``xavier`` (VPT's uniform init, fan computed from the patch size) or ``patch`` (sampled patch
        embeddings, set by :meth:`PromptedModel.init_prompts_from_patches`).
    dropout: dropout on prompt tokens (train mode only).
    project_dim: if > 0, prompts live in this lower dimension and a learned linear map lifts them to
        the embedding width (VPT's ``PROJECT``).
    size: pixel prompt size: pad width p for ``pad``, square side for ``patch`` / ``random_patch``.
    train_head: train the classification head (False for a frozen zero-shot head).
    """

    method: str = "deep"
    length: int = 10
    depth: int | Sequence[int] | None = None
    init: str = "xavier"
    dropout: float = 0.0
    project_dim: int = 0
    size: int = 30
    train_head: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown prompt method {self.method!r}; valid names: {', '.join(METHODS)}")
        if self.is_token:
            if not isinstance(self.length, int) or self.length < 0:
                raise ConfigError(f"prompt.length must be an integer >= 0, got {self.length!r}")
            if self.init not in ("xavier", "patch"):
                raise ConfigError(f"prompt.init must be 'xavier' or 'patch', got {self.init!r}")
            if self.method == "shallow" and self.depth not in (None, 1, [0], (0,)):
                raise ConfigError("prompt=shallow prompts layer 0 only; use prompt=deep with prompt.depth=... for other layers")
        if self.is_pixel and (not isinstance(self.size, int) or self.size < 0):
            raise ConfigError(f"prompt.size must be an integer >= 0, got {self.size!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"prompt.dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.depth, (list, tuple)):
            self.depth = [int(d) for d in self.depth]

    @property
    def is_token(self) -> bool:
        return self.method in TOKEN_METHODS

    @property
    def is_pixel(self) -> bool:
        return self.method in PIXEL_METHODS

    def prompt_layers(self, num_layers: int) -> list[int]:
        """Resolve ``depth`` to a sorted list of layer indices for a backbone with ``num_layers`` blocks."""
        if not self.is_token or self.length == 0:
            return []
        depth = self.depth
        if depth is None:
            depth = 1 if self.method == "shallow" else num_layers
        layers = list(range(depth)) if isinstance(depth, int) else sorted(set(depth))
        bad = [d for d in layers if not 0 <= d < num_layers]
        if bad or not layers:
            raise ConfigError(
                f"prompt.depth {self.depth!r} does not fit a backbone with {num_layers} layers; "
                f"use an int in 1..{num_layers} or a list of layer indices in 0..{num_layers - 1}"
            )
        return layers

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if isinstance(d["depth"], tuple):
            d["depth"] = list(d["depth"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PromptConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
