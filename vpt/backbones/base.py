"""The view of a frozen encoder that prompt methods need.

An adapter wraps a library's own model (timm, open_clip, ...) without copying its code and exposes the
pieces of its forward pass as small steps, so that token prompts can be inserted between blocks:

    tokens = adapter.embed(images)                  # patch embed + class/register tokens + positions
    for block in adapter.blocks: tokens = block(tokens)
    pooled, tokens = adapter.finish(tokens)         # final norm + the model's own pooling

Run with no prompts, these steps are exactly the wrapped model's ``forward_features`` + pre-logits head.
Prompted models and the prompt bank walk the layers with one loop (:func:`vpt.encoder.run_layers`), which
calls :meth:`BackboneAdapter.run_layer` per layer; an adapter may take a faster path there (see
``TimmViTAdapter``). Adding a backbone family = one adapter subclass + ``@register_adapter``.
"""
from __future__ import annotations

import hashlib
from typing import Any, Callable

import torch
from torch import nn

from ..registry import Registry

ADAPTERS: Registry[type["BackboneAdapter"]] = Registry("backbone adapter")
#: the built-in adapters' priority: an adapter registered with the default priority (0) is asked before them
BUILTIN_PRIORITY = -10


def register_adapter(cls: type["BackboneAdapter"] | None = None, *, priority: int = 0, replace: bool = False):
    """Register an adapter class (a decorator, bare or with arguments); :func:`wrap_model` asks each whether it
    ``accepts`` a model, highest ``priority`` first, so a user's adapter (priority 0) wins over the built-ins."""
    if cls is None:
        return lambda c: ADAPTERS.register(c, c.__name__, priority=priority, replace=replace)
    return ADAPTERS.register(cls, cls.__name__, priority=priority, replace=replace)


def adapter_classes() -> list[type["BackboneAdapter"]]:
    """Adapter classes in the order :func:`wrap_model` asks them."""
    return ADAPTERS.values()


