"""CLIP prompt learning (CoOp, CoCoOp, MaPLe, IVLP) equals the official code, step by step.

CI cannot fetch the official repositories, so ``reference_logits`` below follows their code's steps, written
straightforwardly: KaiyangZhou/CoOp ``trainers/coop.py`` / ``cocoop.py`` (PromptLearner + TextEncoder) and
muzairkhattak/multimodal-prompt-learning ``trainers/maple.py`` / ``independentVL.py`` with the prompted blocks of
its ``clip/model.py`` (``ResidualAttentionBlock_MaPLe`` / ``_IVLP``, ``VisionTransformer_MaPLe``): vision prompts
appended after the patch tokens *before* ``ln_pre``, deeper ones replacing the last ``n_ctx`` rows; text prompts at
rows 1..n_ctx, deeper ones replacing them. Identical random-init (tiny) open_clip weights, logits within 1e-5.
"""
import pytest
import torch
import torch.nn.functional as F

import vpt
from vpt.errors import ConfigError, PromptFileError

NAMES = ["cat", "golden retriever", "airplane", "sea_lion"]


def tiny_clip(text_layers=4, vision_layers=4, seed=0):
    import open_clip

    torch.manual_seed(seed)
    return open_clip.CLIP(embed_dim=32, vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=vision_layers,
                                                        head_width=32),
                          text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=text_layers)).eval()


@pytest.fixture(scope="module")
def clip():
    return tiny_clip()


# ---- the reference: the official code's steps --------------------------------------------------------------
def block_ref(block, x, attn_mask=None):
    """CLIP's ResidualAttentionBlock: x + attn(ln_1(x)); x + mlp(ln_2(x)) (x batch-first, as open_clip's attn)."""
    h = block.ln_1(x)
    x = x + block.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
    return x + block.mlp(block.ln_2(x))


def text_encoder_ref(clip, prompts, tokenized, deep_text=(), n_ctx=0):
    x = prompts + clip.positional_embedding
    for i, block in enumerate(clip.transformer.resblocks):
        if i > 0 and i - 1 < len(deep_text):  # MaPLe / IVLP: replace rows 1..n_ctx with this layer's prompts
            x = torch.cat([x[:, :1], deep_text[i - 1].expand(x.shape[0], -1, -1), x[:, 1 + n_ctx:]], dim=1)
        x = block_ref(block, x, clip.attn_mask)
    x = clip.ln_final(x)
    return x[torch.arange(x.shape[0]), tokenized.argmax(dim=-1)] @ clip.text_projection


def image_encoder_ref(clip, images, first=None, deep=()):
    v = clip.visual
    x = v.conv1(images).flatten(2).permute(0, 2, 1)
    x = torch.cat([v.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], dim=1) + v.positional_embedding
    n = 0
    if first is not None:  # prompts appended after the patch tokens, before ln_pre
        n = first.shape[0]
        x = torch.cat([x, first.expand(x.shape[0], -1, -1)], dim=1)
    x = v.ln_pre(x)
    for i, block in enumerate(v.transformer.resblocks):
        if i > 0 and i - 1 < len(deep):  # replace the previous layer's prompt outputs (the last n rows)
            x = torch.cat([x[:, :x.shape[1] - n], deep[i - 1].expand(x.shape[0], -1, -1)], dim=1)
        x = block_ref(block, x)
    return v.ln_post(x[:, 0]) @ v.proj


def prompt_learner_ref(clip, names, n_ctx, prompt_prefix, ctx, position="end"):
    """CoOp's PromptLearner.__init__ + forward: the (n_cls, 77, D) prompt embeddings for the context ``ctx``."""
    import open_clip
    from open_clip.tokenizer import _tokenizer

    names = [name.replace("_", " ") for name in names]
    name_lens = [len(_tokenizer.encode(name)) for name in names]
    tokenized = torch.cat([open_clip.tokenize(prompt_prefix + " " + name + ".") for name in names])
    embedding = clip.token_embedding(tokenized)
    prefix, suffix = embedding[:, :1], embedding[:, 1 + n_ctx:]
    if ctx.dim() == 2:
        ctx = ctx.unsqueeze(0).expand(len(names), -1, -1)
    if position == "end":
        return torch.cat([prefix, ctx, suffix], dim=1), tokenized
    prompts, half = [], n_ctx // 2
    for i in range(len(names)):
        class_i, suffix_i = suffix[i:i + 1, :name_lens[i]], suffix[i:i + 1, name_lens[i]:]
        if position == "middle":
            parts = [prefix[i:i + 1], ctx[i:i + 1, :half], class_i, ctx[i:i + 1, half:], suffix_i]
        else:
            parts = [prefix[i:i + 1], class_i, ctx[i:i + 1], suffix_i]
        prompts.append(torch.cat(parts, dim=1))
    return torch.cat(prompts, dim=0), tokenized


