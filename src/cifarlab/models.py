"""The model registry: each model is a named factory function whose docstring says what it is.

``build_model(name)`` makes one; ``cifarlab models`` lists them with their size and cost.
"""

from __future__ import annotations

from typing import Callable

import torch
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

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return int(total)
