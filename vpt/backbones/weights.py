"""Read a weights file given by path without running code from it, and refuse weights that do not fit the model.

``read_weights_file`` reads .safetensors, .pth/.pt/.bin/.ckpt (``torch.load(weights_only=True)``: a file that
needs arbitrary Python objects is refused, never executed) and .npz (``np.load(allow_pickle=False)``).
``load_checked`` loads a state dict only when its keys and shapes match the model: a ResNet file given to a
ViT is an error naming the file and the counts, not a silently random backbone.
"""
from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from ..errors import VptError, WeightsUnavailableError

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
READABLE_SUFFIXES = (".safetensors", *TORCH_SUFFIXES, ".npz")
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")  # training checkpoints wrap weights
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
HEAD_PREFIXES = ("head.", "fc.")  # vpt owns the classifier head
SAFETENSORS_FIX = ("re-save it as .safetensors where it was made: "
                   "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')")


class WeightsFileError(WeightsUnavailableError):
    """A weights file that cannot be read safely: missing, truncated, corrupt, or holding Python objects."""


class WeightsMismatchError(VptError, ValueError):
    """A weights file whose keys or shapes do not fit the model."""


def read_weights_file(path: str | os.PathLike) -> dict[str, Any]:
    """Tensors of a weights file by name; .npz arrays stay numpy arrays (timm's npz reader maps them)."""
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise WeightsFileError(f"weights file {str(path)!r} does not exist; pass an existing "
                               f"{'/'.join(READABLE_SUFFIXES)} file, or a hub name")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _read_safetensors(path)
    if suffix in TORCH_SUFFIXES:
        return _read_torch(path)
    if suffix == ".npz":
        return _read_npz(path)
    raise WeightsFileError(f"weights file {str(path)!r} has an unknown suffix {path.suffix!r}; vpt reads "
                           f"{', '.join(READABLE_SUFFIXES)}")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise WeightsFileError(f"weights file {str(path)!r} is truncated, corrupt or not a safetensors file ({err}); "
                               "re-download or re-save it") from err


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a foreign or damaged file
        if "Unsupported global" in str(err):  # torch's weights-only reader met a class or function
            raise WeightsFileError(
                f"weights file {str(path)!r} holds Python objects beyond tensors and plain values; vpt does not "
                f"unpack those, because loading them would run code from the file. If you trust its source, "
                f"{SAFETENSORS_FIX}") from err
        raise WeightsFileError(f"weights file {str(path)!r} is truncated, corrupt or not a torch file "
                               f"({type(err).__name__}: {err}); re-download it, or {SAFETENSORS_FIX}") from err
    return unwrap_state_dict(loaded, path)


def unwrap_state_dict(loaded: Any, path: str | os.PathLike = "<memory>") -> dict[str, torch.Tensor]:
    """The parameter tensors inside a checkpoint: ``{"state_dict": ...}``-style containers and
    ``module.`` / ``_orig_mod.`` key prefixes are unwrapped."""
    while isinstance(loaded, Mapping) and not _holds_tensors(loaded):
        inner = next((loaded[k] for k in CONTAINER_KEYS if isinstance(loaded.get(k), Mapping)), None)
        if inner is None:
            break
        loaded = inner
    if not isinstance(loaded, Mapping) or not _holds_tensors(loaded):
        keys = list(loaded)[:8] if isinstance(loaded, Mapping) else type(loaded).__name__
        raise WeightsFileError(f"weights file {str(path)!r} holds no state dict of tensors (found {keys}); pass a "
                               f"file saved from model.state_dict()")
    tensors = {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def _holds_tensors(mapping: Mapping) -> bool:
    return any(isinstance(v, torch.Tensor) for v in mapping.values())


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}  # reading each entry checks it is complete
    except ValueError as err:  # numpy's refusal of object arrays
        raise WeightsFileError(f"weights file {str(path)!r} holds Python objects (object arrays), which vpt does "
                               f"not unpack; save plain numeric arrays with np.savez") from err
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise WeightsFileError(f"weights file {str(path)!r} is truncated, corrupt or not an .npz archive ({err}); "
                               "re-download it") from err


