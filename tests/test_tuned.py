"""One tuned-model interface (vpt.tuned): PromptedModel and DetectorModel offer the same surface to the loop and
vpt-eval, and a state or prompt file that does not fit gets the same one message from both."""
import pytest
import torch
from torch import nn

from vpt.detection import DetectorModel
from vpt.errors import PromptFileError
from vpt.model import PromptedModel
from vpt.tuned import TunedModel, TunedModule

DETECTOR = {"detector": "faster_rcnn", "min_size": 64, "max_size": 64, "pyramid_channels": 32,
            "detector_kwargs": {"representation_size": 32}}


@pytest.fixture
def build(make_encoder, tiny_vit_factory):
    """build(kind, length): a classifier on the 32 px tiny ViT, or a detector on the 64 px one; same frozen weights
    for every length (the seed)."""
    def make(kind: str, length: int = 4):
        if kind == "classifier":
            torch.manual_seed(0)
            return PromptedModel(tiny_vit_factory(), "deep", length=length, num_classes=3)
        return DetectorModel.build(make_encoder(length=length), ["a", "b", "c"], DETECTOR)

    return make


@pytest.mark.parametrize("kind", ["classifier", "detector"])
def test_both_models_are_tuned_models(build, kind):
    model = build(kind)
    assert isinstance(model, TunedModel) and isinstance(model, TunedModule)
    assert model.trainable_parameters() and len(model.trainable_state_dict()) == len(model.trainable_parameters())
    assert model.param_summary()["trainable"] == sum(p.numel() for p in model.trainable_parameters())
    assert not isinstance(nn.Linear(2, 2), TunedModel)  # the check can fail: a plain module lacks the interface


@pytest.mark.parametrize("kind", ["classifier", "detector"])
def test_a_state_that_does_not_fit_gets_the_one_message(build, kind):
    model = build(kind)
    state = dict(model.trainable_state_dict())
    renamed, reshaped = "token_prompts.embeddings", "head.bias"
    if kind == "detector":
        renamed, reshaped = "encoder.token_prompts.embeddings", "pyramid.levels.0.0.0.bias"
    shape = tuple(state[reshaped].shape)
    state["extra.weight"] = state.pop(renamed)
    state[reshaped] = torch.zeros(5)
    name = type(model).__name__
    with pytest.raises(PromptFileError) as caught:
        model.load_trainable_state_dict(state, source="saved/best")
    assert str(caught.value) == (
        f"prompt file 'saved/best' does not fit this model ({name}): missing {renamed}; unexpected extra.weight; "
        f"shape mismatch {reshaped}: saved (5,), model {shape}. "
        f"Likely fix: build the model from the file instead: {name}.from_prompt_file(path, backbone)")


@pytest.mark.parametrize("kind", ["classifier", "detector"])
def test_a_prompt_file_for_other_prompts_is_refused_naming_the_file(build, kind, tmp_path):
    path = build(kind, length=4).save_prompt(tmp_path / "best")
    other = build(kind, length=6)
    with pytest.raises(PromptFileError) as caught:
        other.load_prompt(path)
    message = str(caught.value)
    assert message.startswith(f"prompt file {str(path)!r} does not fit this model ({type(other).__name__}): "
                              "shape mismatch ") and "token_prompts.embeddings: saved (" in message
    assert f"{type(other).__name__}.from_prompt_file(path" in message
    trained = build(kind, length=4)
    with torch.no_grad():
        for param in trained.trainable_parameters():
            param.add_(1.0)  # other values than a fresh build's
    fresh = build(kind, length=4)
    assert not torch.equal(fresh.trainable_parameters()[0], trained.trainable_parameters()[0])
    loaded = fresh.load_prompt(trained.save_prompt(tmp_path / "trained")).trainable_state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in trained.trainable_state_dict().items())
