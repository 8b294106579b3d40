"""The run folder's layout: the name of each file, the writer's lock, the per-epoch table and new folders.

A run folder ``runs/<name>/`` holds ``config.json``, ``split.json``, ``normalization.json``, ``metrics.csv``,
``best.pt``, ``last.pt``, ``run.json``, ``test_metrics.json``, ``test_predictions.npz``, ``analysis/`` and, after
``cifarlab robustness``, ``robustness/``, and an empty ``.lock`` that the process writing the run holds locked
(:class:`RunLock`).
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from cifarlab.base.errors import CifarlabError, UsageError
from cifarlab.base.files import FileLock, atomic_write

LOCK_FILE = ".lock"
RUN_JSON = "run.json"
CONFIG_JSON = "config.json"
METRICS_CSV = "metrics.csv"
TEST_METRICS_JSON = "test_metrics.json"
PREDICTIONS_NPZ = "test_predictions.npz"
ANALYSIS_DIR = "analysis"
SUMMARY_JSON = "summary.json"
ROBUSTNESS_DIR = "robustness"  # cifarlab robustness RUN: accuracy on corrupted test images
ROBUSTNESS_JSON = "robustness.json"
ROBUSTNESS_CSV = "robustness.csv"
ROBUSTNESS_HEATMAP = "robustness_heatmap.png"
ROBUSTNESS_GALLERY = "robustness_gallery.png"

METRICS_COLUMNS = [
    "epoch",
    "train_loss",
    "train_top1",
    "val_loss",
    "val_top1",
    "val_top3",
    "lr",
    "epoch_seconds",
    "images_per_second",
]


class RunLock(FileLock):
    """The lock on ``folder/.lock`` held by the process writing the run; a second writer is refused with one
    line. Use it as a context manager, or call :meth:`acquire` and :meth:`release`."""

    def __init__(self, folder: Path) -> None:
        super().__init__(Path(folder) / LOCK_FILE)
        self.folder = Path(folder)

    def acquire(self, wait: bool = False, cancel: threading.Event | None = None) -> bool:
        try:
            taken = super().acquire(wait, cancel)
        except OSError as exc:
            raise CifarlabError(f"cannot lock run folder {self.folder}: {exc.strerror or exc}") from None
        if not taken:
            raise CifarlabError(
                f"run folder {self.folder} is in use by another cifarlab process (a training or "
                "resume still running); wait for it to end"
            )
        return True

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def check_writable(folder: Path) -> None:
    """Create and remove a scratch file, so an unwritable folder is reported before any work is done."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-check.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise CifarlabError(f"run folder {folder} is not writable: {exc.strerror or exc}") from None


def write_metrics_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite the whole per-epoch table atomically (it is small), so it always matches the checkpoint."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRICS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in METRICS_COLUMNS})
    atomic_write(path, lambda f: f.write(buf.getvalue()), binary=False)


def read_metrics_csv(path: Path) -> list[dict[str, float]]:
    """The per-epoch table as a list of dicts of numbers."""
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]


def new_run_dir(out: str | Path, name: str | None, model: str) -> Path:
    """Create ``out/name`` (a timestamped name by default). Never reuses an existing folder."""
    out = Path(out)
    if name is None:
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{model}"
        candidate, k = name, 1
        while (out / candidate).exists():
            k += 1
            candidate = f"{name}-{k}"
        name = candidate
    run_dir = out / name
    if run_dir.exists():
        raise UsageError(f"run folder {run_dir} already exists; choose another --name (runs are never overwritten)")
    try:
        run_dir.mkdir(parents=True)
    except OSError as exc:
        raise CifarlabError(f"cannot create run folder {run_dir}: {exc.strerror or exc}") from None
    return run_dir


def resolve_checkpoint(run_or_file: str | Path, name: str = "best.pt") -> Path:
    """A run folder means its ``best.pt`` (or ``last.pt`` if there is no best yet); a file means itself."""
    path = Path(run_or_file)
    if path.is_dir():
        for candidate in (path / name, path / "last.pt"):
            if candidate.is_file():
                return candidate
        raise UsageError(f"no checkpoint ({name} or last.pt) in run folder {path}")
    if not path.exists():
        raise UsageError(f"no such run folder or checkpoint: {path}")
    return path
