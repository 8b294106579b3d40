"""Fast-training techniques (docs/fast.md): patch whitening, weight averaging, test-time augmentation and the
small helpers that switch them on from a :class:`~cifarlab.config.TrainConfig`.

Each technique is a switch in the config, off by default; the ``fast`` recipe turns them on. The training loop in
train.py calls into this module at a few marked places, so the loop itself stays readable.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, ContextManager

import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.errors import UsageError

WIDTH_MODELS = ("fastcnn",)  # models whose factory takes width, dirac, frozen_bn_scale and frozen_stem
WHITEN_IMAGES = 5000  # training images whose patches set the whitening filters (more changes nothing visible)
WHITEN_EPS = 5e-4  # added to the patch-covariance eigenvalues, so near-constant directions are not blown up


def validate_fast(config: Any) -> None:
    """Reject fast-training settings that would fail later, or silently do nothing, with one clear line."""
    fastcnn_only = {"model_width": config.model_width is not None, "whiten": config.whiten,
                    "dirac_init": config.dirac_init, "frozen_bn_scale": config.frozen_bn_scale}
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
    kwargs: dict[str, Any] = {"dirac": config.dirac_init, "frozen_bn_scale": config.frozen_bn_scale,
                              "frozen_stem": config.whiten}
    width = width if width is not None else config.model_width
    if width is not None:
        kwargs["width"] = width
    return kwargs


# --- whitening --------------------------------------------------------------------------------------------------

@torch.no_grad()
def patch_whitening(images: torch.Tensor, kernel_size: int = 2,
                    eps: float = WHITEN_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Filters that map every ``kernel_size`` x ``kernel_size`` patch of ``images`` to whitened coordinates.

    With patch mean m and covariance C = V diag(e) V^T, the filters are the rows of diag(e + eps)^-1/2 V^T and the
    bias is -filters @ m: the outputs have zero mean and (nearly) identity covariance. Each filter also appears
    negated, because the GELU that follows would otherwise discard the negative half of every direction.
    Returns (weight of shape (2 d, C, k, k), bias of shape (2 d,)) with d = C k k.
    """
    channels = images.shape[1]
    d = channels * kernel_size * kernel_size
    total = torch.zeros(d, dtype=torch.float64)
    outer = torch.zeros(d, d, dtype=torch.float64)
    count = 0
    for chunk in images.split(500):  # patches of 5,000 images would take ~0.5 GB at once
        patches = F.unfold(chunk.double().cpu(), kernel_size).transpose(1, 2).reshape(-1, d)
        total += patches.sum(0)
        outer += patches.T @ patches
        count += len(patches)
    mean = total / count
    cov = outer / count - torch.outer(mean, mean)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    filters = eigenvectors.T / (eigenvalues.clamp(min=0) + eps).sqrt()[:, None]
    weight = torch.cat([filters, -filters]).reshape(2 * d, channels, kernel_size, kernel_size)
    bias = -(weight.flatten(1) @ mean)
    return weight.float(), bias.float()


@torch.no_grad()
def init_whitening(model: nn.Module, images: torch.Tensor) -> None:
    """Set the model's stem convolution to whiten the patches of ``images`` (normalised training images)."""
    stem = model.stem
    weight, bias = patch_whitening(images[:WHITEN_IMAGES], stem.kernel_size[0])
    if weight.shape != stem.weight.shape:
        raise UsageError(f"whitening needs a stem of {weight.shape[0]} filters, the model has {stem.out_channels}")
    stem.weight.copy_(weight)
    stem.bias.copy_(bias)


# --- optimiser parameter groups ---------------------------------------------------------------------------------

