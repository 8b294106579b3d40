"""The fast-training switches of a :class:`~cifarlab.config.TrainConfig` (docs/fast.md): their checks, and the
model arguments they turn into.

Each technique is a switch in the config, off by default; the ``fast`` recipe turns them on. The techniques
themselves live with what they belong to: whitening beside ``FastCNN`` (models.py), weight averaging in
averaging.py, test-time augmentation in infer.py, the time budget in budget.py.
"""

from __future__ import annotations

from typing import Any

from cifarlab.base.errors import UsageError

WIDTH_MODELS = ("fastcnn",)  # models whose factory takes width, dirac, frozen_bn_scale and frozen_stem


def validate_fast(config: Any) -> None:
    """Reject fast-training settings that would fail later, or silently do nothing, with one clear line."""
    fastcnn_only = {
        "model_width": config.model_width is not None,
        "whiten": config.whiten,
        "dirac_init": config.dirac_init,
        "frozen_bn_scale": config.frozen_bn_scale,
    }
    used = [name for name, on in fastcnn_only.items() if on]
    if used and config.model not in WIDTH_MODELS:
        raise UsageError(f"{', '.join(used)} only apply to {', '.join(WIDTH_MODELS)} (model is {config.model!r})")
    if config.model_width is not None and config.model_width < 1:
        raise UsageError(f"model_width must be at least 1 (got {config.model_width})")
    if not config.bias_lr_scale > 0:
        raise UsageError(f"bias_lr_scale must be positive (got {config.bias_lr_scale})")
    if config.weight_averaging not in ("none", "ema", "lookahead"):
        raise UsageError(f"weight_averaging must be 'none', 'ema' or 'lookahead' (got {config.weight_averaging!r})")
    if not 0 <= config.average_decay < 1:
        raise UsageError(f"average_decay must be in [0, 1) (got {config.average_decay})")
    if config.average_every < 1:
        raise UsageError(f"average_every must be at least 1 (got {config.average_every})")
    if config.train_steps is not None and config.train_steps < 1:
        raise UsageError(f"train_steps must be at least 1 (got {config.train_steps})")
    if config.time_budget is not None and not config.time_budget > 0:
        raise UsageError(f"--time-budget must be a positive number of seconds (got {config.time_budget})")
    if config.timed and config.time_budget is not None:
        raise UsageError("timed runs leave validation off the clock, a --time-budget counts all the time: use one")
    if not config.budget_epochs > 0:
        raise UsageError(f"budget_epochs must be positive (got {config.budget_epochs})")
    if config.tta not in (0, 1, 2):
        raise UsageError(f"tta must be 0 (none), 1 (mirror) or 2 (mirror and translations) (got {config.tta})")
    if config.test_checkpoint not in ("best", "last"):
        raise UsageError(f"test_checkpoint must be 'best' or 'last' (got {config.test_checkpoint!r})")
    if config.time_budget is not None and config.scheduler == "step":
        raise UsageError("--time-budget plans a per-step schedule; use a recipe with scheduler onecycle or cosine")


def model_kwargs(config: Any, width: int | None = None) -> dict[str, Any]:
    """Factory arguments for ``build_model`` from the config (saved in checkpoints as ``model_kwargs``)."""
    if config.model not in WIDTH_MODELS:
        return {}
    kwargs: dict[str, Any] = {
        "dirac": config.dirac_init,
        "frozen_bn_scale": config.frozen_bn_scale,
        "frozen_stem": config.whiten,
    }
    width = width if width is not None else config.model_width
    if width is not None:
        kwargs["width"] = width
    return kwargs


# model_kwargs' arguments and the config fields they come from
KWARG_FIELDS = {
    "width": "model_width",
    "dirac": "dirac_init",
    "frozen_bn_scale": "frozen_bn_scale",
    "frozen_stem": "whiten",
}


def config_fields(model: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The config fields that give ``model_kwargs`` ``kwargs`` (the inverse of :func:`model_kwargs`)."""
    if model not in WIDTH_MODELS:
        return {"model_width": None, "whiten": False, "dirac_init": False, "frozen_bn_scale": False}
    return {field: kwargs.get(arg, None if arg == "width" else False) for arg, field in KWARG_FIELDS.items()}
