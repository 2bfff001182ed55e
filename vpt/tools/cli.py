"""Command-line entry points ``vpt-train`` and ``vpt-eval`` (Hydra apps over :mod:`vpt.engine`).

    vpt-train                                       # offline quickstart: VPT-deep on digits 5-9
    vpt-train prompt=linear                         # same experiment, another method
    vpt-train backbone=vit_b16_in21k prompt=deep prompt.length=50 data=cifar100 data.root=/data/cifar100
    vpt-train -m prompt=shallow,deep prompt.length=1,10,50
    vpt-train experiment=digits_pretrain
    vpt-eval prompt_file=outputs/deep_digits/latest/best       # the newest deep_digits run (data as trained)

Errors the user can fix (:class:`vpt.errors.VptError`) print one message and exit with status 2.
"""
from __future__ import annotations

import contextlib
import logging
import re
import sys
from importlib import resources

import hydra
from omegaconf import DictConfig, OmegaConf

from ..backbones.portable import RecordedWeightsNotFoundError
from ..errors import ConfigError, TargetWeightsUnavailableError, VptError, WeightsUnavailableError
from ..engine.sweep import in_multirun
from ..tasks import metric_setting, recorded_task, task_from_config

CONFIG_PATH = "pkg://vpt.configs"  # the packaged configs/, so the commands work from any directory
USER_ERROR_EXIT_CODE = 2
REFERENCE_IMAGE_SIZE = 224  # pixel-prompt sizes in the configs are given at this input size

# Library messages name Python arguments; say how to set them on the command line (the first match is shown)
COMMAND_LINE_HINTS = {
    RecordedWeightsNotFoundError: "on the command line: vpt-eval prompt_file=... pretrained=/path/to/the/weights/file "
                                  "(or a folder holding it)",
    TargetWeightsUnavailableError: "on the command line: backbone.pretrained=false or "
                                   "'+backbone.pretrained_cfg_overlay={file:/path/to/weights.safetensors}'",
    WeightsUnavailableError: "on the command line: backbone.pretrained=false or backbone.pretrained=/path/to/weights",
}

log = logging.getLogger(__name__)


def asset_path(name: str) -> str:
    """Path of a file shipped in ``vpt/assets`` (``${vpt_asset:digits_vit.safetensors}``)."""
    return str(resources.files("vpt") / "assets" / name)


def pixels_at(size: int, image_size: int) -> int:
    """``${vpt_pixels:30,${backbone.image_size}}``: a pixel size given at 224 px, scaled to the input size."""
    return max(1, round(int(size) * int(image_size) / REFERENCE_IMAGE_SIZE))


def smallest(*values):
    """``${vpt_min:${data.num_shots},4}``: the smallest of the values given (null ones left out; all null: null),
    CoOp's few-shot val size per class."""
    given = [int(value) for value in values if value is not None]
    return min(given) if given else None


RESOLVERS = {"vpt_asset": asset_path, "vpt_pixels": pixels_at, "vpt_min": smallest}


def register_resolvers() -> None:
    """Register vpt's OmegaConf resolvers; call it before composing vpt's configs (the commands do)."""
    for name, resolver in RESOLVERS.items():
        OmegaConf.register_new_resolver(name, resolver, replace=True)


def _search_scores_on_trained_val(cfg: DictConfig) -> bool:
    """A hyper-parameter search (not a grid) scoring on val while val is part of the training set."""
    from hydra.core.hydra_config import HydraConfig

    if not in_multirun():
        return False
    sweeper = str(HydraConfig.get().sweeper.get("_target_", ""))
    return "BasicSweeper" not in sweeper and optimized_metric(cfg).startswith("val_") \
        and bool(cfg.data.get("train_on_trainval"))


def optimized_metric(cfg: DictConfig) -> str:
    """What a sweep optimises: ``optimized_metric``, or (null) the task's primary metric on val."""
    return metric_setting(cfg.get("optimized_metric"), task_from_config(cfg.task), "val")


@contextlib.contextmanager
def exit_on_user_error(program: str):
    """Print a VptError as one line and exit 2; in a sweep, fail only this job (the sweeper records it)."""
    try:
        yield
    except VptError as error:
        if in_multirun():
            log.error("%s", error)
            raise
        print(f"{program}: error: {error}", file=sys.stderr)
        hints = [hint for kind, hint in COMMAND_LINE_HINTS.items() if isinstance(error, kind)]
        if hints:
            print(f"{program}: hint: {hints[0]}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def _train(cfg: DictConfig) -> float | None:
    from ..engine import train  # imported here so config errors report without loading torch

    with exit_on_user_error("vpt-train"):
        if _search_scores_on_trained_val(cfg):
            raise ConfigError(f"the search optimises {optimized_metric(cfg)} but data.train_on_trainval=true trains on "
                              "val; set data.train_on_trainval=false for the search, then train the chosen "
                              "setting on train+val")
        results = train(cfg)
    return results.get(optimized_metric(cfg))  # what a sweeper (hparams_search=optuna) optimises


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def _eval(cfg: DictConfig) -> float | None:
    from ..engine import evaluate_prompt_file

    with exit_on_user_error("vpt-eval"):
        results = evaluate_prompt_file(cfg)
    return results.get(recorded_task(results).metric("test"))


PLACEHOLDER = re.compile(r"<[A-Za-z_ -]+>")  # <date>, <run dir>, <name> copied from the docs


def check_placeholders(program: str, argv: list[str]) -> None:
    """An argument holding a placeholder from the docs (``prompt_file=outputs/deep_digits/<date>/best``) is one
    message saying what to put there, before Hydra's override lexer (which cannot parse ``<``) sees it."""
    for argument in argv:
        found = PLACEHOLDER.search(argument)
        if not found:
            continue
        key, _, value = argument.partition("=")
        fix = "replace it with the run folder's name"
        if found.group(0) == "<date>":
            fix = (f"use latest, the newest run of that name ({key}={value.replace('<date>', 'latest')}), or "
                   f"a run folder's name (ls {value.split('<date>')[0] or '.'})")
        print(f"{program}: error: {argument!r} holds the placeholder {found.group(0)}; {fix}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)


# Libraries whose INFO lines are plugin noise on the console (the Optuna sweeper's database migrations)
QUIET_LOGGERS = ("alembic",)


def quiet_plugin_loggers() -> None:
    """Only warnings from :data:`QUIET_LOGGERS`; Hydra's logging setup keeps these levels (it does not
    disable or reset loggers its config does not name)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def train_main() -> None:
    check_placeholders("vpt-train", sys.argv[1:])
    register_resolvers()
    quiet_plugin_loggers()
    _train()


def eval_main() -> None:
    check_placeholders("vpt-eval", sys.argv[1:])
    register_resolvers()
    quiet_plugin_loggers()
    _eval()


if __name__ == "__main__":
    train_main()
