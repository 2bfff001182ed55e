"""Multi-task prompt bank: mixed-task batches in one pass equal each task run alone."""
import pytest
import torch

import vpt
from vpt import PromptBank, PromptConfig, PromptedModel


def assert_rows_equal_each_task_alone(logits, tasks, names, x, rtol=0.0):
    """Row i of the bank's mixed batch equals task names[i] run alone on x[i]; the other tasks' classes are -inf."""
    for i, name in enumerate(names):
        with torch.no_grad():
            alone = tasks[name](x[i:i + 1])[0]
        c = alone.shape[0]
        torch.testing.assert_close(logits[i, :c], alone, rtol=rtol, atol=1e-5)
        assert torch.isinf(logits[i, c:]).all()


def _task(vit, method, classes, **kw):
    model = PromptedModel(vit, PromptConfig(method, **kw), num_classes=classes)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p))
    return model.eval()


def test_mixed_batch_equals_each_task_alone(tmp_path, tiny_vit_factory):
    vit = tiny_vit_factory()
    tasks = {
        "deep10": _task(vit, "deep", 5, length=10),
        "deep3": _task(vit, "deep", 3, length=3),
        "late": _task(vit, "deep", 4, length=6, depth=[2, 3]),
        "shallow": _task(vit, "shallow", 7, length=8),
        "pad": _task(vit, "pad", 2, size=4),
        "linear": _task(vit, "linear", 6),
    }
    bank = PromptBank(vit)
    for name, model in tasks.items():
        model.save_prompt(tmp_path / name)
        bank.add_task(name, tmp_path / name)  # from prompt files
    names = list(tasks) * 3
    x = torch.randn(len(names), 3, 32, 32)
    logits = bank(x, names)
    assert logits.shape == (len(names), 7)
    assert_rows_equal_each_task_alone(logits, tasks, names, x)


def test_mlp_heads_and_side_networks_share_a_mixed_batch(tiny_vit_factory):
    """MLP-k and Sidetune keep the backbone frozen: their hidden layers / side networks run on their own rows."""
    vit = tiny_vit_factory()
    tasks = {"mlp3": _task(vit, "mlp", 4, k=3), "side": _task(vit, "sidetune", 3, side="conv"),
             "deep": _task(vit, "deep", 5, length=4), "linear": _task(vit, "linear", 2)}
    bank = PromptBank(vit)
    for name, model in tasks.items():
        bank.add_task(name, model)
    names = ["side", "mlp3", "linear", "deep", "mlp3", "side"]
    x = torch.randn(len(names), 3, 32, 32)
    # rtol: the randomised side network gives logits of ~1e4, where float32 rounding alone is ~1e-3
    assert_rows_equal_each_task_alone(bank(x, names), tasks, names, x, rtol=1e-5)
    only_linear = bank(x[:2], ["linear", "deep"])  # no per-task step in the batch: the stacked heads alone
    assert_rows_equal_each_task_alone(only_linear, tasks, ["linear", "deep"], x[:2])


def test_tasks_added_and_removed_at_run_time(tiny_vit_factory):
    vit = tiny_vit_factory()
    bank = PromptBank(vit)
    a, b = _task(vit, "deep", 3, length=4), _task(vit, "deep", 3, length=4)
    bank.add_task("a", a)
    x = torch.randn(2, 3, 32, 32)
    first = bank(x, ["a", "a"])
    bank.add_task("b", b)
    torch.testing.assert_close(bank(x, ["a", "b"])[1], b(x[1:])[0].detach(), rtol=0, atol=1e-5)
    bank.remove_task("a")
    assert bank.tasks == ["b"]
    with pytest.raises(vpt.ConfigError, match="unknown task"):
        bank(x, ["a", "b"])
    bank.add_task("a", a)
    torch.testing.assert_close(bank(x, ["a", "a"]), first, rtol=0, atol=0)


def test_bank_refuses_other_backbones_and_full_finetuning(tmp_path, tiny_vit_factory):
    bank = PromptBank(tiny_vit_factory())
    other = _task(tiny_vit_factory(), "deep", 3, length=4)
    other.save_prompt(tmp_path / "other")
    with pytest.raises(vpt.PromptFileError, match="made for backbone"):
        bank.add_task("other", tmp_path / "other")
    with pytest.raises(vpt.ConfigError, match="frozen backbone"):
        bank.add_task("full", PromptedModel(bank.backbone.model, "full", num_classes=2))


def _tiny_clip():
    import open_clip

    torch.manual_seed(0)
    return open_clip.CLIP(embed_dim=32, vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=3, head_width=32),
                          text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2)).eval()


def _clip_task(clip, method, names, **kw):
    model = PromptedModel(clip, prompt=method, class_names=names, **kw)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_bank_serves_clip_prompt_tasks_with_vpt_and_pixel_tasks(tmp_path):
    """CoOp tasks of other class sets, IVLP / MaPLe vision prompts, VPT-deep and pad on one frozen CLIP: a mixed
    batch equals each task alone; the text tower runs when a task is added, not per batch."""
    clip = _tiny_clip()
    tasks = {
        "coop_pets": _clip_task(clip, "coop", ["cat", "dog", "sea_lion"], n_ctx=4),
        "coop_things": _clip_task(clip, "coop", ["airplane", "car", "ship", "truck", "bird"], n_ctx=3, csc=True),
        "ivlp": _clip_task(clip, "ivlp", ["cat", "dog"], n_ctx=2, vision_length=3, depth=2),
        "maple": _clip_task(clip, "maple", ["cat", "car", "ship"], depth=2),
        "deep": _task(clip, "deep", 4, length=5),
        "pad": _task(clip, "pad", 2, size=4),
    }
    bank = PromptBank(clip)
    for name, model in tasks.items():
        bank.add_task(name, model)
    tasks["coop_pets"].save_prompt(tmp_path / "coop")
    bank.add_task("coop_file", tmp_path / "coop")  # from a prompt file: class names from its manifest
    tasks["coop_file"] = tasks["coop_pets"]
    tasks["maple"].save_prompt(tmp_path / "maple")
    bank.add_task("maple_file", tmp_path / "maple")
    tasks["maple_file"] = tasks["maple"]
    calls = []
    hook = clip.transformer.resblocks[0].register_forward_hook(lambda *a: calls.append(1))  # the text tower's
    names = list(tasks) * 2
    x = torch.randn(len(names), 3, 32, 32)
    logits = bank(x, names)
    assert not calls  # no text tower run per batch
    hook.remove()
    assert_rows_equal_each_task_alone(logits, tasks, names, x)
    assert bank.class_names("coop_things") == ["airplane", "car", "ship", "truck", "bird"]


def test_bank_refuses_cocoop_with_one_message(tmp_path):
    clip = _tiny_clip()
    bank = PromptBank(clip)
    cocoop = _clip_task(clip, "cocoop", ["cat", "dog"])
    with pytest.raises(vpt.ConfigError, match="conditions its text context on each image"):
        bank.add_task("cocoop", cocoop)
    cocoop.save_prompt(tmp_path / "cocoop")
    with pytest.raises(vpt.ConfigError, match=r"text tower runs per image.*prompt=cocoop"):
        bank.add_task("cocoop", tmp_path / "cocoop")
    assert bank.tasks == []
