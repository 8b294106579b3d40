"""Grad-CAM with captum's ``LayerGradCam``: which part of the image drove a prediction.

The target layer is found generically, so every registered model works without a per-model table: run one
dummy image through the model, note each ``Conv2d``'s output size, and take the last convolution (in the
order the forward pass runs them) whose output is still at least 4x4. The last convolution is the usual
Grad-CAM choice (the most semantic features that still have a spatial layout). The size rule matters for
torchvision's ResNet-18 with its ImageNet stem: on 32x32 images its ``layer4`` maps are 1x1, where a
"heatmap" is one constant value, and its ``layer3`` maps are 2x2, which can only name a quadrant (every 2x2
map, upsampled, puts exactly a quarter of its mass in the central square, so it cannot show whether the
object or the background drove the answer). At 4x4 the centre and the border are separate cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cifarlab.base.errors import CifarlabError
from cifarlab.models.registry import probe_forward

MIN_SPATIAL = 4


@dataclass
class TargetLayer:
    """The convolution Grad-CAM looks at, by its module name, with its output's height and width."""

    name: str
    module: nn.Module
    height: int
    width: int


def find_target_layer(model: nn.Module, image_size: int = 32) -> TargetLayer:
    """The last Conv2d to run whose output is at least ``MIN_SPATIAL`` pixels high and wide."""
    names = {module: name for name, module in model.named_modules()}
    seen: list[TargetLayer] = []

    def hook(module: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        seen.append(TargetLayer(names[module], module, int(out.shape[-2]), int(out.shape[-1])))

    try:
        probe_forward(model, {nn.Conv2d: hook}, image_size)
    except RuntimeError as exc:  # a model whose layers only fit other image sizes (a fixed-size linear head)
        raise CifarlabError(
            f"{type(model).__name__} does not run on {image_size}x{image_size} images: {str(exc).splitlines()[0]}"
        ) from None
    usable = [t for t in seen if t.height >= MIN_SPATIAL and t.width >= MIN_SPATIAL]
    if not usable:
        raise CifarlabError(
            f"{type(model).__name__} has no convolution with an output of at least "
            f"{MIN_SPATIAL}x{MIN_SPATIAL} on {image_size}x{image_size} images; Grad-CAM needs one"
        )
    return usable[-1]


def grad_cam(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, layer: TargetLayer, batch_size: int = 64
) -> np.ndarray:
    """Grad-CAM maps (N, H, W) for normalised ``images`` and class ``targets``, upsampled to the input size.

    Positive evidence only (captum's ``relu_attributions``), bilinear upsampling; each map is left in its
    raw scale, use :func:`scale_maps` to show it.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    model.eval()
    cam = LayerGradCam(model, layer.module)
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        attr = cam.attribute(x, target=targets[start : start + batch_size].tolist(), relu_attributions=True)
        attr = LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), interpolate_mode="bilinear")
        out.append(attr.detach().squeeze(1).cpu().float().numpy())
    return np.concatenate(out) if out else np.zeros((0, *images.shape[-2:]), dtype=np.float32)


def scale_maps(maps: np.ndarray) -> np.ndarray:
    """Each map divided by its own maximum, so 1 is the strongest evidence (all-zero maps stay zero)."""
    peak = maps.max(axis=(1, 2)) if len(maps) else np.zeros(0)
    return maps / np.where(peak > 0, peak, 1.0)[:, None, None]


def centre_share(maps: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """Share of each map's total evidence inside the central square covering ``fraction`` of each side.

    With ``fraction=0.5`` the square is a quarter of the image, so 0.25 means evidence spread evenly over
    the picture and much less than 0.25 means the background (the border) drove the answer. NaN for an
    all-zero map.
    """
    h, w = maps.shape[-2:]
    top, left = round(h * (1 - fraction) / 2), round(w * (1 - fraction) / 2)
    inner = maps[:, top : h - top, left : w - left].sum(axis=(1, 2))
    total = maps.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inner / np.where(total > 0, total, 1.0), np.nan)
