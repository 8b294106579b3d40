"""The model registry: each model is a named factory function whose docstring says what it is.

``build_model(name)`` makes one; ``cifarlab models`` lists them with their size and cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.base.errors import UsageError

MODELS: dict[str, Callable[..., nn.Module]] = {}
MAX_CLASSES = 1000  # the most output classes a model may be built with (CIFAR-10 has 10)


@dataclass(frozen=True)
class Arg:
    """A factory keyword argument: its type (int, float or bool) and, for numbers, its inclusive range."""

    kind: type
    low: float | None = None
    high: float | None = None

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` for this argument, or None when it is acceptable."""
        if self.kind is bool:
            return None if isinstance(value, bool) else "must be true or false"
        allowed = (int,) if self.kind is int else (int, float)
        span = f" from {self.low:g} to {self.high:g}" if self.low is not None and self.high is not None else ""
        noun = "a whole number" if self.kind is int else "a number"
        nan = isinstance(value, float) and math.isnan(value)  # NaN would pass every range check
        if isinstance(value, bool) or not isinstance(value, allowed) or nan:  # bool is a subclass of int
            return f"must be {noun}{span}"
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            return f"must be {noun}{span}"
        return None


MODEL_ARGS: dict[str, dict[str, Arg]] = {}  # per model: the keyword arguments its factory accepts besides num_classes


def register(name: str, **args: Arg) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that adds a factory to the registry under ``name``, with the keyword arguments it accepts."""

    def add(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS[name] = factory
        MODEL_ARGS[name] = dict(args)
        return factory

    return add


def kwargs_problems(name: str, kwargs: dict[str, Any], num_classes: int = 10) -> list[str]:
    """Each keyword argument (and the class count) that model ``name``'s registry entry does not accept."""
    declared = MODEL_ARGS.get(name, {})
    problems = (
        []
        if Arg(int, 2, MAX_CLASSES).problem(num_classes) is None
        else [f"num_classes must be a whole number from 2 to {MAX_CLASSES} (got {shorten(num_classes)})"]
    )
    for key, value in kwargs.items():
        if key not in declared:
            known = ", ".join(declared) or "none"
            problems.append(f"unknown argument {shorten(key)} (model {name!r} takes: {known})")
        elif (problem := declared[key].problem(value)) is not None:
            problems.append(f"{key} {problem} (got {shorten(value)})")
    return problems


def shorten(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters: values read from files are shown escaped and short."""
    if isinstance(value, int) and value.bit_length() > 64:  # repr of a huge int is slow, or refused
        return f"a {value.bit_length()}-bit number"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def build_model(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Make a freshly initialised model from its registry name (kwargs go to the factory, e.g. a width).

    Arguments outside what the factory declares (type and range) are a UsageError, so no run can train a model
    that its own checkpoint could not be loaded into."""
    if name not in MODELS:
        raise UsageError(f"unknown model {shorten(name)}; choose from: {', '.join(sorted(MODELS))}")
    problems = kwargs_problems(name, kwargs, num_classes)
    if problems:
        raise UsageError(f"model {name!r}: {'; '.join(problems)}")
    return MODELS[name](num_classes=num_classes, **kwargs)


def describe(name: str) -> str:
    """First line of a model's docstring, for listings."""
    doc = MODELS[name].__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 convolution (same padding) -> BatchNorm -> ReLU: keeps height and width."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


HEAD_GRID = (4, 4)  # MyCNN's head reads a 4 x 4 grid of features, as block3 gives at 32 px


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
    pool                  adaptive average pool to 4 x 4 (none at 32 px)   128 x 4 x 4
    head                  flatten, dropout 0.3, linear (2048->256), ReLU   256
                          dropout 0.3, linear (256->10)                    10 logits
    ====================  ===============================================  ============

    At other sizes (S x S images) block3 gives 128 x S/8 x S/8, which the pool brings to 4 x 4, so the head and
    every weight are the same at any size.

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
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(4 * w * 4 * 4, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(x)))
        if x.shape[-2:] != HEAD_GRID:  # only images other than 32 px need pooling (a functional op: no weights)
            x = F.adaptive_avg_pool2d(x, HEAD_GRID)
        return self.head(x)


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


def head_name(model: nn.Module) -> str:
    """The name of the classification head: the model's last linear layer (what fine-tuning replaces)."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear layer for a head")
    return linears[-1]


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


def probe_forward(model: nn.Module, hooks: dict[type, Callable], image_size: int = 32) -> None:
    """Run one blank image through ``model`` (eval mode, no gradients) with ``hooks[type]`` attached as a forward
    hook to every layer of that type; the model's mode is restored and the hooks removed afterwards.

    Used to measure what a forward pass really does (MACs, layer output sizes) without reading the code."""
    handles = [
        m.register_forward_hook(hook) for m in model.modules() for kind, hook in hooks.items() if isinstance(m, kind)
    ]
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
