"""cifarlab sweep: the grid, sweep files, and real sweeps of tiny runs on the local pool and on a local Ray cluster:
results and reports, reruns that train nothing, a killed worker resumed to the same numbers, Ctrl-C, failures."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from cifarlab.base.errors import UsageError
from cifarlab.cli.main import main
from cifarlab.engine import tracking
from cifarlab.engine.mlflow_run import mlflow_available
from cifarlab.runs.checkpoint import load_checkpoint
from cifarlab.runs.layout import read_metrics_csv
from cifarlab.sweep import SweepSpec, expand, parse_seeds, parse_set, split_values
from cifarlab.sweep import driver as sweep_driver
from cifarlab.sweep import grid as sweep_grid
from cifarlab.sweep import progress as sweep_progress
from cifarlab.sweep import worker as sweep_worker
from processes import alive, descendants

TIMING_COLUMNS = ("epoch_seconds", "images_per_second")


@pytest.fixture(scope="module", autouse=True)
def private_home(tmp_path_factory):
    """Sweeps, workers and the Ray cluster of this module run with a home folder of their own: state a user keeps
    there (Ray's ~/.ray/auth_token, left by any earlier local Ray instance, makes clients ask a token-less cluster
    for a token and fail) must not decide a test, and the tests must not write into the user's home."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(tmp_path_factory.mktemp("home")))
        yield


def tiny(fake_cifar: Path, out: Path, *extra: str) -> list[str]:
    """Flags of a sweep of tiny mycnn runs on the generated data, one torch thread per run."""
    return [
        "--model",
        "mycnn",
        "--batch-size",
        "50",
        "--limit-train",
        "200",
        "--set",
        "val_size=100",
        "--device",
        "cpu",
        "--data-dir",
        str(fake_cifar),
        "--out",
        str(out),
        "--threads",
        "1",
        *extra,
    ]


def cli_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_sweep_cli(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cifarlab", "sweep", *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=timeout,
    )


def default_sigint() -> None:
    """A child started from a shell that ignores SIGINT would inherit that; restore Python's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ignored_sigint() -> None:
    """As a shell starts a job in the background (``cifarlab sweep ... &`` in a script): SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start_sweep_cli(*args: str, log: Path, background: bool = False) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cifarlab", "sweep", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=cli_env(),
            preexec_fn=ignored_sigint if background else default_sigint,
        )


def sweep_json(folder: Path) -> dict:
    return json.loads((folder / "sweep.json").read_text())


def run_entry(folder: Path, name: str) -> dict:
    return next(r for r in sweep_json(folder)["runs"] if r["name"] == name)


