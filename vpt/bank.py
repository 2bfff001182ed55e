"""Multi-task prompt bank: one frozen backbone, many prompt files, mixed-task batches in one forward pass.

Each task brings token prompts (any length, any prompted layers), a pixel prompt, or neither, plus its own
head; a head may have hidden layers (MLP-k) and a task may mix a side network into the pooled feature (Sidetune):
those run per task on that task's rows. CLIP prompt-learning tasks fit too: a CoOp / IVLP / MaPLe head at inference is a fixed class-embedding matrix
(the text tower runs once per class set, when the task is added), and IVLP / MaPLe vision prompts are fixed token
prompts; CoCoOp is refused (its text context depends on each image). For a batch, per-layer prompts are gathered per sample from a padded stack; a task's unused
(padding) prompt slots are hidden from attention with an additive key bias, so each sample's output
equals running its own task alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import BackboneAdapter, wrap_model
from .encoder import run_layers
from .errors import ConfigError, PromptFileError
from .methods import Method, get_method
from .model import PromptedModel, check_images
from .prompt_file import check_backbone, read_prompt_file


@dataclass
class _Task:
    name: str
    prompts: dict[int, torch.Tensor]  # layer -> (P, D), projection applied
    pixel: torch.Tensor | None  # (3, H, W) additive image
    head: dict
    class_names: list[str] | None
    model: PromptedModel | None = None  # kept when the task changes the pooled feature (Sidetune's side network)
    projection: nn.Module | None = None  # a head's hidden layers before its last linear layer (MLP-k)


class PromptBank(nn.Module):
    """``bank(images, tasks)`` → logits (B, C_max), each row padded with -inf past its task's class count."""

    def __init__(self, backbone: nn.Module | BackboneAdapter) -> None:
        super().__init__()
        self.backbone = wrap_model(backbone)
        self.backbone.requires_grad_(False).eval()
        self.fingerprint = self.backbone.fingerprint()
        self._tasks: dict[str, _Task] = {}
        self._stack: dict | None = None

    # ---- task management -----------------------------------------------------------------
    @property
    def tasks(self) -> list[str]:
        return list(self._tasks)

    def add_task(self, name: str, source) -> None:
        """Add a task from a prompt file path or a PromptedModel built on the same backbone weights."""
        if name in self._tasks:
            raise ConfigError(f"task {name!r} is already in the bank; remove_task({name!r}) first")
        if isinstance(source, PromptedModel):
            model = source
            if model.backbone_fingerprint != self.fingerprint:
                raise PromptFileError(f"task {name!r} was trained on other backbone weights than this bank's")
        else:
            manifest, tensors = read_prompt_file(source)  # read once: checked, then built from these contents
            if manifest.get("task", "classification") != "classification":
                raise ConfigError(f"task {name!r} is a {manifest['task']} prompt file; the bank serves classification "
                                  "tasks (one pooled feature per image), so run it alone: "
                                  "vpt.detection.DetectorModel.from_prompt_file(path)")
            check_backbone(manifest, self.backbone, source, self.fingerprint)
            self._check_shareable(name, get_method(manifest["prompt"].get("method", "deep")),
                                  manifest["prompt"].get("method"))  # before building: a method may change the backbone
            model = PromptedModel.from_prompt_contents(manifest, tensors, source, backbone=self.backbone)
        self._check_shareable(name, model.method, model.prompt_config.method)
        model.eval()
        device = next(self.backbone.parameters()).device
        source = model.method.prompt_source(model)  # token prompts, or a CLIP head's vision prompts (IVLP, MaPLe)
        with torch.no_grad():
            prompts = {k: v.detach().to(device) for k, v in source.effective().items()} if source is not None else {}
        pixel = model.pixel_prompt.prompt_image()[0].detach().to(device) if model.pixel_prompt is not None else None
        spec = model.head.head_spec() if hasattr(model.head, "head_spec") else None
        if spec is None:
            raise ConfigError(f"task {name!r} has no linear or zero-shot head")
        projection = spec.pop("projection", None)
        spec = {k: (v.detach().to(device) if torch.is_tensor(v) else v) for k, v in spec.items()}
        mixes_features = type(model.method).features is not Method.features  # e.g. Sidetune's side network
        self._tasks[name] = _Task(name, prompts, pixel, spec, model.class_names,
                                  model if mixes_features else None, projection)
        self._stack = None

    @staticmethod
    def _check_shareable(name: str, method, method_name: str) -> None:
        why = method.bank_refusal()
        if why is not None:
            raise ConfigError(f"task {name!r} {why} (prompt={method_name}); a bank shares one frozen backbone, so "
                              "only tasks that leave it untouched fit (prompts, linear / MLP-k / zero-shot heads, "
                              "Sidetune's side network, CoOp / IVLP / MaPLe): "
                              "run it alone (PromptedModel.from_prompt_file)")

    def remove_task(self, name: str) -> None:
        if name not in self._tasks:
            raise ConfigError(f"no task {name!r} in the bank; tasks: {self.tasks}")
        del self._tasks[name]
        self._stack = None

    def class_names(self, name: str) -> list[str] | None:
        return self._tasks[name].class_names

    # ---- stacked tensors, rebuilt when tasks change -----------------------------------------
    def _build_stack(self) -> dict:
        tasks = list(self._tasks.values())
        if not tasks:
            raise ConfigError("the prompt bank is empty; add_task(name, prompt_file) first")
        num_layers, dim = self.backbone.num_layers, self.backbone.embed_dim
        device = next(self.backbone.parameters()).device
        max_len = max((p.shape[0] for t in tasks for p in t.prompts.values()), default=0)
        first_layer = min((min(t.prompts) for t in tasks if t.prompts), default=num_layers)
        layers = {}
        for layer in range(first_layer, num_layers):
            if not any(layer in t.prompts for t in tasks):
                continue
            stacked = torch.zeros(len(tasks), max_len, dim, device=device)
            has = torch.zeros(len(tasks), dtype=torch.bool, device=device)
            for i, t in enumerate(tasks):
                if layer in t.prompts:
                    stacked[i, : t.prompts[layer].shape[0]] = t.prompts[layer]
                    has[i] = True
            layers[layer] = (stacked, has, bool(has.all()))
        # a prompt slot is visible at layer l if its task has started prompting and the slot is within its length
        visible = torch.zeros(num_layers, len(tasks), max_len, dtype=torch.bool, device=device)
        for i, t in enumerate(tasks):
            if t.prompts:
                length = next(iter(t.prompts.values())).shape[0]
                visible[min(t.prompts):, i, :length] = True
        needs_mask = [bool((~visible[layer, :, :]).any()) for layer in range(num_layers)]
        h, w = self.backbone.data_config()["input_size"][1:]
        pixel = torch.zeros(len(tasks), 3, h, w, device=device)
        for i, t in enumerate(tasks):
            if t.pixel is not None:
                pixel[i] = t.pixel
        max_classes = max(t.head["weight"].shape[0] for t in tasks)
        feat = self.backbone.feature_dim
        weight = torch.zeros(len(tasks), max_classes, feat, device=device)
        bias = torch.full((len(tasks), max_classes), float("-inf"), device=device)
        normalize = torch.zeros(len(tasks), dtype=torch.bool, device=device)
        scale = torch.ones(len(tasks), device=device)
        for i, t in enumerate(tasks):
            c = t.head["weight"].shape[0]
            weight[i, :c] = t.head["weight"]
            bias[i, :c] = t.head["bias"]
            normalize[i] = bool(t.head["normalize"])
            scale[i] = float(t.head["scale"])
        per_task = {i: t for i, t in enumerate(tasks) if t.model is not None or t.projection is not None}
        return {"names": [t.name for t in tasks], "max_len": max_len, "per_task": per_task, "first_layer": first_layer, "layers": layers,
                "visible": visible, "needs_mask": needs_mask, "pixel": pixel, "has_pixel": any(t.pixel is not None for t in tasks),
                "weight": weight, "bias": bias, "normalize": normalize, "scale": scale,
                "any_normalize": bool(normalize.any()), "input_size": self.backbone.data_config()["input_size"]}

    def task_indices(self, tasks: Sequence[str] | torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """One task index per image, from task names or an index tensor (0 .. len(tasks) - 1, in ``self.tasks``
        order). Refused with one message: a count other than ``batch_size``, an index out of range (-1 is not
        "the last task"), a non-integer tensor, a bare string."""
        if self._stack is None:
            self._stack = self._build_stack()
        if isinstance(tasks, str):
            raise ConfigError(f"tasks={tasks!r} is one string; pass one task name per image, e.g. "
                              f"[{tasks!r}] * len(images)")
        if torch.is_tensor(tasks):
            index = self._checked_index_tensor(tasks)
        else:
            lookup = {n: i for i, n in enumerate(self._stack["names"])}
            unknown = sorted(set(tasks) - set(lookup), key=str)
            if unknown:
                raise ConfigError(f"unknown task(s) {unknown}; bank tasks: {self.tasks}")
            index = torch.tensor([lookup[t] for t in tasks], dtype=torch.long)
        if batch_size is not None and len(index) != batch_size:
            raise ConfigError(f"{len(index)} tasks for a batch of {batch_size} images; pass one task (name or index) "
                              "per image")
        return index

    def _checked_index_tensor(self, tasks: torch.Tensor) -> torch.Tensor:
        count = len(self._stack["names"])
        if tasks.dim() != 1 or tasks.is_floating_point() or tasks.is_complex() or tasks.dtype == torch.bool:
            raise ConfigError(f"task indices must be a 1-d integer tensor, got {tasks.dtype} of shape "
                              f"{tuple(tasks.shape)}; or pass task names")
        if tasks.numel():
            low, high = (int(v) for v in torch.aminmax(tasks))  # one host read: the bank is inference-only
            if low < 0 or high >= count:
                bad = low if low < 0 else high
                raise ConfigError(f"task index {bad} is out of range for a bank of {count} tasks (0..{count - 1}: "
                                  f"{self.tasks}); negative indices do not count from the end, pass task names or "
                                  "indices in that range")
        return tasks.long()

    # ---- forward ---------------------------------------------------------------------------
    @torch.no_grad()
    def forward_features(self, images: torch.Tensor, tasks: Sequence[str] | torch.Tensor) -> torch.Tensor:
        return self._features(images, self._checked_index(images, tasks))

    def _checked_index(self, images: torch.Tensor, tasks: Sequence[str] | torch.Tensor) -> torch.Tensor:
        index = self.task_indices(tasks, batch_size=len(images) if torch.is_tensor(images) else None)
        check_images(images, self._stack["input_size"], "PromptBank", not self.backbone.takes_any_input_size)
        return index.to(images.device)

    def _features(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        stack, backbone = self._stack, self.backbone
        if stack["has_pixel"]:
            images = images + stack["pixel"][index].to(images.dtype)
        prompts = _BatchPrompts(stack, index, backbone) if stack["layers"] else None
        tokens = run_layers(backbone, backbone.embed(images), prompts, "prefix" if backbone.pools_first_token else "all")
        features = backbone.finish(tokens)[0]
        return self._per_task(index, features, lambda task, rows: task.model.method.features(
            task.model, images[rows], features[rows]) if task.model is not None else None)

    def _per_task(self, index: torch.Tensor, features: torch.Tensor, step) -> torch.Tensor:
        """``features`` with ``step(task, rows)`` (when not None) in the rows of each task that has a per-task
        step; one call per such task present in the batch."""
        per_task = self._stack["per_task"]
        if not per_task:
            return features
        present = set(torch.unique(index).tolist()) & set(per_task)  # one host read: the bank is inference-only
        if not present:
            return features
        out = features.clone()
        for i in sorted(present):
            rows = index == i
            changed = step(per_task[i], rows)
            if changed is not None:
                out[rows] = changed.to(out.dtype)
        return out

    @torch.no_grad()
    def forward(self, images: torch.Tensor, tasks: Sequence[str] | torch.Tensor) -> torch.Tensor:
        index = self._checked_index(images, tasks)
        features = self._features(images, index).float()
        features = self._per_task(index, features, lambda task, rows: task.projection(features[rows])
                                  if task.projection is not None else None)  # MLP-k's hidden layers
        stack = self._stack
        if stack["any_normalize"]:
            features = torch.where(stack["normalize"][index][:, None], F.normalize(features, dim=-1), features)
        logits = torch.einsum("bf,bcf->bc", features, stack["weight"][index]) * stack["scale"][index][:, None]
        return logits + stack["bias"][index]


class _BatchPrompts:
    """The prompt source (see :mod:`vpt.encoder`) of one mixed-task batch: per-sample prompts gathered from the
    bank's padded stack, and a key bias that hides each task's padding slots."""

    def __init__(self, stack: dict, index: torch.Tensor, backbone: BackboneAdapter) -> None:
        self.stack, self.index, self.backbone = stack, index, backbone
        self.num_prefix = backbone.num_prefix_tokens

    def at(self, layer: int, tokens: torch.Tensor, prompt_length: int) -> torch.Tensor | None:
        if layer not in self.stack["layers"]:
            return None
        stacked, has, all_have = self.stack["layers"][layer]
        prompts = stacked[self.index].to(tokens.dtype)
        if prompt_length and not all_have:  # tasks without prompts here keep the previous prompt outputs
            keep = ~has[self.index]
            previous = tokens[:, self.num_prefix:self.num_prefix + prompt_length]
            prompts = torch.where(keep[:, None, None], previous, prompts)
        return prompts

    def replaces_all(self, layer: int) -> bool:
        entry = self.stack["layers"].get(layer)
        return entry is not None and entry[2]

    def attn_bias(self, layer: int, num_tokens: int, prompt_length: int) -> torch.Tensor | None:
        if not prompt_length or not self.stack["needs_mask"][layer]:
            return None
        hidden = ~self.stack["visible"][layer][self.index]
        key_padding = F.pad(hidden, (self.num_prefix, num_tokens - self.num_prefix - prompt_length), value=False)
        return self.backbone.attention_bias(key_padding)
