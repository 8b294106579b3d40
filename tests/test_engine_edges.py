"""Training edge cases and outside interference: a last batch of one image, a validation loss that is not a number,
a time budget on a tiny split, SIGTERM, stale temporary files, and two processes writing one run folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import cifarlab.engine.budget as budget_module
from cifarlab.base.errors import CifarlabError
from cifarlab.base.files import FileLock, write_json
from cifarlab.cli.main import main
from cifarlab.config.train_config import make_config
from cifarlab.data.batches import Batches
from cifarlab.engine.budget import Probe, time_probe
from cifarlab.engine.interrupts import Stop, StopSignals, exit_code
from cifarlab.engine.optim import steps_per_epoch
from cifarlab.engine.train import train, train_step
from cifarlab.runs.checkpoint import load_checkpoint
from cifarlab.runs.layout import RunLock, read_metrics_csv

pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures in conftest.py


def small_config(fake_cifar: Path, out: Path, **values):
    settings = dict(
        model="mycnn",
        epochs=2,
        batch_size=50,
        val_size=100,
        limit_train=100,
        data_dir=str(fake_cifar),
        out=str(out),
        name="run",
        device="cpu",
    )
    settings.update(values)
    return make_config("seed", **settings)


def write_config(path: Path, config) -> Path:
    path.write_text(json.dumps({**config.to_dict(), "name": None}))
    return path


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


# --- a last batch of one image ------------------------------------------------------------------------------------


def test_steps_per_epoch_leaves_out_only_a_lone_last_image():
    def batches(n: int, batch_size: int, world_size: int = 1) -> Batches:
        return Batches(
            torch.zeros(n, 3, 32, 32, dtype=torch.uint8),
            torch.zeros(n, dtype=torch.long),
            batch_size,
            torch.zeros(3),
            torch.ones(3),
            world_size=world_size,
        )

    assert steps_per_epoch(batches(1025, 64)) == 16  # 16 full batches; the 1,025th image alone is left out
    assert steps_per_epoch(batches(1026, 64)) == 17  # a last batch of two trains
    assert steps_per_epoch(batches(1024, 64)) == 16
    assert steps_per_epoch(batches(10, 1)) == 10  # batch size 1 is every batch alone: nothing to leave out
    assert steps_per_epoch(batches(2 * 129, 64, world_size=2)) == 2  # 129 per process: one lone image each


def test_a_last_training_batch_of_one_image_does_not_crash_batchnorm(fake_cifar, tmp_path):
    # resnet18's last BatchNorm sees 1x1 maps: a batch of one image would give it one value per channel
    config = small_config(fake_cifar, tmp_path, model="resnet18", epochs=1, limit_train=101)
    run = train(config)
    state = load_checkpoint(run, "last.pt")
    assert state["epoch"] == 1 and (run / "test_metrics.json").is_file()
    assert all(s["step"] == 2 for s in state["optimizer"]["state"].values())  # 2 batches of 50; the 101st left out


# --- a validation loss that is not a number -----------------------------------------------------------------------


def test_a_nan_validation_loss_stops_the_run_and_keeps_the_last_good_epoch(fake_cifar, tmp_path):
    def poison_after_epoch_1(epoch: int, model: torch.nn.Module) -> None:
        if epoch == 1:  # BatchNorm statistics are used only in eval mode: training goes on, validation is NaN
            model.block1[0][1].running_mean.fill_(float("nan"))

    with pytest.raises(CifarlabError) as info:
        train(small_config(fake_cifar, tmp_path, epochs=3), on_epoch=poison_after_epoch_1)
    message = one_line(str(info.value))
    assert info.value.exit_code == 1
    assert "the validation loss became nan at epoch 2" in message and "last.pt (epoch 1)" in message
    run = tmp_path / "run"
    assert load_checkpoint(run, "last.pt")["epoch"] == 1 and load_checkpoint(run, "best.pt")["epoch"] == 1
    assert [r["epoch"] for r in read_metrics_csv(run / "metrics.csv")] == [1]
    assert not (run / "run.json").exists()


# --- a time budget on a tiny training split ------------------------------------------------------------------------


def tiny_split(n: int = 10, batch_size: int = 512) -> Batches:
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return Batches(
        images,
        torch.arange(n) % 10,
        batch_size,
        torch.full((3,), 0.5),
        torch.full((3,), 0.25),
        shuffle=True,
        augment="translate-altflip",
        crop_padding=2,
    )


def test_the_budget_probe_goes_round_a_split_smaller_than_its_steps():
    config = make_config("fast", model_width=8, time_budget=60.0)
    probe = time_probe(config, 8, tiny_split(), 10, torch.device("cpu"), train_step)  # 5 steps from 1 batch
    assert probe.step_seconds > 0 and probe.eval_image_seconds > 0


def test_a_time_budget_on_a_tiny_split_plans_and_runs(fake_cifar, tmp_path, monkeypatch):
    fixed = Probe(8, step_seconds=0.5, eval_image_seconds=1e-4, save_seconds=0.01, probe_seconds=0.0)
    monkeypatch.setattr(budget_module, "time_probe", lambda config, width, *args, **kwargs: fixed)

    def ticking(tick: float = 0.5):  # a clock that moves 0.5 s at each reading: the plan is exact
        now = [0.0]

        def clock() -> float:
            now[0] += tick
            return now[0]

        return clock

    config = make_config(
        "fast",
        model_width=8,
        val_size=100,
        limit_train=10,
        time_budget=8.0,
        data_dir=str(fake_cifar),
        out=str(tmp_path),
        name="tiny",
        device="cpu",
    )
    run = train(config, clock=ticking())
    summary = json.loads((run / "run.json").read_text())
    assert summary["budget_plan"]["steps_per_epoch"] == 1 and summary["train_steps"] == summary["epochs"] >= 2
    assert load_checkpoint(run, "last.pt")["optimizer"]["param_groups"][0]["lr"] == 0.0  # the schedule ended


def test_a_time_budget_too_short_for_a_tiny_split_is_refused_in_one_line(fake_cifar, tmp_path, capsys):
    config = write_config(
        tmp_path / "config.json",
        make_config("fast", model_width=8, val_size=100, data_dir=str(fake_cifar), device="cpu"),
    )
    code = main(
        [
            "train",
            "--config",
            str(config),
            "--limit-train",
            "10",
            "--time-budget",
            "1",
            "--out",
            str(tmp_path),
            "--name",
            "tiny",
            "--no-analysis",
            "--data-dir",
            str(fake_cifar),
        ]
    )
    line = one_line(capsys.readouterr().err)
    assert code == 2 and line.startswith("cifarlab: error: --time-budget 1s is too short for fastcnn")
    assert not (tmp_path / "tiny").exists()  # refused before any run folder is made


# --- SIGTERM and two writers ---------------------------------------------------------------------------------------

# A `cifarlab` command line whose training pauses after epoch 1 until the file GO exists, after creating READY:
# the test acts on the run at a known point without reading its log.
PAUSING_CLI = """
import sys, time
from pathlib import Path

