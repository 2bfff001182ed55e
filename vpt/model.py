"""PromptedModel: a frozen backbone + learnable prompts + a head."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .backbones import BackboneAdapter, create_backbone, wrap_model
from .config import PromptConfig
from .errors import ConfigError
from .heads import LinearHead, ZeroShotHead
from .prompts import PIXEL_PROMPTS, TokenPrompts, insert_or_replace


def _as_prompt_config(prompt: PromptConfig | str | dict | None, overrides: dict[str, Any]) -> PromptConfig:
    if prompt is None:
        prompt = "linear"
    if isinstance(prompt, str):
        return PromptConfig(method=prompt, **overrides)
    if isinstance(prompt, dict):
        return PromptConfig.from_dict({**prompt, **overrides})
    if overrides:
        return PromptConfig.from_dict({**prompt.to_dict(), **overrides})
    return prompt


def _take_own_classifier(model: nn.Module) -> nn.Module | None:
    """Move a timm model's classifier into vpt's head, so the frozen part is only the encoder."""
    get, reset = getattr(model, "get_classifier", None), getattr(model, "reset_classifier", None)
    if get is None or reset is None:
        return None
    head = get()
    if not isinstance(head, nn.Linear):
        return None
    reset(0)
    own = LinearHead(head.in_features, head.out_features, bias=head.bias is not None)
    own.load_state_dict(head.state_dict())
    return own


class PromptedModel(nn.Module):
    """Wrap a frozen encoder with prompts and a head.

    Args:
        backbone: a backbone name (``"vit_small_patch16_224"``, ``"open_clip:ViT-B-32"``), an existing timm /
            open_clip model instance, or a :class:`BackboneAdapter`.
        prompt: a :class:`PromptConfig`, a method name, or a dict; keyword overrides go in ``**prompt_overrides``.
        num_classes: size of a new linear head. ``None`` on a timm model with its own classifier keeps that
            classifier (moved into ``self.head``); ``0`` means no head (features only).
        head: a ready head module (e.g. :class:`ZeroShotHead`); wins over ``num_classes``.
        class_names: stored in prompt files.
        pretrained: weights for a backbone given by name (see :func:`vpt.backbones.create_backbone`).

    Only prompt and head tensors (and backbone tensors for ``full`` / biases for ``bias``) require grad;
    for every other method the backbone stays in eval mode while the model trains.
    """

    def __init__(
        self,
        backbone: str | nn.Module | BackboneAdapter,
        prompt: PromptConfig | str | dict | None = "deep",
        num_classes: int | None = None,
        head: nn.Module | None = None,
        class_names: Sequence[str] | None = None,
        pretrained: Any = False,
        backbone_kwargs: dict[str, Any] | None = None,
        **prompt_overrides: Any,
    ) -> None:
        super().__init__()
        self.prompt_config = _as_prompt_config(prompt, prompt_overrides)
        if isinstance(backbone, str):
            backbone = create_backbone(backbone, pretrained=pretrained, **(backbone_kwargs or {}))
        own_head = None
        if not isinstance(backbone, BackboneAdapter) and head is None and num_classes is None:
            own_head = _take_own_classifier(backbone)
        self.backbone: BackboneAdapter = wrap_model(backbone)
        self.backbone.requires_grad_(False)
        self.backbone_fingerprint = self.backbone.fingerprint()  # before any tuning can change the weights
        self.class_names = list(class_names) if class_names is not None else None

        cfg = self.prompt_config
        self.token_prompts: TokenPrompts | None = None
        self.pixel_prompt: nn.Module | None = None
        if cfg.is_token and cfg.length > 0:
            if not self.backbone.supports_token_prompts:
                raise ConfigError(
                    f"{self.backbone.name} is not a token transformer, so prompt={cfg.method} cannot insert tokens; "
                    "use a pixel prompt (pad, patch, random_patch) or a baseline (linear, full, bias)"
                )
            self.token_prompts = TokenPrompts(
                cfg.prompt_layers(self.backbone.num_layers), cfg.length, self.backbone.embed_dim,
                self.backbone.patch_size, cfg.dropout, cfg.project_dim,
            )
        if cfg.is_pixel and cfg.size > 0:
            self.pixel_prompt = PIXEL_PROMPTS[cfg.method](self.input_size[1:], cfg.size)

        if head is None:
            head = own_head
        if head is None and num_classes:
            head = LinearHead(self.backbone.feature_dim, num_classes)
        self.head = head if head is not None else nn.Identity()
        if isinstance(self.head, (LinearHead, ZeroShotHead)) and self.class_names is not None \
                and len(self.class_names) != self.head.out_features:
            raise ConfigError(f"{len(self.class_names)} class names for a head with {self.head.out_features} outputs")
        if isinstance(self.head, ZeroShotHead):
            self.head.weight.requires_grad_(cfg.train_head and self.head.weight.requires_grad)
        else:
            self.head.requires_grad_(cfg.train_head)
        if cfg.method == "full":
            self.backbone.requires_grad_(True)
        elif cfg.method == "bias":
            for name, param in self.backbone.named_parameters():
                param.requires_grad_(name.endswith("bias"))

    # ---- construction helpers ------------------------------------------------------------
    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.backbone.data_config()["input_size"])

    @property
    def data_config(self) -> dict[str, Any]:
        return self.backbone.data_config()

    @torch.no_grad()
    def init_prompts_from_patches(self, images: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Initialise token prompts from patch embeddings sampled from ``images`` (``prompt.init=patch``)."""
        if self.token_prompts is None:
            return
        if self.token_prompts.projection is not None:
            raise ConfigError("prompt.init=patch needs prompt.project_dim=0 (prompts in the embedding space)")
        patches = self.backbone.embed(images)[:, self.backbone.num_prefix_tokens:].reshape(-1, self.backbone.embed_dim)
        emb = self.token_prompts.embeddings
        index = torch.randint(0, patches.shape[0], (emb.shape[0] * emb.shape[1],), generator=generator)
        emb.copy_(patches[index].reshape(emb.shape).to(emb.dtype))

    # ---- train / eval ---------------------------------------------------------------------
    @property
    def backbone_frozen(self) -> bool:
        return self.prompt_config.method != "full"

    def train(self, mode: bool = True) -> "PromptedModel":
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()  # dropout / drop-path off in the frozen encoder, as the official VPT code
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def param_summary(self) -> dict[str, int]:
        def count(module: nn.Module | None, trainable_only: bool = True) -> int:
            if module is None:
                return 0
            return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)

        prompt = count(self.token_prompts) + count(self.pixel_prompt)
        head = count(self.head)
        backbone = count(self.backbone)
        total = sum(p.numel() for p in self.parameters())
        return {"prompt": prompt, "head": head, "backbone": backbone, "trainable": prompt + head + backbone, "total": total}

    @property
    def num_trainable_params(self) -> int:
        return self.param_summary()["trainable"]

    # ---- forward --------------------------------------------------------------------------
    #: Run layers through the backbone's fast path where it has one (``run_prompted_block``): VPT-deep prompts
    #: whose outputs the next layer discards get keys/values only, computed once per batch, and the last layer
    #: computes only the class token when that is all the pooling reads (every method, prompts or not). Same
    #: function, fewer FLOPs; set False for the straightforward concatenate-then-block evaluation.
    fast_prompt_path: bool = True

    def forward_tokens(self, images: torch.Tensor, prefix_only: bool = False) -> torch.Tensor:
        """Final-block tokens [class/register tokens, patch tokens], prompts removed (before the final norm).

        ``prefix_only=True`` allows returning only the class/register tokens (when the fast path can skip the
        patch rows of the last block); callers must then read the prefix rows only.
        """
        backbone = self.backbone
        if self.pixel_prompt is not None:
            images = self.pixel_prompt(images)
        tokens = backbone.embed(images)
        num_prefix, prompt_length = backbone.num_prefix_tokens, 0
        prompts = self.token_prompts
        fast = self.fast_prompt_path  # also without token prompts: the last block may skip the patch rows
        fresh = set(prompts.layers) if prompts is not None else set()
        shared = prompts is not None and prompts.batch_shared
        last = backbone.num_layers - 1
        for index, block in enumerate(backbone.blocks):
            if fast and backbone.supports_prompted_block(index):
                # this layer's prompt outputs are unused: replaced at the next layer or removed after the last
                discarded = index + 1 in fresh or index == last
                queries = num_prefix if prefix_only and index == last else None
                if discarded and shared and index in fresh:
                    if prompt_length:
                        tokens = torch.cat([tokens[:, :num_prefix], tokens[:, num_prefix + prompt_length:]], dim=1)
                    tokens = backbone.run_prompted_block(index, tokens, prompts.shared_at(index), queries)
                    prompt_length = 0
                    continue
                if discarded and queries is not None:
                    step = prompts.prompts_at(index, tokens.shape[0]) if prompts is not None else None
                    if step is not None:
                        tokens = insert_or_replace(tokens, step, num_prefix, prompt_length)
                    tokens = backbone.run_prompted_block(index, tokens, None, queries)
                    prompt_length = 0
                    continue
            if prompts is not None:
                step = prompts.prompts_at(index, tokens.shape[0])
                if step is not None:
                    tokens = insert_or_replace(tokens, step, num_prefix, prompt_length)
                    prompt_length = step.shape[1]
            tokens = block(tokens)
        if prompt_length:
            tokens = torch.cat([tokens[:, :num_prefix], tokens[:, num_prefix + prompt_length:]], dim=1)
        return tokens

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logits feature (B, F)."""
        if not self.backbone.supports_token_prompts:
            if self.pixel_prompt is not None:
                images = self.pixel_prompt(images)
            return self.backbone.forward_features(images)
        tokens = self.forward_tokens(images, prefix_only=self.backbone.pools_first_token)
        return self.backbone.finish(tokens)[0]

    def forward_dense(self, images: torch.Tensor) -> torch.Tensor:
        """Final patch-token grid (B, D, H/p, W/p): class, register and prompt tokens removed."""
        if not self.backbone.supports_token_prompts:
            raise ConfigError(f"{self.backbone.name} has no patch tokens; forward_dense needs a ViT backbone")
        _, tokens = self.backbone.finish(self.forward_tokens(images), need_tokens=True)
        return self.backbone.patch_grid(tokens, images.shape[-2:])

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    # ---- prompt files ---------------------------------------------------------------------
    def save_prompt(self, path, **extra: Any):
        from .prompt_file import save_prompt

        return save_prompt(self, path, **extra)

    def load_prompt(self, path) -> "PromptedModel":
        from .prompt_file import load_prompt_into

        load_prompt_into(self, path)
        return self

    @classmethod
    def from_prompt_file(cls, path, backbone: str | nn.Module | BackboneAdapter | None = None, pretrained: Any = False,
                         head: nn.Module | None = None) -> "PromptedModel":
        from .prompt_file import load_prompted_model

        return load_prompted_model(path, backbone=backbone, pretrained=pretrained, head=head)
