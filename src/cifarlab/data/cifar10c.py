"""The published CIFAR-10-C files (Hendrycks & Dietterich, ICLR 2019), read safely and in bounded memory.

The official layout is one folder holding ``<corruption>.npy`` for each of the 15 corruptions, every one a uint8
array of 50,000 x 32 x 32 x 3 (channels last): severities 1 to 5 in blocks of 10,000, each block the official
test set in its own order; and ``labels.npy``, the 50,000 labels (the test labels five times over). Here a block
is as long as the run's test set (10,000 for CIFAR-10; the tests use a smaller generated set).

Every file is data from elsewhere: it is read with ``np.load(allow_pickle=False)`` (an object array, which would
unpickle, is refused) and memory-mapped (``mmap_mode="r"``), so a block is read only when asked for and a file's
header never makes this process allocate what it claims. Its shape, dtype and labels are checked before any
image is used; whatever is wrong is one :class:`~cifarlab.base.errors.DataError` line, never a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifarlab.base.errors import DataError, escape

SIDE = 32  # CIFAR-10-C's images, the only size its files come in
BLOCKS = 5  # severities 1..5, one block of the test set each
LABELS_FILE = "labels.npy"
NPY_MAGIC = b"\x93NUMPY"


def load_npy(path: Path) -> np.ndarray:
    """A ``.npy`` array, memory-mapped, with pickled objects refused; any problem is one DataError line."""
    where = escape(str(path))
    if not path.is_file():
        raise DataError(f"{where}: no such file (CIFAR-10-C holds <corruption>.npy and {LABELS_FILE})")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(NPY_MAGIC))
    except OSError as exc:
        raise DataError(f"{where}: cannot be read ({escape(exc.strerror or str(exc))})") from None
    if magic != NPY_MAGIC:
        raise DataError(f"{where}: not a .npy file (it does not start with numpy's header)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError, TypeError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "object" in detail.lower():
            raise DataError(f"{where}: holds Python objects, not numbers (refused: loading would unpickle)") from None
        raise DataError(f"{where}: not a readable .npy array ({escape(detail)})") from None
    if not isinstance(array, np.ndarray):  # np.load reads an .npz archive by its content, whatever its name
        getattr(array, "close", lambda: None)()
        raise DataError(f"{where}: a .npz archive, not a single .npy array")
    return array


def check_images(array: np.ndarray, path: Path, test_size: int) -> None:
    """A corruption's file: uint8, (5 x test_size, 32, 32, 3)."""
    expected = (BLOCKS * test_size, SIDE, SIDE, 3)
    if array.dtype != np.uint8:
        raise DataError(f"{escape(str(path))}: dtype {array.dtype}, expected uint8 images")
    if tuple(array.shape) != expected:
        raise DataError(
            f"{escape(str(path))}: shape {tuple(array.shape)}, expected {expected} (severities 1-5 in blocks of "
            f"the {test_size:,} test images, 32 x 32 x 3 channels last)"
        )


def check_labels(array: np.ndarray, path: Path, test_labels: np.ndarray) -> None:
    """labels.npy: whole numbers, (5 x test_size,), each block equal to the test set's labels in order."""
    where = escape(str(path))
    n = len(test_labels)
    if array.dtype.kind not in "iu":
        raise DataError(f"{where}: dtype {array.dtype}, expected whole-number labels")
    if tuple(array.shape) != (BLOCKS * n,):
        raise DataError(f"{where}: shape {tuple(array.shape)}, expected ({BLOCKS * n},): the test labels 5 times")
    for block in range(BLOCKS):
        found = np.asarray(array[block * n : (block + 1) * n]).astype(np.int64)
        wrong = np.flatnonzero(found != test_labels)
        if len(wrong):
            raise DataError(
                f"{where}: severity {block + 1}'s labels do not match the test set's (first at position "
                f"{block * n + int(wrong[0])}: {int(found[wrong[0]])} against {int(test_labels[wrong[0]])}); "
                "these are not the CIFAR-10-C files of this test set"
            )


@dataclass(frozen=True)
class Cifar10C:
    """The checked, memory-mapped CIFAR-10-C files of some corruptions; :meth:`images` reads one block's images."""

    folder: Path
    arrays: dict[str, np.ndarray]
    test_size: int

    def images(self, name: str, severity: int, positions: np.ndarray) -> np.ndarray:
        """The images at ``positions`` of the test set under corruption ``name`` at ``severity`` (uint8 NHWC, a
        copy in memory)."""
        start = (severity - 1) * self.test_size
        picked = self.arrays[name][start + np.asarray(positions, dtype=np.int64)]
        return np.ascontiguousarray(picked, dtype=np.uint8)


def open_cifar10c(folder: str | Path, names: Sequence[str], test_labels: np.ndarray) -> Cifar10C:
    """The CIFAR-10-C files of ``names`` in ``folder``, each checked (shape, dtype; labels.npy against
    ``test_labels``, the run's whole test set in order) before any image is read."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"--cifar10c {escape(str(folder))}: no such folder")
    labels = np.asarray(test_labels).astype(np.int64)
    check_labels(load_npy(root / LABELS_FILE), root / LABELS_FILE, labels)
    arrays = {}
    for name in names:
        path = root / f"{name}.npy"
        arrays[name] = load_npy(path)
        check_images(arrays[name], path, len(labels))
    return Cifar10C(root, arrays, len(labels))