@torch.no_grad()
def reference_logits(clip, head, method, images, names, prompt_prefix):
    """The official CustomCLIP.forward of ``method``, on the learned tensors of vpt's ``head``."""
    n_ctx = head.ctx.shape[-2]
    position = head.options.class_token_position
    prompts, tokenized = prompt_learner_ref(clip, names, n_ctx, prompt_prefix, head.ctx, position)
    scale = clip.logit_scale.exp()
    deep_text = list(head.deep_text) if head.deep_text is not None else []
    if method == "cocoop":
        image = F.normalize(clip.visual(images), dim=-1)
        bias = head.meta_net(image).unsqueeze(1)
        logits = []
        for ctx_i, image_i in zip(head.ctx.unsqueeze(0) + bias, image):  # one context per image, every class
            prompts_i, _ = prompt_learner_ref(clip, names, n_ctx, prompt_prefix, ctx_i)
            text = F.normalize(text_encoder_ref(clip, prompts_i, tokenized), dim=-1)
            logits.append(scale * image_i @ text.t())
        return torch.stack(logits)
    if method == "maple":
        first = head.couplings[0](head.ctx)  # proj(ctx) (shared_ctx)
        deep_vision = [layer(p) for layer, p in zip(head.couplings[1:], deep_text)]  # compound projections
        image = image_encoder_ref(clip, images, first, deep_vision)
    elif method == "ivlp":
        image = image_encoder_ref(clip, images, head.vision[0], list(head.vision[1:]))
    else:
        image = clip.visual(images)
    text = text_encoder_ref(clip, prompts, tokenized, deep_text, n_ctx)
    return scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()


def randomise(model):
    """Move every learned tensor away from its init, so equality tests all of them."""
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))


CASES = [
    ("coop", {"class_token_position": "end"}, "X " * 16),
    ("coop", {"class_token_position": "middle"}, "X " * 16),
    ("coop", {"class_token_position": "front"}, "X " * 16),
    ("coop", {"class_token_position": "end", "csc": True}, "X " * 16),
    ("coop", {"class_token_position": "middle", "csc": True, "n_ctx": 5}, "X " * 5),
    ("coop", {"class_token_position": "front", "csc": True, "n_ctx": 3}, "X " * 3),
    ("coop", {"ctx_init": "a photo of a"}, "a photo of a"),
    ("cocoop", {}, "a photo of a"),
    ("cocoop", {"ctx_init": "", "n_ctx": 8}, "X " * 8),
    ("maple", {"depth": 1}, "a photo of a"),
    ("maple", {"depth": 2}, "a photo of a"),
    ("maple", {"depth": 4}, "a photo of a"),
    ("maple", {"depth": 3, "n_ctx": 4, "ctx_init": "a photo of a"}, "a photo of a"),
    ("maple", {"depth": 3, "n_ctx": 6}, "X " * 6),  # n_ctx > 4: random init, as the official code
    ("ivlp", {"depth": 1}, "a photo of a"),
    ("ivlp", {"depth": 4, "text_depth": 2, "vision_length": 3}, "a photo of a"),
    ("ivlp", {"depth": 3, "n_ctx": 2}, "a photo of a"),
]


