"""Values of command-line flags: each parser turns text into a checked value or an argparse error that says what was
given. Shared by every command (cli, sweep); imports nothing heavy, so building the parser stays quick."""

from __future__ import annotations

import argparse
import math

MAX_SEED = 2**32 - 1  # as config.MAX_SEED; repeated so that building the parser imports nothing heavy


def whole_number(text: str) -> int:
    """An integer flag value."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
    value = whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def seed_int(text: str) -> int:
    value = whole_number(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_SEED}, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0 (nan and inf are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def add_data_flags(p: argparse.ArgumentParser) -> None:
    """Which images a run trains on: ``train``, ``study`` and ``benchmark`` (docs/datasets.md)."""
    p.add_argument(
        "--dataset",
        metavar="NAME_OR_FOLDER",
        help="cifar10 (default), cifar100, or a folder of images: FOLDER/<class>/* (cifarlab holds out a test "
        "split) or FOLDER/train/<class>/* with FOLDER/test/ or FOLDER/val/ as the test set",
    )
    p.add_argument("--labels", choices=["fine", "coarse"], help="CIFAR-100: 100 fine classes (default) or 20 coarse")
    p.add_argument(
        "--image-size",
        type=positive_int,
        metavar="N",
        help="pixels per side (default 32 for CIFAR, 64 for folders): shorter side resized to N, centre crop",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        default=None,
        help="image folders: refuse the folder if any file cannot be read (default: skip and count them)",
    )
    p.add_argument(
        "--data-dir",
        help="folder holding the CIFAR files, e.g. cifar-10-batches-py/ (default: $CIFARLAB_DATA_DIR, else ./data)",
    )
