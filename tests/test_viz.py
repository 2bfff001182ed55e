"""vpt.viz: the numbers behind the pictures (attention shares against a hand computation, the prompt image against
mean/std arithmetic, gallery predictions against the model) and the PNG files themselves."""
import numpy as np
import pytest
import torch
from PIL import Image

import vpt
from vpt import viz
from vpt.errors import ConfigError

from conftest import tiny_vit


def hand_class_token_shares(model, images):
    """The prompted forward written out (VPT: insert at the first prompted layer, replace at later ones, carry the
    previous prompt outputs through layers without prompts) and softmax(q k^T / sqrt(d)) per head by hand."""
    vit, prompts = model.backbone.model, model.token_prompts
    x = vit._pos_embed(vit.patch_embed(images))  # [class, patches] + positions
    grid, current, rows = x.shape[1], 0, []
    for layer, block in enumerate(vit.blocks):
        if prompts is not None and layer in prompts.layers:
            fresh = prompts.embeddings[prompts.layers.index(layer)].expand(len(images), -1, -1)
            x = torch.cat([x[:, :1], fresh, x[:, 1 + current:]], dim=1)
            current = fresh.shape[1]
        normed = block.norm1(x)
        b, n, d = normed.shape
        heads = block.attn.num_heads
        qkv = (normed @ block.attn.qkv.weight.T + block.attn.qkv.bias).reshape(b, n, 3, heads, d // heads)
        q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
        weights = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, dim=-1)[:, :, 0]
        prompt_count = n - grid
        rows.append([weights[..., :1].sum(-1).mean().item(), weights[..., 1:1 + prompt_count].sum(-1).mean().item(),
                     weights[..., 1 + prompt_count:].sum(-1).mean().item()])
        x = block(x)
    return np.asarray(rows)


@pytest.mark.parametrize("method, depth", [("deep", None), ("shallow", None), ("deep", [1, 3]), ("linear", None)])
def test_class_token_attention_matches_a_hand_computation(method, depth):
    model = vpt.PromptedModel(tiny_vit(), prompt=method, length=3, depth=depth, num_classes=4).eval()
    images = torch.randn(2, 3, 32, 32)
    shares = viz.class_token_attention(model, images)
    assert shares.shape == (4, 3)
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(shares, hand_class_token_shares(model, images), atol=1e-5)
    # no prompt share before the first prompted layer; from there on, prompts inserted, replaced or carried
    first = {"linear": 4, "deep": 0 if depth is None else depth[0], "shallow": 0}[method]
    assert (shares[:first, 1] == 0).all() and (shares[first:, 1] > 0).all()
    assert model.backbone.fast_path is True  # restored after the plain-path pass


def test_pixel_prompt_is_denormalised_with_the_backbones_mean_and_std():
    model = vpt.PromptedModel(tiny_vit(), prompt="pad", size=4, num_classes=4)
    mean, std = np.asarray(model.data_config["mean"]), np.asarray(model.data_config["std"])
    with torch.no_grad():
        model.pixel_prompt.pad_up.fill_(0.25)
        model.pixel_prompt.pad_left.fill_(-100.0)  # far below black: clipped to 0
    image = viz.pixel_prompt_image(model)
    assert image.shape == (32, 32, 3)
    np.testing.assert_allclose(image[0, 10], 0.25 * std + mean, atol=1e-6)
    np.testing.assert_allclose(image[10, 0], 0.0)
    np.testing.assert_allclose(image[16, 16], mean, atol=1e-6)  # no prompt inside the frame: the mean colour
    images = torch.zeros(2, 3, 32, 32)
    np.testing.assert_allclose(viz.prompted_images(model, images)[1], image, atol=1e-6)
    with pytest.raises(ConfigError, match="pad, patch or random_patch"):
        viz.pixel_prompt_image(vpt.PromptedModel(tiny_vit(), prompt="deep", num_classes=4))


def _png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_figures_are_written_as_png(tmp_path):
    model = vpt.PromptedModel(tiny_vit(), prompt="pad", size=4, num_classes=4)
    images = torch.randn(3, 3, 32, 32)
    width, _ = _png_size(viz.plot_pixel_prompt(model, tmp_path / "prompt.png", images=images))
    alone, _ = _png_size(viz.plot_pixel_prompt(model, tmp_path / "alone.png"))
    assert width > 3 * alone  # the prompt and three prompted images side by side
    deep = vpt.PromptedModel(tiny_vit(), prompt="deep", length=2, num_classes=4)
    path = viz.plot_class_token_attention(viz.class_token_attention(deep, images), tmp_path / "attention.png")
    assert _png_size(path)[0] > 100 and not list(tmp_path.glob(".*.tmp"))  # atomic: no temp file left


def test_gallery_titles_predictions_against_true_labels(tmp_path):
    model = vpt.PromptedModel(tiny_vit(), prompt="deep", length=2, num_classes=3, class_names=["cat", "dog", "owl"])
    images, labels = torch.randn(10, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    gallery = viz.plot_prediction_gallery(model, images, labels, tmp_path / "gallery.png", columns=4)
    expected = model.eval()(images).argmax(-1).tolist()
    assert gallery.predictions == expected and gallery.labels == labels.tolist()
    assert gallery.titles[3] == f"{['cat', 'dog', 'owl'][expected[3]]} / cat"
    assert gallery.accuracy == pytest.approx(np.mean(np.asarray(expected) == labels.numpy()))
    width, height = _png_size(gallery.path)
    assert width > height  # 4 columns, 3 rows of small panels
