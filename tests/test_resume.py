"""Resume after SIGKILL or Ctrl-C gives the same run as no interruption; NaN, full disks and read-only folders
stop training with a clear message and leave every earlier file whole."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import pytest
import torch

from cifarlab.checkpoint import load_checkpoint
from cifarlab.cli import main
from cifarlab.config import TrainConfig, make_config
from cifarlab.errors import CifarlabError
from cifarlab.runfiles import read_metrics_csv
from cifarlab.train import train

TIMING_COLUMNS = ("epoch_seconds", "images_per_second")
EPOCHS = 4


def cli_env() -> dict[str, str]:
    """One thread per process: fast on a small CPU, and the same arithmetic in every run compared."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def default_sigint() -> None:
    """A child started from a shell that ignores SIGINT would inherit that; restore Python's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args: str, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "cifarlab", *args], stdout=out, stderr=subprocess.STDOUT,
                                env=cli_env(), preexec_fn=default_sigint)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cifarlab", *args], capture_output=True, text=True, env=cli_env(),
                          timeout=600)


def wait_for_epochs(run: Path, n: int, proc: subprocess.Popen, log: Path) -> None:
    """Poll metrics.csv (always whole: it is written atomically) until n epochs are done."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        csv = run / "metrics.csv"
        if csv.is_file() and len(read_metrics_csv(csv)) >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended (code {proc.returncode}) before epoch {n}:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no progress within 10 minutes")


def write_config(path: Path, fake_cifar: Path, **values) -> Path:
    settings = dict(model="mycnn", epochs=EPOCHS, batch_size=50, val_size=100, limit_train=100,
                    data_dir=str(fake_cifar), device="cpu", seed=3)
    settings.update(values)
    config = make_config("seed", **settings).to_dict()
    config["name"] = None
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory, fake_cifar) -> tuple[Path, Path]:
    """A config file, and the uninterrupted run made from it (the reference for every resumed run)."""
    work = tmp_path_factory.mktemp("resume")
    config = write_config(work / "config.json", fake_cifar)
    result = run_cli("train", "--config", str(config), "--out", str(work), "--name", "uninterrupted")
    assert result.returncode == 0, result.stderr
    return config, work / "uninterrupted"


