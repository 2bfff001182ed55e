"""VPT token prompts (Jia et al., ECCV 2022): ``shallow`` (layer 0) and ``deep`` (every or chosen layers)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import ConfigError
from .token_prompts import TokenPrompts
from .base import Method, register_method, require_fraction, require_int


@dataclass
class TokenOptions:
    """VPT token prompts.

    length: number of prompt tokens P.
    depth: which layers receive fresh prompts: ``None`` means the method's default (``shallow`` → [0],
        ``deep`` → every layer); an int ``k`` means the first k layers; a list means those layers.
    init: ``xavier`` (VPT's uniform init, fan computed from the patch size) or ``patch`` (sampled patch
        embeddings, set by :meth:`PromptedModel.init_prompts_from_patches`).
    dropout: dropout on prompt tokens (train mode only).
    project_dim: if > 0, prompts live in this lower dimension and a learned linear map lifts them to
        the embedding width (VPT's ``PROJECT``).
    """

    length: int = 10
    depth: int | Sequence[int] | None = None
    init: str = "xavier"
    dropout: float = 0.0
    project_dim: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.depth, (list, tuple)):
            self.depth = [int(d) for d in self.depth]


class TokenPromptMethod(Method):
    kind = "token"
    config_class = TokenOptions
    default_depth: int | None = None  # None: every layer

    def validate(self, cfg) -> None:
        require_int(cfg.length, "length")
        require_int(cfg.project_dim, "project_dim")
        require_fraction(cfg.dropout, "dropout")
        if cfg.init not in ("xavier", "patch"):
            raise ConfigError(f"prompt.init must be 'xavier' or 'patch', got {cfg.init!r}")

    def prompt_layers(self, cfg, num_layers: int) -> list[int]:
        if cfg.length == 0:
            return []
        depth = cfg.depth if cfg.depth is not None else (self.default_depth or num_layers)
        layers = list(range(depth)) if isinstance(depth, int) else sorted(set(depth))
        bad = [d for d in layers if not 0 <= d < num_layers]
        if bad or not layers:
            raise ConfigError(
                f"prompt.depth {cfg.depth!r} does not fit a backbone with {num_layers} layers; "
                f"use an int in 1..{num_layers} or a list of layer indices in 0..{num_layers - 1}"
            )
        return layers

    def build(self, cfg, backbone, input_size):
        if cfg.length == 0:
            return {}
        if not backbone.supports_token_prompts:
            raise ConfigError(
                f"{backbone.name} is not a token transformer, so prompt={cfg.method} cannot insert tokens; "
                "use a pixel prompt (pad, patch, random_patch) or a baseline (linear, full, bias)"
            )
        return {"token_prompts": TokenPrompts(self.prompt_layers(cfg, backbone.num_layers), cfg.length,
                                              backbone.embed_dim, backbone.patch_size, cfg.dropout, cfg.project_dim)}


class ShallowPrompts(TokenPromptMethod):
    name = "shallow"
    default_depth = 1

    def validate(self, cfg) -> None:
        super().validate(cfg)
        if cfg.depth not in (None, 1, [0], (0,)):
            raise ConfigError("prompt=shallow prompts layer 0 only; use prompt=deep with prompt.depth=... for other layers")


class DeepPrompts(TokenPromptMethod):
    name = "deep"


register_method(ShallowPrompts())
register_method(DeepPrompts())
