"""A sweep in MLflow (``--mlflow URI``): its parent run (reopened on a rerun), the environment that nests each run
under it, and what is logged to it at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from cifarlab.sweep.grid import SweepOptions, SweepSpec, short
from cifarlab.sweep.progress import note
from cifarlab.sweep.record import SWEEP_FILE


class TrackedSweep(Protocol):
    """What these functions use of a running sweep (driver.Sweep): its grid, options, folder, MLflow record
    (``uri``, ``run_id``, ``experiment``; set here), its groups and status at the end."""

    spec: SweepSpec
    options: SweepOptions
    folder: Path
    mlflow: dict[str, Any]
    groups: list[dict[str, Any]]
    status: str


def absolute_mlflow_uri(uri: str) -> str:
    """A relative SQLite path made absolute, so workers with another working folder reach the same store."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri


def reopen_mlflow(sweep: TrackedSweep, client: Any) -> bool:
    """Reopen the sweep's MLflow run that sweep.json names; False (with a note) when that id is not this sweep's
    run in this store (forged, deleted, another run's): a fresh one is made instead."""
    from cifarlab.engine.mlflow_run import reopen_reason

    run_id = sweep.mlflow["run_id"]
    reason = reopen_reason(client, run_id, f"sweep {sweep.spec.name}")
    if reason is None:
        try:
            client.update_run(run_id, status="RUNNING")
            return True
        except Exception as exc:  # noqa: BLE001 - MLflow raises many types; all mean it cannot be reopened
            reason = f"cannot be reopened ({type(exc).__name__})"
    note(f"{sweep.folder / SWEEP_FILE} names MLflow run {short(run_id)}, which {reason}; logging to a fresh one")
    return False


def start_mlflow(sweep: TrackedSweep) -> dict[str, str]:
    """The sweep's parent MLflow run (reopened on a rerun), and the environment that nests each run under it."""
    from cifarlab.engine.mlflow_run import log_params, mlflow_client, mlflow_experiment

    uri = absolute_mlflow_uri(sweep.options.mlflow or "")
    client = mlflow_client(uri)
    if not (sweep.mlflow.get("uri") == uri and sweep.mlflow.get("run_id") and reopen_mlflow(sweep, client)):
        experiment = mlflow_experiment(client, uri, sweep.spec.name)
        run = client.create_run(
            experiment, run_name=f"sweep {sweep.spec.name}", tags={"cifarlab.sweep": str(sweep.folder)}
        )
        spec = sweep.spec.to_dict()
        log_params(
            client,
            run.info.run_id,
            {
                "models": spec["models"],
                "recipes": spec["recipes"],
                "seeds": spec["seeds"],
                **{f"grid.{k}": v for k, v in spec["grid"].items()},
            },
        )
        sweep.mlflow = {"uri": uri, "run_id": run.info.run_id, "experiment": sweep.spec.name}
    return {
        "CIFARLAB_MLFLOW_URI": uri,
        "CIFARLAB_MLFLOW_EXPERIMENT": sweep.spec.name,
        "CIFARLAB_MLFLOW_PARENT_RUN": sweep.mlflow["run_id"],
    }


def finish_mlflow(sweep: TrackedSweep) -> None:
    """Log the comparison, report and sweep.json to the sweep's MLflow run, and each group's mean test top-1."""
    from cifarlab.engine.mlflow_run import log_metrics, mlflow_client

    client = mlflow_client(sweep.mlflow["uri"])
    run_id = sweep.mlflow["run_id"]
    metrics = {f"test_top1_mean/{g['label']}": g["test_top1"]["mean"] for g in sweep.groups}
    if metrics:
        log_metrics(client, run_id, metrics, 0)
    for name in (SWEEP_FILE, "comparison.md", "report.html", "report.md"):
        if (sweep.folder / name).is_file():
            client.log_artifact(run_id, str(sweep.folder / name))
    client.set_terminated(run_id, "FINISHED" if sweep.status == "finished" else "FAILED")