def assert_same_run(a: Path, b: Path) -> None:
    """Same per-epoch metrics, same test metrics, bit-identical final weights (times excepted)."""
    rows_a, rows_b = read_metrics_csv(a / "metrics.csv"), read_metrics_csv(b / "metrics.csv")
    assert len(rows_a) == len(rows_b) == EPOCHS
    for ra, rb in zip(rows_a, rows_b):
        assert {k: v for k, v in ra.items() if k not in TIMING_COLUMNS} == \
               {k: v for k, v in rb.items() if k not in TIMING_COLUMNS}
    test_a, test_b = (json.loads((r / "test_metrics.json").read_text()) for r in (a, b))
    assert (test_a["top1"], test_a["loss"], test_a["epoch"]) == (test_b["top1"], test_b["loss"], test_b["epoch"])
    wa, wb = load_checkpoint(a, "last.pt")["model"], load_checkpoint(b, "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sigkill_mid_training_then_resume_gives_the_uninterrupted_run(setup, fake_cifar, tmp_path):
    config, reference = setup
    run, log = tmp_path / "killed", tmp_path / "log.txt"
    proc = start("train", "--config", str(config), "--out", str(tmp_path), "--name", "killed", log=log)
    wait_for_epochs(run, 1, proc, log)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    if proc.returncode != -signal.SIGKILL:
        pytest.fail(f"the run finished before it could be killed:\n{log.read_text()[-2000:]}")
    done = load_checkpoint(run, "last.pt")["epoch"]
    assert 1 <= done < EPOCHS  # killed mid-training
    assert not (run / "run.json").exists()

    result = run_cli("train", "--resume", str(run), "--data-dir", str(fake_cifar))
    assert result.returncode == 0, result.stderr
    assert f"resuming {run} after epoch {done}" in result.stdout
    assert_same_run(reference, run)


def test_ctrl_c_saves_exits_cleanly_and_says_how_to_resume(setup, fake_cifar, tmp_path):
    config, reference = setup
    run, log = tmp_path / "stopped", tmp_path / "log.txt"
    proc = start("train", "--config", str(config), "--out", str(tmp_path), "--name", "stopped", log=log)
    wait_for_epochs(run, 1, proc, log)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, log.read_text()[-2000:]
    output = log.read_text()
    assert "Traceback" not in output
    assert f"Resume with: cifarlab train --resume {run}" in output
    held = load_checkpoint(run, "last.pt")["epoch"]
    assert f"last.pt holds epoch {held}" in output and held >= 1

    result = run_cli("train", "--resume", str(run), "--data-dir", str(fake_cifar))
    assert result.returncode == 0, result.stderr
    assert_same_run(reference, run)


def test_resume_refuses_flags_that_would_change_the_run(setup, capsys):
    _, reference = setup
    assert main(["train", "--resume", str(reference), "--epochs", "9", "--lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "--epochs, --lr" in err and "Traceback" not in err


def small_config(fake_cifar: Path, out: Path, **values) -> TrainConfig:
    settings = dict(model="mycnn", epochs=2, batch_size=50, val_size=100, limit_train=100, data_dir=str(fake_cifar),
                    out=str(out), name="run", device="cpu")
    settings.update(values)
    return make_config("seed", **settings)


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(fake_cifar, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real = torch.nn.functional.cross_entropy
    before: dict[str, str] = {}

    def poisoned(logits, target, *args, **kwargs):
        loss = real(logits, target, *args, **kwargs)
        if kwargs.get("reduction", "mean") == "mean" and (run / "metrics.csv").exists():  # epoch 2's training
            before.update(snapshot(run))
            return loss * float("nan")
        return loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", poisoned)
    with pytest.raises(CifarlabError, match=r"loss became nan at epoch 2, batch 1.*last\.pt \(epoch 1\)"):
        train(small_config(fake_cifar, tmp_path))
    assert before and snapshot(run) == before
    assert load_checkpoint(run, "last.pt")["epoch"] == 1


def test_a_huge_learning_rate_gives_a_clear_error_not_a_traceback(fake_cifar, tmp_path, capsys):
    config = write_config(tmp_path / "config.json", fake_cifar, limit_train=100, epochs=1)
    code = main(["train", "--config", str(config), "--out", str(tmp_path), "--name", "nan", "--lr", "1e30"])
    err = capsys.readouterr().err
    assert code == 1
    assert "training stopped: the loss became" in err and "try a lower --lr" in err and "Traceback" not in err
    assert load_checkpoint(tmp_path / "nan", "last.pt")["epoch"] == 0


def full_disk_after(trigger: Path):
    """A stand-in for tempfile.mkstemp: once ``trigger`` exists, every new file sits on /dev/full (ENOSPC)."""
    def mkstemp(*args, **kwargs):
        fd, path = tempfile.mkstemp(*args, **kwargs)
        if trigger.exists():
            os.close(fd)
            fd = os.open("/dev/full", os.O_WRONLY)
        return fd, path
    return types.SimpleNamespace(mkstemp=mkstemp)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to fill the disk for real")
def test_a_full_disk_gives_a_clear_error_and_no_earlier_file_is_corrupted(fake_cifar, tmp_path, monkeypatch):
    run = tmp_path / "run"
    before: dict[str, str] = {}
    real_train_one_epoch = sys.modules["cifarlab.train"].train_one_epoch

    def spy(*args, **kwargs):
        if (run / "metrics.csv").exists() and not before:
            before.update(snapshot(run))  # everything as it stood after epoch 1
        return real_train_one_epoch(*args, **kwargs)

    monkeypatch.setattr("cifarlab.train.train_one_epoch", spy)
    monkeypatch.setattr("cifarlab.runfiles.tempfile", full_disk_after(run / "metrics.csv"))
    with pytest.raises(CifarlabError) as info:
        train(small_config(fake_cifar, tmp_path))
    message = str(info.value)
    assert "No space left on device" in message and f"cifarlab train --resume {run}" in message
    assert before and snapshot(run) == before  # same files, same bytes: nothing half-written, no temp files left
    assert load_checkpoint(run, "last.pt")["epoch"] == 1


def test_a_folder_that_refuses_writes_is_reported_before_any_work(tiny_run, fake_cifar, tmp_path, monkeypatch,
                                                                  capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = snapshot(run)

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("cifarlab.runfiles.tempfile", types.SimpleNamespace(mkstemp=refuse))
    assert main(["train", "--resume", str(run), "--data-dir", str(fake_cifar)]) == 1
    err = capsys.readouterr().err
    assert f"run folder {run} is not writable: Permission denied" in err and "Traceback" not in err
    assert snapshot(run) == before


def make_read_only(folder: Path) -> bool:
    """chmod for ordinary users; root ignores modes, so it needs the immutable attribute (chattr +i)."""
    folder.chmod(0o555)
    if os.geteuid() != 0:
        return True
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0


def make_writable(folder: Path) -> None:
    if os.geteuid() == 0 and shutil.which("chattr"):
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    folder.chmod(0o755)


def test_a_read_only_run_folder_gives_a_clear_error(tiny_run, fake_cifar, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = snapshot(run)
    try:
        if not make_read_only(run):
            pytest.skip("cannot make a folder read-only here (root without chattr)")
        assert main(["train", "--resume", str(run), "--data-dir", str(fake_cifar)]) == 1
        err = capsys.readouterr().err
        assert f"run folder {run} is not writable" in err and "Traceback" not in err
        out = run / "sub"
        assert main(["train", "--config", str(tiny_run / "config.json"), "--out", str(out)]) == 1
        assert f"cannot create run folder {out}" in capsys.readouterr().err
    finally:
        make_writable(run)
    assert snapshot(run) == before
