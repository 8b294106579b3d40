"""Batches cut from in-memory tensors: random crops, flips and translations (and AugMix, augmix.py) as tensor
operations, sent to the device."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from cifarlab.data.augmix import AugMix, augmix_batch
from cifarlab.data.split import normalize


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
    gives the same batches in the same order, and the generator's state can be checkpointed. ``augmix`` (None:
    off, and no random numbers drawn for it) mixes augmentation chains into each batch after the crop, flip or
    translation; with its ``views`` 2 a batch holds the clean images and two AugMix views of them (3x the images,
    the labels once).
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
        augmix: AugMix | None = None,
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
        self.augmix = augmix
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
            if self.augmix is not None:
                x = augmix_batch(x, self.augmix, self.generator)  # float32 in [0, 255]; normalize takes it
            yield normalize(x, self.mean, self.std), y
