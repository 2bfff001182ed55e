"""The timm backbone's fast prompted path (vpt/backbones/timm_prompted_block.py, chosen inside
``TimmViTAdapter.run_layer``): same outputs and gradients as concatenating the prompts and running each timm
block whole, fewer FLOPs, less memory kept for backward, and the first prompted layer's custom attention backward."""
import pytest
import torch
import torch.nn.functional as F

import vpt
from conftest import tiny_vit


@pytest.mark.parametrize("vit_kwargs", [{}, {"reg_tokens": 2, "global_pool": "avg"}, {"qk_norm": True, "init_values": 0.1},
                                       {"qkv_bias": False}])
@pytest.mark.parametrize("prompt", [dict(method="deep", length=5), dict(method="shallow", length=5),
                                    dict(method="deep", length=3, depth=[0, 2]), dict(method="deep", length=4, depth=2),
                                    dict(method="deep", length=4, project_dim=8), dict(method="linear"),
                                    dict(method="pad", size=4), dict(method="bias"), dict(method="full")])
def test_fast_prompt_path_equals_concatenate_then_block(vit_kwargs, prompt):
    """The speed path (keys/values-only prompt rows, class-token-only last block) gives the same outputs and
    trainable-parameter gradients as concatenating the prompts and running each timm block whole; methods without
    token prompts take the class-token-only last block too."""
    model = vpt.PromptedModel(tiny_vit(**vit_kwargs), vpt.PromptConfig(**prompt), num_classes=7)
    x, y = torch.randn(5, 3, 32, 32), torch.randint(0, 7, (5,))
    for train in (False, True):
        model.train(train)
        outputs = []
        for fast in (True, False):
            model.fast_prompt_path = fast
            model.zero_grad()
            logits = model(x)
            F.cross_entropy(logits, y).backward()
            outputs.append((logits.detach(), [p.grad.clone() for p in model.trainable_parameters()],
                            model.forward_dense(x).detach()))
        (a, grads_a, dense_a), (b, grads_b, dense_b) = outputs
        assert (a - b).abs().max().item() <= 1e-5
        assert (dense_a - dense_b).abs().max().item() <= 1e-5
        for ga, gb in zip(grads_a, grads_b):
            assert (ga - gb).abs().max().item() <= 1e-5


@pytest.mark.parametrize("method", ["linear", "pad", "full", "deep"])
def test_last_block_skips_the_patch_rows_for_every_method(method):
    """With class-token pooling the last block computes the class token only, whatever the method: fewer FLOPs
    than the whole block (the equality with the whole block is checked above)."""
    from torch.utils.flop_counter import FlopCounterMode

    from vpt.tools.bench import parameters_frozen  # the FLOP counter needs it for a no-grad forward (see its docstring)

    model = vpt.PromptedModel(tiny_vit(), vpt.PromptConfig(method=method, length=4, size=4), num_classes=7).eval()
    flops = {}
    for fast in (True, False):
        model.fast_prompt_path = fast
        with parameters_frozen(model), FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.randn(2, 3, 32, 32))
        flops[fast] = counter.get_total_flops()
    # tiny_vit: 4 blocks of 17 tokens (+4 prompts); the last block's patch rows are about a fifth of the work
    assert flops[True] < 0.9 * flops[False], flops


def test_deep_layers_do_not_keep_their_qkv_output_for_backward():
    """Memory: once a VPT-deep layer has copied its keys/values to append the prompts, backward must not keep
    that layer's whole qkv output alive through a view of q (the first prompted layer keeps it: its custom
    backward reads q, k and v there)."""
    batch, tokens, dim = 4, 17, 48  # tiny_vit: 32 px, patch 8, one class token, width 48
    model = vpt.PromptedModel(tiny_vit(), vpt.PromptConfig(method="deep", length=5), num_classes=7).train()
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(batch, 3, 32, 32))
    qkv_outputs = [n for n in saved.values() if n == batch * tokens * 3 * dim * 4]
    assert len(qkv_outputs) == 1, len(qkv_outputs)


def test_prompt_keys_grad_attention_matches_autograd():
    """The first prompted layer's attention backward (prompt keys/values only) equals autograd through SDPA."""
    from vpt.backbones.timm_prompted_block import _PromptKeysGradAttention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 8, generator=g) for _ in range(3))
    k_prompts, v_prompts = (torch.randn(2, 4, 8, generator=g, requires_grad=True) for _ in range(2))
    grad_out = torch.randn(3, 2, 7, 8, generator=g)
    reference = F.scaled_dot_product_attention(q, torch.cat([k, k_prompts.expand(3, -1, -1, -1)], 2),
                                               torch.cat([v, v_prompts.expand(3, -1, -1, -1)], 2))
    expected = torch.autograd.grad(reference, (k_prompts, v_prompts), grad_out)
    out = _PromptKeysGradAttention.apply(q, k, v, k_prompts, v_prompts)
    got = torch.autograd.grad(out, (k_prompts, v_prompts), grad_out)
    assert (out - reference).abs().max().item() < 1e-6
    for a, b in zip(got, expected):
        assert (a - b).abs().max().item() < 1e-5
