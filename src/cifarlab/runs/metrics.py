"""Classification metrics from saved predictions, computed with torchmetrics (which also reduces across processes).

Top-k with k at or above the number of classes counts every sample as a hit (k is capped at the class count):
the true class is always among all C scores, so top-3 of a 2- or 3-class dataset is 100% by definition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics.classification import MulticlassStatScores

from cifarlab.base.files import atomic_write, write_json


def capped_k(k: int, num_classes: int) -> int:
    """The k of a top-k metric over ``num_classes`` scores: at most the class count (top-3 of 2 classes is top-2)."""
    return min(k, num_classes)


def topk_hits(probs: torch.Tensor, y_true: torch.Tensor, k: int) -> torch.Tensor:
    """Per class, how many of its samples have the true class among the k highest scores (integer counts).

    torchmetrics counts; the fractions are taken in float64 here, so 8540/10000 is stored as 0.854 exactly
    and anyone recomputing from the saved predictions gets the same number. A k above the class count counts
    every sample (see the module's docstring).
    """
    k = capped_k(k, probs.shape[1])  # torchmetrics refuses a top_k above num_classes
    stats = MulticlassStatScores(num_classes=probs.shape[1], top_k=k, average=None)
    return stats(probs, y_true)[:, 0].long()  # columns: tp, fp, tn, fn, support


def topk_accuracy(probs: torch.Tensor, y_true: torch.Tensor, k: int) -> float:
    """Fraction of samples whose true class is among the k highest scores."""
    return int(topk_hits(probs, y_true, k).sum()) / len(y_true)


def per_class_accuracy(probs: torch.Tensor, y_true: torch.Tensor) -> list[float]:
    """Top-1 accuracy (recall) of each class; NaN for a class with no samples."""
    support = torch.bincount(y_true, minlength=probs.shape[1]).tolist()
    hits = topk_hits(probs, y_true, 1).tolist()
    return [h / s if s else float("nan") for h, s in zip(hits, support, strict=True)]


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
        # not strict: a checkpoint may have more outputs than the data has class names; only named classes are kept
        "per_class_accuracy": dict(zip(classes, per_class_accuracy(probs, y_true), strict=False)),
    }


def write_test_results(
    run_dir: Path,
    split: str,
    probs: torch.Tensor,
    y_true: torch.Tensor,
    index: torch.Tensor,
    classes: list[str],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """``<split>_metrics.json`` and ``<split>_predictions.npz``: the numbers, and what they are computed from."""
    metrics = {"split": split, **summarize(probs, y_true, classes), **extra}
    labels = y_true.numpy().astype(np.int64)
    scores = probs.numpy().astype(np.float32)
    indices = index.numpy().astype(np.int64)
    atomic_write(
        run_dir / f"{split}_predictions.npz",
        lambda f: np.savez_compressed(f, y_true=labels, probs=scores, index=indices),
    )
    write_json(run_dir / f"{split}_metrics.json", metrics)
    return metrics
