"""CLIP prompt learning on a frozen open_clip CLIP: CoOp, CoCoOp (Zhou et al., 2022), MaPLe, IVLP (Khattak et al., 2023).

The learned tensors live in a :class:`~vpt.methods.clip_prompts.CLIPPromptHead` (the model's head), built from the class
names on the backbone's own text tower. Defaults follow the official configs (ViT-B/16 trainable counts):

- ``coop``: 16 context tokens, random N(0, 0.02) init, shared or class-specific (``csc``), class token at the end,
  middle or front (KaiyangZhou/CoOp ``trainers/coop.py``): 16 x 512 = 8,192.
- ``cocoop``: ``"a photo of a"`` (4 tokens) + meta-net Linear(E, E/16)-ReLU-Linear(E/16, D) on the normalised image
  feature, added to every context token (``trainers/cocoop.py``, ``vit_b16_c4_ep10_batch1_ctxv1``): 35,360.
- ``maple``: prompt depth J = 9, 2 tokens from ``"a photo of a"`` (its first 2 words; the rest stay fixed words);
  text prompts replaced in layers 1..J-1; vision prompts = Linear(text width, vision width) of the text prompts at each
  depth (muzairkhattak/multimodal-prompt-learning ``trainers/maple.py``): 3,555,072.
- ``ivlp``: independent text and vision prompts, 4 + 4 tokens, depth 9 on both towers (PromptSRC's
  ``IVLP/vit_b16_c2_ep20_batch4_4+4ctx``): 9 x 4 x 512 + 9 x 4 x 768 = 46,080.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from .clip_prompts import POSITIONS, ClipPromptOptions
from .base import Method, register_method, require_int

CLIP_FIX = ("use a CLIP backbone with its text tower: backbone=clip_vit_b16 or clip_vit_b32 on the command line, "
            "create_backbone('open_clip:ViT-B-16') or a whole open_clip CLIP instance in Python")


@dataclass
class CoOpOptions:
    """n_ctx: context tokens (``ctx_init`` sets it to its word count). ctx_init: init words ("a photo of a"; "":
    N(0, 0.02)). csc: class-specific context. class_token_position: ``end`` | ``middle`` | ``front``."""

    n_ctx: int = 16
    ctx_init: str = ""
    csc: bool = False
    class_token_position: str = "end"


@dataclass
class CoCoOpOptions:
    """n_ctx, ctx_init: as CoOp (the official ViT-B/16 config: 4 tokens from "a photo of a")."""

    n_ctx: int = 4
    ctx_init: str = "a photo of a"


@dataclass
class MaPLeOptions:
    """n_ctx: text (and vision) prompt tokens; ctx_init: used when n_ctx <= 4 (its first n_ctx words become the
    context, the rest stay fixed words); depth: prompt depth J (layers 0..J-1 of both towers)."""

    n_ctx: int = 2
    ctx_init: str = "a photo of a"
    depth: int = 9


@dataclass
class IVLPOptions:
    """n_ctx: text context tokens; vision_length: vision prompt tokens; ctx_init: as MaPLe; depth: vision prompt
    depth; text_depth: text prompt depth (None: ``depth``)."""

    n_ctx: int = 4
    vision_length: int = 4
    ctx_init: str = "a photo of a"
    depth: int = 9
    text_depth: int | None = None


class ClipPromptMethod(Method):
    kind = "clip"
    builds_head = True
    vision = False
    coupled = False
    meta_net = False
    init_words_limit: int | None = None

    def validate(self, cfg) -> None:
        require_int(cfg.n_ctx, "n_ctx", 1)
        if not isinstance(cfg.ctx_init, str):
            raise ConfigError(f"prompt.ctx_init must be a string of words (e.g. 'a photo of a'), got {cfg.ctx_init!r}")
        if getattr(cfg, "class_token_position", "end") not in POSITIONS:
            raise ConfigError(f"prompt.class_token_position={cfg.class_token_position!r}; valid: {', '.join(POSITIONS)}")
        for field in ("depth", "text_depth", "vision_length"):
            value = getattr(cfg.options, field, None)
            if value is not None:
                require_int(value, field, 1)

    def options(self, cfg) -> ClipPromptOptions:
        o = cfg.options
        n_ctx = o.n_ctx
        if o.ctx_init and self.init_words_limit is None:  # CoOp / CoCoOp: the init words set the context length
            n_ctx = len(o.ctx_init.replace("_", " ").split())
        depth = getattr(o, "depth", 1)
        text_depth = getattr(o, "text_depth", None) or depth
        return ClipPromptOptions(
            method=self.name, n_ctx=n_ctx, ctx_init=o.ctx_init, csc=bool(getattr(o, "csc", False)),
            class_token_position=getattr(o, "class_token_position", "end"), text_depth=text_depth,
            vision_depth=depth if self.vision else 0,
            vision_length=(n_ctx if self.coupled else getattr(o, "vision_length", n_ctx)) if self.vision else 0,
            coupled=self.coupled, meta_net=self.meta_net, init_words_limit=self.init_words_limit)

    def build_named_head(self, cfg, backbone, class_names, num_classes):
        from .clip_prompts import CLIPPromptHead

        if getattr(backbone, "clip_model", None) is None or getattr(backbone, "tokenizer", None) is None:
            raise ConfigError(f"prompt={self.name} learns CLIP text prompts, but backbone {backbone.name} has no CLIP "
                              f"text tower; {CLIP_FIX}")
        if not class_names:
            raise ConfigError(f"prompt={self.name} builds its text prompts from the class names, and none were given; "
                              "pass class_names=[...] to PromptedModel (vpt-train takes them from the dataset)")
        if num_classes not in (None, 0) and int(num_classes) != len(class_names):
            raise ConfigError(f"prompt={self.name}: {len(class_names)} class names for num_classes={num_classes}; "
                              "give one name per class (or leave num_classes out)")
        options = self.options(cfg)
        clip = backbone.clip_model
        text_layers, vision_layers = len(clip.transformer.resblocks), backbone.num_layers
        if options.text_depth > text_layers or options.vision_depth > vision_layers:
            raise ConfigError(f"prompt.depth={getattr(cfg.options, 'depth', None)} (text depth {options.text_depth}, "
                              f"vision depth {options.vision_depth}) does not fit {backbone.name}: {text_layers} text "
                              f"and {vision_layers} image layers; set prompt.depth<={min(text_layers, vision_layers)}")
        length = int(clip.context_length)
        if options.n_ctx > length - 3:
            raise ConfigError(f"prompt.n_ctx={options.n_ctx} does not fit the text tower's context length {length} "
                              f"(start and end tokens and the class name need room); set prompt.n_ctx<={length - 4}")
        return CLIPPromptHead(options, backbone, class_names)

    def prompt_source(self, model):
        head = model.head
        return head if getattr(head, "has_vision_prompts", False) else None

    def bank_refusal(self) -> str | None:
        # at inference the head is a fixed class-embedding matrix (text features of the learned context, computed
        # once when the bank adds the task) and the vision prompts (IVLP, MaPLe) are fixed per-layer token prompts
        return None


class CoOp(ClipPromptMethod):
    name = "coop"
    config_class = CoOpOptions


class CoCoOp(ClipPromptMethod):
    name = "cocoop"
    config_class = CoCoOpOptions
    meta_net = True

    def bank_refusal(self) -> str:
        return ("conditions its text context on each image (CoCoOp's meta-net), so its class embeddings are not a "
                "fixed matrix: the text tower runs per image, which a bank's fixed heads cannot hold")


class MaPLe(ClipPromptMethod):
    name = "maple"
    config_class = MaPLeOptions
    vision = coupled = True
    init_words_limit = 4


class IVLP(ClipPromptMethod):
    name = "ivlp"
    config_class = IVLPOptions
    vision = True
    init_words_limit = 4


for _method in (CoOp(), CoCoOp(), MaPLe(), IVLP()):
    register_method(_method)
