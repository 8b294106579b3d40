"""Choosing the data of a run: CIFAR-10, CIFAR-100 or a folder of images, all as one :class:`ImageData`.

``load_dataset`` reads what a new run asks for; ``reload`` reads what a finished run was trained on, from the
dataset record it saved (run.json, checkpoint), and refuses images that are not the same ones.
``validate_dataset`` checks, before the first epoch, everything a checkpoint of the run will be checked for.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from cifarlab.base.errors import DataError, UsageError, escape
from cifarlab.base.progress import log
from cifarlab.data.checks import data_problems, normalisation_problems
from cifarlab.data.cifar10 import ImageData, load_cifar10, resolve_data_dir
from cifarlab.data.cifar100 import LABELS, load_cifar100
from cifarlab.data.folders import load_folder
from cifarlab.data.images import check_fits, resize_images
from cifarlab.data.split import flat_channels

DATASETS = ("cifar10", "cifar100")  # built-in names; anything else is the path of an image folder
CIFAR_SIZE = 32  # CIFAR's own image size, the default for CIFAR
FOLDER_SIZE = 64  # the default image size for a folder of images
IMAGE_SIZES = (16, 512)  # the range --image-size accepts


def default_image_size(dataset: str) -> int:
    """32 for CIFAR (its own size), 64 for an image folder."""
    return CIFAR_SIZE if dataset in DATASETS else FOLDER_SIZE


def check_arguments(dataset: str, image_size: int | None, labels: str) -> None:
    """The image size and label set asked for make sense for this dataset."""
    low, high = IMAGE_SIZES
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)):
        raise UsageError(f"image_size: must be a whole number from {low} to {high} (got {image_size!r})")
    if image_size is not None and not low <= image_size <= high:
        raise UsageError(f"image_size: must be from {low} to {high} (got {image_size})")
    if labels not in LABELS:
        raise UsageError(f"labels: must be 'fine' or 'coarse' (got {escape(str(labels))!r})")
    if labels != "fine" and dataset != "cifar100":
        raise UsageError(f"labels: {labels!r} applies to --dataset cifar100 only")


def at_size(data: ImageData, image_size: int) -> ImageData:
    """CIFAR images resized to ``image_size`` (bilinear, antialiased when shrinking); the same data at 32."""
    if image_size == data.image_size:
        return data
    check_fits(len(data.train_images) + len(data.test_images), image_size, data.kind)
    log(f"resizing {data.kind} to {image_size} x {image_size}")
    return replace(
        data,
        train_images=resize_images(data.train_images, image_size),
        test_images=resize_images(data.test_images, image_size),
        record={**data.record, "image_size": image_size},
    )


def load_dataset(
    dataset: str = "cifar10",
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    labels: str = "fine",
    strict: bool = False,
    allow_download: bool = True,
) -> ImageData:
    """The dataset a run asks for, in memory: ``data_dir`` is the CIFAR folder, ``dataset`` a name or a folder.

    ``image_size`` None means 32 for CIFAR and 64 for a folder; ``labels`` ("fine" or "coarse") is CIFAR-100's
    label set; ``strict`` refuses a folder with unreadable image files instead of skipping them."""
    check_arguments(dataset, image_size, labels)
    size = image_size or default_image_size(dataset)
    if dataset == "cifar10":
        return at_size(load_cifar10(data_dir, allow_download=allow_download), size)
    if dataset == "cifar100":
        return at_size(load_cifar100(data_dir, labels, allow_download=allow_download), size)
    if not Path(dataset).is_dir():
        raise UsageError(f"dataset: {escape(dataset)!r} is neither cifar10, cifar100 nor a folder of images")
    check_folder_path(str(Path(dataset).resolve()))  # before decoding anything
    return load_folder(dataset, size, strict)


def reload(record: dict[str, Any], data_dir: str | os.PathLike | None = None, dataset: str | None = None) -> ImageData:
    """The images a run was trained on, from its dataset ``record``: CIFAR from ``data_dir`` (never a folder named
    in the record), an image folder from ``dataset`` or else the record's path, refused unless its file list
    matches the record's fingerprint."""
    kind = record.get("kind", "cifar10")
    size = record.get("image_size")
    if kind not in (*DATASETS, "folder"):
        raise DataError(f"the run's dataset record has an unknown kind {escape(str(kind))!r}")
    if dataset is not None and dataset != kind and (kind != "folder" or dataset in DATASETS):
        raise DataError(f"this run was trained on {dataset_words(record)}, not on {escape(dataset)}")
    if kind == "folder":
        path = dataset or record.get("path")
        if not isinstance(path, str) or not Path(path).is_dir():
            raise DataError(
                f"{escape(str(path))}: the run's image folder is not there (moved? give its place with --dataset PATH)"
            )
        data = load_folder(path, size or FOLDER_SIZE)
    else:
        data = load_dataset(kind, data_dir, size, record.get("labels", "fine"), allow_download=False)
    found, expected = data.record.get("fingerprint"), record.get("fingerprint")
    if expected is not None and found != expected:
        where = data.record.get("path") or data.root
        raise DataError(
            f"{where}: the images found are not the ones this run was trained on (their file list differs: "
            f"fingerprint {found}, the run's {expected})"
        )
    return data


