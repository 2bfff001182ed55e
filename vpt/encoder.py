"""The one loop that runs a frozen encoder's layers with prompts, shared by PromptedModel and PromptBank.

Prompts come from a *prompt source*: an object with ``at(layer, tokens, prompt_length)`` (fresh prompts entering
``layer``: (P, D) shared by the batch, (B, P, D) per sample, or None to keep the current ones),
``replaces_all(layer)`` (True if every sample gets fresh prompts at ``layer``, so the previous layer's prompt
outputs are never read) and ``attn_bias(layer, num_tokens, prompt_length)`` (an additive attention bias for the
``num_tokens`` rows entering the block, of which ``prompt_length`` are prompts, or None).
:class:`vpt.methods.token_prompts.TokenPrompts` is one; the bank builds one per mixed-task batch.
"""
from __future__ import annotations

from typing import Any

import torch

from .backbones.base import BackboneAdapter, remove_prompts

ROWS = ("all", "no_prompts", "prefix")


def run_layers(backbone: BackboneAdapter, tokens: torch.Tensor, prompts: Any = None, last_rows: str = "all") -> torch.Tensor:
    """``tokens`` from ``backbone.embed`` through every block, prompts inserted where the source says.

    Returns the final tokens without prompt rows: ``[prefix, patches]``, or only the prefix (class/register)
    rows when ``last_rows="prefix"`` (enough for a pooling that reads the class token).
    """
    if last_rows not in ROWS:
        raise ValueError(f"last_rows={last_rows!r}; valid: {ROWS}")
    prompt_length, last = 0, backbone.num_layers - 1
    for index in range(backbone.num_layers):
        fresh = prompts.at(index, tokens, prompt_length) if prompts is not None else None
        if index == last:
            rows = last_rows
        elif prompts is not None and prompts.replaces_all(index + 1):
            rows = "no_prompts"  # this layer's prompt outputs are replaced before anyone reads them
        else:
            rows = "all"
        bias = None
        if prompts is not None:
            length = fresh.shape[-2] if fresh is not None else prompt_length
            bias = prompts.attn_bias(index, tokens.shape[1] - prompt_length + length, length)
        tokens, prompt_length = backbone.run_layer(index, tokens, fresh, prompt_length, rows, bias)
    if prompt_length:
        tokens = remove_prompts(tokens, backbone.num_prefix_tokens, prompt_length)
    return tokens
