"""Prompt files: only the trainable tensors (safetensors) plus a JSON manifest, as PEFT adapters.

A prompt file is a directory::

    my_task/
      prompt.safetensors   # trainable tensors only (prompts, head; backbone tensors only for full/bias tuning)
      prompt.json          # manifest: backbone name + weight fingerprint, prompt config, classes, vpt version
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .errors import PromptFileError

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
    head = model.head
    head_info: dict[str, Any] = {"kind": getattr(head, "kind", "none"), "num_classes": getattr(head, "out_features", 0)}
    if head_info["kind"] == "zero_shot":
        head_info.update(logit_scale=head.logit_scale, templates=head.templates)
    return {
        "format": FORMAT,
        "vpt_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "backbone": {
            "name": backbone.name,
            "adapter": type(backbone).__name__,
            "fingerprint": model.backbone_fingerprint,
            "embed_dim": backbone.embed_dim,
            "num_layers": backbone.num_layers,
            "create_args": getattr(backbone, "create_args", None),
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
    from safetensors.torch import save_file

    weights_path, manifest_path = _paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.trainable_state_dict().items()}
    manifest = build_manifest(model, **extra)
    for target, write in (
        (weights_path, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT, "fingerprint": model.backbone_fingerprint})),
        (manifest_path, lambda p: Path(p).write_text(json.dumps(manifest, indent=2, default=str))),
    ):
        tmp = target.with_name(target.name + ".tmp")
        write(tmp)
        os.replace(tmp, target)
    return weights_path.parent


def read_prompt_file(path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(manifest, tensors), with one clear error for a missing, truncated or corrupt file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights_path, manifest_path = _paths(path)
    for p in (weights_path, manifest_path):
        if not p.is_file():
            raise PromptFileError(f"prompt file part {str(p)!r} is missing; pass the directory written by save_prompt "
                                  f"(it holds {WEIGHTS_NAME} and {MANIFEST_NAME})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PromptFileError(f"prompt manifest {str(manifest_path)!r} is not valid JSON ({err}); the file is corrupt, re-save it") from err
    if manifest.get("format") != FORMAT:
        raise PromptFileError(f"{str(manifest_path)!r} is not a vpt prompt manifest (format {manifest.get('format')!r}, expected {FORMAT!r})")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise PromptFileError(f"prompt weights {str(weights_path)!r} are truncated or corrupt ({err}); "
                              "re-save them or pick another checkpoint (e.g. best/ instead of last/)") from err
    expected = {k: list(v) for k, v in manifest.get("tensors", {}).items()}
    found = {k: list(v.shape) for k, v in tensors.items()}
    if expected and expected != found:
        raise PromptFileError(f"prompt weights {str(weights_path)!r} do not match their manifest (tensors {sorted(found)} "
                              f"vs {sorted(expected)}); the two files come from different saves")
    return manifest, tensors


def check_backbone(manifest: dict[str, Any], model_or_fingerprint, name: str, path) -> None:
    fingerprint = model_or_fingerprint if isinstance(model_or_fingerprint, str) else model_or_fingerprint.backbone_fingerprint
    saved = manifest["backbone"]
    if saved["fingerprint"] != fingerprint:
        raise PromptFileError(
            f"prompt file {str(path)!r} was made for backbone {saved['name']!r} with weights fingerprint "
            f"{saved['fingerprint'][:12]}…, but this backbone is {name!r} with fingerprint {fingerprint[:12]}…. "
            f"Load it onto the backbone it was trained on (same name and weights file)."
        )


def load_prompt_into(model, path) -> None:
    """Load a prompt file into an existing PromptedModel (same backbone weights and prompt shapes)."""
    manifest, tensors = read_prompt_file(path)
    check_backbone(manifest, model, model.backbone.name, path)
    own = model.trainable_state_dict()
    if set(own) != set(tensors) or any(own[k].shape != tensors[k].shape for k in own):
        mismatched = sorted(k for k in set(own) | set(tensors) if k not in own or k not in tensors or own[k].shape != tensors[k].shape)
        raise PromptFileError(
            f"prompt file {str(path)!r} (prompt {manifest['prompt']}, {manifest['head']['num_classes']} classes) does not "
            f"fit this model (prompt {model.prompt_config.to_dict()}): mismatched tensors {mismatched[:6]}. "
            "Build the model from the file instead: PromptedModel.from_prompt_file(path, backbone)."
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            params[key].copy_(value.to(params[key].dtype))
    if manifest.get("class_names"):
        model.class_names = manifest["class_names"]


def load_prompted_model(path, backbone=None, pretrained: Any = False, head: nn.Module | None = None):
    """Build a PromptedModel as described by a prompt file, on ``backbone`` (or the one named in the file)."""
    from .backbones import create_backbone
    from .config import PromptConfig
    from .heads import ZeroShotHead
    from .model import PromptedModel

    manifest, _ = read_prompt_file(path)
    if backbone is None:
        args = manifest["backbone"].get("create_args")
        if not args:
            raise PromptFileError(f"prompt file {str(path)!r} was made on a user-built backbone instance; "
                                  "pass that backbone: PromptedModel.from_prompt_file(path, backbone=model)")
        backbone = create_backbone(args["name"], pretrained=pretrained or args["pretrained"], **args["kwargs"])
    elif isinstance(backbone, str):
        backbone = create_backbone(backbone, pretrained=pretrained)
    head_info = manifest["head"]
    class_names = manifest.get("class_names")
    if head is None and head_info["kind"] == "zero_shot":
        clip = getattr(backbone, "clip_model", None)
        if clip is None or not class_names:
            raise PromptFileError("this prompt file uses a CLIP zero-shot head: pass an open_clip backbone built by "
                                  "vpt.backbones.create_backbone('open_clip:...') so its text tower can rebuild the head")
        head = ZeroShotHead.from_clip(clip, backbone.tokenizer, class_names, head_info.get("templates") or ["{}"])
        head.logit_scale = head_info.get("logit_scale", head.logit_scale)
    model = PromptedModel(backbone, PromptConfig.from_dict(manifest["prompt"]), num_classes=head_info["num_classes"] or 0,
                          head=head, class_names=class_names)
    load_prompt_into(model, path)
    return model
