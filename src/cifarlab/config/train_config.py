"""Every training hyperparameter in one place, and the named recipes that set them.

A run is fully described by a :class:`TrainConfig`. It is saved as ``config.json`` in the run folder, so
``cifarlab train --config RUN/config.json`` replays it exactly. A *recipe* is a named set of overrides of the
defaults below; command-line flags override the recipe.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifarlab.base.errors import UsageError
from cifarlab.base.records import loads_json, read_json_object
from cifarlab.config.fast import validate_fast


@dataclass(frozen=True)
class TrainConfig:
    # --- what to train ---
    model: str = "mycnn"  # name in the model registry (`cifarlab models`)
    recipe: str = "seed"  # name of the recipe these values came from (for the record)

    # --- optimisation ---
    epochs: int = 20  # full passes over the training split
    batch_size: int = 128  # images per optimiser step
    optimizer: str = "adam"  # "adam" (the course project), "sgd" (Nesterov momentum, for fast recipes), or "muon"
    # (Muon for conv weights, Nesterov SGD for the rest: optim.MuonSGD)
    lr: float = 1e-3  # peak learning rate; Adam at 1e-3 is the course project's setting
    momentum: float = 0.9  # SGD momentum (ignored by Adam)
    muon_lr: float = 0.2  # muon: peak step of the conv weights, about radians per filter (the schedule scales it)
    muon_momentum: float = 0.6  # muon: Nesterov momentum of the conv weights' updates
    weight_decay: float = 0.0  # L2 penalty; 0 in the course project
    scheduler: str = "step"  # "step" (StepLR), "onecycle" (warm-up then linear decay), "cosine", or "none"
    step_size: int = 10  # StepLR: epochs between decays (20 epochs -> one decay, at half-way)
    gamma: float = 0.1  # StepLR: factor applied to the LR at each decay (1e-3 -> 1e-4 for the last 10 epochs)
    warmup_epochs: float = 0.0  # onecycle/cosine: epochs of linear warm-up from 0 to `lr`
    label_smoothing: float = 0.0  # cross-entropy label smoothing; 0 = plain cross-entropy as in the course
    lr_scaling: str = "none"  # how the LR follows a batch size scaled down for a small dataset: "linear" (SGD
    # recipes), "sqrt", or "none" (Adam: its step barely depends on the batch); see scaling.py
    scale_to_data: bool = True  # adapt the recipe's validation size, batch size (with the LR) and schedule to a
    # small dataset (scaling.py; run.json says what changed); False: the recipe exactly. Never changes CIFAR runs

    # --- starting from a trained model (fine-tuning; docs/datasets.md, "Your own photos") ---
    init_from: str | None = None  # a run folder or checkpoint whose weights the model starts from (else random)
    freeze_epochs: int = 0  # with init_from: epochs that train only the classification head, the body frozen
    body_lr_scale: float = 1.0  # with init_from: LR multiplier for everything but the head

    # --- data ---
    dataset: str = "cifar10"  # "cifar10", "cifar100", or the path of a folder of images (docs/datasets.md)
    labels: str = "fine"  # CIFAR-100 only: "fine" (100 classes) or "coarse" (its 20 superclasses)
    image_size: int | None = None  # pixels per side; None = 32 for CIFAR, 64 for folders (shorter side, centre crop)
    strict: bool = False  # image folders: refuse the folder if any file is unreadable (default: skip and count them)
    augment: str = "none"  # "none" (course: normalisation only), "crop-flip" (pad+random crop, flip), or
    # "translate-altflip" (shift by up to crop_padding px, reflect-filled; each image mirrored every other epoch)
    crop_padding: int = 4  # pixels of padding for the random crop (crop-flip), largest shift (translate-altflip)
    augmix: bool = False  # AugMix (data/augmix.py) after `augment`: each training image mixed with chains of
    # operations disjoint from CIFAR-10-C's corruptions (no noise, blur, weather, contrast, brightness, JPEG,
    # pixelation, elastic); off: the batches and their random numbers exactly as without the option
    augmix_width: int = 3  # augmix: chains mixed into each image, with Dirichlet(1, ..., 1) weights (1-10)
    augmix_depth: int = -1  # augmix: operations per chain (1-10); -1 = a random 1 to 3 for each chain
    augmix_severity: int = 3  # augmix: strength of the operations, 1-10 (the paper's 3)
    augmix_jsd: float = 0.0  # augmix: weight of the Jensen-Shannon consistency loss over the clean image and two
    # AugMix views (the paper: 12), added to the clean images' cross-entropy; 0 = off. On, a step runs 3x the images
    val_size: int | None = None  # training images held out for validation, stratified by class; None = 10% (5,000)
    limit_train: int | None = None  # train on a class-balanced slice of this many images (demos, tests)
    eval_batch_size: int = 1000  # batch size for validation and test (no gradients, so larger is cheaper)

    # --- fast training (docs/fast.md); every switch is off by default, the `fast` recipe turns them on ---
    model_width: int | None = None  # channels of models that take a width (fastcnn: first group, 64); None = default
    whiten: bool = False  # fastcnn: first conv set to whiten 2x2 patches of the training split, then frozen
    dirac_init: bool = False  # fastcnn: each conv's first filters start as identity maps (trains like a skip)
    frozen_bn_scale: bool = False  # fastcnn: BatchNorm scale fixed at 1, only its bias (shift) is learned
    bias_lr_scale: float = 1.0  # SGD: LR multiplier for BatchNorm parameters (airbench: 64); their decay / by it
    weight_averaging: str = "none"  # "none"; "ema" (score an average of the weights); "lookahead" (pull back to it)
    average_decay: float = 0.95  # ema/lookahead: per-step decay, ramped in as progress^3 (early steps barely averaged)
    average_every: int = 5  # ema/lookahead: optimiser steps between updates of the average
    train_steps: int | None = None  # total optimiser steps, instead of whole epochs (set by the time-budget planner)
    time_budget: float | None = None  # seconds for training + final test; the planner sets steps (and width)
    budget_epochs: float = 10.0  # planner: widest width that still fits this many epochs (if model_width unset)
    tta: int = 0  # final test with test-time augmentation: 0 none, 1 mirror, 2 mirror and 1-pixel translations
    test_checkpoint: str = "best"  # checkpoint scored on the test set: "best" (val top-1) or "last" (schedule end)
    channels_last: bool = False  # NHWC memory layout for the model (always used on CPUs, where oneDNN prefers it)
    compile: bool = False  # torch.compile the model (the compile time counts against a --time-budget)
    compile_mode: str = "default"  # torch.compile mode: "default", "reduce-overhead" (CUDA graphs), "max-autotune"
    timed: bool = False  # time as airbench does: per-epoch validation and checkpoints off the clock, no per-step syncs
    bf16: bool = False  # bf16 autocast of forward passes (training and scoring), on CUDA and CPUs with bf16 in hardware

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
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from field values, each checked for its type and range (one UsageError naming the field)."""
        unknown = sorted(set(values) - cls.field_names())
        if unknown:
            raise UsageError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**check_values(values))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """The config saved in the file ``path`` (a run folder's is read by RunFolder), read through the bounded
        reader: a list, a 400-digit integer or deep nesting is one UsageError."""
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"config file not found: {path}")
        values = read_json_object(path, UsageError)
        try:
            return cls.from_dict(values)
        except UsageError as exc:
            raise UsageError(f"{path}: {exc}") from None


