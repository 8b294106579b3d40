"""Experiment tracking of one run: TensorBoard event files, and an MLflow run when a tracking store is given.

``open_tracker(run_dir, config)`` is called by training once the run folder exists; ``.epoch(row)`` logs each
epoch's row of ``metrics.csv`` (losses, accuracies, learning rate, images/s), ``.finish(run_dir)`` the test
numbers, the confusion matrix and a few misclassified test images, ``.close()`` flushes and closes.

TensorBoard events go to ``RUN/tensorboard/``, so ``tensorboard --logdir runs/`` shows every run and sweep side
by side (the HParams tab lists each run's config beside its test accuracy). TensorBoard is an optional
dependency (``pip install 'cifarlab[tensorboard]'``): without it tracking is silently off, unless asked for.

The environment steers it, so that ``cifarlab train`` and the workers of ``cifarlab sweep`` behave alike:

- ``CIFARLAB_TENSORBOARD``: ``0`` turns the event files off, ``1`` requires them (an error if not installed).
- ``CIFARLAB_MLFLOW_URI``: log params, per-epoch metrics, test numbers and figures to this MLflow tracking store
  (``sqlite:///mlflow.db``, a server's address, ...); ``pip install 'cifarlab[mlflow]'``.
- ``CIFARLAB_MLFLOW_EXPERIMENT``: the experiment (default: the name of the folder holding the run, e.g. the
  sweep's); ``CIFARLAB_MLFLOW_PARENT_RUN``: an MLflow run id to nest this run under (a sweep's run).

A resumed run continues where it stopped: events of epochs after its checkpoint are purged from TensorBoard's
view, and its MLflow run (id kept in ``RUN/tracking.json``) is reopened, without logging an epoch twice.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cifarlab.base.errors import DataError, UsageError
from cifarlab.base.files import read_json
from cifarlab.engine.mlflow_run import SCALAR_TAGS, MlflowRun

TB_DIR = "tensorboard"
MISCLASSIFIED_SHOWN = 16
TEST_KEYS = ("top1", "top3", "loss")
HPARAM_SKIP = ("name", "out", "data_dir", "device")  # where and what it is called, not how it trains


def env_flag(name: str) -> bool | None:
    """``1``/``true``/``yes`` -> True, ``0``/``false``/``no`` -> False, unset or empty -> None."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"{name}: expected 0 or 1, got {value!r}")


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


# ---------------------------------------------------------------------------------------------------------
# Figures for the end of a run
# ---------------------------------------------------------------------------------------------------------


def rgb_array(fig: Any) -> np.ndarray:
    """Render a matplotlib figure to an (H, W, 3) uint8 array."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def literal(draw: Any) -> Any:
    """``draw`` run with every text taken as typed (figures.literal_text): a class or run name holding ``$`` or
    ``\\frac`` is neither parsed as math text (which may raise) nor rendered as math."""

    @functools.wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from cifarlab.base.figures import literal_text  # deferred: figures imports matplotlib

        return literal_text(draw)(*args, **kwargs)

    return wrapper


@literal
def confusion_image(counts: np.ndarray, classes: list[str], title: str) -> np.ndarray:
    """The confusion matrix (rows: true class, shaded by the row's share), counts written in the cells."""
    from cifarlab.base.figures import new_figure

    fig = new_figure(7.0, 6.0)
    ax = fig.add_subplot()
    shares = counts / np.maximum(1, counts.sum(axis=1, keepdims=True))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                str(int(counts[i, j])),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if shares[i, j] > 0.6 else "black",
            )
    return rgb_array(fig)


