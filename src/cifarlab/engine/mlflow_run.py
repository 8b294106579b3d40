"""One run's MLflow run: the tracking store's client (its SQLite file or folder created on first use, artifacts kept
beside a local store), the experiment (created if needed, also by a parallel run), params and per-epoch metrics
logged in batches, and :class:`MlflowRun`, created at a run's start and reopened when the run is resumed (its id
kept in ``RUN/tracking.json``, and followed only when it checks out: an id, in this store, active, this run's).
MLflow is an optional dependency (``pip install 'cifarlab[mlflow]'``), imported only when used.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from cifarlab.base.errors import CifarlabError, UsageError, escape
from cifarlab.base.files import read_json, write_json
from cifarlab.runs.layout import CONFIG_JSON, METRICS_CSV, RUN_JSON, TEST_METRICS_JSON

TRACKING_FILE = "tracking.json"

# metrics.csv column -> TensorBoard tag (the part before "/" is the chart group); MLflow logs these columns by name
SCALAR_TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_top1": "top1/train",
    "val_top1": "top1/val",
    "val_top3": "top3/val",
    "lr": "lr",
    "images_per_second": "speed/images_per_second",
    "epoch_seconds": "speed/epoch_seconds",
}


def mlflow_available() -> bool:
    return importlib.util.find_spec("mlflow") is not None


def require_mlflow() -> None:
    """A usage error that says how to install MLflow, when it is missing."""
    if not mlflow_available():
        raise UsageError("MLflow tracking was asked for, but MLflow is not installed: pip install 'cifarlab[mlflow]'")


def quiet_mlflow() -> None:
    """MLflow logs its database migrations and run links at INFO level; keep the run's output readable."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def artifact_root(uri: str) -> str | None:
    """For a local store (a SQLite file or a folder), artifacts go into ``mlflow-artifacts/`` beside it;
    a tracking server decides for itself (None)."""
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).resolve().parent
    elif uri.startswith("file:") or "://" not in uri:
        folder = Path(uri.removeprefix("file://").removeprefix("file:")).resolve()
    else:
        return None
    return (folder / "mlflow-artifacts").as_uri()


def mlflow_client(uri: str) -> Any:
    """An MLflow client for ``uri`` (the store is created on first use); errors name the URI."""
    require_mlflow()
    quiet_mlflow()
    from mlflow.tracking import MlflowClient  # deferred: MLflow takes seconds to import

    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).resolve().parent.mkdir(parents=True, exist_ok=True)
    try:
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # connects now, so a bad URI fails before any training
    except Exception as exc:  # noqa: BLE001 - MLflow raises many types; all mean "cannot use this store"
        raise CifarlabError(f"MLflow tracking store {uri}: {type(exc).__name__}: {exc}") from None
    return client


def mlflow_experiment(client: Any, uri: str, name: str) -> str:
    """The id of experiment ``name``, created if needed (another process may create it at the same time)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root(uri))
    except Exception:  # created meanwhile by a parallel run (MLflow's error type varies): use that one
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def metric_name(text: str) -> str:
    """MLflow accepts letters, digits, ``_ - . / `` and space in metric names."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", text)


def log_metrics(client: Any, run_id: str, values: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(metric_name(k), float(v), now, step) for k, v in values.items()])


def log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=items[start : start + 100])


MLFLOW_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # MLflow's ids are 32 hex digits; other stores' are similar


def reopen_reason(client: Any, run_id: Any, run_name: str) -> str | None:
    """Why the MLflow run ``run_id`` that a file names cannot be reopened for the run ``run_name`` (None: it can):
    not an id, not in this store, deleted, or another run's (a forged or stale id never takes over another run)."""
    if not isinstance(run_id, str) or not MLFLOW_RUN_ID.fullmatch(run_id):
        return "is not an MLflow run id"
    try:
        found = client.get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - MLflow raises many types; all mean "no such run here"
        return f"cannot be found in this store ({type(exc).__name__})"
    if found.info.lifecycle_stage != "active":
        return "has been deleted"
    if found.info.run_name != run_name:
        return f"belongs to another run ({escape(str(found.info.run_name))!r})"
    return None


