"""What a tuning method is: one object per method, found by name in a registry (as peft's tuners).

A method owns its options: ``config_class`` is a dataclass of the settings it reads (``TokenOptions`` for VPT
tokens, ``PixelOptions`` for pixel prompts, none for the linear probe), defined next to the method. A
:class:`~vpt.config.PromptConfig` is the method's name, ``train_head`` and an instance of that dataclass. The method
checks the options, builds the modules it adds to a :class:`~vpt.model.PromptedModel` (the ``token_prompts`` /
``pixel_prompt`` slots the prompt loop reads, or any other named module), may change the backbone itself in
:meth:`Method.attach` (wrap linears, patch attention, add modules after blocks), may build the head, and says which
backbone tensors it trains.

Add a method: subclass :class:`Method`, set ``name`` / ``kind`` / ``config_class`` and call :func:`register_method`
on an instance; then a ``configs/prompt/<name>.yaml`` makes it a ``vpt-train prompt=<name>`` option. A method class
that is not registered is found by its dotted path too (``prompt.method=my_pkg.my_module.MyMethod``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from ..errors import ConfigError
from ..registry import Registry

if TYPE_CHECKING:  # annotations only: config.py imports this module
    from ..backbones import BackboneAdapter
    from ..config import PromptConfig
    from ..model import PromptedModel

METHODS: Registry["Method"] = Registry("prompt method", instantiate=True)


@dataclass
class NoOptions:
    """The options of a method that has none (linear probe, full fine-tuning, BitFit)."""


class Method:
    """Base class. ``kind``: ``token`` (VPT tokens), ``pixel`` (image-space prompt), ``module`` (modules inside
    the backbone: adapters, LoRA, ...) or ``baseline``."""

    name: str = ""
    kind: str = "baseline"
    #: the dataclass of this method's options (besides ``method`` and ``train_head``)
    config_class: type = NoOptions
    #: some backbone tensors train (full fine-tuning, BitFit): the task cannot share a frozen backbone
    tunes_backbone: bool = False
    #: :meth:`attach` changes the backbone's modules (adds adapters, wraps linears): the backbone weights stay
    #: frozen, but the bank's one shared backbone cannot run this task, and the backbone's fast path is off
    modifies_backbone: bool = False
    #: the encoder stays in eval mode while the model trains (dropout / drop-path off, as the official VPT code)
    backbone_eval_mode: bool = True

    @property
    def fields(self) -> tuple[str, ...]:
        """The option names this method reads (its ``config_class`` fields)."""
        return tuple(f.name for f in dataclasses.fields(self.config_class))

    @property
    def shareable_in_bank(self) -> bool:
        """A task of this method can run on a :class:`~vpt.bank.PromptBank`'s one frozen backbone."""
        return self.bank_refusal() is None

    def validate(self, cfg: "PromptConfig") -> None:
        """Raise :class:`ConfigError` for settings this method cannot use."""

    def needs_fixed_input_size(self, cfg: "PromptConfig") -> bool:
        """The modules :meth:`build` makes for ``cfg`` work at the built input size only (a pixel prompt's image)."""
        return False

    def prompt_layers(self, cfg: "PromptConfig", num_layers: int) -> list[int]:
        """Layers that receive fresh token prompts (token methods only)."""
        return []

    def build(self, cfg: "PromptConfig", backbone: "BackboneAdapter", input_size: tuple[int, int]) -> dict[str, nn.Module]:
        """Modules to set on the model by name: ``token_prompts`` and/or ``pixel_prompt`` (read by the prompt loop),
        or others that :meth:`attach` or :meth:`features` use (may be empty)."""
        return {}

    def build_head(self, cfg: "PromptConfig", in_features: int, num_classes: int) -> nn.Module | None:
        """A head of the method's own (e.g. an MLP), or None for vpt's linear head."""
        return None

    def attach(self, model: "PromptedModel") -> None:
        """Change ``model.backbone`` after :meth:`build`: wrap linears, patch attention, insert modules. Modules
        added inside the backbone are submodules of the model: their parameters train and go into the prompt file.
        Called once per model, with the backbone's own tensors frozen (``set_trainable`` has run)."""

    def features(self, model: "PromptedModel", images: "Any", features: "Any") -> "Any":
        """The pooled feature after the encoder (a side network may mix in its own); ``features`` by default."""
        return features

    #: the method builds the model's head itself from the backbone and the class names
    #: (:meth:`build_named_head`), e.g. CLIP text prompts (CoOp, MaPLe, ...)
    builds_head: bool = False

    def build_named_head(self, cfg: "PromptConfig", backbone: "BackboneAdapter", class_names, num_classes) -> nn.Module:
        """The head of a ``builds_head`` method, built from the backbone and the class names."""
        raise NotImplementedError

    def prompt_source(self, model: "PromptedModel") -> Any:
        """The image encoder's prompt source (see :mod:`vpt.encoder`): the model's token prompts by default."""
        return model.token_prompts

    def set_trainable(self, backbone: "BackboneAdapter") -> None:
        """Turn on ``requires_grad`` for the backbone tensors this method trains (the backbone starts frozen)."""

    def bank_refusal(self) -> str | None:
        """Why a bank cannot serve a task of this method (None: it can)."""
        if self.tunes_backbone:
            return "tunes backbone weights"
        if self.modifies_backbone:
            return "adds modules inside the backbone"
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, kind={self.kind!r})"


def register_method(method: Method, replace: bool = False) -> Method:
    """Register ``method`` under ``method.name``; ``replace=True`` swaps an existing one (e.g. in tests)."""
    if not method.name:
        raise ValueError(f"{type(method).__name__} has no name")
    return METHODS.register(method, method.name, replace=replace)


def unregister_method(name: str) -> None:
    METHODS.unregister(name)


def get_method(name: str) -> Method:
    return METHODS.get(name)


def method_names(kind: str | None = None) -> tuple[str, ...]:
    return tuple(name for name, method in METHODS.items() if kind is None or method.kind == kind)


def require_int(value: Any, field: str, minimum: int = 0) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"prompt.{field} must be an integer >= {minimum}, got {value!r}")


def require_fraction(value: Any, field: str) -> None:
    """A probability such as a dropout rate: a number in [0, 1)."""
    try:
        ok = not isinstance(value, bool) and 0.0 <= float(value) < 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"prompt.{field} must be in [0, 1), got {value!r}")
