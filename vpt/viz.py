"""Pictures a researcher asks for: a learned pixel prompt, where the class token attends, a gallery of predictions.

    from vpt import viz
    viz.plot_pixel_prompt(model, "pad.png", images=batch[:4])          # the prompt alone and on a few images
    fractions = viz.class_token_attention(model, images)               # (layers, 3): prefix, prompts, patches
    viz.plot_class_token_attention(fractions, "attention.png")
    viz.plot_prediction_gallery(model, images, labels, "gallery.png")

Images are denormalised with the backbone's own mean/std (``model.data_config``). Figures are drawn with
matplotlib's object API on the Agg canvas (no pyplot state, so notebooks keep their backend) and written as PNG
atomically. Attention weights are recomputed from each timm block's ``qkv`` on the tokens the block receives in
the model's own prompted forward (prompts inserted by :func:`vpt.encoder.run_layers`), so they are the weights
the model used.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .errors import ConfigError
from .files import atomic_write

TOKEN_GROUPS = ("class/register tokens", "prompt tokens", "patch tokens")


# ---- images ----------------------------------------------------------------------------------------------------
def _mean_std(model: Any) -> tuple[torch.Tensor, torch.Tensor]:
    config = model.data_config
    mean = torch.as_tensor(config["mean"], dtype=torch.float32).reshape(-1, 1, 1)
    std = torch.as_tensor(config["std"], dtype=torch.float32).reshape(-1, 1, 1)
    return mean, std


def denormalise(model: Any, images: torch.Tensor) -> np.ndarray:
    """Normalised (B, 3, H, W) or (3, H, W) tensors -> (..., H, W, 3) float arrays in [0, 1] for display."""
    mean, std = _mean_std(model)
    pixels = images.detach().float().cpu() * std + mean
    return pixels.clamp(0, 1).movedim(-3, -1).numpy()


def pixel_prompt_image(model: Any) -> np.ndarray:
    """The learned pixel prompt (H, W, 3) as an image: the additive prompt on a zero (mean-coloured) input,
    denormalised. Where the prompt is zero the picture shows the mean colour."""
    prompt = getattr(model, "pixel_prompt", None)
    if prompt is None:
        raise ConfigError(f"model has no pixel prompt (method {model.prompt_config.method!r}); pixel prompts are "
                          "prompt=pad, patch or random_patch")
    with torch.no_grad(), _eval(prompt):
        return denormalise(model, prompt.prompt_image()[0])


def prompted_images(model: Any, images: torch.Tensor) -> np.ndarray:
    """What the encoder sees: ``images`` with the pixel prompt added (eval placement), denormalised."""
    with torch.no_grad(), _eval(model.pixel_prompt):
        return denormalise(model, model.pixel_prompt(images))


@contextlib.contextmanager
def _eval(module: torch.nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


# ---- attention of the class token ------------------------------------------------------------------------------
@dataclass
class AttentionCapture:
    """Per block: the normalised tokens its attention received and the additive mask it was given."""

    inputs: list[torch.Tensor]
    masks: list[torch.Tensor | None]


@contextlib.contextmanager
def _capture_attention_inputs(backbone: Any) -> Iterator[AttentionCapture]:
    """Hooks on every block's ``attn``; the adapter's fast path (which skips ``attn``) is off meanwhile."""
    capture = AttentionCapture([], [])

    def hook(module, args, kwargs):
        capture.inputs.append(args[0].detach())
        capture.masks.append(kwargs.get("attn_mask"))

    handles = []
    for block in backbone.blocks:
        if not all(hasattr(block.attn, name) for name in ("qkv", "num_heads", "head_dim", "scale", "q_norm", "k_norm")):
            raise ConfigError(f"attention maps need timm ViT blocks (Attention with qkv); {backbone.name} has "
                              f"{type(block.attn).__name__}")
        handles.append(block.attn.register_forward_pre_hook(hook, with_kwargs=True))
    fast_path, backbone.fast_path = backbone.fast_path, False
    try:
        yield capture
    finally:
        backbone.fast_path = fast_path
        for handle in handles:
            handle.remove()


def attention_weights(attn: torch.nn.Module, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T * scale [+ mask]) of a timm ``Attention`` on its input tokens: (B, heads, N, N)."""
    b, n, _ = tokens.shape
    q, k, _ = attn.qkv(tokens).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    scores = (attn.q_norm(q) * attn.scale) @ attn.k_norm(k).transpose(-2, -1)
    if mask is not None:
        scores = scores + mask.to(scores.dtype)
    return scores.float().softmax(dim=-1)


