"""MyCNN, the course project's custom CNN: three conv blocks and a small head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.models.registry import register


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
