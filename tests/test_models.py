"""The model registry: every model builds, has the right output shape, and counts its cost."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cifarlab.base.errors import UsageError
from cifarlab.models.mycnn import conv_bn_relu
from cifarlab.models.registry import MODELS, build_model, count_macs, count_params, model_summary


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_maps_images_to_ten_logits(name):
    model = build_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10)
    assert model_summary(name)  # every factory has a docstring


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


def mycnn_counts(size: int = 32) -> tuple[int, int]:
    """Parameters and MACs of mycnn, from the layer table in its docstring (BatchNorm: a scale and a shift); at
    other sizes the convolutions scale with the image and the head, behind its pooling, stays the same."""
    convs = [(3, 32, size), (32, 32, size), (32, 64, size // 2), (64, 64, size // 2)]  # in, out, side
    convs += [(64, 128, size // 4), (128, 128, size // 4)]
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


def test_mycnn_counts_at_64_px_scale_the_convolutions_only():
    assert (count_params(build_model("mycnn")), count_macs(build_model("mycnn"), 64)) == mycnn_counts(64)


SIZES = [(16, 2), (32, 2), (64, 2), (96, 2), (224, 1)]  # (pixels per side, batch): one image at 224 keeps it fast


@pytest.mark.parametrize("size, batch", SIZES, ids=[f"{s}px" for s, _ in SIZES])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_works_at_any_size_and_class_count(name, size, batch):
    for num_classes in (2, 37):
        model = build_model(name, num_classes=num_classes).eval()
        with torch.no_grad():
            out = model(torch.randn(batch, 3, size, size))
        assert out.shape == (batch, num_classes) and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_trains_at_64_px_with_a_thousand_classes(name):
    model = build_model(name, num_classes=1000).train()
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([0, 999]))
    loss.backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())


class MyCNNAt32(nn.Module):
    """mycnn as it is written for 32 px only, with its head straight after block3 (how its checkpoints began)."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = nn.Sequential(conv_bn_relu(3, 32), conv_bn_relu(32, 32), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(conv_bn_relu(32, 64), conv_bn_relu(64, 64), nn.MaxPool2d(2))
        self.block3 = nn.Sequential(conv_bn_relu(64, 128), conv_bn_relu(128, 128), nn.MaxPool2d(2))
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(2048, 256), nn.ReLU(), nn.Dropout(0.3), nn.Linear(256, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block3(self.block2(self.block1(x))))


def test_a_32px_mycnn_checkpoint_loads_and_gives_the_same_logits():
    torch.manual_seed(0)
    old = MyCNNAt32()
    old.train()
    with torch.no_grad():
        old(torch.randn(8, 3, 32, 32))  # running statistics that differ from the initial ones
    weights = old.state_dict()
    model = build_model("mycnn")
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == [
        (k, tuple(v.shape)) for k, v in weights.items()
    ]
    model.load_state_dict(weights, strict=True)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(images), old.eval()(images))


def test_fastcnn_at_32_px_pools_as_a_3x3_max_pool_did():
    torch.manual_seed(0)
    model = build_model("fastcnn", width=8).eval()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        logits = model(images)
        model.pool = nn.MaxPool2d(3)  # what the head read at 32 px: the 3 x 3 output of group3, max-pooled
        assert torch.equal(model(images), logits)
