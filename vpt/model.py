"""PromptedModel: a frozen backbone + learnable prompts + a head."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .backbones import BackboneAdapter, create_backbone, wrap_model
from .backbones.portable import locate_recorded_weights
from .config import PromptConfig
from .encoder import run_layers
from .errors import ConfigError, PromptFileError
from .heads import LinearHead, ZeroShotHead, label_map_head, zero_shot_head_for
from .prompt_file import check_backbone, read_prompt_file
from .tuned import TunedModule
from .methods.token_prompts import TokenPrompts


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


def check_images(images: Any, input_size: Sequence[int], name: str, fixed_size: bool = True) -> None:
    """One ConfigError, naming the expected shape and dtype and the fix, for a batch the encoder cannot take.

    Reads only the tensor's shape and dtype: no host-device synchronisation."""
    channels, height, width = input_size
    expected = f"float images of shape (batch, {channels}, {height}, {width})" if fixed_size else \
        f"float images of shape (batch, {channels}, height, width)"
    if not torch.is_tensor(images):
        raise ConfigError(f"{name} takes a tensor of {expected}, got {type(images).__name__}")
    shape = tuple(images.shape)
    if images.dim() != 4 or shape[1] != channels or (fixed_size and shape[2:] != (height, width)):
        resize = f"resize the images to {height}x{width}, or build the backbone for their size " \
                 "(backbone.image_size=... on the command line, image_size=... in create_backbone)"
        fix = "add the batch dimension: images[None]" if images.dim() == 3 else resize
        raise ConfigError(f"{name} takes {expected}, got shape {shape}; {fix}")
    if not images.is_floating_point():
        raise ConfigError(f"{name} takes {expected}, got dtype {images.dtype}: convert and normalise them as the "
                          "backbone expects (images.float() / 255, then (x - mean) / std with model.data_config's "
                          "mean and std; vpt.data.Preprocess does both)")