@torch.no_grad()
def class_token_attention(model: Any, images: torch.Tensor) -> np.ndarray:
    """(layers, 3): per block, the share of the class token's attention on class/register tokens, on prompt
    tokens and on patch tokens, averaged over heads and images. Each row sums to 1."""
    backbone = model.backbone
    if not backbone.supports_token_prompts:
        raise ConfigError(f"{backbone.name} is not a token transformer: no attention to show")
    with _eval(model), _capture_attention_inputs(backbone) as capture:
        model(images)
    prefix = backbone.num_prefix_tokens
    grid_tokens = backbone.embed(images[:1]).shape[1]  # class/register + patch tokens, no prompts
    rows = []
    for block, tokens, mask in zip(backbone.blocks, capture.inputs, capture.masks):
        weights = attention_weights(block.attn, tokens, mask)[:, :, 0]  # the class token's row: (B, heads, N)
        prompts = tokens.shape[1] - grid_tokens  # prompt rows this block received
        shares = [weights[..., :prefix].sum(-1), weights[..., prefix:prefix + prompts].sum(-1),
                  weights[..., prefix + prompts:].sum(-1)]
        rows.append([share.mean().item() for share in shares])
    return np.asarray(rows)


# ---- figures ---------------------------------------------------------------------------------------------------
def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ConfigError("pictures need matplotlib: pip install 'vpt[plot]'") from error
    return Figure(figsize=(width, height), layout="constrained")


def save_png(figure: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write ``figure`` as a PNG atomically (a temp file, then a rename)."""
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi))


def plot_pixel_prompt(model: Any, path: str | os.PathLike, images: torch.Tensor | None = None) -> Path:
    """The prompt alone, then (optionally) a few images as the encoder sees them with the prompt added."""
    shown = [] if images is None else list(prompted_images(model, images[:6]))
    figure = _figure(2.2 * (1 + len(shown)), 2.4)
    axes = figure.subplots(1, 1 + len(shown), squeeze=False)[0]
    panels = [(pixel_prompt_image(model), f"{model.prompt_config.method} prompt")]
    panels += [(image, f"prompted #{i}") for i, image in enumerate(shown)]
    for axis, (image, title) in zip(axes, panels):
        axis.imshow(image, interpolation="nearest")
        axis.set_title(title, fontsize=8)
        axis.axis("off")
    return save_png(figure, path)


def plot_class_token_attention(fractions: np.ndarray, path: str | os.PathLike, title: str = "") -> Path:
    """Stacked bars per layer: how the class token's attention splits over the three token groups."""
    figure = _figure(max(4.0, 0.5 * len(fractions) + 2), 3.2)
    axis = figure.add_subplot()
    layers, bottom = np.arange(1, len(fractions) + 1), np.zeros(len(fractions))
    for column, label in enumerate(TOKEN_GROUPS):
        axis.bar(layers, fractions[:, column], bottom=bottom, label=label)
        bottom += fractions[:, column]
    axis.set(xlabel="layer", ylabel="share of the class token's attention", ylim=(0, 1),
             title=title or "class-token attention per layer", xticks=layers)
    axis.legend(fontsize=7, loc="lower right")
    return save_png(figure, path)


@dataclass
class Gallery:
    predictions: list[int]
    labels: list[int]
    titles: list[str]
    path: Path

    @property
    def accuracy(self) -> float:
        return float(np.mean([p == t for p, t in zip(self.predictions, self.labels)])) if self.labels else 0.0


@torch.no_grad()
def plot_prediction_gallery(model: Any, images: torch.Tensor, labels: torch.Tensor | Sequence[int],
                            path: str | os.PathLike, class_names: Sequence[str] | None = None,
                            columns: int = 8) -> Gallery:
    """A grid of images titled ``predicted / true`` (green when right, red when wrong)."""
    with _eval(model):
        predictions = model(images).argmax(-1).cpu().tolist()
    labels = [int(label) for label in (labels.tolist() if torch.is_tensor(labels) else labels)]
    names = list(class_names or model.class_names or [str(i) for i in range(max(predictions + labels) + 1)])
    titles = [f"{names[p]} / {names[t]}" for p, t in zip(predictions, labels)]
    columns = max(1, min(columns, len(titles)))
    rows = -(-len(titles) // columns)
    figure = _figure(1.3 * columns, 1.45 * rows)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, image, title, right in zip(axes, denormalise(model, images), titles,
                                         (p == t for p, t in zip(predictions, labels))):
        axis.imshow(image, interpolation="nearest")
        axis.set_title(title, fontsize=7, color="green" if right else "red")
    for axis in axes:
        axis.axis("off")
    figure.suptitle("predicted / true", fontsize=8)
    return Gallery(predictions, labels, titles, save_png(figure, path))
