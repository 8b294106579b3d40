"""``RunFolder``: a finished (or still training) run folder, read lazily, each file once, through one migration.

A run folder holds ``config.json`` (the :class:`~cifarlab.config.TrainConfig`), ``metrics.csv`` (one row per
epoch), ``run.json`` (what was trained and how it scored; written at the end), ``test_metrics.json`` and
``test_predictions.npz`` (the test, once), checkpoints, ``analysis/`` and ``robustness/``. ``run.json`` carries
``format_version``; a run written before it existed is brought up to date by :func:`migrate`, the one place that
knows what older runs lack. Every record is read through the bounded reader (records.py).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from cifarlab.base.errors import CifarlabError, UsageError, escape
from cifarlab.base.files import read_json
from cifarlab.runs.layout import (
    ANALYSIS_DIR,
    CONFIG_JSON,
    METRICS_CSV,
    PREDICTIONS_NPZ,
    ROBUSTNESS_DIR,
    ROBUSTNESS_JSON,
    RUN_JSON,
    SUMMARY_JSON,
    TEST_METRICS_JSON,
    read_metrics_csv,
)

FORMAT_VERSION = 1  # of run.json; raise it (and teach migrate) when a field changes meaning or goes


def cifar10_record() -> dict[str, Any]:
    """The dataset record of a run made before runs recorded their data: CIFAR-10 at 32 px, marked ``assumed``."""
    from cifarlab.data.cifar10 import CLASSES

    return {
        "kind": "cifar10",
        "path": None,
        "classes": list(CLASSES),
        "image_size": 32,
        "test": "the official test set (test_batch)",
        "assumed": True,
    }


def migrate(info: dict[str, Any], where: str) -> dict[str, Any]:
    """run.json as the current format: a run from before ``format_version`` (version 0) trained on CIFAR-10 at 32
    px, in fp32, unscaled, from random weights; a version newer than this cifarlab's is refused in one line."""
    version = info.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise CifarlabError(f"{where}: format_version must be a whole number (got {escape(repr(version))[:40]})")
    if version > FORMAT_VERSION:
        raise CifarlabError(
            f"{where}: written by a newer cifarlab (run format {version}; this one reads up to {FORMAT_VERSION})"
        )
    if version == 0:
        defaults = {"dataset": cifar10_record(), "precision": "fp32"}
        info = {**defaults, "scaling": [], "init": None, **info, "format_version": FORMAT_VERSION}
    return info


@dataclass(frozen=True)
class RunFolder:
    """One run folder; each file is read when first asked for and kept (``RunFolder(path)`` reads nothing)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        """The run folder at ``path``, refused in one line if it is not one (no config.json)."""
        folder = cls(Path(path))
        if not folder.path.is_dir():
            raise UsageError(f"{escape(str(path))}: no such run folder")
        if not (folder.path / CONFIG_JSON).is_file():
            raise UsageError(f"{escape(str(path))}: not a run folder (no {CONFIG_JSON})")
        return folder

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def finished(self) -> bool:
        """True once training and the test are done (run.json is written last)."""
        return (self.path / RUN_JSON).is_file()

    @cached_property
    def info(self) -> dict[str, Any]:
        """run.json, migrated to the current format; {} while the run is still training."""
        if not self.finished:
            return {}
        return migrate(read_json(self.path / RUN_JSON), escape(str(self.path / RUN_JSON)))

    @cached_property
    def config_record(self) -> dict[str, Any]:
        """config.json as saved (a JSON object, not checked as a config: compare and report show odd values)."""
        return read_json(self.path / CONFIG_JSON)

    @cached_property
    def config(self) -> Any:
        """The run's :class:`~cifarlab.config.TrainConfig`."""
        from cifarlab.config.train_config import TrainConfig

        return TrainConfig.load(self.path / CONFIG_JSON)

    @cached_property
    def metrics(self) -> list[dict[str, float]]:
        """metrics.csv: one dict per finished epoch (empty before the first ends)."""
        path = self.path / METRICS_CSV
        return read_metrics_csv(path) if path.is_file() else []

    @cached_property
    def test_metrics(self) -> dict[str, Any]:
        """test_metrics.json ({} before the test)."""
        path = self.path / TEST_METRICS_JSON
        return read_json(path) if path.is_file() else {}

    @cached_property
    def predictions(self) -> Any:
        """The test predictions (``y_true``, ``probs``, ``index``), checked (load_predictions)."""
        return load_predictions(self.path)

    @cached_property
    def summary(self) -> dict[str, Any]:
        """analysis/summary.json ({} before the analysis)."""
        path = self.path / ANALYSIS_DIR / SUMMARY_JSON
        return read_json(path) if path.is_file() else {}

    @cached_property
    def robustness(self) -> dict[str, Any]:
        """robustness/robustness.json ({} before ``cifarlab robustness``), a JSON object read by the bounded reader."""
        path = self.path / ROBUSTNESS_DIR / ROBUSTNESS_JSON
        return read_json(path) if path.is_file() else {}

    @property
    def classes(self) -> list[str]:
        """Class names in label order, from the run's dataset record (CIFAR-10's for the oldest runs)."""
        from cifarlab.data.cifar10 import CLASSES

        names = (self.info.get("dataset") or {}).get("classes")
        return list(names) if isinstance(names, list) else list(CLASSES)

    def headline(self) -> str:
        """One line: model, recipe, seed, epochs and the test numbers (or how far training is)."""
        config = self.config
        what = f"{config.model}, recipe {config.recipe}, seed {config.seed}"
        if not self.finished:
            return f"{self.name}: {what}; training, {len(self.metrics)}/{config.epochs} epochs"
        info = self.info
        top1, top3 = info.get("test_top1"), info.get("test_top3")
        score = (
            f"test top-1 {100 * top1:.2f}%, top-3 {100 * top3:.2f}%"
            if isinstance(top1, float) and isinstance(top3, float)
            else "no test numbers"
        )
        return f"{self.name}: {what}, {info.get('epochs')} epochs; {score}"

    def __repr__(self) -> str:
        try:
            return f"RunFolder({escape(str(self.path))!r}) {escape(self.headline())}"
        except CifarlabError as exc:
            return f"RunFolder({escape(str(self.path))!r}) unreadable: {exc}"

    def _repr_html_(self) -> str:
        """How a notebook shows it: the path and the headline, escaped."""
        return f"<code>{html.escape(str(self.path))}</code>: {html.escape(repr(self).split(') ', 1)[-1])}"


