"""Choosing the data of a run: CIFAR-10, CIFAR-100 or a folder of images, all as one :class:`ImageData`.

(Contract stub: CIFAR-10 only until the dataset readers land.)
"""

from __future__ import annotations

import os
from typing import Any

from cifarlab.data import ImageData, load_cifar10
from cifarlab.errors import DataError

DATASETS = ("cifar10", "cifar100")  # built-in names; anything else is the path of an image folder


def load_dataset(
    dataset: str = "cifar10",
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    labels: str = "fine",
    strict: bool = False,
    allow_download: bool = True,
) -> ImageData:
    """The dataset a run asks for, in memory: ``data_dir`` is the CIFAR folder, ``dataset`` a name or a folder."""
    if dataset == "cifar10" and image_size in (None, 32):
        return load_cifar10(data_dir, allow_download=allow_download)
    raise DataError(f"dataset {dataset!r} is not supported yet")


def reload(record: dict[str, Any], data_dir: str | os.PathLike | None = None, dataset: str | None = None) -> ImageData:
    """The images a run was trained on, from its dataset ``record``: CIFAR from ``data_dir`` (never a folder named
    in the record), an image folder from ``dataset`` or else the record's path, refused unless its file list
    matches the record's fingerprint."""
    kind = record.get("kind", "cifar10")
    data = load_dataset(
        kind if kind != "folder" else (dataset or record["path"]),
        data_dir,
        record.get("image_size"),
        record.get("labels", "fine"),
        allow_download=False,
    )
    if record.get("fingerprint") not in (None, data.record.get("fingerprint")):
        raise DataError("the images found are not the ones this run was trained on (their file list differs)")
    return data
