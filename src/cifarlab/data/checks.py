"""What a dataset record holds, checked: class names, image size, the record itself and the normalisation.

Training checks its data with these before the first epoch and loading checks a checkpoint with the same rules, so
no run trains and then refuses its own file.
"""

from __future__ import annotations

import math
from typing import Any

from cifarlab.config.train_config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from cifarlab.data.cifar10 import MAX_CLASS_NAME  # characters in one class name: one limit for every loader
from cifarlab.models.registry import MAX_CLASSES, shorten

DEFAULT_IMAGE_SIZE = 32  # checkpoints without an image size are CIFAR-10's


DATASET_KINDS = ("cifar10", "cifar100", "folder")


MAX_TEXT = 4096  # characters in one text field of the dataset record (a path, the held-out description)


def data_problems(classes: Any, image_size: Any, record: Any) -> list[str]:
    """What loading would refuse in a run's class names, image size and dataset record, as a checkpoint holds them:
    training checks its data with this before the first epoch, so no run trains and then refuses its own file."""
    class_problems = classes_problems(classes)
    return [
        *class_problems,
        *image_size_problems(image_size),
        *dataset_problems(record, None if class_problems else classes, image_size),
    ]


def normalisation_problems(mean: Any, std: Any) -> list[str]:
    """``mean`` and ``std`` must be 3 finite numbers each, every std positive (images are divided by it)."""
    problems = []
    for key, values in (("mean", mean), ("std", std)):
        if not (isinstance(values, list) and len(values) == 3 and all(map(is_finite_number, values))):
            problems.append(f"'{key}' is not a list of 3 finite numbers")
    if isinstance(std, list) and any(is_finite_number(v) and v <= 0 for v in std):
        problems.append("'std' has a value that is not positive")
    return problems


def image_size_problems(image_size: Any) -> list[str]:
    """The model's image size: a whole number of pixels in the range every model supports."""
    if is_int_in(image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE):
        return []
    return [f"'image_size' is not a whole number from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}"]


def is_finite_number(value: Any) -> bool:
    """An int or float (not a bool) that is neither NaN nor infinite, nor too large for a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def is_int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def classes_problems(classes: Any) -> list[str]:
    """Class names are printed by predict: a list of 2..MAX_CLASSES distinct, short, printable strings."""
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        return ["'classes' is not a list of class names"]
    if not 2 <= len(classes) <= MAX_CLASSES:
        return [f"'classes' has {len(classes)} names (a model has 2 to {MAX_CLASSES} classes)"]
    if any(not c or len(c) > MAX_CLASS_NAME or not c.isprintable() for c in classes):
        bad = next(c for c in classes if not c or len(c) > MAX_CLASS_NAME or not c.isprintable())
        return [
            (
                f"'classes' has a name that is empty, longer than {MAX_CLASS_NAME} characters or not printable "
                f"({shorten(bad)})"
            )
        ]
    if len(set(classes)) != len(classes):
        return ["'classes' names a class twice"]
    return []


def dataset_problems(record: Any, classes: Any, image_size: Any) -> list[str]:
    """The dataset record: its kind, class names (the checkpoint's own), size (the checkpoint's), path and
    fingerprint; later commands reload the images from it."""
    if not isinstance(record, dict) or not all(isinstance(k, str) for k in record):
        return ["'dataset' is not a dataset record (a dict)"]
    problems = []
    if record.get("kind") not in DATASET_KINDS:
        problems.append(f"'dataset' kind is not one of {', '.join(DATASET_KINDS)} (got {shorten(record.get('kind'))})")
    names = record.get("classes")
    if classes is not None and not (
        isinstance(names, list) and all(isinstance(c, str) for c in names) and names == classes
    ):
        problems.append("'dataset' classes differ from the checkpoint's 'classes'")
    size = record.get("image_size")
    if not is_int_in(size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE) or size != (image_size or DEFAULT_IMAGE_SIZE):
        problems.append(f"'dataset' image_size is not the checkpoint's ({shorten(record.get('image_size'))})")
    if not (record.get("path") is None or is_text(record["path"])):
        problems.append("'dataset' path is not a folder name")
    if not is_text(record.get("fingerprint")):
        problems.append("'dataset' fingerprint is missing or not a string")
    for key in ("test", "labels", "layout"):
        if key in record and not is_text(record[key]):
            problems.append(f"'dataset' {key} is not a string")
    if "skipped" in record and not is_int_in(record["skipped"], 0, 2**63):
        problems.append("'dataset' skipped is not a whole number >= 0")
    return problems


def is_text(value: Any) -> bool:
    """A non-empty string of at most MAX_TEXT printable characters (it may be printed in messages)."""
    return isinstance(value, str) and 0 < len(value) <= MAX_TEXT and value.isprintable()