@pytest.mark.parametrize("method,options,prefix", CASES, ids=[f"{m}-{o}" for m, o, _ in CASES])
def test_logits_equal_the_official_code(clip, method, options, prefix):
    model = vpt.PromptedModel(clip, prompt=method, class_names=NAMES, **options).eval()
    randomise(model)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ours = model(images)
    expected = reference_logits(clip, model.head, method, images, NAMES, prefix.strip())
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_context_init_from_words(clip):
    import open_clip

    embedding = clip.token_embedding(open_clip.tokenize("a photo of a"))[0]
    coop = vpt.PromptedModel(clip, prompt="coop", class_names=NAMES, ctx_init="a_photo of a")
    assert coop.head.ctx.shape == (4, 32)  # the word count sets n_ctx
    torch.testing.assert_close(coop.head.ctx.detach(), embedding[1:5].detach())
    maple = vpt.PromptedModel(clip, prompt="maple", class_names=NAMES, depth=2)  # n_ctx 2: the first 2 words
    torch.testing.assert_close(maple.head.ctx.detach(), embedding[1:3].detach())
    # ... and "of a" stay fixed words of the prompt: [SOS] [ctx ctx] of a <class> . [EOS]
    assert maple.head.token_suffix.shape[1] == 77 - 3
    torch.testing.assert_close(maple.head.token_suffix[0, :2], embedding[3:5].detach())
    random = vpt.PromptedModel(clip, prompt="coop", class_names=NAMES)
    assert abs(float(random.head.ctx.detach().std()) - 0.02) < 0.004  # N(0, 0.02)


def test_trainable_counts_equal_the_official_code_on_vit_b16():
    import open_clip

    clip = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    counts = {m: vpt.PromptedModel(clip, prompt=m, class_names=NAMES).param_summary() for m in
              ("coop", "cocoop", "maple", "ivlp")}
    assert {m: c["trainable"] for m, c in counts.items()} == {
        "coop": 16 * 512,  # 8,192
        "cocoop": 4 * 512 + (512 * 32 + 32) + (32 * 512 + 512),  # 35,360
        "maple": 2 * 512 + 9 * (512 * 768 + 768) + 8 * 2 * 512,  # 3,555,072
        "ivlp": 9 * 4 * 512 + 9 * 4 * 768,  # 46,080
    }
    assert all(c["prompt"] == c["trainable"] and c["head"] == 0 and c["backbone"] == 0 for c in counts.values())


def test_text_encoder_wraps_open_clip_encode_text(clip):
    """With the context set to the words' own embeddings, the prompted text tower is CLIP's encode_text."""
    import open_clip

    model = vpt.PromptedModel(clip, prompt="coop", class_names=NAMES, ctx_init="a photo of a")
    with torch.no_grad():
        ours = model.head.text_features()
        text = F.normalize(clip.encode_text(open_clip.tokenize([f"a photo of a {n.replace('_', ' ')}." for n in NAMES])),
                           dim=-1)
    torch.testing.assert_close(ours, text, rtol=1e-5, atol=1e-5)


def test_text_tower_runs_once_per_class_set(clip, monkeypatch):
    model = vpt.PromptedModel(clip, prompt="maple", class_names=NAMES, depth=2)
    calls = []
    original = model.head.text_encoder.forward
    monkeypatch.setattr(model.head.text_encoder, "forward", lambda p, *a, **k: calls.append(p.shape[0]) or original(p, *a, **k))
    model(torch.randn(6, 3, 32, 32)).sum().backward()
    assert calls == [len(NAMES)]  # one pass over the 4 class prompts for the batch of 6
    cocoop = vpt.PromptedModel(clip, prompt="cocoop", class_names=NAMES)
    calls.clear()
    original_c = cocoop.head.text_encoder.forward
    monkeypatch.setattr(cocoop.head.text_encoder, "forward", lambda p, *a, **k: calls.append(p.shape[0]) or original_c(p, *a, **k))
    cocoop(torch.randn(6, 3, 32, 32))
    assert calls == [6 * len(NAMES)]  # CoCoOp: every image's own context, batched in one pass


def test_evaluation_runs_the_text_tower_once_until_the_prompts_change(clip, monkeypatch):
    model = vpt.PromptedModel(clip, prompt="coop", class_names=NAMES).eval()
    calls = []
    original = model.head.text_encoder.forward
    monkeypatch.setattr(model.head.text_encoder, "forward", lambda p, *a, **k: calls.append(1) or original(p, *a, **k))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        first = model(images)
        assert torch.equal(model(images), first) and len(calls) == 1  # cached across batches
        model.head.ctx.add_(torch.randn_like(model.head.ctx))  # an optimiser step (or a loaded prompt file) changes the context in place
        assert not torch.allclose(model(images), first) and len(calls) == 2
    model(images)  # with gradients (training): always fresh
    assert len(calls) == 3


