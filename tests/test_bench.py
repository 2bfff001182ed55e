"""vpt-bench on a tiny ViT: every method and comparison present, numbers positive, table printed.

No timing assertions: this machine is shared and the model is tiny; the issue's targets are checked by
``experiments/bench_cpu.sh`` (ViT-S/16) and reported in ``experiments/bench_cpu.md``.
"""
import json
import os
import subprocess
import sys

import pytest

METHODS = ["linear", "shallow", "deep", "pad", "full"]
METHOD_KEYS = ["trainable_params", "prompt_file_bytes", "train_img_s", "infer_img_s", "step_forward_ratio",
               "peak_mem_bytes", "train_step_s", "forward_s"]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results.json"
    cmd = [sys.executable, "-m", "vpt.bench", "--backbone", "vit_tiny_patch16_224", "--img-size", "32",
           "--patch-size", "8", "--backbone-kwargs", '{"depth": 2}', "--batch-size", "4", "--warmup", "1",
           "--steps", "2", "--prompt-length", "5", "--pad-size", "4", "--num-classes", "10", "--tasks", "8",
           "--threads", "1", "--timeout", "120", "--pipeline-images", "16", "--flops", "--peak-tflops", "0.5",
           "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_every_method_has_positive_numbers(bench_run):
    _, results = bench_run
    assert list(results["methods"]) == METHODS
    for method, row in results["methods"].items():
        assert "error" not in row, row.get("error")
        for key in METHOD_KEYS:
            assert row[key] > 0, (method, key, row[key])
    rows = results["methods"]
    assert rows["linear"]["trainable_params"] < rows["deep"]["trainable_params"] < rows["full"]["trainable_params"]
    assert rows["full"]["trainable_params"] == rows["full"]["total_params"]
    assert rows["deep"]["prompt_file_bytes"] < rows["full"]["prompt_file_bytes"]


def test_yardstick_and_multitask_rows(bench_run):
    _, results = bench_run
    yard = results["yardstick"]
    assert "error" not in yard, yard.get("error")
    assert yard["speedup_vs_plain_fp32"] > 0 and yard["img_s"]["plain_fp32"] > 0
    multi = results["multitask"]
    assert "error" not in multi, multi.get("error")
    assert multi["tasks"] == 8 and multi["mixed_vs_single"] > 0
    assert multi["img_s"]["mixed"] > 0 and multi["img_s"]["single"] > 0
    assert {t["target"] for t in results["targets"]} >= {"yardstick", "step_forward_cpu", "memory_cpu", "multitask"}
    assert results["config"]["backbone"] == "vit_tiny_patch16_224" and results["environment"]["torch"]


def test_data_pipeline_row(bench_run):
    stdout, results = bench_run
    pipe = results["pipeline"]
    assert "error" not in pipe, pipe.get("error")
    assert pipe["dataset_images"] == 16 and pipe["dataset_device_bytes"] == 16 * 3 * 32 * 32  # uint8 cache
    assert pipe["img_s"]["pipeline"] > 0 and pipe["img_s"]["on_device"] > 0 and pipe["pipeline_vs_on_device"] > 0
    assert "pipeline" in {t["target"] for t in results["targets"]}
    assert "data pipeline" in stdout


def test_flops_and_mfu_for_every_method(bench_run):
    """The GPU benchmark reports model FLOPs utilisation from these counts (on by default on CUDA)."""
    stdout, results = bench_run
    rows = results["methods"]
    for method, row in rows.items():
        assert "flops_error" not in row, (method, row.get("flops_error"))
        assert row["forward_flops_per_image"] > 0 and row["train_flops_per_image"] > 0, method
        assert row["mfu"] == pytest.approx(row["train_flops_per_image"] * row["train_img_s"] / 0.5e12)
    # prompt keys add attention work; full fine-tuning adds weight gradients (about 3x its forward), frozen
    # backbones only input gradients
    assert rows["deep"]["forward_flops_per_image"] > rows["linear"]["forward_flops_per_image"]
    assert rows["full"]["train_flops_per_image"] > 2.5 * rows["full"]["forward_flops_per_image"]
    assert rows["deep"]["train_flops_per_image"] < rows["full"]["train_flops_per_image"]
    assert stdout.count("MFU") == len(METHODS)


def test_pipeline_dataset_from_an_imagefolder(tmp_path):
    import torch
    from test_data import make_imagefolder

    from vpt.bench import pipeline_dataset

    root = make_imagefolder(tmp_path / "folder", per_class={"train": 4, "test": 1})
    config = {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    dataset = pipeline_dataset({"pipeline_images": 6, "pipeline_data": str(root), "num_classes": 3}, config)
    assert len(dataset) == 6 and dataset.images.dtype == torch.uint8
    assert tuple(dataset.images.shape) == (6, 3, 16, 16) and dataset.augment == "flip_crop"


def test_table_is_printed(bench_run):
    stdout, _ = bench_run
    assert "train img/s" in stdout and "step/fwd" in stdout
    for method in METHODS:
        assert any(line.startswith(method) for line in stdout.splitlines()), method
    assert "yardstick" in stdout and "multi-task" in stdout


def test_plain_yardstick_is_vpt_deep():
    """The yardstick computes the same function as vpt's VPT-deep given the same prompts and head."""
    import torch

    import vpt
    from vpt.bench import PlainTimmVPT

    model = vpt.PromptedModel(vpt.create_backbone("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2),
                              "deep", num_classes=10, length=5).eval()
    plain = PlainTimmVPT(model.backbone.model, 5, 10).eval()
    with torch.no_grad():
        plain.prompts.copy_(model.token_prompts.embeddings)
        plain.head.load_state_dict(model.head.state_dict())
        x = torch.randn(3, 3, 32, 32)
        assert (plain(x) - model(x)).abs().max().item() < 1e-5


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
    import torch
    import torch.nn.functional as F

    import vpt
    from conftest import tiny_vit

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
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import vpt
    from conftest import tiny_vit

    model = vpt.PromptedModel(tiny_vit(), vpt.PromptConfig(method=method, length=4, size=4), num_classes=7).eval()
    flops = {}
    for fast in (True, False):
        model.fast_prompt_path = fast
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.randn(2, 3, 32, 32))
        flops[fast] = counter.get_total_flops()
    # tiny_vit: 4 blocks of 17 tokens (+4 prompts); the last block's patch rows are about a fifth of the work
    assert flops[True] < 0.9 * flops[False], flops


def test_deep_layers_do_not_keep_their_qkv_output_for_backward():
    """Memory: once a VPT-deep layer has copied its keys/values to append the prompts, backward must not keep
    that layer's whole qkv output alive through a view of q (the first prompted layer keeps it: its custom
    backward reads q, k and v there)."""
    import torch

    import vpt
    from conftest import tiny_vit

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
    import torch
    import torch.nn.functional as F

    from vpt.backbones.timm_vit import _PromptKeysGradAttention

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


def test_missing_pipeline_data_stops_before_any_measurement(tmp_path):
    from vpt.bench import run

    with pytest.raises(SystemExit, match="is not a folder; pass an ImageFolder"):
        run(["--pipeline-images", "4", "--pipeline-data", str(tmp_path / "missing"), "--out", str(tmp_path / "r.json")])
    assert not (tmp_path / "r.json").exists()


def test_targets_say_whether_the_run_used_the_issues_setting():
    from vpt.bench import evaluate_targets

    def targets(backbone, batch, tasks, device="cpu"):
        results = {"config": {"device": device, "precision": "fp32", "backbone": backbone, "img_size": 224,
                              "batch_size": batch, "prompt_length": 50},
                   "methods": {"deep": {"step_forward_ratio": 2.0, "peak_mem_bytes": 7},
                               "full": {"peak_mem_bytes": 10}},
                   "multitask": {"tasks": tasks, "mixed_vs_single": 0.95}}
        return {t["target"]: t for t in evaluate_targets(results)}

    issue = targets("vit_small_patch16_224", 32, 8)
    assert issue["step_forward_cpu"]["pass"] and issue["memory_cpu"]["value"] == 0.7
    assert all(t["issue_setup"] for t in issue.values())
    other = targets("vit_tiny_patch16_224", 4, 2)
    assert not any(t["issue_setup"] for t in other.values())
    assert not targets("vit_small_patch16_224", 32, 2)["multitask"]["issue_setup"]  # 2 tasks, not 8
