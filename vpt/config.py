"""Prompt configuration: a method name, ``train_head``, and that method's own options (its ``config_class``)."""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from .errors import ConfigError
from .methods import Method, get_method, method_names

METHODS = method_names()  # the built-in methods; vpt.methods.method_names() also lists ones registered later

#: the options every method's config carried before each method owned its options (vpt <= 0.3 prompt files and
#: calls such as ``PromptConfig(method=m, length=3, size=4)`` for any ``m``): dropped where the method has no such
#: option, never an error
LEGACY_FIELDS = {"length": 10, "depth": None, "init": "xavier", "dropout": 0.0, "project_dim": 0, "size": 30}


class PromptConfig:
    """What to tune on a frozen backbone: ``PromptConfig(method="deep", length=10)``.

    method: a registered method (``vpt.methods.method_names()``: ``linear``, ``full``, ``bias``, ``shallow``,
        ``deep``, ``pad``, ...) or the dotted path of a :class:`~vpt.methods.Method` class.
    train_head: train the classification head (False for a frozen zero-shot head).
    options: the method's own settings, checked against its ``config_class`` dataclass (e.g. ``TokenOptions``:
        length, depth, init, dropout, project_dim; ``PixelOptions``: size). They read as attributes
        (``cfg.length``); ``cfg.options`` is the dataclass instance.
    """

    def __init__(self, method: str = "deep", train_head: bool = True, **options: Any) -> None:
        spec = get_method(method)
        fields = {f.name for f in dataclasses.fields(spec.config_class)}
        unknown = sorted(set(options) - fields - set(LEGACY_FIELDS))
        if unknown:
            close = difflib.get_close_matches(unknown[0], fields, n=1)
            hint = f"; did you mean prompt.{close[0]}?" if close else ""
            raise ConfigError(f"prompt={method} has no option(s) {unknown}; its options: "
                              f"{sorted(fields) or 'none'} (and train_head){hint}")
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "train_head", train_head)
        try:
            built = spec.config_class(**{k: v for k, v in options.items() if k in fields})
        except (TypeError, ValueError) as error:
            raise ConfigError(f"prompt={method}: {error}") from error
        object.__setattr__(self, "options", built)
        spec.validate(self)

    def __getattr__(self, name: str) -> Any:
        options = self.__dict__.get("options")
        if options is not None and name in {f.name for f in dataclasses.fields(options)}:
            return getattr(options, name)
        raise AttributeError(f"prompt={self.__dict__.get('method')} has no option {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("method", "train_head"):
            object.__setattr__(self, name, value)
        elif name in {f.name for f in dataclasses.fields(self.options)}:
            setattr(self.options, name, value)
        else:
            raise AttributeError(f"prompt={self.method} has no option {name!r}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PromptConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return "PromptConfig(" + ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items()) + ")"

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
        """``{"method": ..., <the method's options>, "train_head": ...}`` (what prompt files record)."""
        options = dataclasses.asdict(self.options)
        options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}
        return {"method": self.method, **options, "train_head": self.train_head}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PromptConfig":
        """The inverse of :meth:`to_dict`; also reads the union-of-fields dicts older prompt files hold."""
        d = dict(d)
        return cls(d.pop("method", "deep"), d.pop("train_head", True), **d)
