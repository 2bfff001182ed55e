"""One Registry for methods, backbone adapters and tasks; each method owns its options (PromptConfig)."""
import json
import sys

import pytest

import vpt
import vpt.tools.cli
from vpt.backbones import adapter_classes, register_adapter, wrap_model
from vpt.backbones.base import ADAPTERS
from vpt.backbones.timm_vit import TimmViTAdapter
from vpt.config import PromptConfig
from vpt.methods import get_method
from vpt.registry import Registry
from vpt.tasks import TASKS, get_task, task_from_config
from vpt.tasks.classification import ClassificationTask


def test_registry_names_did_you_mean_priority_and_lazy_builtins():
    reg = Registry("widget", builtins=("json",))
    reg.register(1, "low", priority=-1)
    reg.register(2, "first")
    reg.register(3, "second")
    assert reg.names() == ("low", "first", "second") and reg.values() == [2, 3, 1]
    with pytest.raises(ValueError, match="already registered"):
        reg.register(4, "first")
    with pytest.raises(vpt.ConfigError, match="unknown widget 'secnd'; valid names: first, low, second; did you mean 'second'"):
        reg.get("secnd")
    with pytest.raises(vpt.ConfigError, match="did you mean 'deep'"):
        get_method("depp")
    assert reg.get("json.dumps") is json.dumps  # a dotted name imports the object


def test_prompt_config_is_the_method_plus_its_own_options():
    deep = PromptConfig(method="deep", length=4)
    assert deep.length == 4 and type(deep.options).__name__ == "TokenOptions"
    assert deep.to_dict() == {"method": "deep", "length": 4, "depth": None, "init": "xavier", "dropout": 0.0,
                              "project_dim": 0, "train_head": True}
    pad = PromptConfig("pad", size=4)
    assert pad.to_dict() == {"method": "pad", "size": 4, "train_head": True}
    with pytest.raises(AttributeError):
        pad.length  # noqa: B018  (a pad prompt has no token length)
    # the union-of-fields dicts of older prompt files (and the same legacy keywords) still load
    old = {"method": "pad", "length": 10, "depth": None, "init": "xavier", "dropout": 0.0, "project_dim": 0,
           "size": 4, "train_head": True}
    assert PromptConfig.from_dict(old) == pad == PromptConfig(method="pad", length=3, size=4)
    assert PromptConfig.from_dict(deep.to_dict()) == deep
    assert PromptConfig("linear").to_dict() == {"method": "linear", "train_head": True}
    with pytest.raises(vpt.ConfigError, match=r"prompt=deep has no option\(s\) \['lenght'\].*did you mean prompt.length"):
        PromptConfig("deep", lenght=3)
    with pytest.raises(vpt.ConfigError, match="prompt.dropout must be in"):
        PromptConfig("deep", dropout=1.5)


def test_a_users_adapter_wins_over_the_builtins(tiny_vit_factory):
    @register_adapter
    class MyViTAdapter(TimmViTAdapter):
        pass

    try:
        assert adapter_classes()[0] is MyViTAdapter
        assert type(wrap_model(tiny_vit_factory())) is MyViTAdapter
    finally:
        ADAPTERS.unregister("MyViTAdapter")
    assert type(wrap_model(tiny_vit_factory())) is TimmViTAdapter


class CountingTask(ClassificationTask):
    """A user's task in the test file, found through ``task._target_`` (no registration call)."""

    name = "test_registry.CountingTask"
    built = 0

    def build_model(self, cfg, backbone, data):
        type(self).built += 1
        return super().build_model(cfg, backbone, data)


def test_a_task_from_the_test_file_is_found_and_trains(tmp_path, monkeypatch):
    assert isinstance(task_from_config({"_target_": "test_registry.CountingTask"}), CountingTask)
    assert get_task("classification") is TASKS.get("classification")
    with pytest.raises(vpt.ConfigError, match="did you mean 'classification'"):
        get_task("clasification")
    run = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", [
        "vpt-train", "+task._target_=test_registry.CountingTask", "prompt=linear", "logger=none", "trainer.epochs=1",
        "trainer.progress_bar=false", "trainer.cpu_threads=1", "data.train_size=32", f"hydra.run.dir={run}"])
    CountingTask.built = 0
    vpt.tools.cli.train_main()
    assert CountingTask.built == 1
    assert json.loads((run / "results.json").read_text())["task"] == "test_registry.CountingTask"


def test_dataset_formats_and_detectors_share_the_registry():
    from vpt.data import DATASET_BUILDERS, register_dataset_format
    from vpt.detection import DETECTORS

    assert "imagefolder" in DATASET_BUILDERS and DETECTORS.names() == ("faster_rcnn", "retinanet", "fcos")
    with pytest.raises(vpt.ConfigError, match="unknown detector 'retinannet'.*did you mean 'retinanet'"):
        raise DETECTORS.unknown("retinannet")
    register_dataset_format("toy_format", lambda spec: None)
    try:
        assert DATASET_BUILDERS.get("toy_format")(None) is None
    finally:
        DATASET_BUILDERS.unregister("toy_format")


def test_a_builtin_module_that_fails_to_import_is_its_import_error(tmp_path, monkeypatch):
    """A broken install (a built-in's dependency missing) reads as that ImportError, not as "unknown widget"."""
    (tmp_path / "vpt_test_broken_builtin.py").write_text("import a_module_that_does_not_exist_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("widget", builtins=("json", "vpt_test_broken_builtin"))
    reg.register(1, "known")
    for _ in range(2):  # the next lookup raises it again
        with pytest.raises(ModuleNotFoundError, match="a_module_that_does_not_exist_xyz"):
            reg.get("unknown")
    with pytest.raises(ModuleNotFoundError, match="a_module_that_does_not_exist_xyz"):
        reg.names()
    assert reg.get("known") == 1  # a registered name needs no built-ins