def assert_same_run(a: Path, b: Path) -> None:
    """Same per-epoch metrics, same test numbers, bit-identical final weights (times excepted)."""
    rows_a, rows_b = read_metrics_csv(a / "metrics.csv"), read_metrics_csv(b / "metrics.csv")
    assert len(rows_a) == len(rows_b)
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert {k: v for k, v in ra.items() if k not in TIMING_COLUMNS} == {
            k: v for k, v in rb.items() if k not in TIMING_COLUMNS
        }
    test_a, test_b = (json.loads((r / "test_metrics.json").read_text()) for r in (a, b))
    assert (test_a["top1"], test_a["loss"], test_a["epoch"]) == (test_b["top1"], test_b["loss"], test_b["epoch"])
    wa, wb = load_checkpoint(a, "last.pt")["model"], load_checkpoint(b, "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def wait_for_epoch(run: Path, proc: subprocess.Popen, log: Path) -> None:
    """Until the run has finished (and saved) its first epoch."""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        csv = run / "metrics.csv"
        if csv.is_file() and len(read_metrics_csv(csv)) >= 1:
            return
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended (code {proc.returncode}) before epoch 1:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no epoch within 15 minutes")


# ---------------------------------------------------------------------------------------------------------
# The grid and sweep files (no training)
# ---------------------------------------------------------------------------------------------------------


def test_seeds_and_set_values_are_parsed_as_written():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0-2,7,1") == [0, 1, 2, 7]
    assert parse_seeds([3, 1]) == [3, 1] and parse_seeds(5) == [5]
    for bad in ("3-1", "a", "1,,2", [1.5], True):
        with pytest.raises(UsageError):
            parse_seeds(bad)
    assert split_values("0.5,[1,2],sgd") == ["0.5", "[1,2]", "sgd"]
    assert parse_set(["lr=0.5,0.75", "width=16", "weight-averaging=ema,none"]) == {
        "lr": [0.5, 0.75],
        "model_width": [16],
        "weight_averaging": ["ema", "none"],
    }
    with pytest.raises(UsageError, match="use --model"):
        parse_set(["model=resnet18"])
    with pytest.raises(UsageError, match="unknown config key 'lrr'"):
        parse_set(["lrr=1"])


def test_the_grid_is_every_combination_times_seeds_and_bad_values_fail_alone(tmp_path):
    spec = SweepSpec(
        name="g",
        models=["mycnn", "resnet18"],
        recipes=["seed"],
        out=str(tmp_path),
        grid={"lr": [0.001, -1.0], "epochs": [3], "limit_train": [200]},
        seeds=[0, 1],
    )
    planned = expand(spec, str(tmp_path / "data"))
    assert len(planned) == 2 * 2 * 2
    assert len({r.name for r in planned}) == 8
    first = planned[0]
    assert first.name == "mycnn-seed-lr=0.001-s0"  # keys with one value (epochs) are not in the names
    assert first.point == {"model": "mycnn", "recipe": "seed", "lr": 0.001, "seed": 0}
    assert first.config["epochs"] == 3 and first.config["out"] == str(tmp_path.resolve() / "g")
    assert first.config["name"] == first.name and first.config["data_dir"] == str(tmp_path / "data")
    bad = [r for r in planned if r.error]
    assert len(bad) == 4 and all(r.point["lr"] == -1.0 and "lr: must be positive" in r.error for r in bad)
    typed = expand(SweepSpec(name="t", grid={"epochs": ["abc", 2]}, out=str(tmp_path)))
    assert typed[0].error == 'bad config: epochs must be int, got "abc"' and typed[1].error is None


def test_a_sweep_file_in_toml_or_yaml_plans_the_same_runs_as_the_flags(tmp_path, capsys):
    flags = [
        "--name",
        "lr",
        "--recipe",
        "fast",
        "--set",
        "lr=0.5,0.75,1.0",
        "--set",
        "width=16,24",
        "--seeds",
        "0-2",
        "--time-budget",
        "240",
        "--out",
        str(tmp_path),
        "--dry-run",
    ]
    assert main(["sweep", *flags]) == 0
    expected = capsys.readouterr().out
    assert expected.startswith(f"sweep lr: 18 runs -> {tmp_path / 'lr'}")
    assert "fastcnn-fast-lr=0.75-model_width=24-s2: model=fastcnn recipe=fast lr=0.75 model_width=24 seed=2" in expected
    (tmp_path / "lr.toml").write_text(
        'name = "lr"\nrecipe = "fast"\nseeds = "0-2"\ntime-budget = 240\n'
        "[set]\nlr = [0.5, 0.75, 1.0]\nwidth = [16, 24]\n"
    )
    (tmp_path / "lr.yaml").write_text(
        "name: lr\nrecipe: [fast]\nseeds: [0, 1, 2]\ntime_budget: 240\n"
        "set:\n  lr: [0.5, 0.75, 1.0]\n  width: [16, 24]\n"
    )
    for file in ("lr.toml", "lr.yaml"):
        assert main(["sweep", str(tmp_path / file), "--out", str(tmp_path), "--dry-run"]) == 0
        assert capsys.readouterr().out == expected
    assert not (tmp_path / "lr").exists()  # a dry run writes nothing


@pytest.mark.parametrize(
    "text, message",
    [
        ('name = "x"\nlrr = 1\n', "unknown config key 'lrr'"),
        ('name = "x"\nseeds = "4-1"\n', "the range 4-1 is empty"),
        ('name = "x"\nworkers = 0\n', "workers must be a whole number of at least 1"),
        ('name = "x"\n[set\n', "not valid TOML"),
    ],
)
def test_a_bad_sweep_file_gives_one_line_naming_the_file(tmp_path, capsys, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["sweep", str(path), "--out", str(tmp_path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cifarlab: error: {path}: ") and message in err and err.count("\n") == 1


def test_without_ray_installed_ray_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail as if it were not installed
    assert main(["sweep", "--name", "x", "--ray", "--out", str(tmp_path), "--dry-run"]) == 2
    assert "pip install 'cifarlab[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_time_left_counts_part_done_runs_by_their_epochs_and_scales_a_resumed_attempt(tmp_path):
    spec = SweepSpec(name="eta", models=["mycnn"], grid={"epochs": [20]}, seeds=[0, 1, 2, 3], out=str(tmp_path))
    sweep = sweep_driver.Sweep(spec, sweep_grid.SweepOptions(workers=2), expand(spec))
    names = list(sweep.runs)
    run0 = sweep.runs[names[0]]
    # a run resumed after epoch 19 of 20 that took 150 s costs 3,000 s whole; a fresh one is taken as it is
    assert sweep_driver.whole_run_seconds(run0, {"seconds": 150.0, "resumed_from": 19}) == pytest.approx(3000.0)
    assert sweep_driver.whole_run_seconds(run0, {"seconds": 2800.0, "resumed_from": None}) == 2800.0
    assert sweep_driver.whole_run_seconds(run0, {"seconds": 5.0, "resumed_from": 20}) is None  # only tested
    assert sweep_driver.eta(sweep, 2, []) is None
    sweep.runs[names[0]]["state"] = "done"
    sweep.runs[names[1]]["state"] = "running"  # 15 of 20 epochs in its metrics.csv: a quarter left
    (sweep.folder / names[1]).mkdir(parents=True)
    rows = "".join(f"{e},0.1\n" for e in range(1, 16))
    (sweep.folder / names[1] / "metrics.csv").write_text("epoch,train_loss\n" + rows)
    sweep.runs[names[2]]["state"] = "interrupted"  # no epoch finished: all of it left
    # 0.25 + 1 + 1 (the pending one) = 2.25 runs of 3,000 s, two at a time
    assert sweep_driver.eta(sweep, 2, [3000.0]) == pytest.approx(2.25 * 3000.0 / 2)
    assert sweep_driver.eta(sweep, 1, [2000.0, 4000.0]) == pytest.approx(2.25 * 3000.0)


class InstantPool:
    """A pool of two slots whose runs end, in order, one per poll: enough to watch the driver hand out work."""

    slots = 2

    def __init__(self) -> None:
        self.running: list[str] = []

    def has_room(self) -> bool:
        return len(self.running) < self.slots

    def submit(self, job: sweep_worker.Job) -> None:
        self.running.append(job.name)

    def pids(self) -> list:
        return []

    def results(self, timeout: float) -> list[dict]:
        name = self.running.pop(0)
        return [{"name": name, "state": "done", "seconds": 60.0, "headline": {"test_top1": 0.5}, "resumed_from": None}]


def test_a_freed_worker_starts_the_next_run_before_the_status_line_is_printed(tmp_path, capsys):
    spec = SweepSpec(name="order", models=["mycnn"], seeds=[0, 1, 2, 3], out=str(tmp_path))
    sweep = sweep_driver.Sweep(spec, sweep_grid.SweepOptions(workers=2), expand(spec))
    sweep.folder.mkdir(parents=True)
    sweep_driver.drive(sweep, InstantPool(), {}, sweep_progress.Progress(4, 0, "order"))
    status = [line.strip() for line in capsys.readouterr().out.splitlines() if "finished," in line]
    assert status[0].startswith("1/4 finished, 2 running")  # the third run already took the freed worker
    assert status[1].startswith("2/4 finished, 2 running")
    assert status[-1].startswith("4/4 finished, 0 running")
    assert all(run["state"] == "done" for run in sweep.runs.values())


def test_a_run_folder_left_by_a_worker_is_classified_for_resuming(tmp_path):
    run = tmp_path / "run"
    assert sweep_worker.folder_state(run) == "missing"
    run.mkdir()
    assert sweep_worker.folder_state(run) == "empty"  # killed before its first checkpoint: start afresh
    (run / "last.pt").write_bytes(b"")
    assert sweep_worker.folder_state(run) == "partial"
    (run / "run.json").write_text("{}")
    assert sweep_worker.folder_state(run) == "done"
    log = tmp_path / "x.log"
    log.write_text("epoch 1\ncifarlab: error: training stopped: the loss became nan at epoch 2\n")
    nan_stop = "training stopped: the loss became nan at epoch 2"
    assert sweep_worker.attempt_state(1, run / "nope", log) == ("failed", nan_stop)
    assert sweep_worker.attempt_state(-9, run, log) == ("died", "the worker was killed (SIGKILL)")
    assert sweep_worker.attempt_state(130, run, log)[0] == "interrupted"


# ---------------------------------------------------------------------------------------------------------
# Real sweeps on the local pool
# ---------------------------------------------------------------------------------------------------------

GRID = ["--set", "lr=0.001,0.003", "--seeds", "0-1", "--epochs", "2"]
RUN_NAMES = ["mycnn-seed-lr=0.001-s0", "mycnn-seed-lr=0.001-s1", "mycnn-seed-lr=0.003-s0", "mycnn-seed-lr=0.003-s1"]


@pytest.fixture(scope="module")
def pool_sweep(tmp_path_factory, fake_cifar):
    """2 configs x 2 seeds of tiny runs on 2 local workers, with the report and (if installed) MLflow."""
    out = tmp_path_factory.mktemp("pool")
    mlflow = ["--mlflow", f"sqlite:///{out}/mlflow.db"] if mlflow_available() else []
    args = ["--name", "grid", *GRID, *tiny(fake_cifar, out, "--workers", "2"), *mlflow]
    result = run_sweep_cli(*args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out / "grid", args, result


@pytest.mark.slow
def test_a_sweep_on_the_local_pool_trains_every_run_then_compares_and_reports(pool_sweep):
    folder, _, result = pool_sweep
    data = sweep_json(folder)
    assert data["status"] == "finished" and data["counts"]["done"] == 4
    assert [r["name"] for r in data["runs"]] == RUN_NAMES
    for entry in data["runs"]:
        info = json.loads((folder / entry["name"] / "run.json").read_text())
        assert entry["state"] == "done" and entry["attempts"] == 1
        assert entry["headline"]["test_top1"] == info["test_top1"] and info["epochs"] == 2
        assert f"done    {entry['name']}  test top-1 {100 * info['test_top1']:.2f}%" in result.stdout
        assert (folder / entry["name"] / "analysis" / "summary.json").is_file()
        if tracking.tensorboard_available():
            assert list((folder / entry["name"] / tracking.TB_DIR).glob("events.out.tfevents.*"))
    groups = {g["label"]: g for g in data["groups"]}
    assert set(groups) == {"mycnn lr=0.001", "mycnn lr=0.003"}
    for group in groups.values():
        tops = [run_entry(folder, name)["headline"]["test_top1"] for name in group["runs"]]
        assert group["n"] == 2 and group["seeds"] == [0, 1]
        assert group["test_top1"]["mean"] == pytest.approx(sum(tops) / 2)
    assert "mean ± sample std over the n seeds" in (folder / "comparison.md").read_text()
    assert (folder / "report.html").is_file() and (folder / "report.md").is_file()
    assert "mycnn lr=0.001 | mycnn | 2 | 0,1" in result.stdout


@pytest.mark.slow
@pytest.mark.required_in_ci  # the test extra installs mlflow: with CI=true this skip is a failure
@pytest.mark.skipif(not mlflow_available(), reason="mlflow not installed")
def test_a_sweep_logs_its_runs_and_report_to_mlflow(pool_sweep):
    from mlflow.tracking import MlflowClient

    folder, _, _ = pool_sweep
    data = sweep_json(folder)
    client = MlflowClient(tracking_uri=data["mlflow"]["uri"])
    parent = client.get_run(data["mlflow"]["run_id"])
    assert parent.info.status == "FINISHED" and parent.info.run_name == "sweep grid"
    assert {"report.html", "comparison.md", "sweep.json"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert parent.data.metrics["test_top1_mean/mycnn lr_0.001"] == pytest.approx(
        {g["label"]: g for g in data["groups"]}["mycnn lr=0.001"]["test_top1"]["mean"]
    )
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(c.info.run_name for c in children) == RUN_NAMES
    for child in children:
        info = json.loads((folder / child.info.run_name / "run.json").read_text())
        assert child.data.metrics["test_top1"] == pytest.approx(info["test_top1"])
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_top1")] == [1, 2]
        assert child.data.params["lr"] == json.dumps(run_entry(folder, child.info.run_name)["point"]["lr"])


@pytest.mark.slow
def test_running_a_finished_sweep_again_trains_nothing(pool_sweep):
    folder, args, _ = pool_sweep
    before = {
        name: ((folder / name / "last.pt").stat().st_mtime_ns, (folder / "logs" / f"{name}.log").read_text())
        for name in RUN_NAMES
    }
    result = run_sweep_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "4 runs (4 already done" in result.stdout and "done    " not in result.stdout
    after = {
        name: ((folder / name / "last.pt").stat().st_mtime_ns, (folder / "logs" / f"{name}.log").read_text())
        for name in RUN_NAMES
    }
    assert after == before
    assert sweep_json(folder)["counts"]["done"] == 4


@pytest.mark.slow
def test_a_grid_that_changes_a_finished_runs_config_is_refused(pool_sweep):
    folder, args, _ = pool_sweep
    changed = [a if a != "2" else "3" for a in args]  # --epochs 2 -> 3, same run names
    result = run_sweep_cli(*changed)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"cifarlab: error: {folder}/sweep.json: run {RUN_NAMES[0]} was planned with "
        "epochs=2, now epochs=3; give this grid another --name"
    )


@pytest.mark.slow
def test_a_sweep_planned_before_a_config_field_existed_is_still_finished(pool_sweep, tmp_path):
    """A sweep started by an older cifarlab, whose plans lack fields added since, resumes after an upgrade: a
    missing field is taken at its default, which is what the older version ran."""
    folder, args, _ = pool_sweep
    copy = tmp_path / "pool"
    shutil.copytree(folder.parent, copy)
    data = sweep_json(copy / "grid")
    for run in data["runs"]:
        for added in ("timed", "compile_mode", "muon_lr"):
            del run["config"][added]
    (copy / "grid" / "sweep.json").write_text(json.dumps(data))
    result = run_sweep_cli(*(a.replace(str(folder.parent), str(copy)) for a in args))
    assert result.returncode == 0, result.stderr
    assert "4 runs (4 already done" in result.stdout
    changed = [a if a != "2" else "3" for a in args]  # a real change is still refused
    assert run_sweep_cli(*(a.replace(str(folder.parent), str(copy)) for a in changed)).returncode == 2


@pytest.mark.slow
def test_failed_runs_are_marked_with_their_message_and_the_others_finish(fake_cifar, tmp_path):
    result = run_sweep_cli(
        "--name",
        "failing",
        "--set",
        "lr=0.001,1e30,-1",
        "--epochs",
        "1",
        *tiny(fake_cifar, tmp_path, "--workers", "2", "--no-report"),
    )
    assert result.returncode == 1, result.stdout + result.stderr
    folder = tmp_path / "failing"
    assert (
        result.stderr.startswith("cifarlab: error: sweep failing: 2 of 3 runs failed")
        and result.stderr.count("\n") == 1
    )
    done, nan, bad = (run_entry(folder, f"mycnn-seed-lr={v}-s0") for v in ("0.001", "1e+30", "-1"))
    assert done["state"] == "done" and done["headline"]["test_top1"] is not None
    assert nan["state"] == "failed" and "training stopped: the loss became" in nan["message"]
    assert nan["attempts"] == 1  # a run's own failure is not retried
    assert bad["state"] == "failed" and bad["message"] == "bad config: lr: must be positive, got the number -1.0"
    assert f"FAILED  mycnn-seed-lr=-1-s0: {bad['message']}" in result.stdout
    assert (folder / "comparison.md").is_file()  # the finished run is still compared


@pytest.mark.slow
def test_gather_mode_trains_in_a_scratch_folder_and_sends_the_run_back(fake_cifar, tmp_path):
    """What a Ray task does without shared storage, run here in-process: the run folder comes back packed."""
    spec = SweepSpec(
        name="gathered",
        models=["mycnn"],
        out=str(tmp_path / "driver"),
        grid={"epochs": [1], "batch_size": [50], "limit_train": [200], "val_size": [100], "device": ["cpu"]},
    )
    (planned,) = expand(spec, str(fake_cifar))
    assert planned.config is not None
    job = sweep_worker.Job(
        name=planned.name,
        config=planned.config,
        sweep_dir="/nonexistent/on/this/node",
        threads=1,
        env={},
        gather=True,
        analysis="none",
    )
    result = sweep_worker.execute_run(job)
    assert result["state"] == "done", result
    assert "$ " in result["log"] and "test (best.pt" in result["log"]
    sweep_worker.unpack_folder(result["blob"], tmp_path / "driver" / "gathered", planned.name)
    run = tmp_path / "driver" / "gathered" / planned.name
    assert json.loads((run / "run.json").read_text())["test_top1"] == result["headline"]["test_top1"]
    scratch = Path(json.loads((run / "config.json").read_text())["out"])
    assert scratch != run.parent and not scratch.exists()  # the node's scratch folder is cleaned up


SIX_EPOCHS = ["--set", "lr=0.001", "--seeds", "0", "--epochs", "6"]
ONE_RUN = "mycnn-seed-s0"


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, fake_cifar) -> Path:
    """One 6-epoch run trained by a sweep without interruption: what a resumed run must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    result = run_sweep_cli("--name", "ref", *SIX_EPOCHS, *tiny(fake_cifar, out, "--workers", "1", "--no-report"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out / "ref" / ONE_RUN


@pytest.mark.slow
def test_a_killed_worker_is_resumed_and_gives_the_uninterrupted_numbers(fake_cifar, tmp_path, reference_run):
    log = tmp_path / "sweep.log"
    proc = start_sweep_cli("--name", "killed", *SIX_EPOCHS, *tiny(fake_cifar, tmp_path, "--no-report"), log=log)
    folder, run = tmp_path / "killed", tmp_path / "killed" / ONE_RUN
    wait_for_epoch(run, proc, log)
    pid = run_entry(folder, ONE_RUN)["pid"]
    os.kill(pid, signal.SIGKILL)  # the training process of the worker, mid-run
    assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    output = log.read_text()
    assert f"retry   {ONE_RUN}: the worker was killed (SIGKILL); resuming it from its last checkpoint" in output
    entry = run_entry(folder, ONE_RUN)
    assert entry["state"] == "done" and entry["attempts"] == 2
    assert "resumed after epoch" in output and "train --resume" in (folder / "logs" / f"{ONE_RUN}.log").read_text()
    assert_same_run(reference_run, run)
    if tracking.tensorboard_available():
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(run / tracking.TB_DIR), size_guidance={"scalars": 0})
        acc.Reload()
        assert [e.step for e in acc.Scalars("loss/train")] == [1, 2, 3, 4, 5, 6]  # each epoch once


@pytest.mark.slow
def test_ctrl_c_stops_the_sweep_cleanly_and_resume_finishes_it(fake_cifar, tmp_path, reference_run):
    log = tmp_path / "sweep.log"
    proc = start_sweep_cli("--name", "stopped", *SIX_EPOCHS, *tiny(fake_cifar, tmp_path, "--no-report"), log=log)
    folder, run = tmp_path / "stopped", tmp_path / "stopped" / ONE_RUN
    wait_for_epoch(run, proc, log)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=300) == 130, log.read_text()[-3000:]
    output = log.read_text()
    assert "Traceback" not in output
    assert f"Continue with: cifarlab sweep --resume {folder}" in output
    data = sweep_json(folder)
    assert data["status"] == "interrupted" and run_entry(folder, ONE_RUN)["state"] == "interrupted"
    assert not (run / "run.json").exists()

    result = run_sweep_cli("--resume", str(folder), "--data-dir", str(fake_cifar))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 to resume" in result.stdout and "resumed after epoch" in result.stdout
    assert_same_run(reference_run, run)


@pytest.mark.slow
def test_a_sweep_started_in_the_background_stops_its_runs_cleanly_on_sigterm(fake_cifar, tmp_path):
    """Started with SIGINT ignored, as a shell starts a background job (its training processes inherit that):
    SIGTERM still stops each run at its last whole epoch, by the run itself, not by killing it."""
    log = tmp_path / "sweep.log"
    args = ("--name", "background", *SIX_EPOCHS, *tiny(fake_cifar, tmp_path, "--no-report"))
    proc = start_sweep_cli(*args, log=log, background=True)
    folder, run = tmp_path / "background", tmp_path / "background" / ONE_RUN
    wait_for_epoch(run, proc, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) != 0, log.read_text()[-3000:]
    entry = run_entry(folder, ONE_RUN)
    assert entry["state"] == "interrupted" and "killed" not in (entry.get("message") or ""), entry
    run_log = (folder / "logs" / f"{ONE_RUN}.log").read_text()
    assert "interrupted in epoch" in run_log and f"Continue with: cifarlab sweep --resume {folder}" in log.read_text()


# ---------------------------------------------------------------------------------------------------------
# Ray: a real cluster on 127.0.0.1, started and stopped by the test
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def ray_cluster():
    """``ray start --head`` with 2 CPUs on 127.0.0.1; stopped afterwards, every process it started gone. Skips (a
    failure in CI) when ray is not installed."""
    if importlib.util.find_spec("ray") is None:  # not imported here: importing ray changes this process's environment
        pytest.skip("ray is not installed (pip install 'cifarlab[ray]')")
    ray_cli = Path(sys.executable).with_name("ray")
    if not ray_cli.is_file():
        pytest.skip("the ray command is not installed beside this Python")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 characters
    log = Path(temp) / "start.log"
    with open(log, "w") as out:
        head = subprocess.Popen(
            [
                str(ray_cli),
                "start",
                "--head",
                "--block",
                "--num-cpus",
                "2",
                "--node-ip-address",
                "127.0.0.1",
                "--port",
                str(port),
                "--temp-dir",
                temp,
                "--include-dashboard",
                "false",
                "--disable-usage-stats",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=cli_env(),
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while "block forever" not in log.read_text():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start failed:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        started = descendants(head.pid)
        head.send_signal(signal.SIGTERM)  # ray start --block stops its processes on SIGTERM
        try:
            head.wait(timeout=120)
        except subprocess.TimeoutExpired:
            head.kill()
        deadline = time.monotonic() + 60
        while any(alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [pid for pid in started if alive(pid)]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"Ray left processes behind: {left}"


@pytest.mark.slow
@pytest.mark.required_in_ci  # the test extra installs ray: with CI=true the fixture's skip is a failure
def test_a_sweep_on_a_local_ray_cluster_gives_the_pool_numbers(ray_cluster, pool_sweep, fake_cifar, tmp_path):
    pool_folder, _, _ = pool_sweep
    result = run_sweep_cli("--name", "grid", *GRID, *tiny(fake_cifar, tmp_path, "--ray", ray_cluster, "--no-report"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"the Ray cluster at {ray_cluster} (2 CPUs, 0 GPUs), 2 runs at a time" in result.stdout
    folder = tmp_path / "grid"
    data = sweep_json(folder)
    assert data["counts"]["done"] == 4 and data["options"]["ray"] == ray_cluster
    for name in RUN_NAMES:
        assert_same_run(pool_folder / name, folder / name)  # one thread per run on both: the same arithmetic
