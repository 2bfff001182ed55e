"""Backbone weights recorded portably: by hub tag, or by file name + sha256, never by a machine's absolute path.

Prompt files (``backbone.create_args``) and run configs (``config.yaml``) record a local weights file as
``pretrained: <file name>`` plus ``pretrained_sha256: <hex>``. Loading finds the file again wherever it was moved
or copied (see :func:`locate_recorded_weights`) and checks its digest; manifests of vpt < 0.2 that hold an
absolute path keep loading.
"""
from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from .. import files
from ..errors import WeightsUnavailableError
from .weights_spec import parse_weights

log = logging.getLogger(__name__)

SHA256_KEY = "pretrained_sha256"
PARENT_LEVELS = 3  # how far above a prompt file to look for its weights (run dir, sweep dir, project dir)
_DIGESTS: dict[tuple[str, int, int], str] = {}  # (real path, size, mtime) -> sha256: each file hashed once


class RecordedWeightsNotFoundError(WeightsUnavailableError):
    """The weights file a prompt file was trained with is not where it was, nor anywhere vpt looks."""


def is_weights_path(pretrained: Any) -> bool:
    return parse_weights(pretrained).is_file


def file_sha256(path: str | os.PathLike) -> str:
    real = os.path.realpath(path)
    stat = os.stat(real)
    key = (real, stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:  # each file hashed once per content version
        _DIGESTS[key] = files.file_sha256(real)
    return _DIGESTS[key]


def weights_record(pretrained: Any) -> dict[str, Any]:
    """``{"pretrained": ...}`` as a manifest records it: a file as its name + ``pretrained_sha256``, a hub tag or
    True as the string, random init as False."""
    spec = parse_weights(pretrained)
    if spec.kind == "none":
        return {"pretrained": False}
    if spec.is_file and os.path.isfile(spec.path):
        return {"pretrained": os.path.basename(spec.path), SHA256_KEY: file_sha256(spec.path)}
    return {"pretrained": str(spec.value)}


def portable_config_yaml(cfg) -> str:
    """The resolved run config as YAML, with ``backbone.pretrained`` recorded by :func:`weights_record`."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True)
    backbone = plain.get("backbone")
    if isinstance(backbone, dict) and is_weights_path(backbone.get("pretrained")):
        backbone.update(weights_record(backbone["pretrained"]))
    return OmegaConf.to_yaml(OmegaConf.create(plain))


def search_dirs(prompt_path: str | os.PathLike | None, user_pretrained: Any = None) -> list[Path]:
    """Where a recorded weights file is looked for by name, in order: the directory given as ``pretrained=``,
    the prompt file's directory and its parents up to :data:`PARENT_LEVELS` levels, then ``vpt/assets``."""
    dirs = []
    if user_pretrained and not isinstance(user_pretrained, bool) and Path(str(user_pretrained)).expanduser().is_dir():
        dirs.append(Path(str(user_pretrained)).expanduser())
    if prompt_path is not None:
        start = Path(prompt_path).expanduser().resolve()
        start = start if start.is_dir() else start.parent
        dirs += [start, *list(start.parents)[:PARENT_LEVELS]]
    dirs.append(Path(str(resources.files("vpt") / "assets")))
    return dirs


def locate_recorded_weights(create_args: Mapping[str, Any], prompt_path: str | os.PathLike | None = None,
                            user_pretrained: Any = None) -> Any:
    """The ``pretrained`` argument that rebuilds the backbone a manifest's ``create_args`` describe.

    A weights file given by the user (``pretrained=/path/file``) or a hub tag / True is used as given (the
    encoder fingerprint check still refuses other weights). A recorded file is looked for at its recorded path
    (old manifests), then by name in :func:`search_dirs`; with a recorded digest only a file with that sha256
    counts. If none is found: one :class:`RecordedWeightsNotFoundError` saying which file is needed and how to pass it.
    """
    recorded, digest = create_args.get("pretrained"), create_args.get(SHA256_KEY)
    user_dir = bool(user_pretrained) and not isinstance(user_pretrained, bool) \
        and Path(str(user_pretrained)).expanduser().is_dir()
    if user_pretrained and not user_dir:
        return user_pretrained
    if digest is None and not is_weights_path(recorded):
        return recorded  # a hub tag, True, or random init
    name = Path(str(recorded)).name
    candidates = ([Path(str(recorded)).expanduser()] if digest is None else []) + \
        [folder / name for folder in search_dirs(prompt_path, user_pretrained)]
    wrong_digest = []
    for candidate in candidates:
        if not candidate.is_file():
            continue
        if digest is None or file_sha256(candidate) == digest:
            if candidate != Path(str(recorded)):
                log.info("backbone weights %s found at %s", name, candidate)
            return str(candidate)
        wrong_digest.append(str(candidate))
    raise RecordedWeightsNotFoundError(_not_found_message(name, digest, prompt_path, wrong_digest))


def _not_found_message(name: str, digest: str | None, prompt_path, wrong_digest: list[str]) -> str:
    needed = f"{name!r}" + (f" (sha256 {digest[:12]}…)" if digest else "")
    where = f"prompt file {str(prompt_path)!r}" if prompt_path is not None else "this manifest"
    seen = f"; {', '.join(wrong_digest[:3])} has that name but other contents" if wrong_digest else ""
    return (f"{where} was trained on the backbone weights file {needed}, which is not at its recorded place, next to "
            f"the prompt file (or up to {PARENT_LEVELS} folders above it), nor in vpt/assets{seen}. Pass that file: "
            f"vpt-eval pretrained=/path/to/{name}, or "
            f"PromptedModel.from_prompt_file(path, pretrained='/path/to/{name}') (a folder holding it works too)")
