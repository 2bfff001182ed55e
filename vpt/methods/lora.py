"""LoRA (Hu et al., ICLR 2022) on a frozen ViT's linears, through the ``peft`` library (no LoRA code here)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from .adapters import timm_blocks
from .base import Method, register_method, require_fraction, require_int

#: option name → linear inside a timm ViT block
TARGETS = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}


@dataclass
class LoraOptions:
    """rank: r; alpha: the update is scaled by alpha / r; dropout: LoRA dropout on the input;
    targets: which linears of every block (``qkv``, ``proj``, ``fc1``, ``fc2``); ``[qkv]`` with r = 8 has the
    trainable count of LoRA on q and v (V-PETL Bench's 0.29M on ViT-B/16)."""

    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["qkv"])

    def __post_init__(self) -> None:
        self.targets = [self.targets] if isinstance(self.targets, str) else list(self.targets)


class LoraTuning(Method):
    name = "lora"
    kind = "module"
    config_class = LoraOptions
    modifies_backbone = True

    def validate(self, cfg) -> None:
        require_int(cfg.rank, "rank", minimum=1)
        bad = [t for t in cfg.targets if t not in TARGETS]
        if bad or not cfg.targets:
            raise ConfigError(f"prompt.targets={cfg.targets!r}: choose one or more of {sorted(TARGETS)}")
        require_fraction(cfg.dropout, "dropout")

    def lora_config(self, cfg, num_blocks: int):
        from peft import LoraConfig

        modules = [f"blocks.{i}.{TARGETS[t]}" for i in range(num_blocks) for t in cfg.targets]
        return LoraConfig(r=cfg.rank, lora_alpha=float(cfg.alpha), lora_dropout=float(cfg.dropout),
                          target_modules=modules, bias="none")

    def attach(self, model) -> None:
        from peft import inject_adapter_in_model

        blocks = timm_blocks(model.backbone, self.name)
        inject_adapter_in_model(self.lora_config(model.prompt_config, len(blocks)), model.backbone.model)


register_method(LoraTuning())
