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


def conv(c_in: int, c_out: int, k: int = 3, bias: bool = False) -> int:
    """Parameters of a convolution."""
    return c_in * c_out * k * k + (c_out if bias else 0)


def mycnn_counts() -> tuple[int, int]:
    """Parameters and MACs of mycnn, from the layer table in its docstring (BatchNorm: a scale and a shift)."""
    convs = [(3, 32, 32), (32, 32, 32), (32, 64, 16), (64, 64, 16), (64, 128, 8), (128, 128, 8)]  # in, out, side
    params = sum(conv(i, o) + 2 * o for i, o, _ in convs) + (2048 * 256 + 256) + (256 * 10 + 10)
    macs = sum(side * side * o * i * 9 for i, o, side in convs) + 2048 * 256 + 256 * 10
    return params, macs


def resnet18_counts(stem_kernel: int, side: int, stem_side: int) -> tuple[int, int]:
    """torchvision's ResNet-18 with a 10-class head: a stem (conv, BN), four stages of two basic blocks; stages 2-4
    halve the side (``side`` is stage 1's) and start with a 1x1 downsample (conv, BN)."""
    params = conv(3, 64, stem_kernel) + 2 * 64 + 4 * (conv(64, 64) + 2 * 64)
    macs = stem_side**2 * 64 * 3 * stem_kernel**2 + 4 * side**2 * 64 * 64 * 9
    c = 64
    for _ in range(3):
        side //= 2
        params += conv(c, 2 * c) + conv(c, 2 * c, 1) + 3 * conv(2 * c, 2 * c) + 5 * 2 * (2 * c)
        macs += side**2 * (2 * c) * (c * 9 + c + 3 * 2 * c * 9)
        c *= 2
    return params + 512 * 10 + 10, macs + 512 * 10


def fastcnn_counts(w: int = 64) -> tuple[int, int]:
    """fastcnn at width w, from its docstring: 2x2 stem (24 channels, 31x31), three groups, a bias-free head."""
    groups = [(24, w, 31, 15), (w, 4 * w, 15, 7), (4 * w, 4 * w, 7, 3)]  # in, out, side of conv1, side of conv2
    params = conv(3, 24, 2, bias=True) + sum(conv(i, o) + conv(o, o) + 2 * 2 * o for i, o, _, _ in groups) + 4 * w * 10
    macs = 31 * 31 * 24 * 12 + sum(a * a * o * i * 9 + b * b * o * o * 9 for i, o, a, b in groups) + 4 * w * 10
    return params, macs


@pytest.mark.parametrize(
    "name, counts",
    [
        ("mycnn", mycnn_counts()),
        ("resnet18", resnet18_counts(7, side=8, stem_side=16)),  # 7x7/2 conv and a max-pool: 32 -> 16 -> 8
        ("resnet18-cifar", resnet18_counts(3, side=32, stem_side=32)),
        ("fastcnn", fastcnn_counts()),
    ],
)
def test_parameters_and_macs_of_every_model_match_a_count_by_hand(name, counts):
    model = build_model(name)
    assert (count_params(model), count_macs(model)) == counts
    assert counts[0] == sum(p.numel() for p in model.parameters())  # every parameter is trained
