"""VPT token prompts (Jia et al., ECCV 2022)."""
from __future__ import annotations

import math

import torch
from torch import nn


class TokenPrompts(nn.Module):
    """Learnable prompt tokens for a set of layers.

    The first prompted layer *inserts* P tokens right after the class/register tokens; every later
    prompted layer *replaces* the previous layer's prompt outputs with fresh tokens (VPT-deep). Layers
    without prompts carry the previous prompt outputs forward.
    """

    def __init__(
        self,
        layers: list[int],
        length: int,
        embed_dim: int,
        patch_size: tuple[int, int],
        dropout: float = 0.0,
        project_dim: int = 0,
    ) -> None:
        super().__init__()
        self.layers = list(layers)
        self.length = length
        self.embed_dim = embed_dim
        self.slot = {layer: i for i, layer in enumerate(self.layers)}
        width = project_dim or embed_dim
        self.embeddings = nn.Parameter(torch.zeros(len(self.layers), length, width))
        # VPT's init: uniform(-v, v), v = sqrt(6 / (3 * patch_area + width)) (xavier on the patch conv's fan)
        bound = math.sqrt(6.0 / float(3 * patch_size[0] * patch_size[1] + width))
        nn.init.uniform_(self.embeddings, -bound, bound)
        self.projection = nn.Linear(project_dim, embed_dim) if project_dim else None
        if self.projection is not None:
            nn.init.kaiming_normal_(self.projection.weight, a=0, mode="fan_out")
        self.dropout = nn.Dropout(dropout)

    def prompts_at(self, layer: int, batch_size: int) -> torch.Tensor | None:
        """(B, P, D) prompts entering ``layer``, or None if the layer has none."""
        prompts = self.shared_at(layer)
        return None if prompts is None else self.dropout(prompts.expand(batch_size, -1, -1))

    def shared_at(self, layer: int) -> torch.Tensor | None:
        """(P, D) prompts entering ``layer`` before prompt dropout, the same for every sample, or None if the layer
        has none. Use it for the whole batch only while dropout is inactive (see :attr:`batch_shared`)."""
        slot = self.slot.get(layer)
        if slot is None:
            return None
        prompts = self.embeddings[slot]
        return self.projection(prompts) if self.projection is not None else prompts

    @property
    def batch_shared(self) -> bool:
        """True if every sample sees the same prompts (no prompt dropout active)."""
        return not (self.training and self.dropout.p > 0)

    # ---- the prompt-source interface of vpt.encoder.run_layers -------------------------------------------------
    def at(self, layer: int, tokens: torch.Tensor, prompt_length: int) -> torch.Tensor | None:
        """Fresh prompts entering ``layer``: (P, D) for the whole batch, or (B, P, D) while prompt dropout acts."""
        if layer not in self.slot:
            return None
        return self.shared_at(layer) if self.batch_shared else self.prompts_at(layer, tokens.shape[0])

    def replaces_all(self, layer: int) -> bool:
        return layer in self.slot

    def attn_bias(self, layer: int, num_tokens: int, prompt_length: int) -> None:
        return None  # every sample sees all of its prompts

    @torch.no_grad()
    def effective(self) -> dict[int, torch.Tensor]:
        """Layer → (P, D) prompts as the backbone sees them in eval mode (projection applied)."""
        return {layer: self.shared_at(layer) for layer in self.slot}

