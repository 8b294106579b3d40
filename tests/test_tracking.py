"""Tracking: TensorBoard event files written during training (read back with TensorBoard's own reader), a resumed
run's events, tracking switched off or refused without its package, and MLflow logging into a SQLite store."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from cifarlab.base.errors import UsageError
from cifarlab.cli.main import main
from cifarlab.config.train_config import make_config
from cifarlab.engine import mlflow_run, tracking
from cifarlab.engine.tracking import SCALAR_TAGS, TB_DIR, NullTracker, Tracker, open_tracker
from cifarlab.runs.layout import read_metrics_csv


# The test extra installs both: these skip only on a developer's machine without them (with CI=true, a failure).
def needs_tensorboard(test):
    skip = pytest.mark.skipif(not tracking.tensorboard_available(), reason="tensorboard not installed")
    return pytest.mark.required_in_ci(skip(test))


def needs_mlflow(test):
    return pytest.mark.required_in_ci(
        pytest.mark.skipif(not mlflow_run.mlflow_available(), reason="mlflow not installed")(test)
    )


def write_order(path: Path) -> tuple[int, int, int]:
    """An event file's place in write order, from its name ``events.out.tfevents.TIME.HOST.PID.COUNTER``: the
    second, then the process and its file counter, as numbers (TensorBoard does not pad the counter)."""
    seconds = path.name.split(".")[3]
    pid, counter = path.name.rsplit(".", 2)[1:]
    return int(seconds), int(pid), int(counter)


def events(folder: Path):
    """TensorBoard's own reader over a run's event files (every scalar and image kept), read in the order they were
    written: TensorBoard reads them in name order, where a counter of 10 sorts before 9 (same second, same process,
    as two trackers in one test are; across real runs the second differs)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(folder.glob("events.out.tfevents.*"), key=write_order)
    assert files, f"no event files in {folder}"
    with tempfile.TemporaryDirectory() as ordered:  # the same files, named so that name order is write order
        for k, path in enumerate(files):
            shutil.copyfile(path, Path(ordered, f"events.out.tfevents.{k:06d}"))
        acc = EventAccumulator(ordered, size_guidance={"scalars": 0, "images": 0, "tensors": 0})
        acc.Reload()  # reads everything into memory: the copies may go
    return acc


@needs_tensorboard
def test_a_training_run_writes_tensorboard_events_that_match_its_metrics(tiny_run):
    acc = events(tiny_run / TB_DIR)
    rows = read_metrics_csv(tiny_run / "metrics.csv")
    for column, tag in SCALAR_TAGS.items():
        logged = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in logged] == [r["epoch"] for r in rows], tag
        assert [v for _, v in logged] == pytest.approx([r[column] for r in rows], rel=1e-6), tag
    test = json.loads((tiny_run / "test_metrics.json").read_text())
    assert acc.Scalars("test/top1")[-1].value == pytest.approx(test["top1"])
    confusion = acc.Images("confusion_matrix")[-1]
    assert confusion.width > 300 and confusion.height > 300 and confusion.step == rows[-1]["epoch"]
    from tensorboard.plugins.hparams import plugin_data_pb2  # the HParams tab's data: config beside results

    start = plugin_data_pb2.HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["lr"].number_value == pytest.approx(1e-3)
    assert start.hparams["model"].string_value == "mycnn"


@needs_tensorboard
def test_the_end_of_a_run_logs_its_confusion_matrix_and_misclassified_images(tmp_path):
    """A run folder's test files made by hand: 3 of the 8 test images misclassified."""
    import numpy as np
    import torch

    from cifarlab.data.cifar10 import CLASSES, ImageData

    y_true = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    y_pred = np.array([0, 1, 2, 3, 4, 9, 9, 1])
    probs = np.full((8, 10), 0.01, dtype=np.float32)
    probs[np.arange(8), y_pred] = 0.91
    index = np.arange(8) + 2  # official test-set positions of these images
    np.savez(tmp_path / "test_predictions.npz", y_true=y_true, probs=probs, index=index)
    (tmp_path / "test_metrics.json").write_text(
        json.dumps(
            {"top1": 5 / 8, "top3": 1.0, "loss": 0.5, "epoch": 3, "per_class_accuracy": {c: 1.0 for c in CLASSES}}
        )
    )
    images = torch.zeros(10, 3, 32, 32, dtype=torch.uint8)
    labels = torch.tensor([9, 9, *y_true.tolist()])
    data = ImageData(images, labels, images, labels, list(CLASSES))

    tracker = Tracker(tmp_path, {"model": "mycnn", "seed": 0, "lr": 1e-3}, tensorboard=True, mlflow_uri=None)
    figures = tracker.figures(tmp_path, data)
    assert set(figures) == {"confusion_matrix", "misclassified"}
    tracker.finish(tmp_path, data)
    tracker.close()
    acc = events(tmp_path / TB_DIR)
    assert set(acc.Tags()["images"]) == {"confusion_matrix", "misclassified"}
    assert [e.value for e in acc.Scalars("test/top1")] == [pytest.approx(5 / 8)]
    assert acc.Images("misclassified")[-1].step == 3


def roll_event_file_counter_over(scratch: Path) -> None:
    """Open throwaway event files until the next two this process opens end in 9 and 10 (or 99 and 100...):
    TensorBoard numbers files by an unpadded per-process counter, so after enough earlier writers (other tests in
    the same process) a later file's name sorts before an earlier one of the same second."""
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    scratch.mkdir()
    while True:
        EventFileWriter(str(scratch)).close()
        counter = max(int(p.name.rsplit(".", 1)[1]) for p in scratch.iterdir())  # the last file's number
        if len(str(counter + 1)) < len(str(counter + 2)):
            return


