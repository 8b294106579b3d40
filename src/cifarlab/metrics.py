"""Classification metrics from saved predictions, computed with torchmetrics (which also reduces across processes)."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics.classification import MulticlassAccuracy


def topk_accuracy(probs: torch.Tensor, y_true: torch.Tensor, k: int) -> float:
    """Fraction of samples whose true class is among the k highest scores."""
    num_classes = probs.shape[1]
    metric = MulticlassAccuracy(num_classes=num_classes, top_k=k, average="micro")
    return float(metric(probs, y_true))


def per_class_accuracy(probs: torch.Tensor, y_true: torch.Tensor) -> list[float]:
    """Top-1 accuracy (recall) of each class; NaN for a class with no samples."""
    num_classes = probs.shape[1]
    metric = MulticlassAccuracy(num_classes=num_classes, average=None)
    acc = metric(probs, y_true)
    present = torch.bincount(y_true, minlength=num_classes) > 0
    return [float(a) if p else float("nan") for a, p in zip(acc.tolist(), present.tolist())]


def nll(probs: torch.Tensor, y_true: torch.Tensor) -> float:
    """Mean cross-entropy of the true class, recomputed from probabilities."""
    p = probs.double().gather(1, y_true.view(-1, 1)).clamp_min(1e-12)
    return float(-p.log().mean())


def summarize(probs: torch.Tensor, y_true: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """The headline metrics of one split: top-1, top-3, loss and per-class accuracy keyed by class name."""
    probs = torch.as_tensor(probs).float()
    y_true = torch.as_tensor(y_true).long()
    return {
        "n": int(len(y_true)),
        "top1": topk_accuracy(probs, y_true, 1),
        "top3": topk_accuracy(probs, y_true, 3),
        "loss": nll(probs, y_true),
        "per_class_accuracy": dict(zip(classes, per_class_accuracy(probs, y_true))),
    }