def test_only_prompts_train(clip):
    model = vpt.PromptedModel(clip, prompt="ivlp", class_names=NAMES, depth=2).train()
    before = {k: v.clone() for k, v in clip.state_dict().items()}
    opt = torch.optim.SGD(model.trainable_parameters(), lr=1.0)
    loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in clip.state_dict().items())
    assert not model.head.text_encoder.training and not model.backbone.training
    assert set(model.trainable_state_dict()) == {"head.ctx", "head.deep_text", "head.vision"}


# ---- prompt files -------------------------------------------------------------------------------------------
def test_prompt_file_holds_the_learned_tensors_and_class_names(clip, tmp_path):
    model = vpt.PromptedModel(clip, prompt="maple", class_names=NAMES, depth=3).eval()
    randomise(model)
    model.save_prompt(tmp_path / "p")
    manifest, tensors = vpt.read_prompt_file(tmp_path / "p")
    assert set(tensors) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any("token_prefix" in k or "text_encoder" in k for k in tensors)
    assert manifest["class_names"] == NAMES and manifest["head"]["kind"] == "clip_prompt"
    images = torch.randn(2, 3, 32, 32)
    loaded = vpt.PromptedModel.from_prompt_file(tmp_path / "p", backbone=clip).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))
    # the same file on a model of other classes: one clear error, naming the way to reuse it on purpose
    other = vpt.PromptedModel(clip, prompt="maple", class_names=["dog", "car", "ship", "tree"], depth=3)
    with pytest.raises(PromptFileError, match="trained for 4 classes.*class_names="):
        other.load_prompt(tmp_path / "p")
    fewer = vpt.PromptedModel(clip, prompt="maple", class_names=["dog", "car"], depth=3)
    with pytest.raises(PromptFileError, match="trained for 4 classes"):
        fewer.load_prompt(tmp_path / "p")
    # base-to-novel: the generic context applied to new class names, when asked for
    novel = vpt.PromptedModel.from_prompt_file(tmp_path / "p", backbone=clip, class_names=["dog", "car"]).eval()
    assert novel(images).shape == (2, 2) and novel.class_names == ["dog", "car"]
    torch.testing.assert_close(novel.head.ctx, model.head.ctx)


def test_class_specific_context_cannot_move_to_other_classes(clip, tmp_path):
    vpt.PromptedModel(clip, prompt="coop", class_names=NAMES, csc=True).save_prompt(tmp_path / "csc")
    with pytest.raises(ConfigError, match="class-specific contexts"):
        vpt.PromptedModel.from_prompt_file(tmp_path / "csc", backbone=clip, class_names=["dog"])


def test_prompt_file_refuses_another_text_tower(clip, tmp_path):
    model = vpt.PromptedModel(clip, prompt="coop", class_names=NAMES)
    model.save_prompt(tmp_path / "p")
    other = tiny_clip(seed=1)
    other.visual.load_state_dict(clip.visual.state_dict())  # same image tower, other text weights
    with pytest.raises(PromptFileError, match="another CLIP text tower"):
        vpt.PromptedModel.from_prompt_file(tmp_path / "p", backbone=other)


# ---- bad input: one ConfigError naming the fix ------------------------------------------------------------------
def test_missing_or_miscounted_class_names(clip):
    with pytest.raises(ConfigError, match="builds its text prompts from the class names.*class_names="):
        vpt.PromptedModel(clip, prompt="coop")
    with pytest.raises(ConfigError, match="4 class names for num_classes=3"):
        vpt.PromptedModel(clip, prompt="coop", class_names=NAMES, num_classes=3)


def test_non_clip_backbone(tiny_vit_factory, clip):
    with pytest.raises(ConfigError, match="has no CLIP text tower; use a CLIP backbone.*backbone=clip_vit_b16"):
        vpt.PromptedModel(tiny_vit_factory(), prompt="coop", class_names=NAMES)
    with pytest.raises(ConfigError, match="has no CLIP text tower"):  # an image tower without its text tower
        vpt.PromptedModel(clip.visual, prompt="maple", class_names=NAMES)