@literal
def misclassified_image(images: np.ndarray, true: list[str], predicted: list[str]) -> np.ndarray:
    """A grid of test images, each captioned ``true -> predicted``."""
    from cifarlab.base.figures import new_figure

    cols = 4
    rows = max(1, -(-len(images) // cols))
    fig = new_figure(2.0 * cols, 2.1 * rows)
    for k, (img, t, p) in enumerate(zip(images, true, predicted, strict=True)):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(img.transpose(1, 2, 0))
        ax.set_title(f"{t} -> {p}", fontsize=8)
        ax.axis("off")
    return rgb_array(fig)


def official_test_images(config: dict[str, Any], data: Any) -> np.ndarray | None:
    """The run's test images as (N, 3, S, S) uint8, from ``data`` or read again as the run's config says; None if
    they cannot be read."""
    if data is None:
        from cifarlab.data.loading import load_dataset

        try:
            data = load_dataset(
                config.get("dataset", "cifar10"),
                config.get("data_dir"),
                config.get("image_size"),
                config.get("labels", "fine"),
                allow_download=False,
            )
        except DataError:
            return None
    return data.test_images.numpy()


# ---------------------------------------------------------------------------------------------------------
# The tracker
# ---------------------------------------------------------------------------------------------------------


class Tracker:
    """Writes one run's TensorBoard events and (optionally) its MLflow run. Tracking never stops training:
    after a logging error (a full disk, a tracking server gone) it warns once and goes on without it."""

    def __init__(self, run_dir: Path, config: dict[str, Any], tensorboard: bool, mlflow_uri: str | None) -> None:
        self.run_dir = Path(run_dir)
        self.config = config
        self.tensorboard = tensorboard
        self.writer: Any = None
        self.last_step = 0
        self.mlflow = MlflowRun(mlflow_uri, self.run_dir, config) if mlflow_uri else None
        self.finished = self.closed = False
        atexit.register(self.close)

    # --- TensorBoard -----------------------------------------------------------------------------------
    def _writer(self, first_step: int) -> Any:
        """The event writer, opened at the first epoch logged. When the folder already holds events (a resumed
        run), everything from ``first_step`` on is purged from TensorBoard's view: those epochs are redone."""
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter  # deferred: pulls in tensorboard (seconds)

            folder = self.run_dir / TB_DIR
            resumed = folder.is_dir() and any(folder.glob("events.out.tfevents.*"))
            self.writer = SummaryWriter(str(folder), purge_step=first_step if resumed else None)
        return self.writer

    def _guard(self, what: str, action: Any) -> None:
        """Run one logging action; on error, warn once and switch that kind of logging off."""
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - a tracking failure must not lose a training run
            print(
                f"cifarlab: warning: {what} logging stopped ({type(exc).__name__}: {exc}); training goes on", flush=True
            )
            if what == "TensorBoard":
                self.tensorboard = False
            else:
                self.mlflow = None

    def epoch(self, row: dict[str, Any]) -> None:
        """Log one epoch's metrics row (the keys of metrics.csv); events are flushed so a kill loses none."""
        step = int(row["epoch"])
        if self.tensorboard:

            def write() -> None:
                writer = self._writer(step)
                for key, tag in SCALAR_TAGS.items():
                    if key in row:
                        writer.add_scalar(tag, float(row[key]), step)
                writer.flush()

            self._guard("TensorBoard", write)
        if self.mlflow is not None:
            self._guard("MLflow", lambda: self.mlflow.epoch(row))
        self.last_step = step

    def finish(self, run_dir: str | Path | None = None, data: Any = None) -> None:
        """Log the test numbers, the confusion matrix, misclassified images and the hyperparameters.

        ``data`` (the loaded CIFAR-10) saves reading the test images again; without it they are read from
        the run's data folder, and left out if it is not there."""
        run_dir = Path(run_dir) if run_dir is not None else self.run_dir
        if not (self.tensorboard or self.mlflow):
            self.finished = True
            return
        metrics = read_json(run_dir / "test_metrics.json")
        test = {k: float(metrics[k]) for k in TEST_KEYS if k in metrics}
        step = max(self.last_step, int(metrics.get("epoch", 0)))
        try:
            figures = self.figures(run_dir, data)
        except Exception as exc:  # noqa: BLE001 - the run is finished and saved; a missing figure must not undo it
            print(f"cifarlab: warning: tracking figures not drawn ({type(exc).__name__}: {exc})", flush=True)
            figures = {}
        if self.tensorboard:
            self._guard("TensorBoard", lambda: self._tensorboard_finish(test, step, figures))
        if self.mlflow is not None:
            self._guard("MLflow", lambda: self.mlflow.finish(run_dir, test, step, figures))
        self.finished = True

    def figures(self, run_dir: Path, data: Any) -> dict[str, np.ndarray]:
        """The confusion matrix and, when the test images are at hand, a grid of misclassified ones."""
        with np.load(run_dir / "test_predictions.npz") as npz:
            y_true, probs, index = npz["y_true"], npz["probs"], npz["index"]
        named = list(read_json(run_dir / "test_metrics.json").get("per_class_accuracy") or [])  # in class order
        classes = named if len(named) == probs.shape[1] else [str(k) for k in range(probs.shape[1])]
        y_pred = probs.argmax(axis=1)
        n = probs.shape[1]
        counts = np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)
        figures = {"confusion_matrix": confusion_image(counts, classes, f"{run_dir.name}: test confusion matrix")}
        images = official_test_images(self.config, data)
        wrong = np.flatnonzero(y_pred != y_true)
        if images is not None and len(wrong) and index.max() < len(images):
            picked = np.random.default_rng(int(self.config.get("seed", 0))).permutation(wrong)[:MISCLASSIFIED_SHOWN]
            picked.sort()
            figures["misclassified"] = misclassified_image(
                images[index[picked]], [classes[y_true[k]] for k in picked], [classes[y_pred[k]] for k in picked]
            )
        return figures

    def _tensorboard_finish(self, test: dict[str, float], step: int, figures: dict[str, np.ndarray]) -> None:
        from torch.utils.tensorboard.summary import hparams

        writer = self._writer(step)
        for key, value in test.items():
            writer.add_scalar(f"test/{key}", value, step)
        for name, image in figures.items():
            writer.add_image(name, image, step, dataformats="HWC")
        params = {
            k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v))
            for k, v in self.config.items()
            if k not in HPARAM_SKIP
        }
        exp, ssi, sei = hparams(params, {f"hparam/test_{k}": v for k, v in test.items()})
        for summary in (exp, ssi, sei):
            writer.file_writer.add_summary(summary, step)
        for key, value in test.items():
            writer.add_scalar(f"hparam/test_{key}", value, step)
        writer.flush()

    def close(self) -> None:
        """Flush and close; an MLflow run that did not finish is marked KILLED (resuming reopens it)."""
        if self.closed:
            return
        self.closed = True
        if self.writer is not None:
            self._guard("TensorBoard", self.writer.close)
        if self.mlflow is not None and not self.finished:
            self._guard("MLflow", self.mlflow.stop)
        atexit.unregister(self.close)