# ---- checking keys and shapes --------------------------------------------------------------------------------
def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     allow_partial: bool = False, ignore_prefixes: Iterable[str] = HEAD_PREFIXES) -> dict[str, Any]:
    """Compare a state dict with ``model.state_dict()``; returns the report or raises ``WeightsMismatchError``.

    Keys under ``ignore_prefixes`` (the classifier head) may be missing or differ and are never loaded. Any
    other missing key, unexpected key or shape mismatch is an error; ``allow_partial`` permits missing and
    unexpected keys (at least one key must match) but never a shape mismatch.
    """
    ignore = tuple(ignore_prefixes)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(ignore)}
    given = {k: tuple(v.shape) for k, v in state_dict.items() if not k.startswith(ignore)}
    matched = [k for k in expected if given.get(k) == expected[k]]
    report = {
        "path": str(path),
        "matched": len(matched),
        "expected": len(expected),
        "missing": [k for k in expected if k not in given],
        "unexpected": [k for k in given if k not in expected],
        "mismatched": [(k, given[k], expected[k]) for k in expected if k in given and given[k] != expected[k]],
        "ignored": sorted(k for k in state_dict if k.startswith(ignore)),
    }
    fatal = bool(report["mismatched"]) or not matched
    if not allow_partial:
        fatal = fatal or bool(report["missing"] or report["unexpected"])
    if fatal:
        raise WeightsMismatchError(_mismatch_message(model, report))
    return report


def _mismatch_message(model: nn.Module, report: Mapping[str, Any]) -> str:
    def examples(keys: list) -> str:
        return ", ".join(map(str, keys[:3])) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

    parts = [f"weights file {report['path']!r} does not fit this {type(model).__name__}: "
             f"{report['matched']} of {report['expected']} keys match"]
    for label, key in (("missing", "missing"), ("unexpected", "unexpected"), ("wrong shape", "mismatched")):
        if report[key]:
            shown = report[key] if key != "mismatched" else [f"{k} {g} vs {e}" for k, g, e in report[key]]
            parts.append(f"{len(report[key])} {label}: {examples(shown)}")
    fix = ("pass the backbone name these weights were made for, or the weights file for this backbone"
           if report["matched"] == 0 or report["mismatched"] else
           "pass the full weights file for this backbone, or backbone.allow_partial_weights=true to load a partial "
           "file on purpose (the missing tensors keep their random init)")
    return "; ".join(parts) + f". Fix: {fix}"


def timm_filter_fn(model: nn.Module) -> Callable | None:
    """timm's own ``checkpoint_filter_fn`` for the model's architecture (it resamples position embeddings and
    maps other layouts, as timm does for ``pretrained=True``), or None for non-timm models."""
    module = type(model).__module__
    if not module.startswith("timm."):
        return None
    return getattr(sys.modules.get(module), "checkpoint_filter_fn", None)


def load_checked(model: nn.Module, path: str | os.PathLike, allow_partial: bool = False,
                 ignore_prefixes: Iterable[str] = HEAD_PREFIXES, filter_fn: Callable | str | None = "auto") -> dict[str, Any]:
    """Read ``path``, check it against ``model`` (see ``check_state_dict``) and load it; returns the report.

    ``filter_fn(state_dict, model) -> state_dict`` adapts a checkpoint first; "auto" uses timm's for timm models.
    An .npz file is validated here and loaded by the model's own ``load_pretrained`` (timm's npz reader).
    """
    state = read_weights_file(path)
    if str(path).lower().endswith(".npz"):
        return _load_npz(model, path, state)
    if filter_fn == "auto":
        filter_fn = timm_filter_fn(model)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception as err:  # a filter written for this architecture chokes on another's keys
            raise WeightsMismatchError(f"weights file {str(path)!r} could not be adapted to this "
                                       f"{type(model).__name__} ({type(err).__name__}: {err}); pass the backbone name "
                                       "these weights were made for") from err
    report = check_state_dict(model, state, path, allow_partial=allow_partial, ignore_prefixes=ignore_prefixes)
    ignore = tuple(ignore_prefixes)
    expected = model.state_dict()
    loadable = {k: v for k, v in state.items()
                if not k.startswith(ignore) and k in expected and v.shape == expected[k].shape}
    model.load_state_dict(loadable, strict=False)
    return report


def _load_npz(model: nn.Module, path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    loader = getattr(model, "load_pretrained", None)
    if loader is None:
        raise WeightsFileError(f"weights file {str(path)!r} is an .npz archive, which only timm ViTs read "
                               f"(this is a {type(model).__name__}); convert it to .safetensors")
    try:
        loader(str(path))
    except Exception as err:  # timm's reader raises KeyError / RuntimeError for another layout
        raise WeightsMismatchError(f"weights file {str(path)!r} does not fit this {type(model).__name__} "
                                   f"({type(err).__name__}: {err}); pass the backbone name these weights were made "
                                   "for") from err
    size = len(model.state_dict())
    return {"path": str(path), "matched": size, "expected": size, "missing": [], "unexpected": [], "mismatched": [],
            "ignored": [], "npz_entries": len(arrays)}
