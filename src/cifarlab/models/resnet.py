"""ResNet-18 from torchvision, from scratch: as published (ImageNet stem) and with a CIFAR stem."""

from __future__ import annotations

from torch import nn

from cifarlab.models.registry import register


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
