"""Prompt files: only the trainable tensors (safetensors) plus a JSON manifest, as PEFT adapters.

A prompt file is a directory::

    my_task/
      prompt.safetensors   # trainable tensors only (prompts, head; backbone tensors only for full/bias tuning)
      prompt.json          # manifest: backbone name + weight fingerprint, prompt config, classes, vpt version
"""
from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import torch

from .errors import PromptFileError
from .files import atomic_save_safetensors, atomic_write_json
from .run_files import BEST, LAST
from .version import __version__

WEIGHTS_NAME = "prompt.safetensors"
MANIFEST_NAME = "prompt.json"
FORMAT = "vpt.prompt/1"


def _paths(path) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix == ".safetensors":
        return path, path.with_name(MANIFEST_NAME) if path.name == WEIGHTS_NAME else path.with_suffix(".json")
    if path.suffix == ".json":
        return path.with_name(WEIGHTS_NAME) if path.name == MANIFEST_NAME else path.with_suffix(".safetensors"), path
    return path / WEIGHTS_NAME, path / MANIFEST_NAME


def build_manifest(model, **extra: Any) -> dict[str, Any]:
    backbone = model.backbone
    head = getattr(model, "head", None)  # a detector has none: its heads are among the tensors
    head_info: dict[str, Any] = {"kind": getattr(head, "kind", "none"), "num_classes": getattr(head, "out_features", 0)}
    if head_info["kind"] == "zero_shot":
        head_info.update(logit_scale=head.logit_scale, templates=head.templates)
    if head_info["kind"] == "label_map":  # rebuilt from the backbone's own classifier on load
        head_info.update(source_indices=head.source_indices)
    if hasattr(head, "manifest_info"):  # e.g. a CLIP prompt head: its text tower's fingerprint
        head_info.update(head.manifest_info())
    return {
        "format": FORMAT,
        "vpt_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "backbone": {
            "name": backbone.name,
            "adapter": type(backbone).__name__,
            "fingerprint": model.backbone_fingerprint,
            "fingerprint_of": "encoder",  # the tensors the prompted forward uses (no unused classifier)
            "embed_dim": backbone.embed_dim,
            "num_layers": backbone.num_layers,
            "create_args": backbone.create_args,
        },
        "prompt": model.prompt_config.to_dict(),
        "head": head_info,
        "class_names": model.class_names,
        "tensors": {k: list(v.shape) for k, v in model.trainable_state_dict().items()},
        **extra,
    }


def save_prompt(model, path, **extra: Any) -> Path:
    """Write ``path/prompt.safetensors`` + ``path/prompt.json``; returns the directory.

    The weights are written to a temporary name and renamed, so an interrupted save never leaves a
    half-written file in place of a good one.
    """
    weights_path, manifest_path = _paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.trainable_state_dict().items()}
    save_id = secrets.token_hex(8)  # in both files: a pair mixed from two saves is detected on read
    manifest = {**build_manifest(model, **extra), "save_id": save_id}
    # weights first, manifest last: each written whole (temp + rename), so a crash keeps the previous good pair
    atomic_save_safetensors(weights_path, tensors, {"format": FORMAT, "fingerprint": model.backbone_fingerprint,
                                                    "save_id": save_id})
    atomic_write_json(manifest_path, manifest)
    return weights_path.parent


