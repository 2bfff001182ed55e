"""Modules inside a frozen ViT: bottleneck adapters (VPT's Adapter, AdaptFormer) and SSF's scale-shift.

Each method's modules live inside the backbone (as peft's tuners); the backbone's own weights stay frozen.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import Method, register_method, require_int


def timm_blocks(backbone, method: str) -> list[nn.Module]:
    """The pre-norm timm ``Block`` s of a timm ViT (norm1, attn, norm2, mlp); one ConfigError for other backbones."""
    from timm.models.vision_transformer import Block

    blocks = list(backbone.blocks) if backbone.supports_token_prompts else []
    if not blocks or not all(isinstance(block, Block) for block in blocks):
        raise ConfigError(f"prompt={method} adds modules to timm ViT blocks; {backbone.name} has none (use a timm "
                          "ViT backbone, or a prompt method: deep, pad, ...)")
    return blocks


class Bottleneck(nn.Module):
    """down (D → D/r) → activation → up (D/r → D), times ``scale``."""

    def __init__(self, dim: int, hidden: int, activation: str, init: str, scale: float = 1.0) -> None:
        super().__init__()
        self.down, self.up = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.activation = activation
        self.scale = scale
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        nn.init.zeros_(self.down.bias)
        if init == "zero":  # VPT's adapter code zeroes both linears
            nn.init.zeros_(self.down.weight)
        else:  # "lora": AdaptFormer's init
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.down(x)
        hidden = F.gelu(hidden) if self.activation == "gelu" else F.relu(hidden)
        return self.up(hidden) * self.scale


# ---- VPT's Adapter (Pfeiffer style, after the MLP) ---------------------------------------------------------------
@dataclass
class AdapterOptions:
    """reduction_factor: the bottleneck is embed_dim // reduction_factor wide (VPT: 8, 64, 256);
    init: ``zero`` (VPT's code: both linears zero) or ``lora`` (down Kaiming-uniform, up zero)."""

    reduction_factor: int = 8
    init: str = "zero"


class MlpThenAdapter(nn.Module):
    """``y = mlp(x); y + adapter(y)``: VPT's ADPT_Block, in place of the block's ``mlp``."""

    def __init__(self, mlp: nn.Module, adapter: Bottleneck) -> None:
        super().__init__()
        self.mlp, self.adapter = mlp, adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(x)
        return y + self.adapter(y)


def check_bottleneck(cfg, dim_name: str = "reduction_factor") -> None:
    require_int(getattr(cfg, dim_name), dim_name, minimum=1)
    if cfg.init not in ("zero", "lora"):
        raise ConfigError(f"prompt.init must be 'zero' or 'lora', got {cfg.init!r}")


class AdapterTuning(Method):
    """Adapter (Pfeiffer et al.; VPT's ``adapter`` baseline): a GELU bottleneck after each block's MLP, added to it."""

    name = "adapter"
    kind = "module"
    config_class = AdapterOptions
    modifies_backbone = True

    def validate(self, cfg) -> None:
        check_bottleneck(cfg)

    def attach(self, model) -> None:
        cfg, dim = model.prompt_config, model.backbone.embed_dim
        if dim // cfg.reduction_factor < 1:
            raise ConfigError(f"prompt.reduction_factor={cfg.reduction_factor} leaves no bottleneck of a {dim}-wide "
                              f"backbone; use 1..{dim}")
        for block in timm_blocks(model.backbone, self.name):
            block.mlp = MlpThenAdapter(block.mlp, Bottleneck(dim, dim // cfg.reduction_factor, "gelu", cfg.init))


# ---- AdaptFormer (Chen et al., NeurIPS 2022): a parallel adapter on the MLP ---------------------------------------
@dataclass
class AdaptFormerOptions:
    """bottleneck: hidden width (the paper: 64; V-PETL Bench: 8); scale: s on the adapter branch (0.1);
    init: ``lora`` (down Kaiming-uniform, up zero; AdaptFormer's) or ``zero``."""

    bottleneck: int = 64
    scale: float = 0.1
    init: str = "lora"


class ParallelAdapterBlock(nn.Module):
    """A timm ``Block`` whose MLP branch gets ``s * up(relu(down(x)))`` of the branch's input ``x`` added (before
    ``norm2``, as AdaptFormer's ``adapter_layernorm_option=none``)."""

    def __init__(self, block: nn.Module, adapter: Bottleneck) -> None:
        super().__init__()
        self.block, self.adapter = block, adapter

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b = self.block
        x = x + b.drop_path1(b.ls1(b.attn(b.norm1(x), attn_mask=attn_mask)))
        return x + b.drop_path2(b.ls2(b.mlp(b.norm2(x)))) + self.adapter(x)


class AdaptFormer(Method):
    name = "adaptformer"
    kind = "module"
    config_class = AdaptFormerOptions
    modifies_backbone = True

    def validate(self, cfg) -> None:
        check_bottleneck(cfg, "bottleneck")

    def attach(self, model) -> None:
        cfg, blocks, dim = model.prompt_config, model.backbone.blocks, model.backbone.embed_dim
        for index, block in enumerate(timm_blocks(model.backbone, self.name)):
            blocks[index] = ParallelAdapterBlock(block, Bottleneck(dim, cfg.bottleneck, "relu", cfg.init, float(cfg.scale)))


# ---- SSF (Lian et al., NeurIPS 2022): scale and shift after every operation -------------------------------------
@dataclass
class SsfOptions:
    """init_std: scales start at 1 + N(0, init_std), shifts at N(0, init_std) (SSF's 0.02); 0: the identity."""

    init_std: float = 0.02


class ScaleShift(nn.Module):
    """``y * scale + shift`` over the last dimension, applied to a module's output by a forward hook (the module,
    its type and its attributes stay as they are)."""

    def __init__(self, dim: int, std: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim))
        if std:
            nn.init.normal_(self.scale, 1.0, std)
            nn.init.normal_(self.shift, 0.0, std)

    def hook(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        return output * self.scale.to(output.dtype) + self.shift.to(output.dtype)


def ssf_points(backbone) -> dict[str, int]:
    """Module name (in the timm model) → output width: patch embedding, every block's norm1 / qkv / proj / norm2 /
    fc1 / fc2, and the final norm, as SSF's ViT."""
    blocks = timm_blocks(backbone, "ssf")
    points = {"patch_embed": backbone.embed_dim}
    for index, block in enumerate(blocks):
        for name in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            module = block.get_submodule(name)
            width = module.out_features if isinstance(module, nn.Linear) else backbone.embed_dim
            points[f"blocks.{index}.{name}"] = width
    points["norm"] = backbone.embed_dim
    return points


class SsfTuning(Method):
    name = "ssf"
    kind = "module"
    config_class = SsfOptions
    modifies_backbone = True

    def validate(self, cfg) -> None:
        if not float(cfg.init_std) >= 0:
            raise ConfigError(f"prompt.init_std must be >= 0, got {cfg.init_std!r}")

    def attach(self, model) -> None:
        model.ssf = nn.ModuleDict()
        for name, width in ssf_points(model.backbone).items():
            ss = ScaleShift(width, float(model.prompt_config.init_std))
            model.ssf[name.replace(".", "_")] = ss
            model.backbone.model.get_submodule(name).register_forward_hook(ss.hook)


for _method in (AdapterTuning(), AdaptFormer(), SsfTuning()):
    register_method(_method)
