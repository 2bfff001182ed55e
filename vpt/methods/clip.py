"""CLIP prompt learning on a frozen open_clip CLIP: CoOp, CoCoOp (Zhou et al., 2022), MaPLe, IVLP (Khattak et al., 2023).

The learned tensors live in a :class:`~vpt.prompts.clip.CLIPPromptHead` (the model's head), built from the class
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

from ..errors import ConfigError
from ..prompts.clip import POSITIONS, ClipPromptOptions
from .base import Method, register_method, require_int

CLIP_FIX = ("use a CLIP backbone with its text tower: backbone=clip_vit_b16 or clip_vit_b32 on the command line, "
            "create_backbone('open_clip:ViT-B-16') or a whole open_clip CLIP instance in Python")


class ClipPromptMethod(Method):
    kind = "clip"
    fields = ("n_ctx", "ctx_init", "csc", "class_token_position", "depth", "text_depth", "vision_length")
    builds_head = True
    default_n_ctx: int = 16
    default_ctx_init: str = ""
    default_depth: int = 1
    uses_depth = False
    vision = False
    coupled = False
    meta_net = False
    init_words_limit: int | None = None

    def validate(self, cfg) -> None:
        if cfg.n_ctx is not None:
            require_int(cfg.n_ctx, "n_ctx", 1)
        if cfg.ctx_init is not None and not isinstance(cfg.ctx_init, str):
            raise ConfigError(f"prompt.ctx_init must be a string of words (e.g. 'a photo of a'), got {cfg.ctx_init!r}")
        if cfg.class_token_position not in POSITIONS:
            raise ConfigError(f"prompt.class_token_position={cfg.class_token_position!r}; valid: {', '.join(POSITIONS)}")
        if self.name != "coop" and (cfg.csc or cfg.class_token_position != "end"):
            raise ConfigError(f"prompt.csc and prompt.class_token_position are CoOp options; prompt={self.name} uses a "
                              "shared context with the class name at the end (use prompt=coop for them)")
        for field in ("depth", "text_depth"):
            value = getattr(cfg, field)
            if value is not None and self.uses_depth:
                require_int(value, field, 1)
        if cfg.vision_length is not None:
            require_int(cfg.vision_length, "vision_length", 1)

    def options(self, cfg) -> ClipPromptOptions:
        ctx_init = self.default_ctx_init if cfg.ctx_init is None else cfg.ctx_init
        n_ctx = cfg.n_ctx if cfg.n_ctx is not None else self.default_n_ctx
        if ctx_init and self.init_words_limit is None:  # CoOp / CoCoOp: the init words set the context length
            n_ctx = len(ctx_init.replace("_", " ").split())
        depth = cfg.depth if (self.uses_depth and cfg.depth is not None) else self.default_depth
        text_depth = cfg.text_depth if (cfg.text_depth is not None and not self.coupled) else depth
        return ClipPromptOptions(
            method=self.name, n_ctx=n_ctx, ctx_init=ctx_init, csc=bool(cfg.csc),
            class_token_position=cfg.class_token_position,
            text_depth=text_depth if self.uses_depth else 1,
            vision_depth=depth if self.vision else 0,
            vision_length=(n_ctx if self.coupled else (cfg.vision_length or n_ctx)) if self.vision else 0,
            coupled=self.coupled, meta_net=self.meta_net, init_words_limit=self.init_words_limit)

    def build_head(self, cfg, backbone, class_names, num_classes):
        from ..prompts.clip import CLIPPromptHead

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
            raise ConfigError(f"prompt.depth={cfg.depth} (text depth {options.text_depth}, vision depth "
                              f"{options.vision_depth}) does not fit {backbone.name}: {text_layers} text and "
                              f"{vision_layers} image layers; set prompt.depth<={min(text_layers, vision_layers)}")
        length = int(clip.context_length)
        if options.n_ctx > length - 3:
            raise ConfigError(f"prompt.n_ctx={options.n_ctx} does not fit the text tower's context length {length} "
                              f"(start and end tokens and the class name need room); set prompt.n_ctx<={length - 4}")
        return CLIPPromptHead(options, backbone, class_names)

    def prompt_source(self, model):
        head = model.head
        return head if getattr(head, "has_vision_prompts", False) else None

    @property
    def shareable_in_bank(self) -> bool:
        return False


class CoOp(ClipPromptMethod):
    name = "coop"


class CoCoOp(ClipPromptMethod):
    name = "cocoop"
    default_n_ctx, default_ctx_init = 4, "a photo of a"
    meta_net = True


class MaPLe(ClipPromptMethod):
    name = "maple"
    default_n_ctx, default_ctx_init, default_depth = 2, "a photo of a", 9
    uses_depth = vision = coupled = True
    init_words_limit = 4


class IVLP(ClipPromptMethod):
    name = "ivlp"
    default_n_ctx, default_ctx_init, default_depth = 4, "a photo of a", 9
    uses_depth = vision = True
    init_words_limit = 4


for _method in (CoOp(), CoCoOp(), MaPLe(), IVLP()):
    register_method(_method)