class NullTracker:
    """Tracking switched off: every call does nothing."""

    def epoch(self, row: dict[str, Any]) -> None:
        pass

    def finish(self, run_dir: str | Path | None = None, data: Any = None) -> None:
        pass

    def close(self) -> None:
        pass


def open_tracker(
    run_dir: str | Path, config: Any, mlflow_uri: str | None = None, enabled: bool = True
) -> Tracker | NullTracker:
    """The tracker for one run (see the module docstring for the environment variables that steer it).

    ``mlflow_uri`` (default ``$CIFARLAB_MLFLOW_URI``) also logs to MLflow; ``enabled=False`` (every process but
    the first under torchrun) gives a tracker that does nothing."""
    if not enabled:
        return NullTracker()
    asked = env_flag("CIFARLAB_TENSORBOARD")
    if asked and not tensorboard_available():
        raise UsageError(
            "CIFARLAB_TENSORBOARD=1 asks for TensorBoard event files, but TensorBoard is not "
            "installed: pip install 'cifarlab[tensorboard]'"
        )
    tensorboard = asked if asked is not None else tensorboard_available()
    mlflow_uri = mlflow_uri or os.environ.get("CIFARLAB_MLFLOW_URI") or None
    if not tensorboard and not mlflow_uri:
        return NullTracker()
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return Tracker(Path(run_dir), values, tensorboard, mlflow_uri)