# ---------------------------------------------------------------------------------------------------------
# Field types and ranges
# ---------------------------------------------------------------------------------------------------------


def _field_kinds() -> dict[str, tuple[Any, bool]]:
    """Each field's type (bool, int, float or str) and whether it may be null, from the annotations."""
    hints = typing.get_type_hints(TrainConfig)
    kinds = {}
    for f in dataclasses.fields(TrainConfig):
        args = typing.get_args(hints[f.name])
        optional = type(None) in args
        base = next(a for a in args if a is not type(None)) if optional else hints[f.name]
        kinds[f.name] = (base, optional)
    return kinds


FIELD_KINDS = _field_kinds()
KIND_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
MAX_SEED = 2**32 - 1  # numpy's and CUDA's seeds are 32-bit
MAX_CROP_PADDING = 16  # half an image: beyond it a crop or shift is mostly padding
MAX_AUGMIX = 10  # the largest AugMix width, depth and severity (severity 10: the paper's largest magnitudes)
MAX_AUGMIX_JSD = 100.0  # the paper weighs its consistency loss 12
OPTIMIZERS = ("adam", "sgd", "muon")
SCHEDULERS = ("step", "onecycle", "cosine", "none")
AUGMENTS = ("none", "crop-flip", "translate-altflip")
LR_SCALINGS = ("linear", "sqrt", "none")  # how the LR follows a scaled batch size (scaling.py)
LABELS = ("fine", "coarse")  # CIFAR-100's two label sets
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  # torch.compile's modes (the last two: CUDA graphs)
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 512  # every registered model works in this range (global pooling)