@needs_tensorboard
def test_a_resumed_run_shows_each_epoch_once_with_the_redone_values(tmp_path):
    config = {"model": "mycnn", "seed": 0}
    roll_event_file_counter_over(tmp_path / "scratch")  # the two trackers' files: counters 9 and 10 (say)
    run = tmp_path / "run"

    def row(epoch: int, loss: float) -> dict:
        return {
            "epoch": epoch,
            "train_loss": loss,
            "val_loss": loss,
            "train_top1": 0.5,
            "val_top1": 0.5,
            "val_top3": 0.9,
            "lr": 1e-3,
            "epoch_seconds": 1.0,
            "images_per_second": 100.0,
        }

    first = Tracker(run, config, tensorboard=True, mlflow_uri=None)
    for epoch in (1, 2, 3):
        first.epoch(row(epoch, 10.0 + epoch))
    first.writer.flush()  # then the process is killed: last.pt holds epoch 2, so epoch 3 is trained again
    second = Tracker(run, config, tensorboard=True, mlflow_uri=None)
    for epoch in (3, 4):
        second.epoch(row(epoch, 20.0 + epoch))
    second.close()
    first.close()
    logged = [(e.step, e.value) for e in events(run / TB_DIR).Scalars("loss/train")]
    assert logged == [(1, 11.0), (2, 12.0), (3, 23.0), (4, 24.0)]


def test_tracking_is_off_without_tensorboard_unless_asked(tmp_path, monkeypatch):
    monkeypatch.delenv("CIFARLAB_MLFLOW_URI", raising=False)
    monkeypatch.setattr(tracking, "tensorboard_available", lambda: False)
    monkeypatch.delenv("CIFARLAB_TENSORBOARD", raising=False)
    assert isinstance(open_tracker(tmp_path, {"model": "mycnn"}), NullTracker)
    monkeypatch.setenv("CIFARLAB_TENSORBOARD", "1")
    with pytest.raises(UsageError, match=r"pip install 'cifarlab\[tensorboard\]'"):
        open_tracker(tmp_path, {"model": "mycnn"})
    monkeypatch.setattr(tracking, "tensorboard_available", lambda: True)
    monkeypatch.setenv("CIFARLAB_TENSORBOARD", "0")
    assert isinstance(open_tracker(tmp_path, {"model": "mycnn"}), NullTracker)
    monkeypatch.setenv("CIFARLAB_TENSORBOARD", "maybe")
    with pytest.raises(UsageError, match="CIFARLAB_TENSORBOARD"):
        open_tracker(tmp_path, {"model": "mycnn"})
    assert not (tmp_path / TB_DIR).exists()


def test_mlflow_asked_for_but_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(mlflow_run, "mlflow_available", lambda: False)  # what require_mlflow asks
    monkeypatch.setenv("CIFARLAB_TENSORBOARD", "0")
    with pytest.raises(UsageError, match=r"pip install 'cifarlab\[mlflow\]'"):
        open_tracker(tmp_path, {"model": "mycnn"}, mlflow_uri=f"sqlite:///{tmp_path}/mlflow.db")


def test_mlflow_artifacts_of_a_local_store_stay_beside_it(tmp_path):
    assert mlflow_run.artifact_root(f"sqlite:///{tmp_path}/m.db") == (tmp_path / "mlflow-artifacts").as_uri()
    assert mlflow_run.artifact_root("http://tracking.example:5000") is None


@needs_mlflow
@pytest.mark.slow
def test_a_training_run_logs_params_metrics_and_figures_to_mlflow(fake_cifar, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("CIFARLAB_MLFLOW_URI", uri)
    monkeypatch.setenv("CIFARLAB_TENSORBOARD", "0")
    monkeypatch.delenv("CIFARLAB_MLFLOW_PARENT_RUN", raising=False)
    monkeypatch.delenv("CIFARLAB_MLFLOW_EXPERIMENT", raising=False)
    config = make_config(
        "seed",
        model="mycnn",
        epochs=2,
        batch_size=50,
        val_size=100,
        limit_train=100,
        data_dir=str(fake_cifar),
        out=str(tmp_path / "runs"),
        device="cpu",
    )
    config.save(tmp_path / "config.json")
    assert (
        main(
            [
                "train",
                "--config",
                str(tmp_path / "config.json"),
                "--name",
                "tracked",
                "--no-analysis",
                "--data-dir",
                str(fake_cifar),
            ]
        )
        == 0
    )
    run = tmp_path / "runs" / "tracked"
    saved = json.loads((run / mlflow_run.TRACKING_FILE).read_text())
    assert saved["mlflow_uri"] == uri

    client = MlflowClient(tracking_uri=uri)
    logged = client.get_run(saved["mlflow_run_id"])
    assert logged.info.status == "FINISHED" and logged.info.run_name == "tracked"
    assert client.get_experiment(logged.info.experiment_id).name == "runs"  # the folder holding the run
    assert logged.data.params["lr"] == "0.001" and logged.data.params["model"] == "mycnn"
    rows = read_metrics_csv(run / "metrics.csv")
    history = client.get_metric_history(logged.info.run_id, "val_top1")
    assert [(m.step, m.value) for m in history] == [(r["epoch"], pytest.approx(r["val_top1"])) for r in rows]
    test = json.loads((run / "test_metrics.json").read_text())
    assert logged.data.metrics["test_top1"] == pytest.approx(test["top1"])
    artifacts = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"run.json", "config.json", "metrics.csv", "confusion_matrix.png", "misclassified.png"} <= artifacts
    assert (tmp_path / "mlflow-artifacts").is_dir()  # beside the store, not in the working folder