import cifarlab.engine.train
from cifarlab.cli.main import main

ready, go = Path(sys.argv[1]), Path(sys.argv[2])
real_train = cifarlab.engine.train.train


def pause_after_epoch_1(epoch, model):
    if epoch == 1:
        ready.touch()
        while not go.exists():
            time.sleep(0.02)


cifarlab.engine.train.train = lambda config, **kwargs: real_train(config, on_epoch=pause_after_epoch_1, **kwargs)
sys.exit(main(sys.argv[3:]))
"""


def start_paused_run(tmp_path: Path, fake_cifar: Path) -> tuple[subprocess.Popen, Path, Path]:
    """A child `cifarlab train` of 2 epochs, paused after epoch 1 (its run folder is tmp_path/run)."""
    script, ready, go = tmp_path / "pausing_cli.py", tmp_path / "ready", tmp_path / "go"
    script.write_text(PAUSING_CLI)
    config = write_config(tmp_path / "config.json", small_config(fake_cifar, tmp_path))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(script),
            str(ready),
            str(go),
            "train",
            "--config",
            str(config),
            "--out",
            str(tmp_path),
            "--name",
            "run",
            "--no-analysis",
            "--data-dir",
            str(fake_cifar),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 300
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the child never reached epoch 1: {proc.communicate()}")
        time.sleep(0.05)
    return proc, tmp_path / "run", go


@pytest.mark.slow
def test_sigterm_stops_training_like_ctrl_c_and_the_run_resumes(fake_cifar, tmp_path, capsys):
    proc, run, _ = start_paused_run(tmp_path, fake_cifar)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    line = one_line(err)
    assert line.startswith("cifarlab: error: interrupted in epoch 1") and "Traceback" not in err
    assert "last.pt holds epoch 1" in line and line.endswith(f"Resume with: cifarlab train --resume {run}")
    assert load_checkpoint(run, "last.pt")["epoch"] == 1  # whole and loadable

    assert main(["train", "--resume", str(run), "--no-analysis", "--data-dir", str(fake_cifar)]) == 0
    assert f"resuming {run} after epoch 1" in capsys.readouterr().out
    assert load_checkpoint(run, "last.pt")["epoch"] == 2 and (run / "run.json").is_file()


@pytest.mark.slow
def test_a_second_writer_of_a_run_folder_is_refused_in_one_line(fake_cifar, tmp_path, capsys):
    proc, run, go = start_paused_run(tmp_path, fake_cifar)
    try:
        before = (run / "last.pt").read_bytes()
        assert main(["train", "--resume", str(run), "--no-analysis", "--data-dir", str(fake_cifar)]) == 1
        line = one_line(capsys.readouterr().err)
        assert line == (
            f"cifarlab: error: run folder {run} is in use by another cifarlab process (a training or "
            "resume still running); wait for it to end"
        )
        assert (run / "last.pt").read_bytes() == before
    finally:
        go.touch()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert load_checkpoint(run, "last.pt")["epoch"] == 2 and (run / "run.json").is_file()


def test_a_run_lock_is_held_until_released(tmp_path):
    with RunLock(tmp_path), pytest.raises(CifarlabError, match="in use by another cifarlab process"):
        RunLock(tmp_path).acquire()
    with RunLock(tmp_path):  # released: the next writer gets it
        pass


def test_the_one_file_lock_waits_until_cancelled_and_names_its_holder(tmp_path):
    """runfiles.FileLock, the lock behind the run folder, the sweep driver and each sweep run's worker."""
    import threading

    held = FileLock(tmp_path / "x.lock")
    assert held.acquire()
    held.write_holder("pid 1 on host\x1b[2J")
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    other = FileLock(tmp_path / "x.lock")
    assert other.acquire(wait=True, cancel=cancel) is False and other.fd is None  # waited, then gave up
    assert other.holder() == "pid 1 on host\\x1b[2J"  # escaped: the file cannot draw on the terminal
    held.release()
    assert other.acquire() is True
    other.release()


