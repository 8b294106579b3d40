"""The Python API, for notebooks and scripts: the same steps as the commands, returning objects, not exit codes.

``import cifarlab`` gives these names (the package's ``__init__`` reads them from here on first use)::

    import cifarlab as lab
    config = lab.recipe("seed", epochs=2, limit_train=5000)
    run = lab.train(config)          # a RunFolder; shown as a one-line summary in a notebook
    lab.analyze(run)                 # RUN/analysis/, returns its summary dict
    lab.predict(run, ["photo.jpg"])  # [(file, [(class, probability), ...]), ...]
    lab.compare([run, other], "comparison")
    lab.report([run, other], "report.html")

Errors are :class:`cifarlab.base.errors.CifarlabError` (one line, the same message the command prints).
See docs/python-api.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cifarlab.config.train_config import TrainConfig, make_config
from cifarlab.runs.folder import RunFolder

__all__ = ["RunFolder", "TrainConfig", "analyze", "compare", "load_run", "predict", "recipe", "report", "train"]

RunLike = RunFolder | str | Path


def path_of(run: RunLike) -> Path:
    return run.path if isinstance(run, RunFolder) else Path(run)


def recipe(name: str = "seed", /, **overrides: Any) -> TrainConfig:
    """The named recipe's config (``cifarlab recipes`` lists them) with ``overrides`` on top, checked: e.g.
    ``recipe("fast", time_budget=120, data_dir="data")``. Field names are TrainConfig's (``cifarlab train --help``
    names them as flags; ``name=`` is the run folder's name); the recipe scales to a small dataset as
    ``cifarlab train`` does."""
    return make_config(name, **overrides)


def train(config: TrainConfig) -> RunFolder:
    """Train as ``config`` says, test the chosen checkpoint once, and return the run folder (no analysis:
    call :func:`analyze`)."""
    from cifarlab.engine.train import train as train_run

    return RunFolder(train_run(config))


def load_run(path: str | Path) -> RunFolder:
    """A run folder made before (by the API or ``cifarlab train``), read lazily."""
    return RunFolder.open(path)


def analyze(run: RunLike, images: bool = True, data_dir: str | None = None) -> dict[str, Any]:
    """Write ``RUN/analysis/`` (tables, figures, galleries and Grad-CAM unless ``images=False``) and return
    its summary (top-1, top-3, ECE, the most confused pair, ...)."""
    from cifarlab.results.analysis import analyze as analyze_run

    return analyze_run(path_of(run), data_dir=data_dir, images=images)


def compare(runs: Sequence[RunLike], out: str | Path = "comparison") -> Any:
    """Compare finished runs (seeds of one setup grouped as mean ± std) and write the files into ``out``;
    returns the comparison (its ``groups`` hold the numbers)."""
    from cifarlab.results.compare import compare as compare_runs

    return compare_runs([path_of(r) for r in runs], out)


def predict(run: RunLike, images: Sequence[str | Path], top_k: int = 3) -> list[tuple[str, Any]]:
    """Classify image files (or folders of them) with the run's checkpoint, as ``cifarlab predict`` does:
    ``[(file, [(class, probability), ...])]``, or ``(file, "error message")`` for a file that cannot be read."""
    from cifarlab.tools.predict import predict_files

    return [(r.file, r.error if r.error is not None else r.top) for r in predict_files(path_of(run), images, top_k)]


def report(runs: Sequence[RunLike], out: str | Path | None = None, data_dir: str | None = None) -> Path:
    """Write the self-contained HTML report (and report.md beside it) for ``runs``; returns the HTML path."""
    from cifarlab.results.report import report as write_report

    return write_report([path_of(r) for r in runs], out, data_dir=data_dir)
