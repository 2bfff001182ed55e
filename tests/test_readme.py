"""The README's API example runs as written."""
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    code = re.search(r"<!-- readme-api -->\n```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    images, labels = torch.randn(2, 3, 224, 224), torch.tensor([1, 7])
    scope = {"loader": [(images, labels)]}
    exec(compile(code, "README.md", "exec"), scope)
    assert (tmp_path / "prompts/cifar10/prompt.safetensors").is_file()
    logits = scope["logits"]
    assert logits.shape == (2, 10)
    with torch.no_grad():
        torch.testing.assert_close(logits, scope["model"].eval()(images), rtol=0, atol=1e-5)


def test_readme_clip_example_runs():
    """The zero-shot CLIP example, with random weights for the offline suite (the README's pretrained=True)."""
    text = README.read_text()
    code = re.search(r"<!-- readme-clip -->\n```python\n(.*?)```", text, re.S).group(1)
    assert 'create_backbone("open_clip:ViT-B-32", pretrained=True)' in code
    scope = {}
    exec(compile("import vpt\n" + code.replace("pretrained=True", "pretrained=False"), "README.md", "exec"), scope)
    model = scope["model"]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "pixel_prompt.pad_up", "pixel_prompt.pad_down", "pixel_prompt.pad_left", "pixel_prompt.pad_right"}
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 2)
