"""CIFAR-10 as in-memory uint8 tensors: reading and validating the official files, and the download.

The whole dataset is ~180 MB, so it is read once into tensors and every batch is cut, augmented and
normalised as a tensor operation: no per-image PIL work and no DataLoader workers in the training loop.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifarlab.base.errors import DataError, escape
from cifarlab.data.safe_pickle import load_restricted, one_line

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE = "cifar-10-python.tar.gz"
DOWNLOAD_PREFIX = ".cifarlab-download-"  # temporary folders inside the data folder while downloading
BATCH_DIR = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
NUM_CLASSES = 10
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MAX_CLASS_NAME = 100  # characters in a class name, as image folders and checkpoints allow
CHANNELS = ("red", "green", "blue")


@dataclass
class ImageData:
    """A dataset in memory: training and held-out test images as (N, 3, S, S) uint8, labels as int64.

    ``record`` is what a run saves about its data (run.json, checkpoint) so that later commands can read the
    same images again and refuse different ones: ``kind`` ("cifar10", "cifar100" or "folder"), ``path`` (the
    image folder; None for CIFAR, whose folder comes from --data-dir), ``classes``, ``image_size``,
    ``fingerprint`` (a hash of the file list), ``test`` (where the held-out images come from) and, by kind,
    ``labels`` (CIFAR-100: "fine" or "coarse") or ``test_files`` (folders split by cifarlab).
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    root: Path | None = None  # the folder they were read from (CIFAR: the one holding cifar-10-batches-py/)
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[-1])

    @property
    def kind(self) -> str:
        return str(self.record.get("kind", "cifar10"))


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """--data-dir, else $CIFARLAB_DATA_DIR, else ./data."""
    if data_dir:
        return Path(data_dir)
    env = os.environ.get("CIFARLAB_DATA_DIR")
    return Path(env) if env else Path("data")


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one official batch file and check everything about it; errors name the file."""
    if not path.is_file():
        raise DataError(f"missing CIFAR-10 file: {path}")
    batch = load_restricted(path)
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise DataError(f"{path} is not a CIFAR-10 batch (expected a dict with 'data' and 'labels')")
    return check_pixels(path, batch["data"]), read_labels(
        path, batch["labels"], "labels", NUM_CLASSES, len(batch["data"])
    )


def check_pixels(path: Path, data: Any) -> np.ndarray:
    """The ``data`` of an official CIFAR file as (N, 3, 32, 32) uint8, after checking it is (N, 3072) uint8."""
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {dtype} {shape}")
    return data.reshape(-1, 3, 32, 32)


def read_labels(path: Path, values: Any, key: str, count: int, size: int) -> np.ndarray:
    """The labels under ``key`` of an official CIFAR file as int64, checked: integers in 0..count-1, one per image."""
    if not (
        isinstance(values, list)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        or isinstance(values, np.ndarray)
        and values.dtype.kind in "iu"
    ):
        raise DataError(f"{path}: '{key}' must be a list of integers")
    try:
        labels = np.asarray(values, dtype=np.int64)
    except OverflowError:
        raise DataError(f"{path}: '{key}' must be a list of integers in 0-{count - 1}") from None
    if labels.ndim != 1 or len(labels) != size:
        raise DataError(f"{path}: {size} images but {labels.size} {key}")
    if len(labels) and (labels.min() < 0 or labels.max() >= count):
        raise DataError(f"{path}: {key} out of range 0-{count - 1} (min {labels.min()}, max {labels.max()})")
    return labels


def _read_classes(path: Path) -> list[str]:
    """The class names from batches.meta; the standard ones when the file is absent."""
    if not path.is_file():
        return list(CLASSES)
    meta = load_restricted(path)
    names = meta.get("label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, (str, bytes)) for n in names):
        raise DataError(f"{path} is not a CIFAR-10 batches.meta (expected a dict with a list 'label_names')")
    if len(names) != NUM_CLASSES:
        raise DataError(f"{path}: expected 10 label names, found {len(names)}")
    return check_class_names(path, [n.decode("latin-1") if isinstance(n, bytes) else n for n in names])


def check_class_names(path: Path, names: list[str]) -> list[str]:
    """The class names of an official meta file, refused as image folders' are (naming the file) when one is
    empty, too long or not printable (a control character would forge lines in predict's output), or repeated."""
    for name in names:
        if not name or len(name) > MAX_CLASS_NAME or not name.isprintable():
            raise DataError(
                f"{path}: class name {escape(name)!r} is empty, longer than {MAX_CLASS_NAME} characters or not "
                "printable"
            )
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise DataError(f"{path}: two classes are named {escape(twice)!r}")
    return names


@dataclass(frozen=True)
class Archive:
    """An official dataset archive: what to fetch, its checksum, and the folder (and files) it must hold."""

    name: str  # as said in messages: "CIFAR-10"
    url: str
    md5: str
    filename: str  # the archive's file name
    folder: str  # the folder inside it, installed into the data folder
    files: tuple[str, ...]  # the files that folder must hold
    megabytes: int  # its size, said before downloading


def cifar10_archive() -> Archive:
    """CIFAR-10's official python-version archive (read from the module's constants when asked)."""
    return Archive("CIFAR-10", CIFAR_URL, CIFAR_MD5, ARCHIVE, BATCH_DIR, (*TRAIN_FILES, TEST_FILE), 170)


def missing_files(folder: Path, names: tuple[str, ...] | None = None) -> list[str]:
    """The files among ``names`` (CIFAR-10's batch files) that ``folder`` lacks (all when it is absent)."""
    return [name for name in names or (*TRAIN_FILES, TEST_FILE) if not (folder / name).is_file()]


def fetch(url: str, dest: Path) -> None:
    """Stream ``url`` into the file ``dest``: cifarlab's only network access."""
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as f:
        shutil.copyfileobj(response, f, 1 << 20)


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract_batches(archive: Path, dest: Path, source: Archive | None = None) -> Path:
    """Extract ``archive`` into ``dest`` with tarfile's "data" filter (no member may land outside ``dest``, no
    links out, no device files) and return the complete batch folder inside it."""
    source = source or cifar10_archive()
    if not hasattr(tarfile, "data_filter"):
        raise DataError(
            f"extracting the {source.name} archive safely needs Python 3.10.12, 3.11.4 or newer (tarfile's "
            f"extraction filters); extract {source.filename} yourself and give --data-dir"
        )
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(dest, filter="data")
    except tarfile.FilterError as exc:
        raise DataError(f"{source.url}: refused the archive, a member would be unsafe to extract: {exc}") from None
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DataError(f"{source.url}: the download is not a readable tar.gz archive ({one_line(exc)})") from None
    folder = dest / source.folder
    missing = missing_files(folder, source.files)
    if missing:
        raise DataError(f"{source.url}: the archive has no {source.folder}/{missing[0]}")
    return folder


def install_folder(new: Path, target: Path, trash: Path) -> None:
    """Rename the complete ``new`` folder to ``target``; an incomplete one already there is moved to ``trash``."""
    if target.is_dir() or target.is_symlink():
        os.replace(target, trash)
    os.replace(new, target)


def remove_leftovers(root: Path) -> None:
    """Delete temporary folders that an interrupted earlier download left in ``root``."""
    for path in root.glob(DOWNLOAD_PREFIX + "*"):
        shutil.rmtree(path, ignore_errors=True)


def download(root: Path, source: Archive | None = None) -> None:
    """Fetch the official archive (CIFAR-10's unless ``source`` says), check its MD5, extract it beside the
    target and rename it into place.

    Everything happens in a temporary folder inside ``root``: an interruption at any point leaves no
    half-written ``cifar-10-batches-py/`` behind, and the next download deletes the temporary folder.
    """
    from cifarlab.base.progress import log

    source = source or cifar10_archive()
    # said first: offline, the name lookup alone can take a minute to fail, which would look like a hang
    log(
        f"{source.name} not found in {root.resolve()}: downloading {source.url} ({source.megabytes} MB). To use "
        "a copy you already have, give --data-dir DIR or set CIFARLAB_DATA_DIR=DIR."
    )
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_leftovers(root)
        work = Path(tempfile.mkdtemp(prefix=DOWNLOAD_PREFIX, dir=root))
        try:
            archive = work / source.filename
            fetch(source.url, archive)
            md5 = file_md5(archive)
            if md5 != source.md5:
                raise DataError(
                    f"{source.url}: checksum mismatch (MD5 {md5}, expected {source.md5}): the download is "
                    "damaged or not the official archive; nothing was installed"
                )
            folder = extract_batches(archive, work / "extracted", source)
            install_folder(folder, root / source.folder, work / "replaced")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except Exception as exc:
        if created and root.is_dir() and not any(root.iterdir()):
            root.rmdir()  # leave no empty folder behind from a download that never started
        if isinstance(exc, DataError):
            raise
        raise DataError(
            f"{source.name} not found in {root.resolve()} (looked for {root.resolve() / source.folder}), and "
            f"downloading {source.url} failed: {type(exc).__name__}: {one_line(exc)}. Fix: point cifarlab at a "
            f"folder that holds {source.folder}/ with --data-dir DIR or CIFARLAB_DATA_DIR=DIR, or download and "
            f"extract {source.filename} into it."
        ) from None


def installed_folder(root: Path, source: Archive, holds: str, allow_download: bool) -> Path:
    """``root/<source.folder>``, downloaded when absent and replaced when it lacks files (an interrupted download),
    if downloads are allowed; otherwise a missing folder is a one-line error. ``holds`` names its files."""
    folder = root / source.folder
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder} is not a folder (it should hold the {holds})")
    if not folder.is_dir():
        if not allow_download:
            raise DataError(f"{source.name} not found: no {source.folder}/ folder in {root.resolve()}")
        download(root, source)
    elif allow_download and (missing := missing_files(folder, source.files)):
        from cifarlab.base.progress import log

        log(f"{folder} is incomplete (no {missing[0]}; an interrupted download?): replacing it")
        download(root, source)
    return folder