def mlflow_note(text: str) -> None:
    """One line about an MLflow record that was not followed (the run goes on with a fresh MLflow run)."""
    print(f"cifarlab: note: {escape(text)}", flush=True)


class MlflowRun:
    """One run's MLflow run: created at the start, reopened when the run is resumed (if its id checks out)."""

    def __init__(self, uri: str, run_dir: Path, config: dict[str, Any]) -> None:
        self.client = mlflow_client(uri)
        self.uri = uri
        self.last_step = 0
        saved = self.saved_record(run_dir)
        if saved.get("mlflow_uri") == uri and saved.get("mlflow_run_id") and self.reopen(run_dir, saved):
            return
        experiment = os.environ.get("CIFARLAB_MLFLOW_EXPERIMENT") or run_dir.resolve().parent.name
        tags = {"cifarlab.run_dir": str(run_dir.resolve()), "cifarlab.model": str(config.get("model"))}
        parent = os.environ.get("CIFARLAB_MLFLOW_PARENT_RUN")
        if parent:
            tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(mlflow_experiment(self.client, uri, experiment), run_name=run_dir.name, tags=tags)
        self.run_id = run.info.run_id
        log_params(self.client, self.run_id, config)
        write_json(run_dir / TRACKING_FILE, {"mlflow_uri": uri, "mlflow_run_id": self.run_id})

    @staticmethod
    def saved_record(run_dir: Path) -> dict[str, Any]:
        """RUN/tracking.json, or {} (with a note) when it is missing or not a record cifarlab wrote."""
        path = run_dir / TRACKING_FILE
        if not path.is_file():
            return {}
        try:
            return read_json(path)
        except CifarlabError as exc:
            mlflow_note(f"{exc}; logging to a fresh MLflow run")
            return {}

    def reopen(self, run_dir: Path, saved: dict[str, Any]) -> bool:
        """Reopen the MLflow run tracking.json names; False (with a note) when it cannot be this run's."""
        run_id = saved["mlflow_run_id"]
        reason = reopen_reason(self.client, run_id, run_dir.name)
        if reason is None:
            try:
                self.client.update_run(run_id, status="RUNNING")
                history = self.client.get_metric_history(run_id, "val_top1")
            except Exception as exc:  # noqa: BLE001 - any failure to reopen: a fresh run, said once
                reason = f"cannot be reopened ({type(exc).__name__})"
            else:
                self.run_id = run_id
                self.last_step = max((m.step for m in history), default=0)
                return True
        mlflow_note(
            f"{run_dir / TRACKING_FILE} names MLflow run {escape(str(run_id))[:80]!r}, which {reason}; "
            "logging to a fresh MLflow run"
        )
        return False

    def epoch(self, row: dict[str, Any]) -> None:
        step = int(row["epoch"])
        if step > self.last_step:  # a resumed run repeats no epoch its MLflow run already holds
            log_metrics(self.client, self.run_id, {k: row[k] for k in SCALAR_TAGS if k in row}, step)
            self.last_step = step

    def finish(self, run_dir: Path, test: dict[str, float], step: int, figures: dict[str, np.ndarray]) -> None:
        log_metrics(self.client, self.run_id, {f"test_{k}": v for k, v in test.items()}, step)
        for name in (CONFIG_JSON, RUN_JSON, TEST_METRICS_JSON, METRICS_CSV):
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name))
        for name, image in figures.items():
            self.client.log_image(self.run_id, image, artifact_file=f"{name}.png")
        self.client.set_terminated(self.run_id, "FINISHED")

    def stop(self) -> None:
        """Mark the run KILLED: it ended without finishing (it can be resumed, which reopens it)."""
        self.client.set_terminated(self.run_id, "KILLED")
