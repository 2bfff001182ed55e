import math

import pytest
import torch

from vpt.detection.model import PromptedDetector
from vpt.errors import ConfigError, PromptFileError, UnknownNameError
from vpt.model import PromptedModel

# per kind: a small box head for Faster R-CNN, and every candidate kept so an untrained model returns boxes
OPTIONS = {"faster_rcnn": dict(representation_size=32, box_score_thresh=0.0),
           "retinanet": dict(score_thresh=0.0), "fcos": dict(score_thresh=0.0)}
SIZES = [(64, 64), (48, 96)]  # (H, W): one batch, two sizes


def _batch():
    images = [torch.rand(3, h, w) for h, w in SIZES]
    targets = [{"boxes": torch.tensor([[8.0, 10.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[60.0, 4.0, 90.0, 30.0], [5.0, 5.0, 20.0, 40.0]]),
                "labels": torch.tensor([3, 2])}]
    return images, targets


def _detector(encoder, kind="faster_rcnn", **kwargs):
    return PromptedDetector(encoder, 3, kind, pyramid_channels=32, **{**OPTIONS[kind], **kwargs})


@pytest.mark.parametrize("kind", list(OPTIONS))
def test_train_step_moves_prompts_not_the_backbone(make_encoder, kind):
    encoder = make_encoder()
    detector = _detector(encoder, kind).train()
    assert not encoder.backbone.training and detector.pyramid.training  # frozen encoder stays in eval mode
    frozen = {k: v.clone() for k, v in encoder.backbone.state_dict().items()}
    prompts = encoder.token_prompts.embeddings.detach().clone()
    optimizer = torch.optim.SGD(detector.trainable_parameters(), lr=0.1)
    images, targets = _batch()
    losses = detector(images, targets)
    assert losses and all(math.isfinite(v.item()) for v in losses.values()), losses
    sum(losses.values()).backward()
    assert encoder.token_prompts.embeddings.grad.abs().sum() > 0
    assert all(p.grad is None for p in encoder.backbone.parameters())
    optimizer.step()
    assert all(torch.equal(v, frozen[k]) for k, v in encoder.backbone.state_dict().items())
    assert not torch.equal(encoder.token_prompts.embeddings, prompts)


@pytest.mark.parametrize("kind", list(OPTIONS))
def test_eval_returns_boxes_in_each_images_own_pixels(make_encoder, kind):
    detector = _detector(make_encoder(), kind).eval()
    with torch.no_grad():
        outputs = detector(_batch()[0])
    for output, (height, width) in zip(outputs, SIZES):
        boxes = output["boxes"]
        assert boxes.shape[0] > 0 and boxes.shape[1] == 4
        assert output["labels"].min() >= 1 and output["labels"].max() <= 3
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    # the 96-wide image's boxes reach past x=64, which padded batch coordinates of a 64 x 64 input never would
    assert outputs[1]["boxes"][:, 2].max() > 70


def test_trainable_state_round_trip_reproduces_predictions(make_encoder, tmp_path):
    from safetensors.torch import load_file, save_file

    trained = _detector(make_encoder()).train()
    images, targets = _batch()
    optimizer = torch.optim.SGD(trained.trainable_parameters(), lr=0.1)
    sum(trained(images, targets).values()).backward()
    optimizer.step()
    save_file(trained.trainable_state_dict(), str(tmp_path / "detector.safetensors"))

    torch.manual_seed(123)  # other initial prompts, pyramid and heads
    fresh = _detector(make_encoder(seed=0))
    trained.eval(), fresh.eval()
    with torch.no_grad():
        expected = trained(images)
        assert not torch.equal(fresh(images)[0]["scores"], expected[0]["scores"])
        fresh.load_trainable_state_dict(load_file(str(tmp_path / "detector.safetensors")))
        got = fresh(images)
    for a, b in zip(expected, got):
        assert all(torch.equal(a[key], b[key]) for key in ("boxes", "labels", "scores"))


def test_trainable_state_names_its_parts(make_encoder):
    keys = set(_detector(make_encoder()).trainable_state_dict())
    assert {k.split(".")[0] for k in keys} == {"encoder", "pyramid", "detector"}
    assert any(k.startswith("encoder.token_prompts.") for k in keys)
    assert any(k.startswith("detector.roi_heads.") for k in keys) and any(k.startswith("detector.rpn.") for k in keys)
    assert not any(k.startswith("encoder.backbone.") or k.startswith("detector.backbone") for k in keys)
    frozen_baseline = set(_detector(make_encoder(prompt="linear")).trainable_state_dict())
    assert frozen_baseline == {k for k in keys if not k.startswith("encoder.")}
    full = _detector(make_encoder(prompt="full")).train()
    assert any(k.startswith("encoder.backbone.") for k in full.trainable_state_dict())
    assert full.encoder.backbone.training  # full fine-tuning trains the encoder, dropout and all


def test_load_refuses_a_state_that_does_not_fit(make_encoder):
    detector = _detector(make_encoder())
    state = dict(detector.trainable_state_dict())
    state.pop("encoder.token_prompts.embeddings")
    state["pyramid.levels.0.0.0.bias"] = torch.zeros(5)
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(PromptFileError) as caught:
        detector.load_trainable_state_dict(state)
    message = str(caught.value)
    assert "missing encoder.token_prompts.embeddings" in message and "unexpected extra.weight" in message
    assert "pyramid.levels.0.0.0.bias: saved (5,), model (24,)" in message and "build the detector with the settings" in message


def test_size_divisor_and_anchor_strides_follow_the_patch(make_encoder):
    detector = _detector(make_encoder())
    assert detector.config["strides"] == [2, 4, 8, 16, 32] and detector.config["fixed_size"] is None
    transform = detector.detector.transform
    assert transform.size_divisible == 32 and transform.min_size == (64,) and transform.max_size == 107
    sizes = detector.detector.rpn.anchor_generator.sizes
    assert sizes == ((16,), (32,), (64,), (128,), (256,))  # 8 x stride, as torchvision's 32..512 for 4..64
    assert detector.detector.roi_heads.box_roi_pool.featmap_names == ["0", "1", "2", "3"]


@pytest.mark.parametrize("variant", ["timm_fixed_size", "pixel_prompt", "open_clip"])
def test_fixed_size_encoders_get_resized_inputs(make_encoder, variant):
    if variant == "timm_fixed_size":
        encoder = make_encoder(dynamic=False)
    elif variant == "pixel_prompt":
        encoder = make_encoder(prompt="pad", size=4)
    else:
        from open_clip.transformer import VisionTransformer

        tower = VisionTransformer(image_size=32, patch_size=8, width=48, layers=1, heads=3, mlp_ratio=2.0,
                                  output_dim=16)
        encoder = PromptedModel(tower, prompt="deep", length=2, num_classes=0)
    side = encoder.input_size[1]
    detector = _detector(encoder, "fcos").eval()
    assert detector.config["fixed_size"] == [side, side]
    with torch.no_grad():
        outputs = detector(_batch()[0])
    for output, (height, width) in zip(outputs, SIZES):
        boxes = output["boxes"]
        assert len(boxes) and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()


def test_bad_settings_are_config_errors(make_encoder):
    encoder = make_encoder()
    with pytest.raises(UnknownNameError, match="unknown detector 'yolo'"):
        PromptedDetector(encoder, 3, "yolo")
    with pytest.raises(ConfigError, match="multiple of 32"):
        PromptedDetector(encoder, 3, "fcos", pyramid_channels=16)
    with pytest.raises(ConfigError, match="num_classes=0"):
        import timm

        PromptedDetector(PromptedModel(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8,
                                                         embed_dim=48, depth=1, num_heads=3, num_classes=0),
                                       prompt="deep", num_classes=3), 3)
    with pytest.raises(ConfigError, match="patch size 14 gives pyramid strides"):
        PromptedDetector(make_encoder(patch_size=14, img_size=56), 3)