def load_cifar10(data_dir: str | os.PathLike | None = None, allow_download: bool = True) -> ImageData:
    """Read the official python-version batches from ``data_dir/cifar-10-batches-py`` into uint8 tensors.

    A folder that lacks batch files (left by an earlier failed download) is downloaded again and replaced
    when downloads are allowed; otherwise the missing file is named.
    """
    root = resolve_data_dir(data_dir)
    folder = installed_folder(root, cifar10_archive(), "CIFAR-10 batch files", allow_download)
    train = [_read_batch(folder / name) for name in TRAIN_FILES]
    test_images, test_labels = _read_batch(folder / TEST_FILE)
    classes = _read_classes(folder / META_FILE)
    return ImageData(
        train_images=torch.from_numpy(np.concatenate([x for x, _ in train])),
        train_labels=torch.from_numpy(np.concatenate([y for _, y in train])),
        test_images=torch.from_numpy(test_images),
        test_labels=torch.from_numpy(test_labels),
        classes=classes,
        root=root,
        record={
            "kind": "cifar10",
            "path": None,
            "classes": classes,
            "image_size": 32,
            "fingerprint": files_fingerprint(folder, [*TRAIN_FILES, TEST_FILE]),
            "test": "the official test set (test_batch)",
        },
    )


def files_fingerprint(root: Path, names: list[str]) -> str:
    """A short hash of files' names (relative to ``root``) and sizes: the same list of files, the same value."""
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(f"{name}\0{(root / name).stat().st_size}\n".encode())
    return digest.hexdigest()[:16]