@pytest.mark.skipif(signal.getsignal(signal.SIGTERM) != signal.SIG_DFL, reason="SIGTERM is handled by the runner")
def test_a_stop_signal_waits_for_the_deferred_block_and_exits_143():
    finished = False
    with pytest.raises(Stop) as info, StopSignals() as signals, signals.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs here, and only records the request
        finished = True
    assert finished and exit_code(info.value) == 143
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is gone with the block


# --- temporary files and durability --------------------------------------------------------------------------------


def test_stale_temporary_files_are_removed_when_a_run_is_resumed(tiny_run, fake_cifar, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    stale = [run / ".last.pt.k2j4h1.tmp", run / ".metrics.csv.8fa0qz.tmp"]  # left by writes cut short
    for path in stale:
        path.write_bytes(b"half a file")
    (run / ".keep").write_text("not ours")
    assert main(["train", "--resume", str(run), "--no-analysis", "--data-dir", str(fake_cifar)]) == 0
    assert not any(path.exists() for path in stale)
    assert (run / ".keep").exists()


def test_a_rename_is_followed_by_an_fsync_of_its_folder(tmp_path, monkeypatch):
    import stat

    import cifarlab.base.files

    synced: list[bool] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(cifarlab.base.files.os, "fsync", spy)
    write_json(tmp_path / "x.json", {"a": 1})
    assert synced == [False, True]  # the file's data, then the folder holding the new name