def show(value: Any, limit: int = 40) -> str:
    """A short description of a JSON value for an error message: its kind and (the start of) its text."""
    kinds = {
        bool: "",
        type(None): "",
        int: "the whole number ",
        float: "the number ",
        str: "the string ",
        list: "a list ",
        dict: "an object ",
    }
    try:
        text = json.dumps(value) if isinstance(value, (bool, type(None))) else repr(value)
    except ValueError:  # an integer too long to print
        text = "(too long to show)"
    if len(text) > limit:
        text = text[:limit] + "..."
    return kinds.get(type(value), f"a {type(value).__name__} ") + text


def check_type(name: str, value: Any) -> Any:
    """``value`` if it has field ``name``'s type (ints are accepted, and returned as floats, for float fields)."""
    base, optional = FIELD_KINDS[name]
    if value is None:
        if optional:
            return None
        raise UsageError(f"{name}: a value is required, got null")
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            raise UsageError(f"{name}: {show(value)} is too large") from None
        if not math.isfinite(number):
            raise UsageError(f"{name}: must be a finite number, got {value}")
        return number
    origin = typing.get_origin(base) or base
    if base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif origin is typing.Literal:
        ok = any(value == choice and type(value) is type(choice) for choice in typing.get_args(base))
    elif isinstance(origin, type):
        ok = isinstance(value, origin)
    else:
        ok = True  # an annotation this check cannot test; validate() still checks the value
    if not ok:
        wanted = KIND_NAMES.get(base, getattr(base, "__name__", str(base)))
        raise UsageError(f"{name}: expected {wanted}{' or null' if optional else ''}, got {show(value)}")
    return value


def _plain_folder_name(value: str) -> bool:
    """True for a folder name that stays inside its parent (no separators, not . or ..)."""
    return value not in ("", ".", "..") and not any(c in value for c in "/\\\0")


# Ranges of single fields: (test, what the value must be). Checks that involve several fields, or other modules
# (model names, the fast-training switches), are in validate() and fast.validate_fast().
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": (lambda v: v >= 1, "must be at least 1"),
    "batch_size": (lambda v: v >= 1, "must be at least 1"),
    "lr": (lambda v: v > 0, "must be positive"),
    "momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "muon_lr": (lambda v: v > 0, "must be positive"),
    "muon_momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, "must not be negative"),
    "step_size": (lambda v: v >= 1, "must be at least 1"),
    "gamma": (lambda v: v > 0, "must be positive"),
    "warmup_epochs": (lambda v: v >= 0, "must not be negative"),
    "label_smoothing": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "lr_scaling": (lambda v: v in LR_SCALINGS, f"must be one of {', '.join(LR_SCALINGS)}"),
    "init_from": (lambda v: v is None or v != "", "must name a run folder or checkpoint"),
    "freeze_epochs": (lambda v: v >= 0, "must not be negative"),
    "body_lr_scale": (lambda v: 0 < v <= 10, "must be in (0, 10]"),
    "crop_padding": (lambda v: 0 <= v <= MAX_CROP_PADDING, f"must be between 0 and {MAX_CROP_PADDING} pixels"),
    "augmix_width": (lambda v: 1 <= v <= MAX_AUGMIX, f"must be between 1 and {MAX_AUGMIX}"),
    "augmix_depth": (
        lambda v: v == -1 or 1 <= v <= MAX_AUGMIX,
        f"must be -1 (random 1-3) or between 1 and {MAX_AUGMIX}",
    ),
    "augmix_severity": (lambda v: 1 <= v <= MAX_AUGMIX, f"must be between 1 and {MAX_AUGMIX}"),
    "augmix_jsd": (lambda v: 0 <= v <= MAX_AUGMIX_JSD, f"must be between 0 and {MAX_AUGMIX_JSD}"),
    "val_size": (lambda v: v is None or v >= 1, "must be at least 1"),
    "dataset": (lambda v: v != "", "must be cifar10, cifar100 or the path of an image folder"),
    "labels": (lambda v: v in LABELS, f"must be one of {', '.join(LABELS)}"),
    "image_size": (
        lambda v: v is None or MIN_IMAGE_SIZE <= v <= MAX_IMAGE_SIZE,
        f"must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels",
    ),
    "limit_train": (lambda v: v is None or v >= 10, "must be at least 10"),
    "eval_batch_size": (lambda v: v >= 1, "must be at least 1"),
    "seed": (lambda v: 0 <= v <= MAX_SEED, f"must be between 0 and {MAX_SEED}"),
    "optimizer": (lambda v: v in OPTIMIZERS, f"must be one of {', '.join(OPTIMIZERS)}"),
    "scheduler": (lambda v: v in SCHEDULERS, f"unknown scheduler; choose from {', '.join(SCHEDULERS)}"),
    "augment": (lambda v: v in AUGMENTS, f"unknown augmentation; choose from {', '.join(AUGMENTS)}"),
    "compile_mode": (lambda v: v in COMPILE_MODES, f"must be one of {', '.join(COMPILE_MODES)}"),
    "model": (lambda v: v != "", "must name a model"),
    "device": (lambda v: v != "", "must name a device (auto, cpu, cuda, cuda:N or mps)"),
    "out": (lambda v: v != "", "must name a folder"),
    "name": (lambda v: v is None or _plain_folder_name(v), "must be a plain folder name (no / or \\, not . or ..)"),
}


