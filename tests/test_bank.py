"""Multi-task prompt bank: mixed-task batches in one pass equal each task run alone."""
import pytest
import torch

import vpt
from vpt import PromptBank, PromptConfig, PromptedModel


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
    for i, name in enumerate(names):
        with torch.no_grad():
            alone = tasks[name](x[i:i + 1])[0]
        c = alone.shape[0]
        torch.testing.assert_close(logits[i, :c], alone, rtol=0, atol=1e-5)
        assert torch.isinf(logits[i, c:]).all()


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
