"""What the server knows of each run: read through :class:`RunFolder` and compare's record once per change of its
files (their sizes and times are the cache key), with the numbers recomputed from the saved predictions.

A run whose files are damaged or hostile becomes a :class:`RunData` holding the one-line reason, never an
exception that reaches the app; every number handed out is finite or None (:func:`finite`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cifarlab.base.errors import CifarlabError, escape
from cifarlab.runs.folder import RunFolder, dataset_line, dataset_of
from cifarlab.runs.layout import (
    ANALYSIS_DIR,
    CONFIG_JSON,
    METRICS_CSV,
    PREDICTIONS_NPZ,
    RUN_JSON,
    SUMMARY_JSON,
    TEST_METRICS_JSON,
)
from cifarlab.serve.caches import LRU
from cifarlab.serve.roots import Entry, NotServed, inside

RUN_FILES = (CONFIG_JSON, RUN_JSON, METRICS_CSV, TEST_METRICS_JSON, PREDICTIONS_NPZ, "best.pt", "last.pt")
PROBLEMS = (CifarlabError, OSError, ValueError, KeyError, TypeError, IndexError, AttributeError)
MAX_RUNS_CACHED = 64


def finite(value: Any) -> float | None:
    """A number as a float when it is one and finite; None for NaN, infinities, text, bools and the rest."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def problem_text(exc: BaseException) -> str:
    """An exception as one escaped line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return escape(text)[:500]


def check_files_inside(entry: Entry) -> None:
    """Refuse a run whose files (or the analysis folder) are links that lead out of the served folder."""
    for name in (*RUN_FILES, ANALYSIS_DIR):
        path = entry.path / name
        if (path.exists() or path.is_symlink()) and not inside(path, entry.root):
            raise NotServed(f"{name} of run {escape(entry.id)!r} leads outside the served folder")


def stamp(entry: Entry) -> tuple[Any, ...]:
    """The run's files' sizes and modification times: when one changes, the run is read again."""
    out: list[Any] = [str(entry.path)]
    for name in (*RUN_FILES, f"{ANALYSIS_DIR}/{SUMMARY_JSON}"):
        try:
            info = (entry.path / name).stat()
            out.append((name, info.st_size, info.st_mtime_ns))
        except OSError:
            out.append((name, None))
    return tuple(out)


@dataclass
class RunData:
    """One run as the server shows it: finished (its compare record, predictions and metrics), training (how
    far), or broken (``error``)."""

    entry: Entry
    folder: RunFolder
    status: str = "done"  # done, training or error
    error: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    record: Any = None  # compare's RunRecord (values recomputed from the predictions)
    pred: Any = None  # runs.folder.Predictions
    metrics: dict[str, Any] = field(default_factory=dict)  # analysis_metrics.compute_metrics
    positions: dict[int, int] = field(default_factory=dict)  # test-set index -> row of the predictions
    dataset: dict[str, Any] = field(default_factory=dict)  # the dataset record (CIFAR-10's for runs without one)

    @property
    def id(self) -> str:
        return self.entry.id

    @property
    def classes(self) -> list[str]:
        return list(self.pred.classes) if self.pred is not None else []

    def row(self, index: int) -> int:
        """The predictions' row of test image ``index``; NotServed when the run has no such image."""
        if index not in self.positions:
            raise NotServed(f"run {escape(self.id)!r} has no test image {index}")
        return self.positions[index]


def read_run(entry: Entry) -> RunData:
    """The run, read: a broken one carries its reason instead of raising."""
    folder = RunFolder(entry.path)
    data = RunData(entry, folder)
    try:
        check_files_inside(entry)
        config = folder.config_record
        data.config = config if isinstance(config, dict) else {}
        data.history = folder.metrics
        if not folder.finished:
            data.status = "training"
            data.dataset = dataset_of(entry.path)
            return data
        read_finished(data)
    except PROBLEMS as exc:
        data.status, data.error = "error", problem_text(exc)
    return data


def read_finished(data: RunData) -> None:
    """Fill in a finished run: compare's record, the predictions, the metrics and the index of each test image."""
    from cifarlab.results.analysis_metrics import compute_metrics
    from cifarlab.results.compare_groups import load_record

    data.info = data.folder.info
    data.pred = data.folder.predictions
    data.metrics = compute_metrics(data.pred)
    data.record = load_record(data.entry.path, data.folder, data.metrics)
    data.dataset = data.record.dataset
    index = data.pred.index
    if len(np.unique(index)) != len(index) or index.min() < 0:
        raise CifarlabError(f"{PREDICTIONS_NPZ}: the test-set positions (index) repeat or are negative")
    data.positions = {int(i): k for k, i in enumerate(index.tolist())}


class RunStore:
    """Every run read at most once per change of its files; at most MAX_RUNS_CACHED kept."""

    def __init__(self) -> None:
        self.cache: LRU[RunData] = LRU(MAX_RUNS_CACHED)

    def get(self, entry: Entry) -> RunData:
        return self.cache.get_or_make(stamp(entry), lambda: read_run(entry))


def epochs_planned(data: RunData) -> int | None:
    value = data.info.get("epochs", data.config.get("epochs"))
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def text_of(value: Any, limit: int = 80) -> str | None:
    """A config value as short text (a forged list or object shows as its JSON-ish repr, cut)."""
    if value is None:
        return None
    return escape(str(value))[:limit]


def summary_row(data: RunData) -> dict[str, Any]:
    """The runs table's row (and /api/runs's entry): every field present, numbers finite or None."""
    values = data.record.values if data.record is not None else {}
    last = data.history[-1] if data.history else {}
    epochs = epochs_planned(data)
    row = {
        "id": data.id,
        "dataset": dataset_name(data),
        "model": text_of(data.config.get("model")),
        "recipe": text_of(data.config.get("recipe")),
        "seed": data.config.get("seed")
        if isinstance(data.config.get("seed"), int)
        else text_of(data.config.get("seed")),
        "epochs": epochs,
        "epochs_done": len(data.history),
        "test_top1": finite(values.get("test_top1")),
        "test_top3": finite(values.get("test_top3")),
        "ece": finite(values.get("ece")),
        "train_val_gap": finite(values.get("train_val_gap")),
        "train_seconds": finite(values.get("train_seconds")),
        "val_top1": finite(last.get("val_top1")),
        "status": data.status,
        "error": data.error,
        "sweep": data.entry.sweep,
    }
    if isinstance(row["seed"], bool):
        row["seed"] = None
    return row


def dataset_name(data: RunData) -> str | None:
    """The dataset in a few words ('CIFAR-10, 32 px, 10 classes'); None when the run cannot say."""
    try:
        return escape(dataset_line(data.dataset or dataset_of(data.entry.path)))[:120]
    except PROBLEMS:
        return None


def run_path(data: RunData) -> Path:
    return data.entry.path