class PromptedModel(TunedModule):
    """Wrap a frozen encoder with prompts and a head.

    Args:
        backbone: a backbone name (``"vit_small_patch16_224"``, ``"open_clip:ViT-B-32"``), an existing timm /
            open_clip model instance, or a :class:`BackboneAdapter`.
        prompt: a :class:`PromptConfig`, a method name, or a dict; keyword overrides go in ``**prompt_overrides``.
        num_classes: size of a new linear head. ``None`` on a timm model with its own classifier keeps that
            classifier (moved into ``self.head``); ``0`` means no head (features only).
        head: a ready head module (e.g. :class:`ZeroShotHead`); wins over ``num_classes``.
        class_names: stored in prompt files.
        pretrained: weights for a backbone given by name: True (hub weights, the default), a tag, a local file, or
            False for random weights (see :func:`vpt.backbones.create_backbone`).

    The method (``vpt.methods``) decides what trains: prompt and head tensors always, backbone tensors for
    ``full`` / biases for ``bias``; and whether the backbone stays in eval mode while the model trains.
    """

    token_prompts: TokenPrompts | None
    pixel_prompt: nn.Module | None

    def __init__(
        self,
        backbone: str | nn.Module | BackboneAdapter,
        prompt: PromptConfig | str | dict | None = "deep",
        num_classes: int | None = None,
        head: nn.Module | None = None,
        class_names: Sequence[str] | None = None,
        pretrained: Any = True,
        backbone_kwargs: dict[str, Any] | None = None,
        **prompt_overrides: Any,
    ) -> None:
        super().__init__()
        self.prompt_config = _as_prompt_config(prompt, prompt_overrides)
        self.method = self.prompt_config.method_spec
        if isinstance(backbone, str):
            backbone = create_backbone(backbone, pretrained=pretrained, **(backbone_kwargs or {}))
        own_head = None
        if not isinstance(backbone, BackboneAdapter) and head is None and num_classes is None:
            own_head = _take_own_classifier(backbone)
        self.backbone: BackboneAdapter = wrap_model(backbone)
        self.backbone.requires_grad_(False)
        self.backbone_fingerprint = self.backbone.fingerprint()  # before any tuning can change the weights
        self.class_names = list(class_names) if class_names is not None else None

        self.token_prompts, self.pixel_prompt = None, None
        for attribute, module in self.method.build(self.prompt_config, self.backbone, self.input_size[1:]).items():
            setattr(self, attribute, module)
        if self.method.builds_head:
            if head is not None:
                raise ConfigError(f"prompt={self.prompt_config.method} builds its own head (CLIP text prompts from the "
                                  "class names), so a head cannot be passed in; use task=classification (not "
                                  "task=zero_shot) on the command line, or leave head= out")
            head = self.method.build_named_head(self.prompt_config, self.backbone, self.class_names, num_classes)
        self.head = self._resolve_head(head if head is not None else own_head, num_classes)
        self._set_trainable()
        self._attach()
        # checked on every forward; read once here (data_config resolves timm's config each time)
        self._expected_input = (self.input_size, not self.takes_any_input_size)

    def _attach(self) -> None:
        """The method's changes inside the backbone (:meth:`vpt.methods.Method.attach`); the parameters it adds
        count as the method's ("prompt") parameters, the backbone's own ones as backbone parameters."""
        self._backbone_own = frozenset(name for name, _ in self.backbone.named_parameters())
        if not self.method.modifies_backbone:
            self.method.attach(self)
            return
        attached = getattr(self.backbone.model, "_vpt_attached", None)
        if attached is not None:
            raise ConfigError(f"this backbone already carries the modules of prompt={attached} (another PromptedModel "
                              f"was built on it); build prompt={self.prompt_config.method} on a fresh backbone")
        before = {id(module) for module in self.backbone.modules()}
        self.method.attach(self)
        # the modules the method put inside the backbone: in train mode with the model (their dropout acts), while
        # the frozen modules they wrap stay in eval mode; a plain list, so they are not registered twice
        self._method_modules = [module for module in self.backbone.modules() if id(module) not in before]
        self.backbone.model._vpt_attached = self.prompt_config.method  # on the library model: it outlives adapters
        self.backbone.fast_path = False  # the fast prompted block reproduces the plain block only

    def _resolve_head(self, head: nn.Module | None, num_classes: int | None) -> nn.Module:
        if head is None and num_classes:
            head = self.method.build_head(self.prompt_config, self.backbone.feature_dim, num_classes)
        if head is None and num_classes:
            head = LinearHead(self.backbone.feature_dim, num_classes)
        head = head if head is not None else nn.Identity()
        if isinstance(head, (LinearHead, ZeroShotHead)) and self.class_names is not None \
                and len(self.class_names) != head.out_features:
            raise ConfigError(f"{len(self.class_names)} class names for a head with {head.out_features} outputs")
        return head

    def _set_trainable(self) -> None:
        train_head = self.prompt_config.train_head
        if isinstance(self.head, ZeroShotHead):
            self.head.weight.requires_grad_(train_head and self.head.weight.requires_grad)
        elif getattr(self.head, "owns_prompts", False):
            pass  # the head's own prompt tensors train, its frozen text tower does not
        else:
            self.head.requires_grad_(train_head)
        self.method.set_trainable(self.backbone)

    # ---- construction helpers ------------------------------------------------------------
    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.backbone.data_config()["input_size"])

    @property
    def takes_any_input_size(self) -> bool:
        """Images of any multiple of the patch size are fine: the backbone's answer, unless the method's modules
        need the built size (a pixel prompt)."""
        return self.backbone.takes_any_input_size and not self.method.needs_fixed_input_size(self.prompt_config)

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
        """The encoder stays in eval mode while the model trains (every method but full fine-tuning)."""
        return self.method.backbone_eval_mode

    def train(self, mode: bool = True) -> "PromptedModel":
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()  # dropout / drop-path off in the frozen encoder, as the official VPT code
            for module in getattr(self, "_method_modules", ()):
                module.training = mode  # not recursive: a wrapped frozen module keeps eval mode
        return self

    def param_summary(self) -> dict[str, int]:
        def count(module: nn.Module | None) -> int:
            return 0 if module is None else sum(p.numel() for p in module.parameters() if p.requires_grad)

        head = count(self.head)
        backbone = sum(p.numel() for name, p in self.backbone.named_parameters() if p.requires_grad and name in self._backbone_own)
        prompt = sum(p.numel() for p in self.trainable_parameters()) - head - backbone  # what the method added
        if getattr(self.head, "owns_prompts", False):  # CLIP prompt learning: the head's tensors are prompts
            prompt, head = prompt + head, 0
        total = sum(p.numel() for p in self.parameters())
        return {"prompt": prompt, "head": head, "backbone": backbone, "trainable": prompt + head + backbone, "total": total}

    @property
    def num_trainable_params(self) -> int:
        return self.param_summary()["trainable"]

    # ---- forward --------------------------------------------------------------------------
    @property
    def fast_prompt_path(self) -> bool:
        """The backbone's fast path (``BackboneAdapter.fast_path``): same function, fewer FLOPs; False runs the
        straightforward concatenate-then-block evaluation."""
        return self.backbone.fast_path

    @fast_prompt_path.setter
    def fast_prompt_path(self, enabled: bool) -> None:
        self.backbone.fast_path = bool(enabled)

    def check_input(self, images: torch.Tensor) -> None:
        """Refuse images of another size or an integer dtype with one message (before the library's traceback)."""
        input_size, fixed = self._expected_input
        check_images(images, input_size, f"{type(self).__name__} on {self.backbone.name}", fixed)

    def _encode(self, images: torch.Tensor, last_rows: str) -> torch.Tensor:
        self.check_input(images)
        if self.pixel_prompt is not None:
            images = self.pixel_prompt(images)
        return run_layers(self.backbone, self.backbone.embed(images), self.method.prompt_source(self), last_rows)

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Final-block tokens ``[class/register tokens, patch tokens]``, prompts removed (before the final norm)."""
        return self._encode(images, "all")

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logits feature (B, F)."""
        if not self.backbone.supports_token_prompts:
            self.check_input(images)
            if self.pixel_prompt is not None:
                images = self.pixel_prompt(images)
            return self.method.features(self, images, self.backbone.forward_features(images))
        tokens = self._encode(images, "prefix" if self.backbone.pools_first_token else "all")
        return self.method.features(self, images, self.backbone.finish(tokens)[0])

    def forward_dense(self, images: torch.Tensor) -> torch.Tensor:
        """Final patch-token grid (B, D, H/p, W/p): class, register and prompt tokens removed."""
        if not self.backbone.supports_token_prompts:
            raise ConfigError(f"{self.backbone.name} has no patch tokens; forward_dense needs a ViT backbone")
        _, tokens = self.backbone.finish(self._encode(images, "all"), need_tokens=True)
        return self.backbone.patch_grid(tokens, images.shape[-2:])

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    # ---- prompt files (save_prompt, load_prompt: vpt.tuned.TunedModule) ------------------------
    def load_prompt_contents(self, manifest: dict[str, Any], tensors: dict[str, torch.Tensor], path,
                             class_names_given: bool = False) -> None:
        """Load an already read prompt file (``read_prompt_file``) into this model."""
        check_backbone(manifest, self.backbone, path, self.backbone_fingerprint)
        check_head = getattr(self.head, "check_manifest", None)
        if check_head is not None:  # a CLIP prompt head: same text tower, same classes (or chosen on purpose)
            check_head(manifest, path, class_names_given=class_names_given)
        self.load_trainable_state_dict(tensors, source=path)
        if manifest.get("class_names") and not class_names_given:
            self.class_names = manifest["class_names"]

    # vpt.hub is imported where used: it loads huggingface_hub (half a second), which only these methods need
    def save_pretrained(self, save_directory, results=None, **extra: Any):
        """PEFT-style: the prompt file plus a model card (README.md) in ``save_directory`` (see :mod:`vpt.hub`)."""
        from .hub import save_pretrained

        return save_pretrained(self, save_directory, results=results, **extra)

    def push_to_hub(self, repo_id: str, **kwargs: Any):
        """Upload the prompt file and its model card to a Hugging Face Hub repo (see :func:`vpt.hub.push_to_hub`)."""
        from .hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    @classmethod
    def from_pretrained(cls, repo_or_dir, backbone=None, revision: str | None = None, *, token: str | None = None,
                        cache_dir=None, **load_kwargs: Any) -> "PromptedModel":
        """Build the model from a prompt directory or a Hub repo id (``owner/name``), downloaded or from the cache.

        ``backbone``: as for :meth:`from_prompt_file` (None: the backbone recorded in the manifest); ``load_kwargs``
        (``pretrained=``, ``head=``, ``class_names=``) go to :meth:`from_prompt_file`."""
        from .hub import resolve_prompt_dir

        directory = resolve_prompt_dir(repo_or_dir, revision=revision, token=token, cache_dir=cache_dir)
        return cls.from_prompt_file(directory, backbone=backbone, **load_kwargs)

    @classmethod
    def from_prompt_file(cls, path, backbone: str | nn.Module | BackboneAdapter | None = None, pretrained: Any = None,
                         head: nn.Module | None = None, class_names: Sequence[str] | None = None) -> "PromptedModel":
        """Build the model a prompt file describes, on ``backbone`` (or the one named in the file).

        ``class_names``: other classes than the file's, for a CLIP prompt method with a generic context (CoOp,
        CoCoOp, MaPLe, IVLP without ``csc``): the learned prompts applied to new class names (base-to-novel)."""
        manifest, tensors = read_prompt_file(path)
        return cls.from_prompt_contents(manifest, tensors, path, backbone, pretrained, head, class_names)

    @classmethod
    def from_prompt_contents(cls, manifest: dict[str, Any], tensors: dict[str, torch.Tensor], path, backbone=None,
                             pretrained: Any = None, head: nn.Module | None = None,
                             class_names: Sequence[str] | None = None) -> "PromptedModel":
        if manifest.get("task", "classification") != "classification":
            raise PromptFileError(f"prompt file {str(path)!r} was made for task {manifest['task']!r}; load it with "
                                  "vpt.detection.DetectorModel.from_prompt_file (or vpt-eval, which reads the task)")
        backbone = _backbone_for(manifest, path, backbone, pretrained)
        head_info, given = manifest["head"], class_names is not None
        if given and head_info["kind"] != "clip_prompt":
            raise ConfigError("class_names= applies to CLIP prompt files (prompt=coop, cocoop, maple, ivlp); this "
                              f"file's head is {head_info['kind']!r}, whose classes are fixed")
        if given and manifest["prompt"].get("csc"):
            raise ConfigError("this prompt file has class-specific contexts (prompt.csc=true), one per trained class; "
                              "they cannot be applied to other class names. Train with prompt.csc=false for that")
        class_names = list(class_names) if given else manifest.get("class_names")
        if head is None and head_info["kind"] == "zero_shot":
            if isinstance(backbone, nn.Module) and not isinstance(backbone, BackboneAdapter):
                backbone = wrap_model(backbone)
            head = zero_shot_head_for(backbone, class_names, head_info.get("templates"))
            head.logit_scale = head_info.get("logit_scale", head.logit_scale)
        if head is None and head_info["kind"] == "label_map":
            head = label_map_head(backbone, len(head_info["source_indices"]), head_info["source_indices"])
        num_classes = len(class_names) if given else head_info["num_classes"] or 0
        model = cls(backbone, PromptConfig.from_dict(manifest["prompt"]), num_classes=num_classes,
                    head=head, class_names=class_names)
        model.load_prompt_contents(manifest, tensors, path, class_names_given=given)
        return model


def _backbone_for(manifest: dict[str, Any], path, backbone, pretrained: Any):
    if backbone is None:
        args = manifest["backbone"].get("create_args")
        if not args:
            raise PromptFileError(f"prompt file {str(path)!r} was made on a user-built backbone instance; "
                                  "pass that backbone: PromptedModel.from_prompt_file(path, backbone=model)")
        weights = locate_recorded_weights(args, path, pretrained)  # a moved weights file is found by name + sha256
        adapter = create_backbone(args["name"], pretrained=weights, image_size=args.get("image_size"), **args["kwargs"])
        adapter.name = manifest["backbone"]["name"]  # the name training recorded (e.g. a reshaped ViT's shape name)
        return adapter
    if isinstance(backbone, str):
        return create_backbone(backbone, pretrained=True if pretrained is None else pretrained)
    return backbone


def load_prompted_model(path, backbone=None, pretrained: Any = None, head: nn.Module | None = None) -> PromptedModel:
    """``PromptedModel.from_prompt_file``, as a function."""
    return PromptedModel.from_prompt_file(path, backbone=backbone, pretrained=pretrained, head=head)
