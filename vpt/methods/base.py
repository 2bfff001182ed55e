"""What a tuning method is: one object per method, found by name in a registry (as peft's tuners).

A method says which :class:`~vpt.config.PromptConfig` fields it reads, checks them, builds the prompt modules
it adds to a :class:`~vpt.model.PromptedModel`, and says which backbone tensors it trains. Everything that used
to compare method names (the model, the bank, the benchmark) asks the method instead.

Add a method: subclass :class:`Method`, set ``name`` / ``kind`` and call :func:`register_method` on an instance;
then a ``configs/prompt/<name>.yaml`` makes it a ``vpt-train prompt=<name>`` option.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from ..errors import ConfigError, UnknownNameError

if TYPE_CHECKING:  # annotations only: config.py imports this module
    from ..backbones import BackboneAdapter
    from ..config import PromptConfig

_METHODS: dict[str, "Method"] = {}


class Method:
    """Base class. ``kind``: ``token`` (VPT tokens), ``pixel`` (image-space prompt) or ``baseline``."""

    name: str = ""
    kind: str = "baseline"
    #: PromptConfig fields this method reads (besides ``method`` and ``train_head``)
    fields: tuple[str, ...] = ()
    #: some backbone tensors train (full fine-tuning, BitFit): the task cannot share a frozen backbone
    tunes_backbone: bool = False
    #: the encoder stays in eval mode while the model trains (dropout / drop-path off, as the official VPT code)
    backbone_eval_mode: bool = True

    @property
    def shareable_in_bank(self) -> bool:
        """A task of this method can run on a :class:`~vpt.bank.PromptBank`'s one frozen backbone."""
        return not self.tunes_backbone

    def validate(self, cfg: "PromptConfig") -> None:
        """Raise :class:`ConfigError` for settings this method cannot use."""

    def prompt_layers(self, cfg: "PromptConfig", num_layers: int) -> list[int]:
        """Layers that receive fresh token prompts (token methods only)."""
        return []

    def build(self, cfg: "PromptConfig", backbone: "BackboneAdapter", input_size: tuple[int, int]) -> dict[str, nn.Module]:
        """Prompt modules to attach to the model: ``token_prompts`` and/or ``pixel_prompt`` (may be empty)."""
        return {}

    #: the method builds the model's head itself (:meth:`build_head`), e.g. CLIP text prompts from the class names
    builds_head: bool = False

    def build_head(self, cfg: "PromptConfig", backbone: "BackboneAdapter", class_names, num_classes) -> nn.Module | None:
        """The head this method brings (``builds_head``), built from the backbone and the class names; None: the
        model builds a linear head (or takes the one passed in)."""
        return None

    def prompt_source(self, model) -> Any:
        """The image encoder's prompt source (see :mod:`vpt.encoder`): the model's token prompts by default."""
        return model.token_prompts

    def set_trainable(self, backbone: "BackboneAdapter") -> None:
        """Turn on ``requires_grad`` for the backbone tensors this method trains (the backbone starts frozen)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, kind={self.kind!r})"


def register_method(method: Method, replace: bool = False) -> Method:
    """Register ``method`` under ``method.name``; ``replace=True`` swaps an existing one (e.g. in tests)."""
    if not method.name:
        raise ValueError(f"{type(method).__name__} has no name")
    if method.name in _METHODS and not replace:
        raise ValueError(f"a method named {method.name!r} is already registered ({_METHODS[method.name]!r})")
    _METHODS[method.name] = method
    return method


def unregister_method(name: str) -> None:
    _METHODS.pop(name, None)


def get_method(name: str) -> Method:
    try:
        return _METHODS[name]
    except KeyError:
        raise UnknownNameError("prompt method", name, _METHODS) from None


def method_names(kind: str | None = None) -> tuple[str, ...]:
    return tuple(name for name, method in _METHODS.items() if kind is None or method.kind == kind)


def require_int(value: Any, field: str, minimum: int = 0) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"prompt.{field} must be an integer >= {minimum}, got {value!r}")
