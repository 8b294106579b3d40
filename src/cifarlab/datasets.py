"""Choosing the data of a run: CIFAR-10, CIFAR-100 or a folder of images, all as one :class:`ImageData`.

(Contract stub: CIFAR-10 only until the dataset readers land.)
"""

from __future__ import annotations

import os
from typing import Any

from cifarlab.data import ImageData, load_cifar10, resolve_data_dir
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


def run_record(data: ImageData) -> dict[str, Any]:
    """The dataset record a run saves in run.json and its checkpoints: without the held-out file list, which
    split.json holds (it can be long)."""
    return {key: value for key, value in data.record.items() if key != "test_files"}


def data_source(data: ImageData, data_dir: str | os.PathLike | None) -> str:
    """Where the images came from, for messages and metrics: the image folder, else the CIFAR data folder."""
    path = data.record.get("path")
    return str(path) if path else str(resolve_data_dir(data_dir).resolve())