def param_groups(model: nn.Module, config: Any) -> list[dict[str, Any]]:
    """Trainable parameters, with BatchNorm's own at ``bias_lr_scale`` x the LR and weight decay / that factor.

    BatchNorm shifts get gradients of a different size than conv weights; a higher LR (airbench uses 64x) lets
    them keep up, and dividing their decay keeps the per-step shrinkage the same. Frozen parameters
    (a whitened stem, a frozen BN scale) are left out so no optimiser state or weight decay touches them.
    """
    norm_ids = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                for p in m.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    if config.bias_lr_scale == 1.0:
        return [{"params": trainable}]
    others = [p for p in trainable if id(p) not in norm_ids]
    norms = [p for p in trainable if id(p) in norm_ids]
    return [{"params": others},
            {"params": norms, "lr": config.lr * config.bias_lr_scale,
             "weight_decay": config.weight_decay / config.bias_lr_scale}]


# --- weight averaging: EMA and lookahead --------------------------------------------------------------------------

class WeightAverager:
    """A slow copy of the weights, moved toward the trained ones every ``every`` optimiser steps.

    At an update with decay d: ``average = d * average + (1 - d) * weights`` for every float tensor of the state
    dict (parameters and BatchNorm statistics; counters are copied). d ramps in as ``decay**every *
    (step / total_steps)**3``: close to 0 early, when the weights move fast and averaging would only lag.

    * ``ema``: training ignores the average; validation, checkpoints and the test use it.
    * ``lookahead``: after each update the weights are reset to the average (the slow weights pull the fast ones
      back), so the model itself is what is scored. The last step always updates, so a run ends on the average.
    """

    def __init__(self, model: nn.Module, mode: str, decay: float, every: int, total_steps: int) -> None:
        if mode not in ("ema", "lookahead"):
            raise ValueError(f"unknown weight averaging {mode!r}")
        self.mode, self.decay, self.every, self.total_steps = mode, decay, every, max(1, total_steps)
        self.steps = 0
        self.shadow = copy.deepcopy(model)
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return self.decay ** self.every * min(1.0, step / self.total_steps) ** 3

    def step(self, model: nn.Module) -> None:
        """Call after each optimiser step."""
        self.steps += 1
        if self.steps % self.every == 0 or self.steps == self.total_steps:
            self.update(model, self.decay_at(self.steps))

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        averaged = self.shadow.state_dict()
        for name, value in model.state_dict().items():
            slow = averaged[name]
            if slow.is_floating_point():
                slow.lerp_(value, 1 - decay)
                if self.mode == "lookahead":
                    value.copy_(slow)
            else:
                slow.copy_(value)

    def scored(self, model: nn.Module) -> nn.Module:
        """The model whose weights are validated, checkpointed and tested."""
        return self.shadow if self.mode == "ema" else model

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "average": self.shadow.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.shadow.load_state_dict(state["average"])


def make_averager(model: nn.Module, config: Any, total_steps: int) -> WeightAverager | None:
    if config.weight_averaging == "none":
        return None
    return WeightAverager(model, config.weight_averaging, config.average_decay, config.average_every, total_steps)


# --- test-time augmentation ---------------------------------------------------------------------------------------

def tta_views(level: int) -> int:
    """Forward passes per image at a TTA level (what the time-budget planner reserves for the test)."""
    return {0: 1, 1: 2, 2: 6}[level]


def tta_logits(model: nn.Module, x: torch.Tensor, level: int = 0) -> torch.Tensor:
    """Logits averaged over views: 1 adds the mirror image, 2 also both views shifted one pixel (diagonally).

    The translated views are cut from a reflect-padded copy, matching the translation used in training; the two
    shifted pairs together weigh as much as the unshifted pair, as in airbench.
    """
    if level not in (0, 1, 2):
        raise ValueError(f"tta level must be 0, 1 or 2 (got {level})")
    if level == 0:
        return model(x)

    def mirrored(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (model(v) + model(v.flip(3)))

    logits = mirrored(x)
    if level == 2:
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = [padded[:, :, :-2, :-2], padded[:, :, 2:, 2:]]
        logits = 0.5 * logits + 0.25 * (mirrored(shifted[0]) + mirrored(shifted[1]))
    return logits


# --- placement and precision --------------------------------------------------------------------------------------

def autocast(config: Any, device: torch.device) -> ContextManager:
    """bf16 autocast on CUDA when ``config.bf16``; a no-op elsewhere (on our CPUs bf16 measured slower)."""
    if config.bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