def test_context_longer_than_the_context_length(clip):
    with pytest.raises(ConfigError, match=r"prompt.n_ctx=80 does not fit the text tower's context length 77.*n_ctx<="):
        vpt.PromptedModel(clip, prompt="coop", class_names=NAMES, n_ctx=80)
    with pytest.raises(ConfigError, match=r"need 7[0-9] tokens, more than the text tower's context length 77.*n_ctx<="):
        vpt.PromptedModel(clip, prompt="coop", class_names=NAMES, n_ctx=73)


def test_other_bad_options(clip):
    with pytest.raises(ConfigError, match="does not fit.*4 text and 4 image layers; set prompt.depth<=4"):
        vpt.PromptedModel(clip, prompt="maple", class_names=NAMES)  # default J = 9 on a 4-layer tower
    with pytest.raises(ConfigError, match="class_token_position='side'; valid: end, middle, front"):
        vpt.PromptConfig(method="coop", class_token_position="side")
    with pytest.raises(ConfigError, match=r"prompt=maple has no option\(s\) \[.csc.\]"):
        vpt.PromptConfig(method="maple", csc=True)
    with pytest.raises(ConfigError, match="fewer than prompt.n_ctx=4"):
        vpt.PromptedModel(clip, prompt="ivlp", class_names=NAMES, ctx_init="a photo", depth=2)
    with pytest.raises(ConfigError, match="builds its own head.*task=classification"):
        head = vpt.ZeroShotHead(torch.randn(4, 32))
        vpt.PromptedModel(clip, prompt="coop", class_names=NAMES, head=head)


# ---- the offline quickstart through vpt-train -------------------------------------------------------------------
@pytest.mark.parametrize("method", ["coop", "cocoop", "maple", "ivlp"])
def test_quickstart_trains_a_step_through_vpt_train(method, tmp_path, monkeypatch):
    import json
    import sys

    import vpt.tools.cli

    run = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", [
        "vpt-train", "experiment=coop_quickstart", f"prompt={method}", "logger=none", "trainer.epochs=1",
        "trainer.limit_train_batches=1", "trainer.limit_eval_batches=1", "trainer.batch_size=4",
        "trainer.eval_batch_size=8", "trainer.progress_bar=false", "trainer.cpu_threads=1", f"hydra.run.dir={run}"])
    vpt.tools.cli.train_main()
    results = json.loads((run / "results.json").read_text())
    assert results["method"] == method and results["status"] == "completed"
    assert results["prompt_params"] == results["trainable_params"] > 0
    manifest, tensors = vpt.read_prompt_file(run / "last")
    assert manifest["class_names"] == ["5", "6", "7", "8", "9"] and all(k.startswith("head.") for k in tensors)
    assert sum(t.numel() for t in tensors.values()) == results["prompt_params"]


def test_the_bank_serves_coop_and_refuses_cocoop(clip, tmp_path):
    model = randomise_eval(vpt.PromptedModel(clip, prompt="coop", class_names=NAMES))
    model.save_prompt(tmp_path / "coop")
    bank = vpt.PromptBank(clip)
    bank.add_task("coop", tmp_path / "coop")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(bank(images, ["coop"] * 2), model(images), rtol=0, atol=1e-5)
    cocoop = vpt.PromptedModel(clip, prompt="cocoop", class_names=NAMES)
    cocoop.save_prompt(tmp_path / "cocoop")
    with pytest.raises(ConfigError, match="conditions its text context on each image.*run it alone"):
        bank.add_task("cocoop", tmp_path / "cocoop")
    with pytest.raises(ConfigError, match="text tower runs per image"):
        bank.add_task("cocoop", cocoop)


def randomise_eval(model):
    randomise(model)
    return model.eval()