@dataclass
class Predictions:
    """The saved test-set predictions of a run."""

    y_true: np.ndarray  # (N,) int64 true class
    probs: np.ndarray  # (N, C) float32 softmax probabilities
    index: np.ndarray  # (N,) int64 position of each image in the official test set
    classes: list[str]

    @property
    def y_pred(self) -> np.ndarray:
        return self.probs.argmax(1)


def require_run(run: str | Path) -> Path:
    """The run folder, or a usage error that says what is wrong with the path."""
    path = Path(run)
    if not path.exists():
        raise UsageError(f"no such run folder: {path}")
    if not path.is_dir():
        raise UsageError(f"{path} is not a folder; give a run folder (the one holding run.json)")
    return path


def load_predictions(run: str | Path) -> Predictions:
    """Read and check ``RUN/test_predictions.npz``; class names from ``test_metrics.json``."""
    run = require_run(run)
    path = run / PREDICTIONS_NPZ
    if not path.is_file():
        raise UsageError(
            f"{run} has no test_predictions.npz: the run has not been evaluated on the test set "
            f"(let `cifarlab train` finish, or run `cifarlab evaluate {run}`)"
        )
    try:
        with np.load(path, allow_pickle=False) as f:
            y_true, probs, index = f["y_true"].astype(np.int64), f["probs"], f["index"].astype(np.int64)
    except (OSError, ValueError, KeyError) as exc:
        raise CifarlabError(f"{path} is unreadable or incomplete (needs y_true, probs, index): {exc}") from None
    classes = class_names(run, probs.shape[-1] if probs.ndim == 2 else 0)
    if probs.ndim != 2 or probs.shape[0] != len(y_true) or len(index) != len(y_true) or len(y_true) == 0:
        raise CifarlabError(
            f"{path}: expected probs (N, {len(classes)}), y_true (N,) and index (N,) with N > 0; "
            f"got {probs.shape}, {y_true.shape}, {index.shape}"
        )
    if y_true.min() < 0 or y_true.max() >= probs.shape[1]:
        raise CifarlabError(f"{path}: a label is outside 0-{probs.shape[1] - 1}")
    return Predictions(y_true, probs.astype(np.float32), index, classes)


def recorded_dataset(run: Path) -> dict[str, Any]:
    """The dataset record of ``run.json``, migrated (CIFAR-10, marked ``assumed``, for a run from before records);
    empty while the run trains or when run.json is unreadable."""
    try:
        record = RunFolder(run).info.get("dataset")
    except CifarlabError:
        return {}
    return record if isinstance(record, dict) else {}


def dataset_of(run: Path) -> dict[str, Any]:
    """The run's dataset record; a run without one was trained on CIFAR-10 at 32 pixels (marked ``assumed``)."""
    return dataset_or_cifar10(recorded_dataset(run))


def dataset_or_cifar10(record: Any) -> dict[str, Any]:
    """``record`` when it is a non-empty record; else CIFAR-10 at 32 pixels, marked ``assumed``."""
    return record if isinstance(record, dict) and record else cifar10_record()


DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "folder": "image folder"}


def dataset_line(record: dict[str, Any]) -> str:
    """One line about a dataset record: 'CIFAR-100 (coarse labels), 32 px, 20 classes' or
    'image folder /data/pets, 64 px, 37 classes'."""
    kind = str(record.get("kind", "?"))
    text = DATASET_NAMES.get(kind, kind)
    if kind == "folder":
        text += f" {record.get('path')}"
    if record.get("labels") is not None and kind == "cifar100":
        text += f" ({record['labels']} labels)"
    classes = record.get("classes")
    text += f", {record.get('image_size', '?')} px, {len(classes) if isinstance(classes, list) else '?'} classes"
    return text + (" (assumed: the run predates dataset records)" if record.get("assumed") else "")


def is_name_list(value: Any, length: int) -> bool:
    """True for a list of ``length`` strings."""
    return isinstance(value, list) and len(value) == length and all(isinstance(v, str) for v in value)


def class_names(run: Path, num_classes: int) -> list[str]:
    """Class names in label order: the run's dataset record, else the names saved with the test metrics (the
    checkpoint's), else CIFAR-10's for a run that predates dataset records, else 'class k'."""
    from cifarlab.data.cifar10 import CLASSES

    record = recorded_dataset(run)
    if is_name_list(record.get("classes"), num_classes):
        return list(record["classes"])
    metrics = run / TEST_METRICS_JSON
    if metrics.is_file():
        saved = read_json(metrics)
        names = list(saved.get("per_class_accuracy", {})) if isinstance(saved, dict) else []
        if len(names) == num_classes:
            return names
    if not record and num_classes == len(CLASSES):
        return list(CLASSES)
    return [f"class {k}" for k in range(num_classes)]


def run_title(name: str, model: str | None) -> str:
    """'NAME (MODEL)', or just the name when it already is the model's (as in a study)."""
    return name if model in (None, name) else f"{name} ({model})"
