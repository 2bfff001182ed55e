"""Building a run's pieces from the composed config: backbone, input size, optimiser and lr schedule."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from omegaconf import DictConfig

from ..backbones import BackboneAdapter, create_backbone, wrap_model
from ..backbones.naming import ARCHITECTURE_KWARGS, display_name, shape_name  # noqa: F401 (re-exported)
from ..errors import ConfigError, TargetWeightsUnavailableError
from .runtime import to_plain


def build_backbone(backbone_cfg: Mapping[str, Any], **task_options: Any) -> BackboneAdapter:
    """``backbone.image_size`` is the one home of the input size: the backbone is built for it. ``task_options``:
    keyword arguments the task needs (``Task.backbone_options``), under the config's own arguments.

    ``name`` is a timm / open_clip name (``create_backbone``); a ``_target_`` instead builds any module an adapter
    accepts (``timm.create_model``, your own class), called with the config's other keys. The adapter's ``name``
    is what results and prompt files record: ``label`` if set, else one that says what the model is.
    """
    cfg = to_plain(backbone_cfg)
    if "_target_" in cfg:
        adapter = build_target_backbone(cfg, task_options)
    else:
        if not cfg.get("name"):
            raise ConfigError("the backbone config needs a name (e.g. backbone.name=vit_small_patch16_224) or a "
                              "_target_ that builds the model (see configs/backbone/custom.yaml)")
        adapter = create_backbone(cfg["name"], pretrained=cfg.get("pretrained", True), image_size=cfg.get("image_size"),
                                  allow_partial_weights=bool(cfg.get("allow_partial_weights", False)),
                                  **{**task_options, **(cfg.get("kwargs") or {})})
    adapter.name = backbone_label(cfg, adapter)
    return adapter


# keys of a `_target_` backbone config that vpt reads itself; the others are the target's arguments
VPT_BACKBONE_KEYS = ("name", "label", "image_size")


def build_target_backbone(cfg: Mapping[str, Any], task_options: Mapping[str, Any] | None = None) -> BackboneAdapter:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from ..online import hub_access

    call = {**(task_options or {}), **{key: value for key, value in cfg.items() if key not in VPT_BACKBONE_KEYS}}
    if cfg.get("image_size") is not None and _takes_argument(cfg["_target_"], "image_size"):
        call["image_size"] = cfg["image_size"]  # e.g. torchvision's VisionTransformer(image_size=...)
    try:
        with hub_access():  # pretrained=true downloads: fail fast when the hub does not answer
            model = instantiate(call, _convert_="all")
    except InstantiationException as error:
        if cfg.get("pretrained") and _is_hub_failure(error):
            raise TargetWeightsUnavailableError(_target_offline_message(cfg, error)) from error
        raise ConfigError(f"backbone._target_={cfg['_target_']} failed: {error}. Check that it is an importable "
                          "path (its module on PYTHONPATH) and that the other backbone keys are its arguments"
                          ) from error
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"backbone._target_={cfg['_target_']} returned a value of type {type(model).__name__}, "
                          "not a torch module")
    try:
        adapter = wrap_model(model, name=cfg.get("name"))
    except TypeError as error:
        raise ConfigError(f"backbone._target_={cfg['_target_']}: {error}") from error
    size = cfg.get("image_size")
    built = tuple(adapter.data_config()["input_size"][1:])
    if size and built != (int(size), int(size)):
        raise ConfigError(f"backbone.image_size={size} but the model built by backbone._target_ takes "
                          f"{built[0]}x{built[1]} inputs; build it for {size} (e.g. img_size: {size} for timm) or set "
                          f"backbone.image_size={built[0]}")
    return adapter  # create_args stay None: a prompt file of it is loaded with the backbone passed in


def _takes_argument(target: str, name: str) -> bool:
    """Whether the callable at dotted path ``target`` has a parameter ``name`` (False when it cannot be told)."""
    import inspect

    from hydra.utils import get_object

    try:
        return name in inspect.signature(get_object(target)).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return False


def _is_hub_failure(error: BaseException) -> bool:
    """Whether an exception (or one it was raised from) is a failed hub download (offline, unreachable, cache miss)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        module = type(error).__module__
        if module.startswith(("huggingface_hub", "requests", "httpx", "urllib3")) or isinstance(
                error, (ConnectionError, TimeoutError)):
            return True
        error = error.__cause__ or error.__context__
    return False