# ---- base-to-novel ------------------------------------------------------------------------------------------------
def test_subsample_classes_splits_base_and_new():
    from vpt.data import build_data

    config = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear",
              "crop_pct": 1.0}
    names = {which: build_data({"name": "digits", "subsample_classes": which}, config).class_names
             for which in ("all", "base", "new")}
    assert names == {"all": [str(i) for i in range(10)], "base": ["0", "1", "2", "3", "4"], "new": ["5", "6", "7", "8", "9"]}
    # after data.classes (digits 5-9): ceil(5 / 2) = 3 base classes, relabelled 0..2
    base = build_data({"name": "digits", "classes": [5, 6, 7, 8, 9], "subsample_classes": "base"}, config)
    new = build_data({"name": "digits", "classes": [5, 6, 7, 8, 9], "subsample_classes": "new"}, config)
    assert base.class_names == ["5", "6", "7"] and new.class_names == ["8", "9"]
    assert {int(y) for _, y in new.test} == {0, 1}
    with pytest.raises(ConfigError, match="data.subsample_classes must be one of all, base, new"):
        build_data({"name": "digits", "subsample_classes": "novel"}, config)


def test_vpt_eval_applies_a_context_to_the_evaluated_classes(clip, tmp_path):
    from types import SimpleNamespace

    from vpt.tasks import get_task

    model = vpt.PromptedModel(clip, prompt="coop", class_names=["5", "6", "7"]).eval()
    model.save_prompt(tmp_path / "base")
    task = get_task("classification")
    assert task.model_for_data(model, SimpleNamespace(class_names=["5", "6", "7"]), tmp_path / "base") is model
    novel = task.model_for_data(model, SimpleNamespace(class_names=["8", "9"]), tmp_path / "base")
    assert novel.class_names == ["8", "9"] and novel.head.out_features == 2
    torch.testing.assert_close(novel.head.ctx, model.head.ctx)
    assert novel(torch.randn(2, 3, 32, 32)).shape == (2, 2)


def test_zhou_split_reader(tmp_path):
    import json

    from PIL import Image

    from vpt.data import build_data

    (tmp_path / "images").mkdir()
    rows = {}
    for split, count in (("train", 4), ("val", 2), ("test", 4)):
        rows[split] = []
        for i in range(count):
            label = i % 3
            name = f"{split}_{i}.png"
            Image.new("RGB", (8, 8), (label * 80, 0, 0)).save(tmp_path / "images" / name)
            rows[split].append([name, label, ["abyssinian", "golden_retriever", "pug"][label]])
    (tmp_path / "split_zhou_OxfordPets.json").write_text(json.dumps(rows))
    config = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear",
              "crop_pct": 1.0}
    data = build_data({"name": "zhou_split", "root": str(tmp_path)}, config)
    assert data.class_names == ["abyssinian", "golden_retriever", "pug"]
    assert (len(data.train), len(data.val), len(data.test)) == (4, 2, 4)
    base = build_data({"name": "zhou_split", "root": str(tmp_path), "subsample_classes": "base"}, config)
    assert base.class_names == ["abyssinian", "golden_retriever"]
    (tmp_path / "images" / "test_3.png").unlink()
    with pytest.raises(ConfigError, match=r"1 images listed in split_zhou_OxfordPets.json are missing.*test_3.png"
                                          r".*data.image_dir="):
        build_data({"name": "zhou_split", "root": str(tmp_path)}, config)
    with pytest.raises(ConfigError, match="data.split_file"):
        build_data({"name": "zhou_split", "root": str(tmp_path / "images")}, config)


def test_base2new_preset_carries_the_papers_base_numbers():
    from hydra import compose, initialize_config_module

    with initialize_config_module("vpt.configs", version_base="1.3"):
        cfg = compose("train", overrides=["experiment=base2new_maple", "output_dir=/tmp/x"])
    assert cfg.prompt.method == "maple" and cfg.data.subsample_classes == "base" and cfg.data.num_shots == 16
    assert cfg.optim.base_lr * cfg.trainer.batch_size / 256 == pytest.approx(0.0035)
    assert {m: tuple(cfg.paper[m].values()) for m in vpt.methods.method_names("clip")} == \
        {"coop": (82.69, 63.22, 71.66), "cocoop": (80.47, 71.69, 75.83), "maple": (82.28, 75.14, 78.55),
         "ivlp": (84.21, 71.79, 77.51)}
    assert list(cfg.paper.maple) == ["test_top1", "new_top1", "hm_top1"]
