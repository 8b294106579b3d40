"""``RunFolder``: a finished (or still training) run folder, read lazily, each file once, through one migration.

A run folder holds ``config.json`` (the :class:`~cifarlab.config.TrainConfig`), ``metrics.csv`` (one row per
epoch), ``run.json`` (what was trained and how it scored; written at the end), ``test_metrics.json`` and
``test_predictions.npz`` (the test, once), checkpoints, and ``analysis/``. ``run.json`` carries
``format_version``; a run written before it existed is brought up to date by :func:`migrate`, the one place that
knows what older runs lack. Every record is read through the bounded reader (records.py).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from cifarlab.errors import CifarlabError, UsageError, escape
from cifarlab.runfiles import read_json, read_metrics_csv

FORMAT_VERSION = 1  # of run.json; raise it (and teach migrate) when a field changes meaning or goes
RUN_JSON = "run.json"
CONFIG_JSON = "config.json"
METRICS_CSV = "metrics.csv"
TEST_METRICS_JSON = "test_metrics.json"
PREDICTIONS_NPZ = "test_predictions.npz"
ANALYSIS_DIR = "analysis"
SUMMARY_JSON = "summary.json"


def cifar10_record() -> dict[str, Any]:
    """The dataset record of a run made before runs recorded their data: CIFAR-10 at 32 px, marked ``assumed``."""
    from cifarlab.data import CLASSES

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
        from cifarlab.config import TrainConfig

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
        """The test predictions (``y_true``, ``probs``, ``index``), checked (analysis.load_predictions)."""
        from cifarlab.analysis import load_predictions

        return load_predictions(self.path)

    @cached_property
    def summary(self) -> dict[str, Any]:
        """analysis/summary.json ({} before the analysis)."""
        path = self.path / ANALYSIS_DIR / SUMMARY_JSON
        return read_json(path) if path.is_file() else {}

    @property
    def classes(self) -> list[str]:
        """Class names in label order, from the run's dataset record (CIFAR-10's for the oldest runs)."""
        from cifarlab.data import CLASSES

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