def _target_offline_message(cfg: Mapping[str, Any], error: BaseException) -> str:
    from ..online import describe_failure, why_offline

    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    return (f"backbone._target_={cfg['_target_']} could not fetch pretrained weights for "
            f"{cfg.get('model_name') or cfg.get('name')!r} ({describe_failure(cause)}); the hub is offline here: {why_offline()}. "
            "Either pass backbone.pretrained=false (random init, e.g. for smoke tests) or download the weights "
            "elsewhere and pass the local file: '+backbone.pretrained_cfg_overlay={file:/path/to/weights.safetensors}'")


def backbone_label(cfg: Mapping[str, Any], adapter: BackboneAdapter) -> str:
    """The name results.json and prompt files record: ``backbone.label``; else the given name, unless
    arguments reshaped the model, which is then named by its shape (e.g. ``vit_p4_d64_l6_16px``)."""
    if cfg.get("label"):
        return str(cfg["label"])
    name = str(cfg.get("name") or adapter.name)
    arguments = cfg if "_target_" in cfg else (cfg.get("kwargs") or {})
    return display_name(name, arguments, adapter)


def input_data_config(backbone: BackboneAdapter) -> dict[str, Any]:
    """The backbone's preprocessing (input size, mean, std, ...), checked against its patch size before any
    data is loaded or step taken."""
    data_config = dict(backbone.data_config())
    backbone.check_input_size(*data_config["input_size"][1:])
    return data_config


def build_optimizer(optim_cfg: DictConfig, params: list[torch.nn.Parameter], batch_size: int) -> torch.optim.Optimizer:
    from hydra.utils import instantiate

    if not params:
        raise ConfigError("nothing to train: the prompt method leaves no trainable parameters "
                          "(e.g. prompt.train_head=false with prompt=linear)")
    scaling = {"linear": batch_size / 256, "none": 1.0}
    if optim_cfg.lr_scaling not in scaling:
        raise ConfigError(f"optim.lr_scaling={optim_cfg.lr_scaling!r}; valid: {', '.join(scaling)}")
    lr = float(optim_cfg.base_lr) * scaling[optim_cfg.lr_scaling]  # VPT: lr = base_lr * batch / 256
    make_optimizer = instantiate(optim_cfg.optimizer)  # a partial (_partial_: true) awaiting params and lr
    return make_optimizer(params, lr=lr)


SCHEDULE_SHAPES = ("cosine", "constant")


def build_scheduler(optim_cfg: DictConfig, optimizer: torch.optim.Optimizer, total_steps: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule from torch's own schedulers: linear warmup over ``warmup_epochs`` (factor
    ``(step + 1) / warmup``), then ``cosine`` decay to ``min_lr_ratio`` or ``constant``."""
    from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, SequentialLR

    if optim_cfg.scheduler not in SCHEDULE_SHAPES:
        raise ConfigError(f"optim.scheduler={optim_cfg.scheduler!r}; valid: {', '.join(SCHEDULE_SHAPES)}")
    warmup = min(int(round(float(optim_cfg.warmup_epochs) * steps_per_epoch)), max(total_steps - 1, 0))
    if optim_cfg.scheduler == "cosine":
        floor = float(optim_cfg.min_lr_ratio)
        # eta_min is absolute: one per param group would need a LambdaLR; vpt builds one group with one lr
        decay = CosineAnnealingLR(optimizer, T_max=max(total_steps - warmup, 1),
                                  eta_min=floor * optimizer.param_groups[0]["lr"])
    else:
        decay = ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup == 0:
        return decay
    # LinearLR's factor at step k < W is 1/W + (1 - 1/W) * k / (W - 1) = (k + 1) / W (W = 1: factor 1, one step)
    ramp = LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=max(warmup - 1, 1))
    return SequentialLR(optimizer, [ramp, decay], milestones=[warmup])
