"""Prompt configuration: one dataclass that says which parameters train and how prompts are built."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

from .errors import ConfigError
from .methods import Method, get_method, method_names

METHODS = method_names()  # the built-in methods; vpt.methods.method_names() also lists ones registered later


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
    n_ctx, ctx_init, csc, class_token_position, text_depth, vision_length: CLIP prompt learning (``coop``,
        ``cocoop``, ``maple``, ``ivlp``; see :mod:`vpt.methods.clip`): text context tokens (None: the method's
        default), init words, class-specific context (CoOp), class-name position ``end|middle|front`` (CoOp),
        text prompt depth (IVLP; None: ``depth``), vision prompt tokens (IVLP; None: ``n_ctx``). ``depth`` is
        MaPLe's prompt depth J and IVLP's vision depth.
    """

    method: str = "deep"
    length: int = 10
    depth: int | Sequence[int] | None = None
    init: str = "xavier"
    dropout: float = 0.0
    project_dim: int = 0
    size: int = 30
    train_head: bool = True
    n_ctx: int | None = None
    ctx_init: str | None = None
    csc: bool = False
    class_token_position: str = "end"
    text_depth: int | None = None
    vision_length: int | None = None

    def __post_init__(self) -> None:
        self.method_spec.validate(self)
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"prompt.dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.depth, (list, tuple)):
            self.depth = [int(d) for d in self.depth]

    @property
    def method_spec(self) -> Method:
        """The registered :class:`~vpt.methods.Method` named by ``method`` (unknown names: one clear error)."""
        return get_method(self.method)

    @property
    def is_token(self) -> bool:
        return self.method_spec.kind == "token"

    @property
    def is_pixel(self) -> bool:
        return self.method_spec.kind == "pixel"

    def prompt_layers(self, num_layers: int) -> list[int]:
        """Resolve ``depth`` to a sorted list of layer indices for a backbone with ``num_layers`` blocks."""
        return self.method_spec.prompt_layers(self, num_layers)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if isinstance(d["depth"], tuple):
            d["depth"] = list(d["depth"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PromptConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
