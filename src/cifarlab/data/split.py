"""The training split: a stratified validation split, balanced slices, and the per-channel normalisation."""

from __future__ import annotations

import torch

from cifarlab.base.errors import DataError
from cifarlab.data.cifar10 import CHANNELS

MIN_STD = 1 / 255  # a channel that varies less than one grey level over the training split is centred, not scaled

FLAT_STD = 1.0  # the std such a channel is divided by (no real std of [0, 1] values reaches it)


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
