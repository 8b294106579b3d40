"""FastCNN, the fast recipe's network (airbench-shaped): a whitened 2x2 stem, three conv groups, a scaled head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.models.registry import Arg, register


class FastConvGroup(nn.Module):
    """conv 3x3 -> max-pool 2x2 -> BN -> GELU -> conv 3x3 -> BN -> GELU (pooling early makes BN/GELU 4x cheaper)."""

    def __init__(self, c_in: int, c_out: int, dirac: bool, frozen_bn_scale: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = fast_batchnorm(c_out, frozen_bn_scale)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = fast_batchnorm(c_out, frozen_bn_scale)
        self.act = nn.GELU()
        if dirac:  # the first min(c_in, c_out) filters start as identity maps, so each group starts near a skip
            for conv in (self.conv1, self.conv2):
                nn.init.dirac_(conv.weight.data[: conv.in_channels])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


def fast_batchnorm(channels: int, frozen_scale: bool) -> nn.BatchNorm2d:
    """BatchNorm with fast-moving statistics (momentum 0.4: few epochs); a frozen scale leaves only the bias."""
    bn = nn.BatchNorm2d(channels, momentum=0.4, eps=1e-12)
    bn.weight.requires_grad_(not frozen_scale)
    return bn


WHITEN_IMAGES = 5000  # training images whose patches set FastCNN's whitening filters (more changes nothing visible)


WHITEN_EPS = 5e-4  # added to the patch-covariance eigenvalues, so near-constant directions are not blown up


@torch.no_grad()
def patch_whitening(
    images: torch.Tensor, kernel_size: int = 2, eps: float = WHITEN_EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Filters that map every ``kernel_size`` x ``kernel_size`` patch of ``images`` to whitened coordinates.

    With patch mean m and covariance C = V diag(e) V^T, the filters are the rows of diag(e + eps)^-1/2 V^T and the
    bias is -filters @ m: the outputs have zero mean and (nearly) identity covariance. Each filter also appears
    negated, because the GELU that follows would otherwise discard the negative half of every direction.
    Returns (weight of shape (2 d, C, k, k), bias of shape (2 d,)) with d = C k k.
    """
    channels = images.shape[1]
    d = channels * kernel_size * kernel_size
    total = torch.zeros(d, dtype=torch.float64)
    outer = torch.zeros(d, d, dtype=torch.float64)
    count = 0
    for chunk in images.split(500):  # 500 images at a time keeps the float64 patches to ~50 MB
        patches = F.unfold(chunk.double().cpu(), kernel_size).transpose(1, 2).reshape(-1, d)
        total += patches.sum(0)
        outer += patches.T @ patches
        count += len(patches)
    mean = total / count
    cov = outer / count - torch.outer(mean, mean)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    filters = eigenvectors.T / (eigenvalues.clamp(min=0) + eps).sqrt()[:, None]
    weight = torch.cat([filters, -filters]).reshape(2 * d, channels, kernel_size, kernel_size)
    bias = -(weight.flatten(1) @ mean)
    return weight.float(), bias.float()


@torch.no_grad()
def init_whitening(model: nn.Module, images: torch.Tensor) -> None:
    """Set a FastCNN's stem convolution to whiten the patches of ``images`` (normalised training images)."""
    if not isinstance(model, FastCNN):
        raise ValueError(f"whitening needs a FastCNN, got {type(model).__name__}")
    stem = model.stem
    assert stem.bias is not None  # FastCNN builds its stem with a bias
    weight, bias = patch_whitening(images[:WHITEN_IMAGES], stem.kernel_size[0])
    if weight.shape != stem.weight.shape:
        raise ValueError(f"whitening needs a stem of {weight.shape[0]} filters, the model has {stem.out_channels}")
    stem.weight.copy_(weight)
    stem.bias.copy_(bias)


class FastCNN(nn.Module):
    """A VGG-like net built for accuracy per FLOP (after airbench): stem, three conv groups, max-pool, linear.

    ===========  =====================================================  =====================
    stage        layers                                                 output (width w=64)
    ===========  =====================================================  =====================
    stem         conv 2x2 (3->24, no padding; whitening-initialised     24 x 31 x 31
                 when training with ``whiten``), GELU
    group1       conv 3x3 (24->w), max-pool, BN, GELU, conv, BN, GELU   64 x 15 x 15
    group2       conv 3x3 (w->4w), max-pool, BN, GELU, conv, BN, GELU   256 x 7 x 7
    group3       conv 3x3 (4w->4w), max-pool, BN, GELU, conv, BN, GELU  256 x 3 x 3
    head         global max-pool, linear (4w->10, no bias), x 1/9       10 logits
    ===========  =====================================================  =====================

    The shapes are for a 32 x 32 image; at S x S group3 gives 4w x about S/8 x S/8, and the global max-pool
    (at 32 px the same as a 3x3 max-pool) makes the head the same at any size from 16 px.

    The cost grows with the square of ``width``, which is what the time-budget planner trades against epochs.
    The logit scale of 1/9 keeps the initial softmax soft at the large learning rates fast recipes use.
    """

    def __init__(
        self,
        num_classes: int = 10,
        width: int = 64,
        dirac: bool = False,
        frozen_bn_scale: bool = False,
        frozen_stem: bool = False,
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be at least 1 (got {width})")
        self.stem = nn.Conv2d(3, 24, kernel_size=2, padding=0, bias=True)
        self.stem.requires_grad_(not frozen_stem)
        self.act = nn.GELU()
        self.group1 = FastConvGroup(24, width, dirac, frozen_bn_scale)
        self.group2 = FastConvGroup(width, 4 * width, dirac, frozen_bn_scale)
        self.group3 = FastConvGroup(4 * width, 4 * width, dirac, frozen_bn_scale)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(4 * width, num_classes, bias=False)
        self.logit_scale = 1 / 9

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.group3(self.group2(self.group1(self.act(self.stem(x)))))
        return self.head(self.pool(x).flatten(1)) * self.logit_scale


@register("fastcnn", width=Arg(int, 1, 1024), dirac=Arg(bool), frozen_bn_scale=Arg(bool), frozen_stem=Arg(bool))
def fastcnn(
    num_classes: int = 10,
    width: int = 64,
    dirac: bool = False,
    frozen_bn_scale: bool = False,
    frozen_stem: bool = False,
) -> nn.Module:
    """Fast VGG-like CNN (airbench-style): 2x2 stem, 3 conv-BN-GELU groups of width w/4w/4w (w=64), max-pools."""
    return FastCNN(num_classes, width, dirac, frozen_bn_scale, frozen_stem)
