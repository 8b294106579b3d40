"""CIFAR-10 as in-memory uint8 tensors: reading, validating, splitting, normalising and batching.

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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifarlab.base.errors import DataError, escape
from cifarlab.safe_pickle import load_restricted, one_line

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
MIN_STD = 1 / 255  # a channel that varies less than one grey level over the training split is centred, not scaled
FLAT_STD = 1.0  # the std such a channel is divided by (no real std of [0, 1] values reaches it)


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


def class_quotas(counts: list[int], total: int) -> list[int]:
    """Split ``total`` over classes in proportion to their sizes (largest remainders first; ties to lower
    classes): ``total // C`` each when the classes are equally large, as in CIFAR. A class of two or more images
    whose share rounds to none gets one, taken from the largest quota."""
    n = sum(counts)
    exact = [total * c / n for c in counts]
    quotas = [int(e) for e in exact]
    order = sorted(range(len(counts)), key=lambda c: (-(exact[c] - quotas[c]), c))
    for c in order[: total - sum(quotas)]:
        quotas[c] += 1
    for c in range(len(counts)):  # a class too small for its share still gets one image, from the largest quota
        if quotas[c] == 0 and counts[c] >= 2 and max(quotas) > 1:
            quotas[quotas.index(max(quotas))] -= 1
            quotas[c] = 1
    return quotas


def default_val_size(num_train: int) -> int:
    """10% of the training images (5,000 on CIFAR), as in the course project."""
    return num_train // 10


def stratified_split(
    labels: torch.Tensor, val_size: int | None, seed: int, num_classes: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a train/validation split holding out ``val_size`` images (None: 10%), each class in proportion.

    Reproducible from the seed alone; both index tensors are sorted so the split is easy to compare and save.
    """
    num_classes = num_classes or (int(labels.max()) + 1 if len(labels) else 0)
    val_size = default_val_size(len(labels)) if val_size is None else val_size
    counts = [int((labels == c).sum()) for c in range(num_classes)]
    if not len(labels):
        raise DataError("no training images to split")
    quotas = class_quotas(counts, val_size)
    gen = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        if len(idx) <= quotas[c]:
            raise DataError(f"class {c} has only {len(idx)} images; cannot hold out {quotas[c]} for validation")
        val_idx.append(idx[: quotas[c]])
        train_idx.append(idx[quotas[c] :])
    return torch.cat(train_idx).sort().values, torch.cat(val_idx).sort().values


def balanced_subset(indices: torch.Tensor, labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """A class-balanced random subset of ``indices`` with n images (n/C per class, remainder spread)."""
    gen = torch.Generator().manual_seed(seed + 1)
    num_classes = int(labels.max()) + 1
    chosen = []
    for c in range(num_classes):
        idx = indices[labels[indices] == c]
        take = n // num_classes + (1 if c < n % num_classes else 0)
        chosen.append(idx[torch.randperm(len(idx), generator=gen)[:take]])
    return torch.cat(chosen).sort().values


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, on the [0, 1] scale. Computed on the training split only.

    Exact, from a 256-bin histogram per channel: a float64 copy of the training split would take ~1.2 GB and
    seconds that a --time-budget run would rather spend training. A channel (nearly) constant over the split, std
    below MIN_STD, gets std FLAT_STD: it is only centred, where dividing by 0 would make every input NaN."""
    counts = torch.stack([torch.bincount(images[:, c].reshape(-1), minlength=256) for c in range(images.shape[1])])
    counts = counts.double()
    values = torch.arange(256, dtype=torch.float64) / 255
    n = counts.sum(1)
    mean = (counts * values).sum(1) / n
    var = (counts * (values - mean[:, None]) ** 2).sum(1) / (n - 1)  # unbiased, as torch.std
    return mean.tolist(), [std if std >= MIN_STD else FLAT_STD for std in var.sqrt().tolist()]


def flat_channels(std: list[float]) -> list[str]:
    """The names of the channels :func:`channel_stats` found constant (centred only), e.g. ["blue"]."""
    return [CHANNELS[c] if c < len(CHANNELS) else str(c) for c, value in enumerate(std) if value == FLAT_STD]


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32, scaled to [0, 1] then standardised per channel."""
    x = images.float().div_(255)
    return x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))


