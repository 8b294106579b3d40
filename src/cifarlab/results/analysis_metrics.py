"""Every number of a run's analysis, from its saved test predictions (no figure, no image): the confusion counts,
per-class precision, recall, F1 and accuracy, top-label calibration (ECE and the reliability bins), the most
confused pairs, the classes a heatmap shows, computed with torchmetrics; cheap enough for compare and report to
call. A value that is 0/0 is None, never a made-up 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cifarlab.runs.folder import Predictions

N_BINS = 15
TOP_PAIRS = 10
MAX_HEATMAP_CLASSES = 20  # more classes than this: the heatmaps show the most confused ones (the CSV has all)

# torchmetrics gives a confidence of exactly 1.0 (common in float32 softmax) a 16th bin of its own
# (torch.bucketize with right=True); the usual definition closes the 15th bin at 1. It computes in float32,
# so confidences are capped at the largest float32 below 1: that moves them into the 15th bin and changes
# no confidence, hence the ECE, by more than 6e-8.
BELOW_ONE = float(np.nextafter(np.float32(1.0), np.float32(0.0)))


def confusion_counts(probs: np.ndarray, y_true: np.ndarray) -> np.ndarray:
    """Counts (C, C): row = true class, column = predicted (arg-max) class."""
    import torch
    from torchmetrics.classification import MulticlassConfusionMatrix

    metric = MulticlassConfusionMatrix(num_classes=probs.shape[1])
    return metric(torch.as_tensor(probs), torch.as_tensor(y_true)).numpy().astype(np.int64)


def row_normalize(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its total (the true class's support); NaN for a class with no test images."""
    support = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, counts / np.where(support > 0, support, 1), np.nan)


def per_class_metrics(probs: np.ndarray, y_true: np.ndarray, classes: Sequence[str]) -> list[dict[str, Any]]:
    """Precision, recall, F1, support and accuracy of each class; ``None`` where a value is 0/0.

    torchmetrics counts true/false positives and false negatives per class (as ``cifarlab.runs.metrics`` does);
    the ratios are taken here in float64, so 9/20 is written as 0.45 and matches any recomputation exactly.
    """
    import torch
    from torchmetrics.classification import MulticlassStatScores

    stats = MulticlassStatScores(num_classes=probs.shape[1], average=None)
    counts = stats(torch.as_tensor(probs), torch.as_tensor(y_true)).long().tolist()  # tp, fp, tn, fn, support

    def ratio(num: int, den: int) -> float | None:
        return num / den if den else None

    rows = []
    for name, (tp, fp, _tn, fn, support) in zip(classes, counts, strict=True):
        recall = ratio(tp, tp + fn)
        rows.append(
            {
                "class": name,
                "precision": ratio(tp, tp + fp),
                "recall": recall,
                "f1": ratio(2 * tp, 2 * tp + fp + fn),
                "support": support,
                "accuracy": recall,
            }
        )
    return rows


def calibration(probs: np.ndarray, y_true: np.ndarray, n_bins: int = N_BINS) -> dict[str, Any]:
    """Top-label ECE (torchmetrics, L1) and the per-bin numbers behind the reliability diagram."""
    import torch
    from torchmetrics.functional.classification.calibration_error import _ce_compute

    p = torch.as_tensor(probs).double().clamp(max=BELOW_ONE)
    y = torch.as_tensor(y_true)
    conf, pred = p.max(dim=1)
    # torchmetrics' own binning and ECE formula (what MulticlassCalibrationError computes), fed in float64:
    # the class casts to float32, which moves the ECE by ~4e-6 on 10,000 predictions.
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    ece = float(_ce_compute(conf, pred == y, edges, norm="l1"))
    correct = (pred == y).double()
    which = (torch.bucketize(conf, edges, right=True) - 1).clamp(0, n_bins - 1)
    bins = []
    for k in range(n_bins):
        sel = which == k
        n = int(sel.sum())
        bins.append(
            {
                "lower": float(edges[k]),
                "upper": float(edges[k + 1]),
                "count": n,
                "confidence": float(conf[sel].mean()) if n else None,
                "accuracy": float(correct[sel].mean()) if n else None,
            }
        )
    return {
        "ece": ece,
        "n_bins": n_bins,
        "norm": "l1",
        "definition": "top-label expected calibration error, "
        "equal-width confidence bins, torchmetrics' calibration-error computation in float64",
        "mean_confidence": float(conf.mean()),
        "accuracy": float(correct.mean()),
        "overconfidence": float(conf.mean() - correct.mean()),
        "bins": bins,
    }


def confused_pairs(counts: np.ndarray, classes: Sequence[str], top: int = TOP_PAIRS) -> list[dict[str, Any]]:
    """The ordered (true -> predicted) pairs with the most mistakes; ties broken by class order."""
    support = counts.sum(axis=1)
    pairs = [
        (int(counts[i, j]), i, j)
        for i in range(len(classes))
        for j in range(len(classes))
        if i != j and counts[i, j] > 0
    ]
    pairs.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [
        {"true": classes[i], "predicted": classes[j], "count": n, "share_of_true": n / support[i]}
        for n, i, j in pairs[:top]
    ]


def by_accuracy(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-class rows, worst accuracy first; classes without test images (undefined accuracy) last, ties in
    label order."""
    return sorted(rows, key=lambda r: (r["accuracy"] is None, r["accuracy"] or 0.0))


def most_confused_classes(counts: np.ndarray, limit: int = MAX_HEATMAP_CLASSES) -> np.ndarray:
    """Label indices of the classes a heatmap shows, in label order: all of them up to ``limit``, else the
    ``limit`` with the most mistakes as true or as predicted class (row plus column, diagonal left out);
    ties go to the earlier label."""
    n = len(counts)
    if n <= limit:
        return np.arange(n)
    off = counts - np.diag(np.diag(counts))
    errors = off.sum(axis=0) + off.sum(axis=1)
    order = np.lexsort((np.arange(n), -errors))  # most errors first, then label order
    return np.sort(order[:limit])


def headline(pred: Predictions) -> dict[str, Any]:
    """Top-1, top-3 and loss, with the same code that wrote ``test_metrics.json``."""
    import torch

    from cifarlab.runs.metrics import summarize

    s = summarize(torch.as_tensor(pred.probs), torch.as_tensor(pred.y_true), pred.classes)
    return {"n": s["n"], "top1": s["top1"], "top3": s["top3"], "loss": s["loss"]}


def nanmean(values: Sequence[float | None]) -> float | None:
    """Mean of the defined values, None if there are none."""
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def compute_metrics(pred: Predictions) -> dict[str, Any]:
    """Every number of the analysis (no figures, no images): cheap enough for compare and report to call."""
    counts = confusion_counts(pred.probs, pred.y_true)
    per_class = per_class_metrics(pred.probs, pred.y_true, pred.classes)
    return {
        "headline": headline(pred),
        "confusion": counts,
        "per_class": per_class,
        "calibration": calibration(pred.probs, pred.y_true),
        "pairs": confused_pairs(counts, pred.classes),
    }
