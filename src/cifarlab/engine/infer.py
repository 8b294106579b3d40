"""Inference: the logits of every image of a stream of batches, optionally averaged over test-time views (TTA).

:func:`infer` is the one inference loop: validation, the final test, ``cifarlab evaluate``, ``predict`` and the
benchmark all score images through it. :func:`evaluate_checkpoint` rebuilds a model from a checkpoint alone and
scores a split; :func:`write_test_results` writes what it scored.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.data.batches import Batches
from cifarlab.data.cifar10 import ImageData
from cifarlab.data.split import stratified_split
from cifarlab.engine import distributed
from cifarlab.engine.device import autocast, place_model
from cifarlab.runs.checkpoint import model_from_checkpoint

TTA_VIEWS = {0: 1, 1: 2, 2: 6}  # forward passes per image at each TTA level


def tta_views(level: int) -> int:
    """Forward passes per image at a TTA level (what the time-budget planner reserves for the test)."""
    return TTA_VIEWS[level]


def tta_logits(model: nn.Module, x: torch.Tensor, level: int = 0) -> torch.Tensor:
    """Logits averaged over views: 1 adds the mirror image, 2 also both views shifted one pixel (diagonally).

    The translated views are cut from a reflect-padded copy, matching the translation used in training; the two
    shifted pairs together weigh as much as the unshifted pair, as in airbench.
    """
    if level not in TTA_VIEWS:
        raise ValueError(f"tta level must be 0, 1 or 2 (got {level})")
    if level == 0:
        return model(x)

    def mirrored(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (model(v) + model(v.flip(3)))

    logits = mirrored(x)
    if level == 2:
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = [padded[:, :, :-2, :-2], padded[:, :, 2:, 2:]]
        logits = 0.5 * logits + 0.25 * (mirrored(shifted[0]) + mirrored(shifted[1]))
    return logits


@torch.no_grad()
def infer(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], tta: int = 0, bf16: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits and the labels of every image of ``batches``, in order, on the CPU (eval mode, no gradients).

    ``tta`` averages the logits over mirrored (1) and also 1-pixel-shifted (2) views of each image; ``bf16``
    computes the forward passes in bf16 where :func:`cifarlab.engine.device.uses_bf16` says it pays, as training did."""
    model.eval()
    all_logits, all_labels = [], []
    for x, y in batches:
        with autocast(bf16, x.device):
            logits = tta_logits(model, x, tta)
        all_logits.append(logits.float().cpu())
        all_labels.append(y.cpu())
    return torch.cat(all_logits), torch.cat(all_labels)


def score(
    model: nn.Module, batches: Batches, dist: distributed.DistInfo, device: torch.device, bf16: bool = False
) -> dict[str, float]:
    """Loss, top-1 and top-3 over a split (forward passes in bf16 as :func:`infer` says); each process scores its
    shard and the sums are reduced. Top-3 of 3 classes or fewer counts every image, as in :mod:`cifarlab.runs.metrics`.

    Under DDP every process first takes rank 0's BatchNorm statistics (the ones its checkpoint saves), then
    scores with the plain model, so no collective runs per batch and shards may differ in size.
    """
    distributed.broadcast_buffers(model, dist)
    logits, y = infer(model, batches, bf16=bf16)
    top3 = logits.topk(min(3, logits.shape[1]), dim=1).indices  # k capped at the class count (metrics.capped_k)
    sums = [
        F.cross_entropy(logits, y, reduction="sum").item(),
        (top3[:, 0] == y).sum().item(),
        (top3 == y[:, None]).any(1).sum().item(),
        len(y),
    ]
    loss_sum, top1, top3_hits, n = distributed.all_reduce_sum(sums, device, dist)
    return {"loss": loss_sum / n, "top1": top1 / n, "top3": top3_hits / n}


def inference_model(state: dict[str, Any], device: torch.device) -> nn.Module:
    """The checkpoint's model in eval mode, placed as training placed it."""
    return place_model(model_from_checkpoint(state), device, state["config"].get("channels_last", False))


def scoring_options(config: dict[str, Any]) -> dict[str, Any]:
    """The ``tta`` and ``bf16`` arguments of :func:`infer` that score as a run's own test did, from its saved config
    (a checkpoint's, already validated: tta 0-2; bf16 only when the config holds a literal true)."""
    return {"tta": config.get("tta", 0), "bf16": config.get("bf16", False) is True}


def evaluate_checkpoint(
    state: dict[str, Any],
    data: ImageData,
    split: str,
    device: torch.device,
    batch_size: int = 1000,
    model: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probabilities, labels and official indices of ``split`` for a checkpoint, from the checkpoint alone (or from
    ``model``, already placed, when the caller holds the checkpoint's model in memory). Scores with the run's own
    TTA level and precision (bf16 where the run trained in it and this machine computes bf16), as its test did."""
    cfg = state["config"]
    if split == "test":
        images, labels, index = data.test_images, data.test_labels, torch.arange(len(data.test_labels))
    else:
        _, index = stratified_split(data.train_labels, cfg["val_size"], cfg["seed"], len(data.classes))
        images, labels = data.train_images[index], data.train_labels[index]
    batches = Batches(
        images, labels, batch_size, torch.tensor(state["mean"]), torch.tensor(state["std"]), device=device
    )
    model = inference_model(state, device) if model is None else model
    logits, y = infer(model, batches, **scoring_options(cfg))
    return logits.softmax(1), y, index