def send(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Random numbers drawn on the CPU, sent to ``device``. To a GPU through pinned memory without waiting: a plain
    copy would make the CPU wait for every queued step, twice per batch."""
    if device.type == "cuda":
        return values.pin_memory().to(device, non_blocking=True)
    return values.to(device)


def random_crop(images: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Pad every image by ``padding`` zeros and cut a random 32x32 window from each, in one gather."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    dy = send(torch.randint(0, 2 * padding + 1, (n,), generator=gen), images.device)
    dx = send(torch.randint(0, 2 * padding + 1, (n,), generator=gen), images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, :, None]  # (n, h, 1)
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, :]  # (n, 1, w)
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_flip(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = send(torch.rand(len(images), generator=gen) < 0.5, images.device)
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def reflect_index(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map positions up to ``size - 1`` outside [0, size) back inside by mirroring at the edges (reflect padding)."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def random_translate(images: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels each way, filling the edge by reflection, in one gather.

    The result has channels-last strides (it is gathered in NHWC), which channels-last models take without a copy.
    """
    n, _, h, w = images.shape
    dev = images.device
    dy = send(torch.randint(-max_shift, max_shift + 1, (n,), generator=gen), dev)
    dx = send(torch.randint(-max_shift, max_shift + 1, (n,), generator=gen), dev)
    rows = reflect_index(dy[:, None] + torch.arange(h, device=dev), h)[:, :, None]  # (n, h, 1)
    cols = reflect_index(dx[:, None] + torch.arange(w, device=dev), w)[:, None, :]  # (n, 1, w)
    batch = torch.arange(n, device=dev)[:, None, None]
    return images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


class Batches:
    """Iterate over (normalised float images, labels) batches cut from in-memory uint8 tensors.

    Shuffling and augmentation draw from a CPU generator that lives with the object, so a seeded run
    gives the same batches in the same order, and the generator's state can be checkpointed.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        mean: torch.Tensor,
        std: torch.Tensor,
        shuffle: bool = False,
        augment: str = "none",
        crop_padding: int = 4,
        seed: int = 0,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.mean = mean.to(device)
        self.std = std.to(device)
        self.shuffle = shuffle
        self.augment = augment
        self.crop_padding = crop_padding
        self.generator = torch.Generator().manual_seed(seed)
        self.rank = rank
        self.world_size = world_size
        # translate-altflip: each image gets a random flip in the first epoch and the opposite one in the next,
        # so every pair of epochs sees both orientations (less redundant than independent flips).
        self.epoch = 0  # passes started so far; its parity picks the flip (restored on resume)
        if augment == "translate-altflip":
            self.flip_first = (torch.rand(len(self.images), generator=self.generator) < 0.5).to(device)

    def __len__(self) -> int:
        n = len(self.images) // self.world_size
        return (n + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.images)
        # Every rank draws the same permutation (same seed), then keeps its own interleaved shard:
        # no overlap between ranks, and the same number of batches on each.
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        if self.world_size > 1:
            order = order[: n - n % self.world_size][self.rank :: self.world_size]
            n = len(order)
        order = send(order, self.images.device)
        odd_epoch = self.epoch % 2 == 1
        self.epoch += 1
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            x, y = self.images[idx], self.labels[idx]
            if self.augment == "crop-flip":
                x = random_flip(random_crop(x, self.crop_padding, self.generator), self.generator)
            elif self.augment == "translate-altflip":
                x = random_translate(x, self.crop_padding, self.generator)
                x = torch.where((self.flip_first[idx] ^ odd_epoch)[:, None, None, None], x.flip(3), x)
            yield normalize(x, self.mean, self.std), y
