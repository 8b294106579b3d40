"""Every training hyperparameter in one place, and the named recipes that set them.

A run is fully described by a :class:`TrainConfig`. It is saved as ``config.json`` in the run folder, so
``cifarlab train --config RUN/config.json`` replays it exactly. A *recipe* is a named set of overrides of the
defaults below; command-line flags override the recipe.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifarlab.errors import UsageError


@dataclass
class TrainConfig:
    # --- what to train ---
    model: str = "mycnn"  # name in the model registry (`cifarlab models`)
    recipe: str = "seed"  # name of the recipe these values came from (for the record)

    # --- optimisation ---
    epochs: int = 20  # full passes over the training split
    batch_size: int = 128  # images per optimiser step
    optimizer: str = "adam"  # "adam" (the course project) or "sgd" (Nesterov momentum, for fast recipes)
    lr: float = 1e-3  # peak learning rate; Adam at 1e-3 is the course project's setting
    momentum: float = 0.9  # SGD momentum (ignored by Adam)
    weight_decay: float = 0.0  # L2 penalty; 0 in the course project
    scheduler: str = "step"  # "step" (StepLR), "onecycle" (warm-up then linear decay), "cosine", or "none"
    step_size: int = 10  # StepLR: epochs between decays (20 epochs -> one decay, at half-way)
    gamma: float = 0.1  # StepLR: factor applied to the LR at each decay (1e-3 -> 1e-4 for the last 10 epochs)
    warmup_epochs: float = 0.0  # onecycle/cosine: epochs of linear warm-up from 0 to `lr`
    label_smoothing: float = 0.0  # cross-entropy label smoothing; 0 = plain cross-entropy as in the course

    # --- data ---
    augment: str = "none"  # "none" (course: normalisation only), "crop-flip" (pad+random crop, flip)
    crop_padding: int = 4  # pixels of padding for the random crop
    val_size: int = 5000  # images held out of the official training set, stratified per class (10%)
    limit_train: int | None = None  # train on a class-balanced slice of this many images (demos, tests)
    eval_batch_size: int = 1000  # batch size for validation and test (no gradients, so larger is cheaper)

    # --- reproducibility and placement ---
    seed: int = 0  # seeds the split, the model's initial weights, shuffling and augmentation
    device: str = "auto"  # "auto" = CUDA, else Apple MPS, else CPU; or any torch device string
    data_dir: str | None = None  # folder holding cifar-10-batches-py/ (else $CIFARLAB_DATA_DIR, else ./data)
    out: str = "runs"  # parent folder of run folders
    name: str | None = None  # run folder name; a timestamped one when None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError:
            raise UsageError(f"config file not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"config file {path} is not valid JSON: {exc}") from None
        if not isinstance(values, dict):
            raise UsageError(f"config file {path} must hold a JSON object")
        return cls.from_dict(values)


# Each recipe is a set of overrides of the TrainConfig defaults above.
RECIPES: dict[str, dict[str, Any]] = {
    # The course project: Adam 1e-3, StepLR (x0.1 after epoch 10), 20 epochs, normalisation only.
    "seed": dict(
        epochs=20, batch_size=128, optimizer="adam", lr=1e-3, weight_decay=0.0, scheduler="step",
        step_size=10, gamma=0.1, augment="none", label_smoothing=0.0,
    ),
    # The course setup plus the two standard augmentations (random crop, horizontal flip): less overfitting.
    "augment": dict(
        epochs=20, batch_size=128, optimizer="adam", lr=1e-3, weight_decay=0.0, scheduler="step",
        step_size=10, gamma=0.1, augment="crop-flip", label_smoothing=0.0,
    ),
}

RECIPE_HELP: dict[str, str] = {
    "seed": "the course project: Adam 1e-3, StepLR(10, 0.1), 20 epochs, no augmentation",
    "augment": "the course project plus random crop and horizontal flip",
}


def make_config(recipe: str, **overrides: Any) -> TrainConfig:
    """Defaults, then the recipe, then explicit overrides (None means 'not given')."""
    if recipe not in RECIPES:
        raise UsageError(f"unknown recipe {recipe!r}; choose from: {', '.join(sorted(RECIPES))}")
    values: dict[str, Any] = {**RECIPES[recipe], "recipe": recipe}
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = TrainConfig.from_dict(values)
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Reject values that would fail later with an obscure error."""
    from cifarlab.models import MODELS  # local import: models imports torch

    if config.model not in MODELS:
        raise UsageError(f"unknown model {config.model!r}; choose from: {', '.join(sorted(MODELS))}")
    if config.recipe not in RECIPES:
        raise UsageError(f"unknown recipe {config.recipe!r}; choose from: {', '.join(sorted(RECIPES))}")
    if config.epochs < 1:
        raise UsageError(f"--epochs must be at least 1 (got {config.epochs})")
    if config.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1 (got {config.batch_size})")
    if config.eval_batch_size < 1:
        raise UsageError(f"eval_batch_size must be at least 1 (got {config.eval_batch_size})")
    if not config.lr > 0:
        raise UsageError(f"--lr must be positive (got {config.lr})")
    if config.optimizer not in ("adam", "sgd"):
        raise UsageError(f"optimizer must be 'adam' or 'sgd' (got {config.optimizer!r})")
    if config.scheduler not in ("step", "onecycle", "cosine", "none"):
        raise UsageError(f"unknown scheduler {config.scheduler!r}")
    if config.augment not in ("none", "crop-flip"):
        raise UsageError(f"unknown augmentation {config.augment!r}")
    if not 10 <= config.val_size <= 25000 or config.val_size % 10:
        raise UsageError(f"val_size must be a multiple of 10 between 10 and 25000 (got {config.val_size})")
    if config.limit_train is not None and not 10 <= config.limit_train <= 50000 - config.val_size:
        raise UsageError(
            f"--limit-train must be between 10 and {50000 - config.val_size} (got {config.limit_train})"
        )
    if not 0 <= config.label_smoothing < 1:
        raise UsageError(f"label_smoothing must be in [0, 1) (got {config.label_smoothing})")