def check_values(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with every field's type and range checked; the first problem is one UsageError naming it."""
    checked = {name: check_type(name, value) for name, value in values.items()}
    for name, value in checked.items():
        rule = RANGES.get(name)
        if rule is not None and value is not None and not rule[0](value):
            raise UsageError(f"{name}: {rule[1]}, got {show(value)}")
    return checked


# The course project's recipe, which `augment` extends.
SEED_RECIPE: dict[str, Any] = dict(
    epochs=20,
    batch_size=64,
    optimizer="adam",
    lr=1e-3,
    weight_decay=0.0,
    scheduler="step",
    step_size=10,
    gamma=0.1,
    augment="none",
    label_smoothing=0.0,
    bf16=True,  # on CPUs with bf16 in hardware (and CUDA); 63 -> 42 min for the study (docs/benchmarks.md)
)

# Each recipe is a set of overrides of the TrainConfig defaults above.
RECIPES: dict[str, dict[str, Any]] = {
    # The course project: Adam 1e-3, StepLR (x0.1 after epoch 10), 20 epochs, normalisation only. The course fixed
    # neither the batch size nor the step: docs/benchmarks.md, "Choosing the seed recipe". bf16 where the hardware
    # has it (--fp32 for the course's precision): docs/benchmarks.md, "The study in 35 minutes".
    "seed": SEED_RECIPE,
    # The course setup plus the two standard augmentations (random crop, horizontal flip): less overfitting.
    "augment": {**SEED_RECIPE, "augment": "crop-flip"},
    # airbench-style fast training of fastcnn (docs/fast.md). Nesterov SGD with large batches; LR 1.465e-3 per
    # image of the batch (0.75 at 512); weight decay 0.0153/11.5; a 1,000-image validation split (monitoring only).
    "fast": dict(
        model="fastcnn",
        epochs=10,
        batch_size=512,
        optimizer="sgd",
        lr=0.75,
        momentum=0.85,
        weight_decay=1.33e-3,
        scheduler="onecycle",
        warmup_epochs=2.0,
        label_smoothing=0.2,
        augment="translate-altflip",
        crop_padding=2,
        val_size=1000,
        eval_batch_size=250,
        whiten=True,
        dirac_init=True,
        frozen_bn_scale=True,
        bias_lr_scale=64.0,
        weight_averaging="lookahead",
        tta=2,
        test_checkpoint="last",
        channels_last=True,
        bf16=True,
        budget_epochs=8.0,  # the planner's widest width must fit 8 epochs (docs/benchmarks.md, "Width at 10 minutes")
        lr_scaling="linear",
    ),
    # ResNet-18 with the CIFAR stem, the standard strong baseline: SGD + Nesterov, one-cycle, crop and flip.
    "resnet18-cifar": dict(
        model="resnet18-cifar",
        epochs=30,
        batch_size=256,
        optimizer="sgd",
        lr=0.2,
        momentum=0.9,
        weight_decay=5e-4,
        scheduler="onecycle",
        warmup_epochs=2.0,
        label_smoothing=0.1,
        augment="crop-flip",
        crop_padding=4,
        tta=1,
        test_checkpoint="last",
        channels_last=True,
        bf16=True,
        lr_scaling="linear",
    ),
}
# Fine-tuning a trained model (--init-from) on a few hundred to a few thousand images: the fast recipe's
# optimisation, the body at 0.3x its LR from the first epoch (no frozen-head epochs: measured better on Imagenette
# subsets, docs/benchmarks.md "Small datasets"); the model and its arguments come from the init checkpoint.
RECIPES["finetune"] = {
    key: value
    for key, value in RECIPES["fast"].items()
    if key not in ("model", "whiten", "dirac_init", "frozen_bn_scale", "budget_epochs")
} | dict(epochs=16, warmup_epochs=2.0, freeze_epochs=0, body_lr_scale=0.3)

RECIPE_HELP: dict[str, str] = {
    "seed": "the course project: Adam 1e-3, StepLR(10, 0.1), 20 epochs, batch 64, no augmentation; bf16 where it pays",
    "augment": "the course project plus random crop and horizontal flip",
    "fast": "fastcnn, airbench-style: whitening, lookahead, Nesterov SGD, TTA; 10 epochs, or --time-budget",
    "resnet18-cifar": "ResNet-18 (CIFAR stem), Nesterov SGD one-cycle, crop+flip, label smoothing; 30 epochs",
    "finetune": "start from --init-from RUN: the fast recipe's optimiser, 16 epochs, the body at 0.3x the LR",
}


def recipe_value(recipe: str, name: str) -> Any:
    """Field ``name``'s value in ``recipe`` (its default where the recipe does not set it)."""
    values = RECIPES.get(recipe, {})
    return values[name] if name in values else TrainConfig.__dataclass_fields__[name].default


def make_config(recipe: str, **overrides: Any) -> TrainConfig:
    """Defaults, then the recipe, then explicit overrides (None means 'not given')."""
    if recipe not in RECIPES:
        raise UsageError(f"unknown recipe {recipe!r}; choose from: {', '.join(sorted(RECIPES))}")
    values: dict[str, Any] = {**RECIPES[recipe], "recipe": recipe}
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = TrainConfig.from_dict(values)
    validate(config)
    return config


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Config overrides written KEY=VALUE (the benchmark scripts' --set / --variant): a VALUE is read as JSON
    (numbers, true/false, null, lists), and kept as text if it is not JSON ("sgd", "ema")."""
    known = TrainConfig.field_names()
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"expected KEY=VALUE, got {item!r}")
        if key not in known:
            raise UsageError(f"unknown config key {key!r} in {item!r}")
        # JSON where it is JSON, else the text itself; nesting, size and integer length bounded either way
        overrides[key] = loads_json(value, f"{key}={value[:40]}{'...' * (len(value) > 40)}", UsageError, not_json=value)
    return overrides


def validate(config: TrainConfig) -> None:
    """Reject values that would fail later with an obscure error: every field's type and range, then the
    combinations. Reads the fields only, so it works on frozen and mutable configs alike."""
    from cifarlab.models.registry import MODELS  # local import: models imports torch

    check_values(dataclasses.asdict(config))
    if config.model not in MODELS:
        raise UsageError(f"model: unknown model {config.model!r}; choose from: {', '.join(sorted(MODELS))}")
    if config.recipe not in RECIPES:
        raise UsageError(f"recipe: unknown recipe {config.recipe!r}; choose from: {', '.join(sorted(RECIPES))}")
    validate_fast(config)
    if config.augmix_jsd > 0 and not config.augmix:
        raise UsageError("augmix_jsd: the consistency loss compares AugMix views of each image; it needs --augmix")
    if config.init_from is None and (config.freeze_epochs > 0 or config.body_lr_scale != 1.0):
        raise UsageError(
            "freeze_epochs and body_lr_scale apply to a model that starts from a trained one: give --init-from RUN"
        )
