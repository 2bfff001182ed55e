"""What the benchmark runs: backbones, prompted models and batches from a run's spec, the train-step and
forward closures it times, the plain timm VPT-deep yardstick, FLOP counting and prompt-file sizes."""
from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .runtime import autocast


def backbone_kwargs(spec: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(spec.get("backbone_kwargs") or {})
    name = spec["backbone"]
    if not name.startswith("open_clip:"):
        kwargs.setdefault("img_size", spec["img_size"])
        if spec.get("patch_size"):
            kwargs.setdefault("patch_size", spec["patch_size"])
    return kwargs


RANDOM_WEIGHTS_LINE = "random weights (pretrained=False): speed and memory do not depend on the weights"


@contextlib.contextmanager
def quiet_random_weights():
    """No per-worker "random weights" warning from create_backbone: ``vpt-bench`` says it once, before the runs."""
    factory = logging.getLogger("vpt.backbones.factory")
    level = factory.level
    factory.setLevel(logging.ERROR)
    try:
        yield
    finally:
        factory.setLevel(level)


def build_backbone(spec: dict[str, Any]):
    import vpt

    with quiet_random_weights():
        return vpt.create_backbone(spec["backbone"], pretrained=False, **backbone_kwargs(spec))


def prompt_config(spec: dict[str, Any], method: str) -> dict[str, Any]:
    """The prompt settings of ``method``: a token length for token methods, a pixel size for pixel methods."""
    from ...methods import get_method

    kind = get_method(method).kind
    cfg: dict[str, Any] = {"method": method}
    if kind == "token":
        cfg["length"] = spec["prompt_length"]
    if kind == "pixel":
        cfg["size"] = spec["pad_size"]
    if method == "sidetune" and spec["img_size"] < ALEXNET_MIN_SIZE:  # AlexNet's pooling needs >= 63 px
        cfg["side"] = "conv"
    return cfg


ALEXNET_MIN_SIZE = 63

#: what each CLIP prompt method's text tower costs per forward (the row says it; see vpt/methods/clip_prompts.py)
TEXT_TOWER = {"coop": "once per class set (n_cls sequences), not per image",
              "maple": "once per class set (n_cls sequences), not per image",
              "ivlp": "once per class set (n_cls sequences), not per image",
              "cocoop": "per image: batch x n_cls sequences (context conditioned on each image)"}


def bench_class_names(num_classes: int) -> list[str]:
    """Generated class names for the CLIP prompt methods (their text prompts are built from names)."""
    return [f"class {i}" for i in range(num_classes)]


def build_model(spec: dict[str, Any], method: str, backbone=None):
    import vpt
    from ...methods import get_method

    backbone = backbone if backbone is not None else build_backbone(spec)
    cfg = prompt_config(spec, method)
    if not get_method(method).builds_head:
        return vpt.PromptedModel(backbone, cfg, num_classes=spec["num_classes"])
    clip = getattr(backbone, "clip_model", None)
    depth = getattr(vpt.PromptConfig(method).options, "depth", None)
    if depth is not None and clip is not None:  # the official depth (9), or every layer of a shallower tower
        cfg["depth"] = min(depth, backbone.num_layers, len(clip.transformer.resblocks))
    return vpt.PromptedModel(backbone, cfg, class_names=bench_class_names(spec["num_classes"]))


def make_optimizer(params, device: str):
    # VPT's optimiser (SGD + momentum); foreach: one multi-tensor kernel instead of a loop over tensors.
    return torch.optim.SGD(params, lr=1e-3, momentum=0.9, foreach=True)


def make_batch(spec: dict[str, Any], device: str):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(spec["batch_size"], 3, spec["img_size"], spec["img_size"], generator=g)
    labels = torch.randint(0, spec["num_classes"], (spec["batch_size"],), generator=g)
    return images.to(device), labels.to(device)  # data lives on the device: the benchmark measures the model


def train_on_fn(model, optimizer, device: str, precision: str, compiled=None) -> Callable[[Any, Any], None]:
    """``step(images, labels)``: zero_grad + forward (autocast) + cross-entropy + backward + optimiser step."""
    import torch.nn.functional as F

    forward = compiled if compiled is not None else model

    def step(images, labels) -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            logits = forward(images)
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()

    return step


def train_step_fn(model, optimizer, images, labels, device: str, precision: str, compiled=None):
    """A train step on one fixed batch (already on the device)."""
    train_on = train_on_fn(model, optimizer, device, precision, compiled)
    return lambda: train_on(images, labels)


def forward_fn(model, images, device: str, precision: str, compiled=None):
    forward = compiled if compiled is not None else model

    def run() -> None:
        model.eval()
        with torch.no_grad(), autocast(device, precision):
            forward(images)
        model.train()

    return run


class PlainTimmVPT(nn.Module):
    """The yardstick: VPT-deep written directly on a timm ViT, fp32, nothing else.

    ``x = patch_embed; _pos_embed; for each block: x = cat(prefix, prompt[i].expand(B), x[after old prompts]);
    x = block(x); norm; head on the class token``.
    """

    def __init__(self, vit: nn.Module, prompt_length: int, num_classes: int) -> None:
        super().__init__()
        self.vit = vit
        vit.requires_grad_(False).eval()
        depth, dim = len(vit.blocks), vit.embed_dim
        self.prompts = nn.Parameter(torch.empty(depth, prompt_length, dim).uniform_(-0.1, 0.1))
        self.head = nn.Linear(dim, num_classes)

    def train(self, mode: bool = True) -> "PlainTimmVPT":
        super().train(mode)
        self.vit.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        vit, n = self.vit, self.vit.num_prefix_tokens
        x = vit._pos_embed(vit.patch_embed(images))
        b, p = x.shape[0], self.prompts.shape[1]
        for i, block in enumerate(vit.blocks):
            x = torch.cat([x[:, :n], self.prompts[i].expand(b, -1, -1), x[:, n + (p if i else 0):]], dim=1)
            x = block(x)
        x = vit.norm(x)
        return self.head(x[:, 0])


def prompt_file_bytes(model) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        path = model.save_prompt(Path(tmp) / "prompt")
        sizes = {p.name: p.stat().st_size for p in Path(path).iterdir()}
    return {"prompt_file_bytes": sum(sizes.values()), "prompt_weights_bytes": sizes.get("prompt.safetensors", 0)}


@contextlib.contextmanager
def parameters_frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Every parameter of ``module`` says ``requires_grad=False`` inside the block; the flags come back after.

    For counting a no-grad forward: under ``no_grad`` a view of a parameter (one layer's prompts) still says
    requires_grad but has no autograd node, and FlopCounterMode's module tracker, which hooks gradients of
    tensors that require them, fails on it. No-grad arithmetic does not read the flags, so the count is the same.
    """
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield module
    finally:
        for p, requires_grad in flags:
            p.requires_grad_(requires_grad)


def flops_per_image(fn: Callable[[], Any], batch_size: int) -> float:
    """FLOPs of one call of ``fn`` counted by ``torch.utils.flop_counter`` (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / batch_size


def count_flops(model, optimizer, images, labels, device: str, precision: str, into: dict[str, Any]) -> None:
    """Train-step and no-grad-forward FLOPs per image of the eager ``model`` (the counter does not see inside
    compiled graphs), written into ``into`` as they are counted."""
    batch_size = images.shape[0]
    into["train_flops_per_image"] = flops_per_image(
        train_step_fn(model, optimizer, images, labels, device, precision), batch_size)
    with parameters_frozen(model):
        into["forward_flops_per_image"] = flops_per_image(forward_fn(model, images, device, precision), batch_size)