class BackboneAdapter(nn.Module):
    """Base class. Subclasses set the attributes below in ``__init__`` and implement the steps."""

    #: True if the encoder is a token transformer into which token prompts can be inserted.
    supports_token_prompts: bool = True
    #: Take the adapter's fast path in :meth:`run_layer` where it has one (same function, fewer FLOPs); False runs
    #: the straightforward concatenate-then-block evaluation (as timm's ``Attention.fused_attn`` flag).
    fast_path: bool = True

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.embed_dim: int = 0  # token width D
        self.feature_dim: int = 0  # width of the pooled feature
        self.num_prefix_tokens: int = 0  # class + register tokens, kept in front of prompts
        self.patch_size: tuple[int, int] = (1, 1)
        #: how to rebuild this backbone (name, pretrained, kwargs); set by create_backbone, written to prompt files
        self.create_args: dict[str, Any] | None = None
        #: text tokenizer of a CLIP model (zero-shot heads); None for image-only backbones
        self.tokenizer: Callable | None = None
        self._clip: list[nn.Module | None] = [None]  # a list keeps the text tower out of this module's state

    @property
    def clip_model(self) -> nn.Module | None:
        """The whole CLIP model whose text tower builds zero-shot heads, or None."""
        return self._clip[0]

    # ---- discovery -------------------------------------------------------------------------
    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        raise NotImplementedError

    # ---- the forward pass in steps --------------------------------------------------------
    @property
    def blocks(self) -> list[nn.Module]:
        raise NotImplementedError

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def run_block(self, index: int, tokens: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        block = self.blocks[index]
        return block(tokens) if attn_bias is None else block(tokens, attn_mask=attn_bias)

    def run_layer(self, index: int, tokens: torch.Tensor, prompts: torch.Tensor | None = None, prompt_length: int = 0,
                  rows: str = "all", attn_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        """Block ``index`` on ``tokens`` = ``[prefix, previous prompt outputs (prompt_length rows), rest]``.

        ``prompts``: fresh prompts entering this layer, (P, D) shared by the batch or (B, P, D); they take the
        place of the previous prompt rows (inserted if ``prompt_length`` is 0). ``rows``: which output rows the
        caller reads: ``all``; ``no_prompts`` (the prompt rows' outputs are discarded: replaced at the next
        layer or removed after the last); ``prefix`` (class/register tokens only, when the pooling reads only
        those). Returns ``(tokens, prompt rows in them)``. This is the plain path; adapters may override it
        with a faster one that returns the same rows.
        """
        if prompts is not None:
            if prompts.dim() == 2:
                prompts = prompts.expand(tokens.shape[0], -1, -1)
            tokens = insert_or_replace(tokens, prompts, self.num_prefix_tokens, prompt_length)
            prompt_length = prompts.shape[1]
        tokens = self.run_block(index, tokens, None if attn_bias is None else attn_bias.to(tokens.dtype))
        if rows == "prefix":
            return tokens[:, : self.num_prefix_tokens], 0
        if rows == "no_prompts" and prompt_length:
            return remove_prompts(tokens, self.num_prefix_tokens, prompt_length), 0
        return tokens, prompt_length

    def tail_modules(self) -> list[nn.Module]:
        """The modules after the last block that ``finish`` runs (final norm, attention pool); Partial-k trains them
        with the last k blocks, as VPT's ``partial-k`` trains the encoder norm."""
        return []

    @property
    def pools_first_token(self) -> bool:
        """True if ``finish``'s pooled feature reads only the first (class) token, so the last block may
        compute the prefix rows only."""
        return False

    def finish(self, tokens: torch.Tensor, need_tokens: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Final norm + the model's own pooling: (pooled pre-logits feature, final tokens)."""
        raise NotImplementedError

    def attention_bias(self, key_padding: torch.Tensor) -> torch.Tensor:
        """Additive attention bias that hides the keys where ``key_padding`` (B, N) is True."""
        bias = torch.zeros(key_padding.shape, dtype=torch.float32, device=key_padding.device)
        bias = bias.masked_fill(key_padding, float("-inf"))
        return bias[:, None, None, :]  # (B, 1, 1, N): broadcast over heads and queries

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logits feature, no prompts. Non-token adapters override this."""
        tokens = self.embed(images)
        for i in range(self.num_layers):
            tokens = self.run_block(i, tokens)
        return self.finish(tokens)[0]

    def patch_grid(self, tokens: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
        """(B, N, D) final tokens incl. prefix tokens -> (B, D, H/p, W/p) patch-token grid."""
        h, w = image_hw[0] // self.patch_size[0], image_hw[1] // self.patch_size[1]
        patches = tokens[:, self.num_prefix_tokens:]
        return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], h, w)

    # ---- metadata ---------------------------------------------------------------------------
    def data_config(self) -> dict[str, Any]:
        """Preprocessing the backbone expects: input_size, mean, std, interpolation, crop_pct."""
        raise NotImplementedError

    @property
    def takes_any_input_size(self) -> bool:
        """The encoder runs on any multiple of its patch size, not only the size it was built for. A token
        transformer keeps position tables of its built size unless its adapter says otherwise; a CNN takes any."""
        return not self.supports_token_prompts

    def check_input_size(self, height: int, width: int) -> None:
        ph, pw = self.patch_size
        if height % ph or width % pw:
            from ..errors import ConfigError

            raise ConfigError(
                f"image size {height}x{width} is not divisible by the patch size {ph}x{pw} of {self.name}; "
                f"pick a multiple of {ph} (e.g. backbone.image_size={(height // ph) * ph or ph})"
            )

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors the prompted forward runs through (a timm classifier that vpt does not use is left out)."""
        return self.model.state_dict()

    def fingerprint(self) -> str:
        """Hash of the encoder weights: a prompt file records it so it is never loaded on other weights."""
        return _state_digest(self.encoder_state_dict())

    def legacy_fingerprint(self) -> str:
        """The fingerprint vpt < 0.2 wrote: the whole wrapped model's state, classifier included."""
        return _state_digest(self.model.state_dict())


def _state_digest(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for key, tensor in sorted(state.items()):
        digest.update(key.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        t = tensor.detach().cpu().contiguous().reshape(-1)  # 0-d tensors cannot be viewed as bytes
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def insert_or_replace(tokens: torch.Tensor, prompts: torch.Tensor, num_prefix: int, current_length: int) -> torch.Tensor:
    """[prefix, old prompts (current_length), rest] → [prefix, prompts, rest]."""
    return torch.cat([tokens[:, :num_prefix], prompts.to(tokens.dtype), tokens[:, num_prefix + current_length:]], dim=1)


def remove_prompts(tokens: torch.Tensor, num_prefix: int, length: int) -> torch.Tensor:
    """[prefix, prompts (length), rest] → [prefix, rest]."""
    return torch.cat([tokens[:, :num_prefix], tokens[:, num_prefix + length:]], dim=1)


def wrap_model(model: nn.Module, name: str | None = None) -> BackboneAdapter:
    """Wrap an already-built library model (timm, open_clip visual tower, any CNN) in an adapter."""
    if isinstance(model, BackboneAdapter):
        return model
    for cls in ADAPTERS.values():
        if cls.accepts(model):
            return cls(model, name=name or _default_name(model))
    raise TypeError(
        f"vpt has no backbone adapter for {type(model).__name__}; supported: "
        + ", ".join(c.__name__ for c in ADAPTERS.values())
        + ". Add one by subclassing vpt.backbones.BackboneAdapter and decorating it with @register_adapter."
    )


def _default_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or getattr(model, "vpt_name", None) or type(model).__name__