def dataset_words(record: dict[str, Any]) -> str:
    """The dataset of a record in a few words: "cifar10", "cifar100 (coarse labels)" or the folder's path."""
    kind = record.get("kind", "cifar10")
    if kind == "folder":
        return f"the image folder {escape(str(record.get('path')))}"
    return f"{kind} ({record['labels']} labels)" if kind == "cifar100" and "labels" in record else str(kind)


def run_record(data: ImageData) -> dict[str, Any]:
    """The dataset record a run saves in run.json and its checkpoints: without the held-out file list, which
    split.json holds (it can be long)."""
    return {key: value for key, value in data.record.items() if key != "test_files"}


def data_source(data: ImageData, data_dir: str | os.PathLike | None) -> str:
    """Where the images came from, for messages and metrics: the image folder, else the CIFAR data folder; escaped,
    so a folder name that is not UTF-8 (or holds control characters) prints as one readable line."""
    path = data.record.get("path")
    return escape(str(path) if path else str(resolve_data_dir(data_dir).resolve()))


def validate_dataset(data: ImageData, mean: list[float], std: list[float], verbose: bool = True) -> None:
    """Refuse, before the first epoch, data that the run's checkpoints would be refused for when read back (class
    names, image size, dataset record, normalisation), so no run trains and then cannot use its own file; say
    what is handled instead (constant channels, top-3 of 3 classes or fewer) when ``verbose``."""
    path = data.record.get("path")
    where = escape(str(path or data.kind))
    if isinstance(path, str):
        check_folder_path(path)
    size = data.image_size
    if tuple(data.train_images.shape[1:]) != (3, size, size):  # the test images stay untouched until the test
        raise DataError(f"{where}: the training images are not 3 x {size} x {size} (RGB, square)")
    problems = data_problems(list(data.classes), size, run_record(data)) + normalisation_problems(mean, std)
    if problems:
        raise DataError(f"{where}: cannot train on this data, its checkpoints would be refused: {'; '.join(problems)}")
    flat = flat_channels(std)
    if flat and verbose:
        log(f"{' and '.join(flat)}: constant over the training split (std under one grey level), centred, not scaled")
    if len(data.classes) <= 3 and verbose:
        log(f"{len(data.classes)} classes: top-3 accuracy counts every image (k is capped at the number of classes)")


def check_folder_path(path: str) -> None:
    """An image folder's absolute path must be printable text, as the run's records hold it: no bytes that are not
    UTF-8 (surrogate escapes) and no control characters."""
    if not path.isprintable():
        raise DataError(
            f"{escape(path)}: the dataset folder's path is not printable UTF-8 text (a name with bytes that are not "
            "UTF-8, or with control characters), which the run's records cannot hold; rename the folder"
        )
