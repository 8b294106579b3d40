"""The model registry: every model builds, has the right output shape, and counts its cost."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cifarlab.errors import UsageError
from cifarlab.models import MODELS, build_model, count_macs, count_params, describe


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_maps_images_to_ten_logits(name):
    model = build_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10)
    assert describe(name)  # every factory has a docstring


def test_unknown_model_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown model 'vgg99'"):
        build_model("vgg99")


def test_resnet18_is_torchvisions_with_a_ten_class_head():
    model = build_model("resnet18")
    assert model.fc.out_features == 10 and model.conv1.kernel_size == (7, 7)
    cifar = build_model("resnet18-cifar")
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1) and isinstance(cifar.maxpool, nn.Identity)


def test_counts_on_a_model_computed_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 32 * 32, 10))
    assert count_params(model) == (3 * 4 * 9 + 4) + (4 * 1024 * 10 + 10)
    assert count_macs(model) == 4 * 32 * 32 * 27 + 4096 * 10


def test_mycnn_is_small_and_resnet_is_large():
    assert count_params(build_model("mycnn")) < 2_000_000 < count_params(build_model("resnet18"))
