"""CIFAR-100 (the official python version) as in-memory uint8 tensors: 100 fine classes or 20 coarse ones.

The archive holds ``cifar-100-python/`` with ``train`` (50,000 images), ``test`` (10,000) and ``meta`` (the class
names): pickled dicts read with the same restricted unpickler as CIFAR-10, checked field by field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifarlab.base.errors import DataError, UsageError
from cifarlab.data.cifar10 import (
    Archive,
    ImageData,
    check_class_names,
    check_pixels,
    files_fingerprint,
    installed_folder,
    read_labels,
    resolve_data_dir,
)
from cifarlab.data.safe_pickle import load_restricted

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
ARCHIVE = "cifar-100-python.tar.gz"
FOLDER = "cifar-100-python"
TRAIN_FILE, TEST_FILE, META_FILE = "train", "test", "meta"
LABELS = {"fine": 100, "coarse": 20}  # label set -> number of classes


def cifar100_archive() -> Archive:
    """CIFAR-100's official python-version archive (read from the module's constants when asked)."""
    return Archive("CIFAR-100", CIFAR100_URL, CIFAR100_MD5, ARCHIVE, FOLDER, (TRAIN_FILE, TEST_FILE, META_FILE), 161)


def text_keys(value: Any) -> Any:
    """A dict whose bytes keys (as pickles from Python 2 read with ``encoding="bytes"`` have) are strings."""
    if not isinstance(value, dict):
        return value
    return {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in value.items()}


def read_split(path: Path, labels: str) -> tuple[np.ndarray, np.ndarray]:
    """Read the official ``train`` or ``test`` file and check everything about it; errors name the file."""
    if not path.is_file():
        raise DataError(f"missing CIFAR-100 file: {path}")
    key = f"{labels}_labels"
    batch = text_keys(load_restricted(path))
    if not isinstance(batch, dict) or "data" not in batch or key not in batch:
        raise DataError(f"{path} is not a CIFAR-100 file (expected a dict with 'data' and '{key}')")
    images = check_pixels(path, batch["data"])
    return images, read_labels(path, batch[key], key, LABELS[labels], len(images))


def read_names(path: Path, labels: str) -> list[str]:
    """The fine or coarse class names from ``meta``, refused (naming the file) when one is not printable."""
    if not path.is_file():
        raise DataError(f"missing CIFAR-100 file: {path}")
    key = f"{labels}_label_names"
    meta = text_keys(load_restricted(path))
    names = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, (str, bytes)) for n in names):
        raise DataError(f"{path} is not a CIFAR-100 meta file (expected a dict with a list '{key}')")
    if len(names) != LABELS[labels]:
        raise DataError(f"{path}: expected {LABELS[labels]} {labels} label names, found {len(names)}")
    return check_class_names(path, [n.decode("latin-1") if isinstance(n, bytes) else n for n in names])


def load_cifar100(
    data_dir: str | os.PathLike | None = None, labels: str = "fine", allow_download: bool = True
) -> ImageData:
    """Read ``data_dir/cifar-100-python`` (downloading it when absent and allowed) with the ``labels`` asked for:
    "fine" (100 classes) or "coarse" (20 superclasses)."""
    if labels not in LABELS:
        raise UsageError(f"labels: must be 'fine' or 'coarse' (got {labels!r})")
    root = resolve_data_dir(data_dir)
    folder = installed_folder(root, cifar100_archive(), "CIFAR-100 files", allow_download)
    train_images, train_labels = read_split(folder / TRAIN_FILE, labels)
    test_images, test_labels = read_split(folder / TEST_FILE, labels)
    classes = read_names(folder / META_FILE, labels)
    return ImageData(
        train_images=torch.from_numpy(train_images),
        train_labels=torch.from_numpy(train_labels),
        test_images=torch.from_numpy(test_images),
        test_labels=torch.from_numpy(test_labels),
        classes=classes,
        root=root,
        record={
            "kind": "cifar100",
            "path": None,
            "classes": classes,
            "image_size": 32,
            "fingerprint": files_fingerprint(folder, [TRAIN_FILE, TEST_FILE]),
            "test": "the official test set (test)",
            "labels": labels,
        },
    )
