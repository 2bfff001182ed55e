"""CLIP prompt learning on a frozen open_clip model: CoOp, CoCoOp, MaPLe and IVLP.

open_clip's own text tower is wrapped, never copied: :class:`CLIPTextEncoder` runs the model's
``token_embedding``, ``positional_embedding``, transformer ``resblocks`` (one by one, so deep text prompts can
replace the context rows between blocks), ``ln_final``, ``text_projection`` and causal ``attn_mask``, exactly as
``open_clip.CLIP.encode_text`` does.

:class:`CLIPPromptHead` is the classifier of a :class:`~vpt.model.PromptedModel`: it owns every learned tensor
of these methods (text context, deep text prompts, vision prompts, MaPLe's coupling maps, CoCoOp's meta-net),
builds the class prompts ``[SOS] [ctx] classname . [EOS]`` from the class names, and returns
``logit_scale * cos(image feature, text feature)``. It is also the image tower's prompt source
(see :mod:`vpt.encoder`) for the methods with vision prompts (MaPLe, IVLP).

Cost: CoOp, MaPLe and IVLP run the text encoder once per forward on the class set (``n_cls`` sequences), not per
image. CoCoOp conditions the context on each image, so it runs ``batch x n_cls`` text sequences per forward:
about ``batch`` times CoOp's text cost (the official code loops over the images; this batches them).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, PromptFileError

POSITIONS = ("end", "middle", "front")


@dataclass
class ClipPromptOptions:
    """Resolved options of one CLIP prompt-learning method (defaults filled in by the method)."""

    method: str
    n_ctx: int  # text context tokens (MaPLe: also the vision prompt count)
    ctx_init: str = ""  # words that initialise the context ("a photo of a")
    csc: bool = False  # class-specific context (CoOp)
    class_token_position: str = "end"  # CoOp: end | middle | front
    text_depth: int = 1  # text layers with fresh context: 1 = the input only (CoOp, CoCoOp)
    vision_depth: int = 0  # image layers with fresh prompts (IVLP, MaPLe)
    vision_length: int = 0  # vision prompt tokens (IVLP; MaPLe: n_ctx)
    coupled: bool = False  # MaPLe: vision prompts = a learned linear map of the text prompts
    meta_net: bool = False  # CoCoOp: the image feature shifts the context
    init_words_limit: int | None = None  # MaPLe / IVLP: ctx_init is used only when n_ctx <= this (official: 4)


class CLIPTextEncoder(nn.Module):
    """open_clip CLIP's text tower, run block by block (``CLIP.encode_text`` with prompt embeddings as input).

    The modules are the CLIP model's own (shared, frozen), registered here so they move with the model.
    """

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        self.token_embedding = clip_model.token_embedding
        self.positional_embedding = clip_model.positional_embedding
        self.transformer = clip_model.transformer
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.register_buffer("attn_mask", clip_model.attn_mask, persistent=False)
        self.context_length = int(clip_model.context_length)
        self.width = int(self.ln_final.weight.shape[0])
        self.batch_first = getattr(self.transformer, "batch_first", True)

    def forward(self, prompts: torch.Tensor, eot: torch.Tensor, deep: dict[int, torch.Tensor] | None = None,
                n_ctx: int = 0) -> torch.Tensor:
        """``prompts`` (N, L, D) token embeddings with context rows 1..n_ctx; ``eot`` (N,) end-of-text positions;
        ``deep``: layer -> (n_ctx, D) fresh context entering that layer (replacing rows 1..n_ctx)."""
        dtype = self.transformer.get_cast_dtype()
        x = prompts.to(dtype) + self.positional_embedding.to(dtype)
        mask = self.attn_mask
        for index, block in enumerate(self.transformer.resblocks):
            if deep and index in deep:
                fresh = deep[index].to(x.dtype).expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :1], fresh, x[:, 1 + n_ctx:]], dim=1)
            if not self.batch_first:
                x = block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
            else:
                x = block(x, attn_mask=mask)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        if self.text_projection is None:
            return x
        return self.text_projection(x) if isinstance(self.text_projection, nn.Linear) else x @ self.text_projection


def _tokenize(tokenizer, texts: Sequence[str], context_length: int) -> torch.Tensor:
    try:
        return tokenizer(list(texts), context_length=context_length)
    except TypeError:  # a tokenizer without the argument: its own length
        return tokenizer(list(texts))


def text_fingerprint(encoder: CLIPTextEncoder) -> str:
    """Hash of the text tower's weights (a prompt file is never loaded onto another text tower)."""
    digest = hashlib.blake2b(digest_size=16)
    for key, tensor in sorted(encoder.state_dict().items()):
        digest.update(key.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class CLIPPromptHead(nn.Module):
    """Learned text (and vision) prompts + the frozen text tower: image features -> class logits."""

    kind = "clip_prompt"
    owns_prompts = True  # its trainable tensors are prompts (PromptedModel counts them as such)

    def __init__(self, options: ClipPromptOptions, backbone, class_names: Sequence[str]) -> None:
        super().__init__()
        clip_model = backbone.clip_model
        self.options = options
        self.class_names = [str(name) for name in class_names]
        self._clip_ref = [clip_model]
        self.text_encoder = CLIPTextEncoder(clip_model).requires_grad_(False)
        self.logit_scale = float(clip_model.logit_scale.exp().item()) if hasattr(clip_model, "logit_scale") else 100.0
        self.tokenizer = backbone.tokenizer
        width, n_cls, n_ctx = self.text_encoder.width, len(self.class_names), options.n_ctx
        self.n_ctx = n_ctx

        # ---- the context and its init (CoOp's PromptLearner; MaPLe / IVLP take only the first n_ctx init words)
        ctx_init = (options.ctx_init or "").replace("_", " ").strip()
        if options.init_words_limit is not None and n_ctx > options.init_words_limit:
            ctx_init = ""
        length = self.text_encoder.context_length
        if ctx_init:
            init_tokens = _tokenize(self.tokenizer, [ctx_init], length)
            init_count = int(init_tokens[0].argmax()) - 1  # tokens between SOS and EOT
            if n_ctx > init_count:
                raise ConfigError(f"prompt.ctx_init={options.ctx_init!r} is {init_count} tokens, fewer than prompt.n_ctx="
                                  f"{n_ctx}; give more init words or set prompt.n_ctx<={init_count}")
            with torch.no_grad():
                vectors = self.text_encoder.token_embedding(init_tokens.to(self._device()))[0, 1:1 + n_ctx].float()
            if options.csc:
                vectors = vectors.expand(n_cls, -1, -1)
            prefix = ctx_init
        else:
            vectors = torch.empty((n_cls, n_ctx, width) if options.csc else (n_ctx, width))
            nn.init.normal_(vectors, std=0.02)
            prefix = " ".join(["X"] * n_ctx)
        self.ctx = nn.Parameter(vectors.clone().contiguous())

        # ---- the fixed rows: SOS and [classname . EOS pad] (buffers: rebuilt from the class names, never saved)
        names = [name.replace("_", " ") for name in self.class_names]
        tokens = _tokenize(self.tokenizer, [f"{prefix} {name}." for name in names], length)
        eot = tokens.argmax(dim=-1)
        needed = _tokenize(self.tokenizer, [f"{prefix} {name}." for name in names], length + 4096).argmax(dim=-1) + 1
        if int(needed.max()) > length:
            longest = names[int(needed.argmax())]
            room = length - 3 - self._name_len(longest)
            raise ConfigError(f"prompt.n_ctx={n_ctx} context tokens plus the class name {longest!r} need "
                              f"{int(needed.max())} tokens, more than the text tower's context length {length}; set "
                              f"prompt.n_ctx<={max(room, 0)} (or a shorter prompt.ctx_init)")
        pool = getattr(clip_model, "text_pool_type", "argmax")
        if pool != "argmax":
            raise ConfigError(f"prompt={options.method} needs a CLIP text tower that pools the end-of-text token "
                              f"(text_pool_type 'argmax', as OpenAI CLIP); this one pools {pool!r}")
        with torch.no_grad():
            embedding = self.text_encoder.token_embedding(tokens.to(self._device())).float()
        self.register_buffer("token_prefix", embedding[:, :1], persistent=False)
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx:], persistent=False)
        self.register_buffer("eot", eot, persistent=False)
        self.name_lens = [self._name_len(name) for name in names]

        # ---- deep text prompts (layers 1..text_depth-1), N(0, 0.02) as MaPLe's compound prompts / IVLP's VPT_shallow
        self.text_layers = list(range(1, options.text_depth))
        self.deep_text = nn.Parameter(torch.empty(len(self.text_layers), n_ctx, width).normal_(std=0.02)) \
            if self.text_layers else None

        # ---- vision prompts
        vision_width = backbone.embed_dim
        self._ln_pre = [backbone.model.ln_pre]  # the tower's own pre-norm: the official code normalises layer-0 prompts
        self.vision_layers = list(range(options.vision_depth))
        self.vision_length = options.vision_length
        self.vision = None
        self.couplings = None
        if options.coupled and self.vision_layers:
            # MaPLe: proj (layer 0, from ctx) + one Linear(text width, vision width) per deeper compound prompt
            self.couplings = nn.ModuleList([nn.Linear(width, vision_width) for _ in self.vision_layers])
        elif self.vision_layers:
            self.vision = nn.Parameter(torch.empty(len(self.vision_layers), self.vision_length, vision_width).normal_(std=0.02))

        # ---- CoCoOp's meta-net on the (normalised) image feature
        self.meta_net = None
        if options.meta_net:
            feature = backbone.feature_dim
            self.meta_net = nn.Sequential(nn.Linear(feature, feature // 16), nn.ReLU(inplace=True),
                                          nn.Linear(feature // 16, width))

    # ---- helpers -----------------------------------------------------------------------------
    def _device(self) -> torch.device:
        return self.text_encoder.token_embedding.weight.device

    def _name_len(self, name: str) -> int:
        return int(_tokenize(self.tokenizer, [name], self.text_encoder.context_length)[0].argmax()) - 1

    @property
    def out_features(self) -> int:
        return len(self.class_names)

    def train(self, mode: bool = True) -> "CLIPPromptHead":
        super().train(mode)
        self.text_encoder.eval()  # frozen tower: no dropout, as the official code (its CLIP is in eval mode)
        return self

    # ---- text side ---------------------------------------------------------------------------------
    def class_prompts(self, ctx: torch.Tensor) -> torch.Tensor:
        """(n_cls, L, D) token embeddings from the context ``ctx`` ((n_ctx, D) or (n_cls, n_ctx, D))."""
        n_cls = len(self.class_names)
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(n_cls, -1, -1)
        prefix, suffix = self.token_prefix.to(ctx.dtype), self.token_suffix.to(ctx.dtype)
        position = self.options.class_token_position
        if position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1)
        rows = []
        half = self.n_ctx // 2
        for i, name_len in enumerate(self.name_lens):
            name, rest = suffix[i:i + 1, :name_len], suffix[i:i + 1, name_len:]
            if position == "middle":
                rows.append(torch.cat([prefix[i:i + 1], ctx[i:i + 1, :half], name, ctx[i:i + 1, half:], rest], dim=1))
            else:  # front
                rows.append(torch.cat([prefix[i:i + 1], name, ctx[i:i + 1], rest], dim=1))
        return torch.cat(rows, dim=0)

    def deep_text_prompts(self) -> dict[int, torch.Tensor]:
        return {layer: self.deep_text[i] for i, layer in enumerate(self.text_layers)} if self.deep_text is not None else {}

    def text_features(self, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """(n_cls, E) normalised class text features for the learned (or given) context."""
        prompts = self.class_prompts(self.ctx if ctx is None else ctx)
        features = self.text_encoder(prompts, self.eot, self.deep_text_prompts(), self.n_ctx)
        return F.normalize(features.float(), dim=-1)

    def class_text_features(self) -> torch.Tensor:
        """:meth:`text_features`, computed once while the learned tensors do not change and no gradient is taken
        (evaluation: one text pass for all batches, not one per batch)."""
        if torch.is_grad_enabled():
            self._text_cache = None
            return self.text_features()
        learned = [self.ctx] + ([self.deep_text] if self.deep_text is not None else [])
        key = (tuple(p._version for p in learned), tuple(p.data_ptr() for p in learned), self.ctx.device,
               torch.is_autocast_enabled(self.ctx.device.type))
        cached = getattr(self, "_text_cache", None)
        if cached is None or cached[0] != key:
            cached = self._text_cache = (key, self.text_features())
        return cached[1]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        image = F.normalize(features.float(), dim=-1)
        if self.meta_net is None:
            return self.logit_scale * image @ self.class_text_features().t()
        # CoCoOp: one context per image, ctx + meta_net(image feature), every class prompt of it through the tower
        batch, n_cls = image.shape[0], len(self.class_names)
        shifted = self.ctx.unsqueeze(0) + self.meta_net(image.to(self.ctx.dtype)).unsqueeze(1)  # (B, n_ctx, D)
        prompts = torch.cat([self.token_prefix.repeat(batch, 1, 1),
                             shifted.repeat_interleave(n_cls, dim=0),
                             self.token_suffix.repeat(batch, 1, 1)], dim=1)
        text = self.text_encoder(prompts, self.eot.repeat(batch), None, self.n_ctx)
        text = F.normalize(text.float(), dim=-1).reshape(batch, n_cls, -1)
        return self.logit_scale * torch.einsum("bd,bcd->bc", image, text)

    # ---- vision side: the prompt source of vpt.encoder.run_layers --------------------------------------
    def vision_prompts_at(self, layer: int) -> torch.Tensor | None:
        if layer not in self.vision_layers:
            return None
        if self.couplings is not None:
            source = self.ctx if layer == 0 else self.deep_text[layer - 1]
            prompts = self.couplings[layer](source)
        else:
            prompts = self.vision[layer]
        # the official towers append layer-0 prompts before ln_pre; vpt's embed has applied ln_pre to the rest
        return self._ln_pre[0](prompts) if layer == 0 else prompts

    def at(self, layer: int, tokens: torch.Tensor, prompt_length: int) -> torch.Tensor | None:
        return self.vision_prompts_at(layer)

    def replaces_all(self, layer: int) -> bool:
        return layer in self.vision_layers

    def attn_bias(self, layer: int, num_tokens: int, prompt_length: int) -> None:
        return None

    def effective(self) -> dict[int, torch.Tensor]:
        """Layer -> (P, D) vision prompts as the image tower sees them (layer 0 after ln_pre; MaPLe's coupling
        maps applied): fixed at inference, so a :class:`~vpt.bank.PromptBank` holds them as token prompts."""
        return {layer: self.vision_prompts_at(layer) for layer in self.vision_layers}

    def head_spec(self) -> dict | None:
        """The fixed head of this task at inference (the bank's form): normalised class text features, no bias,
        cosine logits times the logit scale. None for CoCoOp (its text features depend on each image)."""
        if self.meta_net is not None:
            return None
        with torch.no_grad():
            weight = self.class_text_features().detach().float()
        return {"weight": weight, "bias": weight.new_zeros(weight.shape[0]), "normalize": True,
                "scale": self.logit_scale}

    @property
    def has_vision_prompts(self) -> bool:
        return bool(self.vision_layers)

    # ---- prompt files ---------------------------------------------------------------------------------
    @property
    def text_fingerprint(self) -> str:
        """The frozen text tower's fingerprint, hashed once (every save records it)."""
        if getattr(self, "_text_fingerprint", None) is None:
            self._text_fingerprint = text_fingerprint(self.text_encoder)
        return self._text_fingerprint

    def manifest_info(self) -> dict:
        return {"logit_scale": self.logit_scale, "text_fingerprint": self.text_fingerprint}

    def check_manifest(self, manifest: dict, path, class_names_given: bool = False) -> None:
        saved = manifest.get("head", {}).get("text_fingerprint")
        if saved and saved != self.text_fingerprint:
            raise PromptFileError(f"prompt file {str(path)!r} was trained with another CLIP text tower (text weights "
                                  f"fingerprint {saved[:12]}…); load it onto the CLIP model it was trained on")
        names = manifest.get("class_names")
        if names is not None and list(names) != self.class_names and not class_names_given:
            raise PromptFileError(
                f"prompt file {str(path)!r} was trained for {len(names)} classes {names[:5]}…, but this model's "
                f"classes are {len(self.class_names)} {self.class_names[:5]}…. Its text prompts are built from the "
                "class names: load it onto a model of the same classes, or, to reuse a generic (non-CSC) context on "
                "other classes (base-to-novel), PromptedModel.from_prompt_file(path, class_names=[...])")
