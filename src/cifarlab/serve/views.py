"""What each page and API answer holds, built from :class:`RunData`: the runs table and sweep groups, a run's
numbers and confusion matrix, the images of a confusion cell, one test image, and two runs compared image by image.
Plain dicts of finite numbers and texts; the templates escape every text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from cifarlab.base.errors import UsageError, escape
from cifarlab.serve.charts import line_chart, reliability_chart
from cifarlab.serve.store import RunData, finite, summary_row

Sort = Literal["confidence", "loss"]
SORTS: tuple[Sort, ...] = ("confidence", "loss")
PAGE = 50  # images per page of a confusion cell or a comparison
MAX_LIMIT = 500
TOP_K = 5


def group_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Seed groups of each sweep: runs with the same model and recipe; test top-1 mean ± std over the done ones."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        if row["sweep"] is not None:
            groups.setdefault((row["sweep"], row["model"], row["recipe"], row["dataset"]), []).append(row)
    out = []
    for (sweep, model, recipe, dataset), members in groups.items():
        scores = [r["test_top1"] for r in members if r["test_top1"] is not None]
        out.append(
            {
                "sweep": sweep,
                "model": model,
                "recipe": recipe,
                "dataset": dataset,
                "runs": len(members),
                "done": len(scores),
                "mean": float(np.mean(scores)) if scores else None,
                "std": float(np.std(scores, ddof=1)) if len(scores) > 1 else None,
            }
        )
    return out


def api_run_entry(row: dict[str, Any]) -> dict[str, Any]:
    """One entry of GET /api/runs."""
    keys = ("id", "dataset", "model", "recipe", "seed", "test_top1", "test_top3", "status")
    return {**{k: row[k] for k in keys}, "epochs": row["epochs"], "epochs_done": row["epochs_done"]}


def run_detail(data: RunData) -> dict[str, Any]:
    """GET /api/runs/{id}: headline numbers, class names and the confusion matrix (counts), or the error."""
    row = summary_row(data)
    if data.status != "done":
        return {**api_run_entry(row), "error": data.error}
    head = data.metrics["headline"]
    return {
        **api_run_entry(row),
        "images": int(head["n"]),
        "test_loss": finite(head["loss"]),
        "ece": row["ece"],
        "train_val_gap": row["train_val_gap"],
        "train_seconds": row["train_seconds"],
        "classes": data.classes,
        "confusion": np.asarray(data.metrics["confusion"]).astype(int).tolist(),
    }


def curves(data: RunData) -> dict[str, Any]:
    """The learning curves (loss, top-1) as SVG, from metrics.csv."""

    def series(key: str) -> list[tuple[float, float]]:
        return [(float(r.get("epoch", k + 1)), float(r[key])) for k, r in enumerate(data.history) if key in r]

    return {
        "loss": line_chart({"train loss": series("train_loss"), "val loss": series("val_loss")}, "loss"),
        "top1": line_chart({"train top-1": series("train_top1"), "val top-1": series("val_top1")}, "top-1"),
    }


def run_page(data: RunData) -> dict[str, Any]:
    """The run page: its row, curves, per-class table, reliability diagram and the confusion grid."""
    context: dict[str, Any] = {"curves": curves(data)}
    if data.status != "done":
        return context
    counts = np.asarray(data.metrics["confusion"]).astype(int)
    off = counts.copy()
    np.fill_diagonal(off, 0)
    worst = np.unravel_index(int(off.argmax()), off.shape) if off.max() > 0 else None
    peak = max(int(counts.max()), 1)
    context.update(
        classes=data.classes,
        confusion=[[(int(n), n / peak) for n in row] for row in counts.tolist()],
        worst=None if worst is None else (int(worst[0]), int(worst[1]), int(off.max())),
        per_class=[
            {k: (finite(v) if k not in ("class", "support") else v) for k, v in r.items()}
            for r in data.metrics["per_class"]
        ],
        reliability=reliability_chart(data.metrics["calibration"]["bins"]),
        loss=finite(data.metrics["headline"]["loss"]),
        n=int(data.metrics["headline"]["n"]),
    )
    return context


def class_number(data: RunData, name: str | None, what: str) -> int:
    """The label of a class given by name (or by its number), refused in one line."""
    if name is None:
        raise UsageError(f"give {what}=CLASS")
    if name in data.classes:
        return data.classes.index(name)
    if name.isdigit() and int(name) < len(data.classes):
        return int(name)
    raise UsageError(f"{what}: run {escape(data.id)!r} has no class {escape(name)[:60]!r}")


def paging(offset: int, limit: int) -> tuple[int, int]:
    if offset < 0 or not 1 <= limit <= MAX_LIMIT:
        raise UsageError(f"offset must be 0 or more and limit from 1 to {MAX_LIMIT}")
    return offset, limit


def sample_items(data: RunData, rows: np.ndarray) -> list[dict[str, Any]]:
    """Each predictions row as {index, true, pred, confidence, loss}."""
    pred, classes = data.pred, data.classes
    y_pred = pred.y_pred
    out = []
    for r in rows.tolist():
        t, p = int(pred.y_true[r]), int(y_pred[r])
        out.append(
            {
                "index": int(pred.index[r]),
                "true": classes[t],
                "pred": classes[p],
                "confidence": finite(pred.probs[r, p]),
                "loss": finite(-np.log(max(float(pred.probs[r, t]), 1e-12))),
            }
        )
    return out


def samples(
    data: RunData, true: str | None, predicted: str | None, sort: str, offset: int = 0, limit: int = PAGE
) -> dict[str, Any]:
    """GET /api/runs/{id}/samples: the test images of one confusion cell, sorted, one page of them."""
    if sort not in SORTS:
        raise UsageError(f"sort must be one of {', '.join(SORTS)}")
    offset, limit = paging(offset, limit)
    t, p = class_number(data, true, "true"), class_number(data, predicted, "pred")
    pred = data.pred
    rows = np.flatnonzero((pred.y_true == t) & (pred.y_pred == p))
    if sort == "confidence":
        key = -pred.probs[rows, p]
    else:
        key = np.log(np.maximum(pred.probs[rows, t], 1e-12))
    ordered = rows[np.lexsort((pred.index[rows], key))]
    return {"total": int(len(rows)), "items": sample_items(data, ordered[offset : offset + limit])}


def image_page(data: RunData, index: int) -> dict[str, Any]:
    """One test image: true and predicted class, loss and the top-k bars."""
    row = data.row(index)
    probs = data.pred.probs[row]
    top = np.argsort(-probs, kind="stable")[: min(TOP_K, len(probs))]
    item = sample_items(data, np.array([row]))[0]
    return {
        **item,
        "true_label": int(data.pred.y_true[row]),
        "pred_label": int(data.pred.y_pred[row]),
        "top": [(data.classes[k], finite(probs[k]) or 0.0) for k in top.tolist()],
    }
