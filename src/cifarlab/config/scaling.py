"""Recipes scaled to the dataset: the validation share, the batch size (with its learning rate), the schedule.

The recipes are written for CIFAR's 50,000 training images. On a dataset of a few hundred or thousand images the
same numbers misbehave: a 1,000-image validation split takes a third of 3,000 images, batch 512 makes 4 steps an
epoch, a 2-epoch warm-up eats most of a 3-epoch run. :func:`scale_to_data` adapts such values to the dataset, and
says what it changed, from what to what and why (printed at the start of the run, kept in run.json):

* **validation**: the recipe's ``val_size`` is a cap; the split holds out ``VAL_SHARE`` of the training images
  below it (at least one image per class);
* **batch size**: halved while the training split would give fewer than ``MIN_STEPS_PER_EPOCH`` optimiser steps
  an epoch (never below ``MIN_BATCH``); the learning rate follows by the recipe's ``lr_scaling`` rule;
* **schedule**: on such a small dataset, a run with other epochs than its recipe keeps the recipe's shape: the
  warm-up and StepLR's step (given in epochs) scale with the run's length.

Only values that are the recipe's own are scaled: a value set by a flag or a config (anything that differs from
the recipe) is kept, and ``scale_to_data=False`` (``--no-scale``) keeps the recipe exactly. On CIFAR-10/100 no
rule applies, so every recipe trains there exactly as written. The sizes are those of the dataset's training
images: ``--limit-train`` slices a dataset for a quick try and keeps the recipe the whole dataset would get.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from cifarlab.config.train_config import RECIPES, TrainConfig, recipe_value

VAL_SHARE = 0.1  # of the training images held out for validation, below the recipe's val_size cap
MIN_STEPS_PER_EPOCH = 25  # fewer steps an epoch than this at the recipe's batch size: the batch comes down
MIN_BATCH = 16  # the smallest batch the scaling goes to (BatchNorm needs a few images per batch)


@dataclass(frozen=True)
class Change:
    """One scaled field: its value in the recipe, the value the run uses, and why."""

    field: str
    before: Any
    after: Any
    why: str

    def line(self) -> str:
        return f"{self.field} {fmt(self.before)} -> {fmt(self.after)} ({self.why})"


@dataclass(frozen=True)
class Scaling:
    """What :func:`scale_to_data` did for one dataset (for the log and run.json)."""

    train_images: int  # the dataset's training images (validation included, --limit-train not applied)
    classes: int
    changes: tuple[Change, ...] = ()

    def record(self) -> dict[str, Any]:
        """run.json's ``scaling``: the sizes it was computed for and each change."""
        return {
            "train_images": self.train_images,
            "classes": self.classes,
            "changes": [asdict(c) for c in self.changes],
        }

    def message(self) -> str:
        """One log line: what was scaled, or that the recipe runs as written."""
        if not self.changes:
            return ""
        return f"recipe scaled to {self.train_images:,} training images: " + "; ".join(c.line() for c in self.changes)


def fmt(value: Any) -> str:
    """A value for the log: numbers without float noise, None as the recipe's meaning of it."""
    if value is None:
        return "10%"
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def own(config: TrainConfig, name: str) -> bool:
    """True when field ``name`` holds its recipe's value, and so may be scaled."""
    return config.scale_to_data and getattr(config, name) == recipe_value(config.recipe, name)


def validation_size(config: TrainConfig, n: int, classes: int) -> tuple[int | None, str]:
    """The validation size for ``n`` training images, and why (the recipe's own value with '' when unchanged)."""
    cap = config.val_size
    share = max(classes, math.floor(VAL_SHARE * n))
    if cap is None:  # the recipe's 10%: kept, unless it would leave a class without a validation image
        return (None, "") if n // 10 >= classes else (classes, "at least one validation image per class")
    if share >= cap:
        return cap, ""
    return share, f"{VAL_SHARE:.0%} of {n:,} training images, at most the recipe's {cap:,}; one per class at least"


def batch_size(n_train: int, batch: int) -> int:
    """``batch`` halved while ``n_train`` images give fewer than MIN_STEPS_PER_EPOCH steps (not below MIN_BATCH)."""
    while n_train < MIN_STEPS_PER_EPOCH * batch and batch // 2 >= MIN_BATCH:
        batch //= 2
    return batch


def scaled_lr(lr: float, rule: str, ratio: float) -> float:
    """The learning rate for a batch ``ratio`` times the recipe's, by the recipe's rule."""
    if rule == "linear":
        return lr * ratio
    if rule == "sqrt":
        return lr * math.sqrt(ratio)
    return lr


def scale_to_data(config: TrainConfig, n: int, classes: int) -> tuple[TrainConfig, Scaling]:
    """``config`` adapted to a dataset of ``n`` training images in ``classes`` classes, and what changed."""
    changes: list[Change] = []

    def change(name: str, value: Any, why: str) -> None:
        nonlocal config
        changes.append(Change(name, getattr(config, name), value, why))
        config = replace(config, **{name: value})

    if config.recipe not in RECIPES or not config.scale_to_data:
        return config, Scaling(n, classes)
    if own(config, "val_size"):
        val, why = validation_size(config, n, classes)
        if why:
            change("val_size", val, why)
    n_val = config.val_size if config.val_size is not None else n // 10
    n_train = n - n_val
    small = n_train < MIN_STEPS_PER_EPOCH * config.batch_size
    if small and own(config, "batch_size"):
        batch = batch_size(n_train, config.batch_size)
        if batch != config.batch_size:
            ratio = batch / config.batch_size
            steps = max(1, n_train // config.batch_size)
            change(
                "batch_size",
                batch,
                f"{n_train:,} images make {steps} step{'s' * (steps != 1)} an epoch at {config.batch_size}; "
                f"{MIN_STEPS_PER_EPOCH} or more wanted",
            )
            if own(config, "lr") and config.lr_scaling != "none":
                change("lr", scaled_lr(config.lr, config.lr_scaling, ratio), f"{config.lr_scaling} in the batch size")
    recipe_epochs = recipe_value(config.recipe, "epochs")
    if small and config.epochs != recipe_epochs:
        ratio = config.epochs / recipe_epochs
        why = f"{config.epochs} epochs where the recipe has {recipe_epochs}: the schedule keeps its shape"
        if own(config, "warmup_epochs") and config.warmup_epochs > 0 and config.scheduler != "step":
            change("warmup_epochs", config.warmup_epochs * ratio, why)
        if own(config, "step_size") and config.scheduler == "step":
            change("step_size", max(1, round(config.step_size * ratio)), why)
    return config, Scaling(n, classes, tuple(changes))
