"""The fast path for one prompted timm ``Block``: prompts serve as keys and values only.

VPT-deep prompts entering a layer are replaced at the next layer (or removed after the last), so their own
outputs are never read: only their keys and values matter, and those are the same for every sample. This
module computes one block on ``[prefix, prompts, rest]`` without the prompt rows' outputs, and (in the
last layer) the class token's row only. :meth:`vpt.backbones.TimmViTAdapter.run_layer` decides when to use it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def is_plain_timm_block(block: nn.Module) -> bool:
    """A pre-norm timm ``Block`` with the standard ``Attention`` (no gate), which ``prompted_block`` reproduces."""
    from timm.layers.attention import Attention
    from timm.models.vision_transformer import Block

    attn = block.attn
    return (type(block) is Block and type(attn) is Attention and getattr(attn, "gate", None) is None
            and type(attn.qkv) is nn.Linear)


def _attention(attn: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    dropout = attn.attn_drop.p if attn.training else 0.0
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and not dropout:
        # timm's own non-fused formula. PyTorch's CPU flash kernel is slow in bf16 without AMX (about 2x slower
        # forward + backward than these two bf16 matmuls on AVX512-BF16 cores); fp32 and GPU keep fused SDPA.
        scores = (q * attn.scale) @ k.transpose(-2, -1)
        return scores.softmax(dim=-1).to(v.dtype) @ v
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)


def prompted_block(block: nn.Module, x: torch.Tensor, prompts: torch.Tensor | None,
                    num_queries: int | None) -> torch.Tensor:
    """``block`` on ``[prefix, prompts, rest]`` (``x`` = ``[prefix, rest]``) computed without materialising the prompt rows' outputs.

    ``prompts`` (P, D) are the same for every sample (VPT-deep prompts entering this layer), and their outputs
    are thrown away by the caller (replaced by fresh prompts at the next layer, or removed at the end). So
    only their keys and values are needed, and those are computed once for the batch, not per sample; the
    rows of ``x`` (class/register tokens, patches) are computed as in ``block``.
    ``num_queries``: only the first ``num_queries`` rows of ``x`` are returned (e.g. the class token in the
    last layer when the model pools the class token); every row still serves as key and value.
    Mathematically equal to ``block(cat([x[:, :num_prefix], prompts.expand(B), x[:, num_prefix:]]))`` minus the
    prompt rows (and the rows past ``num_queries``); numerically equal up to float rounding.
    """
    attn = block.attn
    b, n, _ = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    # (B, N, 3, H, d) views, not a permuted copy: the gradients of q, k and v then stack straight back into the
    # qkv layout in the backward pass (one copy instead of four)
    normed = block.norm1(x)
    if num_queries is None:
        q, k, v = attn.qkv(normed).view(b, n, 3, heads, head_dim).unbind(2)
    else:  # queries for the first rows only: split qkv's weight into its q and k/v rows
        dim, weight, bias = attn.attn_dim, attn.qkv.weight, attn.qkv.bias
        q = F.linear(normed[:, :num_queries], weight[:dim], None if bias is None else bias[:dim])
        q = q.view(b, num_queries, heads, head_dim)
        k, v = F.linear(normed, weight[dim:], None if bias is None else bias[dim:]).view(b, n, 2, heads, head_dim).unbind(2)
    if prompts is not None:
        # prompt rows computed once for the whole batch, appended after the sample's rows: attention does not
        # depend on the order of keys, and a prompt row's query is never used
        _, k_prompts, v_prompts = attn.qkv(block.norm1(prompts.to(x.dtype))).view(-1, 3, heads, head_dim).unbind(1)
        if _only_prompts_need_grad(attn, x, q, k_prompts):
            out = _PromptKeysGradAttention.apply(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 k_prompts.transpose(0, 1), v_prompts.transpose(0, 1))
            return _finish_block(block, x, out, num_queries)
        k = torch.cat([k, k_prompts.to(k.dtype).expand(b, -1, -1, -1)], dim=1)
        v = torch.cat([v, v_prompts.to(v.dtype).expand(b, -1, -1, -1)], dim=1)
        if torch.is_grad_enabled():
            # k and v are copies now; a q of its own lets the qkv output go, where attention saving the q view
            # for backward would keep all three thirds of it alive
            q = q.contiguous()
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    q, k = attn.q_norm(q), attn.k_norm(k)
    return _finish_block(block, x, _attention(attn, q, k, v), num_queries)


def _finish_block(block: nn.Module, x: torch.Tensor, out: torch.Tensor, num_queries: int | None) -> torch.Tensor:
    """The rest of a timm ``Block`` after attention: projection, residual, MLP. ``out`` is (B, H, N, d)."""
    attn = block.attn
    out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], attn.attn_dim)
    out = attn.proj_drop(attn.proj(attn.norm(out)))
    if num_queries is not None:
        x = x[:, :num_queries]
    x = x + block.drop_path1(block.ls1(out))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def _only_prompts_need_grad(attn: nn.Module, x: torch.Tensor, q: torch.Tensor, k_prompts: torch.Tensor) -> bool:
    """The first prompted layer of a frozen backbone in training: its input comes from the frozen patch embedding,
    so queries and the samples' keys/values need no gradient, only the prompts' keys/values (CPU fp32)."""
    return (torch.is_grad_enabled() and not x.requires_grad and k_prompts.requires_grad
            and q.device.type == "cpu" and q.dtype == torch.float32 and not (attn.training and attn.attn_drop.p)
            and isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)
            and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"))


class _PromptKeysGradAttention(torch.autograd.Function):
    """Attention over ``[sample keys, prompt keys]`` whose backward computes only the prompt keys' and values'
    gradients (P columns), not the full flash-attention backward over every query and key.

    ``q``, ``k``, ``v``: (B, H, N, d) without gradient; ``k_prompts``, ``v_prompts``: (H, P, d), the same for every
    sample. The forward is PyTorch's CPU flash kernel, which also returns the log-sum-exp the backward needs.
    """

    @staticmethod
    def forward(ctx, q, k, v, k_prompts, v_prompts):
        b = q.shape[0]
        k = torch.cat([k, k_prompts.expand(b, -1, -1, -1)], dim=2)
        v = torch.cat([v, v_prompts.expand(b, -1, -1, -1)], dim=2)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
        ctx.save_for_backward(q, k_prompts, v_prompts, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k_prompts, v_prompts, out, lse = ctx.saved_tensors
        scale = q.shape[-1] ** -0.5
        # softmax probabilities of the prompt columns only, (B, H, N, P)
        probs = torch.matmul(q, k_prompts.transpose(-2, -1)).mul_(scale).sub_(lse.unsqueeze(-1)).exp_()
        grad_v = torch.matmul(probs.transpose(-2, -1), grad_out).sum(0)
        delta = (grad_out * out).sum(-1, keepdim=True)
        grad_scores = probs.mul_(torch.matmul(grad_out, v_prompts.transpose(-2, -1)).sub_(delta))
        grad_k = torch.matmul(grad_scores.transpose(-2, -1), q).sum(0).mul_(scale)
        return None, None, None, grad_k, grad_v
