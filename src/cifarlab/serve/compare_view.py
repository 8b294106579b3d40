"""Two runs of the same test set compared image by image: their numbers side by side, and the images that one run
gets right and the other wrong, in both directions (matched by test-set position, never by row order)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from cifarlab.base.errors import UsageError, escape
from cifarlab.serve.store import RunData, finite, summary_row
from cifarlab.serve.views import PAGE, paging

Side = Literal["a_only", "b_only"]
SIDES: tuple[Side, ...] = ("a_only", "b_only")
METRICS = ("test_top1", "test_top3", "ece", "train_val_gap", "train_seconds", "epochs")


def check_comparable(a: RunData, b: RunData) -> None:
    """Refuse two runs that cannot be compared image by image: unfinished, or other data or classes."""
    from cifarlab.results.compare_groups import dataset_differences

    for run in (a, b):
        if run.status != "done":
            raise UsageError(f"run {escape(run.id)!r} is not finished ({run.error or run.status})")
    differences = dataset_differences(a.record.dataset, b.record.dataset)
    if differences or a.classes != b.classes:
        raise UsageError(f"the two runs were not tested on the same data ({'; '.join(differences) or 'classes'})")


def compare_runs(a: RunData, b: RunData, show: str = "a_only", offset: int = 0, limit: int = PAGE) -> dict[str, Any]:
    """Both runs' rows, the counts of every right/wrong combination on the shared test images, and one page of
    the images in ``show`` ('a_only': right in A and wrong in B; 'b_only': the reverse)."""
    if show not in SIDES:
        raise UsageError(f"show must be one of {', '.join(SIDES)}")
    check_comparable(a, b)
    offset, limit = paging(offset, limit)
    shared, rows_a, rows_b = np.intersect1d(a.pred.index, b.pred.index, return_indices=True)
    right_a = a.pred.y_pred[rows_a] == a.pred.y_true[rows_a]
    right_b = b.pred.y_pred[rows_b] == b.pred.y_true[rows_b]
    pick = right_a & ~right_b if show == "a_only" else right_b & ~right_a
    chosen = np.flatnonzero(pick)[offset : offset + limit]
    classes = a.classes
    items = [
        {
            "index": int(shared[k]),
            "true": classes[int(a.pred.y_true[rows_a[k]])],
            "pred_a": classes[int(a.pred.y_pred[rows_a[k]])],
            "pred_b": classes[int(b.pred.y_pred[rows_b[k]])],
            "confidence_a": finite(a.pred.probs[rows_a[k]].max()),
            "confidence_b": finite(b.pred.probs[rows_b[k]].max()),
        }
        for k in chosen.tolist()
    ]
    row_a, row_b = summary_row(a), summary_row(b)
    return {
        "a": row_a,
        "b": row_b,
        "metrics": [(key, row_a.get(key), row_b.get(key)) for key in METRICS],
        "shared": int(len(shared)),
        "counts": {
            "both_right": int((right_a & right_b).sum()),
            "a_only": int((right_a & ~right_b).sum()),
            "b_only": int((right_b & ~right_a).sum()),
            "both_wrong": int((~right_a & ~right_b).sum()),
        },
        "show": show,
        "total": int(pick.sum()),
        "offset": offset,
        "limit": limit,
        "items": items,
    }