def read_prompt_file(path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(manifest, tensors), with one clear error for a missing, truncated or corrupt file."""
    weights_path, manifest_path = _paths(path)
    if not Path(path).exists() and not weights_path.parent.exists():
        raise PromptFileError(f"prompt file {str(path)!r} does not exist{_runs_near(Path(path))}")
    for p in (weights_path, manifest_path):
        if not p.is_file():
            run_dir = f"; {str(path)!r} is a run dir: pass {str(Path(path) / BEST)!r} (or {LAST})" \
                if (Path(path) / BEST / MANIFEST_NAME).is_file() else ""
            raise PromptFileError(f"prompt file part {str(p)!r} is missing; pass the directory written by save_prompt "
                                  f"(it holds {WEIGHTS_NAME} and {MANIFEST_NAME}){run_dir}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PromptFileError(f"prompt manifest {str(manifest_path)!r} is not valid JSON ({err}); the file is corrupt, re-save it") from err
    if manifest.get("format") != FORMAT:
        raise PromptFileError(f"{str(manifest_path)!r} is not a vpt prompt manifest (format {manifest.get('format')!r}, expected {FORMAT!r})")
    tensors, weights_meta = _read_weights(weights_path)
    _check_same_save(manifest, weights_meta, tensors, weights_path, manifest_path)
    return manifest, tensors


def _runs_near(path: Path) -> str:
    """``; runs in outputs/deep_digits: latest, 2026-01-02_10-00-00, ...`` for the nearest existing folder above a
    missing prompt-file path (``outputs/<name>/latest/best`` is the newest run's best/)."""
    folder = path.parent
    while folder != folder.parent and not folder.is_dir():
        folder = folder.parent
    if not folder.is_dir() or str(folder) in ("", "."):
        return "; pass a prompt file directory (a run's best/ or last/), e.g. outputs/<name>/latest/best"
    runs = sorted((p.name for p in folder.iterdir() if (p / BEST / MANIFEST_NAME).is_file()), reverse=True)
    if not runs:
        return f"; {str(folder)!r} holds no run with a best/ prompt file"
    shown = ", ".join(runs[:6]) + (f" (+{len(runs) - 6} more)" if len(runs) > 6 else "")
    return f"; runs in {str(folder)!r}: {shown} (pass {str(folder / runs[0] / BEST)!r})"


def _read_weights(weights_path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise PromptFileError(f"prompt weights {str(weights_path)!r} are truncated or corrupt ({err}); "
                              "re-save them or pick another checkpoint (e.g. best/ instead of last/)") from err


def _check_same_save(manifest: dict[str, Any], weights_meta: dict[str, str], tensors: dict[str, torch.Tensor],
                     weights_path: Path, manifest_path: Path) -> None:
    """The two parts of one save: same save id (vpt >= 0.2), same backbone fingerprint, same tensor shapes.

    A pair mixed from two saves is named as such, not blamed on the backbone it is loaded onto."""
    expected = {k: list(v) for k, v in manifest.get("tensors", {}).items()}
    found = {k: list(v.shape) for k, v in tensors.items()}
    saved = manifest.get("backbone", {})
    # files without ``fingerprint_of`` (vpt < 0.2) are matched on shapes only, as they always were
    saved_fingerprint = saved.get("fingerprint") if saved.get("fingerprint_of") else None
    if manifest.get("save_id") and weights_meta.get("save_id") and manifest["save_id"] != weights_meta["save_id"]:
        why = f"save id {weights_meta['save_id']} vs {manifest['save_id']}"
    elif saved_fingerprint and weights_meta.get("fingerprint") not in (None, saved_fingerprint):
        why = f"backbone fingerprint {weights_meta['fingerprint'][:12]}… vs {saved_fingerprint[:12]}…"
    elif expected and expected != found:
        why = f"tensors {sorted(found)} vs {sorted(expected)}"
    else:
        return
    raise PromptFileError(f"{str(weights_path)!r} and {str(manifest_path)!r} come from different saves ({why}); "
                          "copy both files of one save together (e.g. both from best/ of the same run), or re-save")


def check_backbone(manifest: dict[str, Any], backbone, path, fingerprint: str | None = None) -> None:
    """Refuse a prompt file made for other encoder weights than ``backbone``'s (a :class:`BackboneAdapter`).

    ``fingerprint``: the encoder's fingerprint taken before tuning (a model's ``backbone_fingerprint``); files written
    by vpt < 0.2 hold the whole wrapped model's hash instead (``legacy_fingerprint``), which is accepted too.
    """
    fingerprint = fingerprint or backbone.fingerprint()
    saved = manifest["backbone"]
    if saved["fingerprint"] == fingerprint:
        return
    if saved.get("fingerprint_of") is None and saved["fingerprint"] == backbone.legacy_fingerprint():
        return
    args = saved.get("create_args") or {}
    weights = f" and weights file {args['pretrained']!r} (sha256 {args['pretrained_sha256'][:12]}…)" \
        if args.get("pretrained_sha256") else ""
    raise PromptFileError(
        f"prompt file {str(path)!r} was made for backbone {saved['name']!r}{weights} with weights fingerprint "
        f"{saved['fingerprint'][:12]}…, but this backbone is {backbone.name!r} with fingerprint {fingerprint[:12]}…. "
        f"Load it onto the backbone it was trained on (same name and weights file)."
    )
