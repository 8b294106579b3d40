"""The model registry: each model is a named factory function whose docstring says what it is.

``build_model(name)`` makes one; ``cifarlab models`` lists them with their size and cost.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that adds a factory to the registry under ``name``."""

    def add(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS[name] = factory
        return factory

    return add


def build_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Make a freshly initialised model from its registry name (kwargs go to the factory, e.g. a width)."""
    from cifarlab.errors import UsageError

    if name not in MODELS:
        raise UsageError(f"unknown model {name!r}; choose from: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes=num_classes, **kwargs)


def describe(name: str) -> str:
    """First line of a model's docstring, for listings."""
    doc = MODELS[name].__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 convolution (same padding) -> BatchNorm -> ReLU: keeps height and width."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class MyCNN(nn.Module):
    """The custom CNN: three conv blocks that each double the channels and halve the image, then a linear head.

    Shapes for one 3x32x32 image:

    ====================  ===============================================  ============
    stage                 layers                                           output
    ====================  ===============================================  ============
    block1                conv-BN-ReLU (3->32), conv-BN-ReLU (32->32)      32 x 32 x 32
                          max-pool 2x2                                     32 x 16 x 16
    block2                conv-BN-ReLU (32->64), conv-BN-ReLU (64->64)     64 x 16 x 16
                          max-pool 2x2                                     64 x 8 x 8
    block3                conv-BN-ReLU (64->128), conv-BN-ReLU (128->128)  128 x 8 x 8
                          max-pool 2x2                                     128 x 4 x 4
    head                  flatten, dropout 0.3, linear (2048->256), ReLU   256
                          dropout 0.3, linear (256->10)                    10 logits
    ====================  ===============================================  ============

    BatchNorm makes Adam at 1e-3 train stably; dropout in the head is the only regulariser, which matters
    because the course recipe uses no augmentation.
    """

    def __init__(self, num_classes: int = 10, width: int = 32, dropout: float = 0.3) -> None:
        super().__init__()
        w = width
        self.block1 = nn.Sequential(conv_bn_relu(3, w), conv_bn_relu(w, w), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(conv_bn_relu(w, 2 * w), conv_bn_relu(2 * w, 2 * w), nn.MaxPool2d(2))
        self.block3 = nn.Sequential(conv_bn_relu(2 * w, 4 * w), conv_bn_relu(4 * w, 4 * w), nn.MaxPool2d(2))
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * w * 4 * 4, 256), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block3(self.block2(self.block1(x))))


@register("mycnn")
def mycnn(num_classes: int = 10) -> nn.Module:
    """Custom CNN: 3 blocks of 2 conv-BN-ReLU + max-pool (32-64-128 channels), dropout MLP head."""
    return MyCNN(num_classes)


@register("resnet18")
def resnet18(num_classes: int = 10) -> nn.Module:
    """torchvision ResNet-18 from scratch, ImageNet stem (7x7/2 conv + max-pool): the course project's model."""
    from torchvision.models import resnet18 as tv_resnet18

    return tv_resnet18(weights=None, num_classes=num_classes)


@register("resnet18-cifar")
def resnet18_cifar(num_classes: int = 10) -> nn.Module:
    """ResNet-18 with the CIFAR stem (3x3 stride-1 first conv, no max-pool): the usual fix for 32x32 inputs."""
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: nn.Module, image_size: int = 32) -> int:
    """Multiply-accumulates for one 3 x image_size x image_size image (convolutions and linear layers).

    Counted with forward hooks on a dummy input, so it follows whatever the forward pass really does.
    """
    total = 0

    def conv_hook(module: nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1] * (module.in_channels // module.groups)
        total += out[0].numel() * k

    def linear_hook(module: nn.Linear, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel() * module.in_features

    probe_forward(model, {nn.Conv2d: conv_hook, nn.Linear: linear_hook}, image_size)
    return int(total)


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
                nn.init.dirac_(conv.weight.data[:conv.in_channels])

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
def patch_whitening(images: torch.Tensor, kernel_size: int = 2,
                    eps: float = WHITEN_EPS) -> tuple[torch.Tensor, torch.Tensor]:
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
def init_whitening(model: FastCNN, images: torch.Tensor) -> None:
    """Set a FastCNN's stem convolution to whiten the patches of ``images`` (normalised training images)."""
    stem = model.stem
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
    head         max-pool 3x3, linear (4w->10, no bias), x 1/9          10 logits
    ===========  =====================================================  =====================

    The cost grows with the square of ``width``, which is what the time-budget planner trades against epochs.
    The logit scale of 1/9 keeps the initial softmax soft at the large learning rates fast recipes use.
    """

    def __init__(self, num_classes: int = 10, width: int = 64, dirac: bool = False, frozen_bn_scale: bool = False,
                 frozen_stem: bool = False) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be at least 1 (got {width})")
        self.stem = nn.Conv2d(3, 24, kernel_size=2, padding=0, bias=True)
        self.stem.requires_grad_(not frozen_stem)
        self.act = nn.GELU()
        self.group1 = FastConvGroup(24, width, dirac, frozen_bn_scale)
        self.group2 = FastConvGroup(width, 4 * width, dirac, frozen_bn_scale)
        self.group3 = FastConvGroup(4 * width, 4 * width, dirac, frozen_bn_scale)
        self.pool = nn.MaxPool2d(3)
        self.head = nn.Linear(4 * width, num_classes, bias=False)
        self.logit_scale = 1 / 9

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.group3(self.group2(self.group1(self.act(self.stem(x)))))
        return self.head(self.pool(x).flatten(1)) * self.logit_scale


@register("fastcnn")
def fastcnn(num_classes: int = 10, width: int = 64, dirac: bool = False, frozen_bn_scale: bool = False,
            frozen_stem: bool = False) -> nn.Module:
    """Fast VGG-like CNN (airbench-style): 2x2 stem, 3 conv-BN-GELU groups of width w/4w/4w (w=64), max-pools."""
    return FastCNN(num_classes, width, dirac, frozen_bn_scale, frozen_stem)


def probe_forward(model: nn.Module, hooks: dict[type, Callable], image_size: int = 32) -> None:
    """Run one blank image through ``model`` (eval mode, no gradients) with ``hooks[type]`` attached as a forward
    hook to every layer of that type; the model's mode is restored and the hooks removed afterwards.

    Used to measure what a forward pass really does (MACs, layer output sizes) without reading the code."""
    handles = [m.register_forward_hook(hook) for m in model.modules()
               for kind, hook in hooks.items() if isinstance(m, kind)]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
