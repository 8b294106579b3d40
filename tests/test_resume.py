"""Resume after SIGKILL or Ctrl-C gives the same run as no interruption; NaN, full disks and read-only folders
stop training with a clear message and leave every earlier file whole.

The interrupted runs do not race the clock: the child (``HOLD``) stops at a known point, the first training step
of epoch 2, and says so in a file; only then is it killed or interrupted."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import types
from pathlib import Path

import pytest
import torch

from cifarlab.base.errors import CifarlabError
from cifarlab.engine.train import train
from cifarlab.runs.checkpoint import load_checkpoint
from cifarlab.runs.layout import read_metrics_csv

TIMING_COLUMNS = ("epoch_seconds", "images_per_second")
EPOCHS = 3

HOLD = '''
"""python hold.py RUN ARGS: `cifarlab ARGS`, held at the first training step after RUN/metrics.csv appears (the
first batch of epoch 2). There it writes RUN.ready and waits to be killed or interrupted."""
import sys
import time
from pathlib import Path

import torch

from cifarlab.cli.main import main

run = Path(sys.argv[1])
ready = run.with_name(run.name + ".ready")


def hold(module, inputs):
    if module.training and not ready.exists() and (run / "metrics.csv").exists():
        ready.write_text("held in epoch 2")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            time.sleep(0.02)
        sys.exit("hold.py: nobody stopped the run within 5 minutes")


torch.nn.modules.module.register_module_forward_pre_hook(hold)
sys.exit(main(sys.argv[2:]))
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory, small_config, fake_cifar, child) -> tuple[Path, Path]:
    """A config file, and the uninterrupted run made from it (the reference for every resumed run)."""
    work = tmp_path_factory.mktemp("resume")
    config = small_config.write(work / "config.json", epochs=EPOCHS, limit_train=100, seed=3)
    child.cli(
        "train",
        "--config",
        str(config),
        "--out",
        str(work),
        "--name",
        "uninterrupted",
        "--data-dir",
        str(fake_cifar),
        "--device",
        "cpu",
        "--no-analysis",
    )
    return config, work / "uninterrupted"


def held_in_epoch_2(child, config: Path, run: Path, fake_cifar: Path, log: Path) -> subprocess.Popen:
    """Start ``cifarlab train --config CONFIG`` into ``run`` and return once it is held in epoch 2."""
    hold = run.parent / "hold.py"
    hold.write_text(HOLD)
    proc = child.start(
        str(hold),
        str(run),
        "train",
        "--config",
        str(config),
        "--out",
        str(run.parent),
        "--name",
        run.name,
        "--data-dir",
        str(fake_cifar),
        "--device",
        "cpu",
        "--no-analysis",
        log=log,
    )
    ready = run.with_name(run.name + ".ready")
    deadline = time.monotonic() + 600
    while not ready.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (code {proc.returncode}) before epoch 2:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the run did not reach epoch 2 within 10 minutes")
        time.sleep(0.05)
    return proc


def resume(child, run: Path, fake_cifar: Path) -> subprocess.CompletedProcess:
    return child.cli("train", "--resume", str(run), "--data-dir", str(fake_cifar), "--device", "cpu", "--no-analysis")


def assert_same_run(a: Path, b: Path) -> None:
    """Same per-epoch metrics, same test metrics, bit-identical final weights (times excepted)."""
    rows_a, rows_b = read_metrics_csv(a / "metrics.csv"), read_metrics_csv(b / "metrics.csv")
    assert len(rows_a) == len(rows_b) == EPOCHS
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert {k: v for k, v in ra.items() if k not in TIMING_COLUMNS} == {
            k: v for k, v in rb.items() if k not in TIMING_COLUMNS
        }
    test_a, test_b = (json.loads((r / "test_metrics.json").read_text()) for r in (a, b))
    assert (test_a["top1"], test_a["loss"], test_a["epoch"]) == (test_b["top1"], test_b["loss"], test_b["epoch"])
    wa, wb = load_checkpoint(a, "last.pt")["model"], load_checkpoint(b, "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_gives_the_uninterrupted_run(setup, child, fake_cifar, tmp_path):
    config, reference = setup
    run, log = tmp_path / "killed", tmp_path / "log.txt"
    proc = held_in_epoch_2(child, config, run, fake_cifar, log)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert load_checkpoint(run, "last.pt")["epoch"] == 1  # killed mid-training, in epoch 2
    assert len(read_metrics_csv(run / "metrics.csv")) == 1 and not (run / "run.json").exists()

    result = resume(child, run, fake_cifar)
    assert f"resuming {run} after epoch 1" in result.stdout
    assert_same_run(reference, run)


@pytest.mark.slow
def test_ctrl_c_saves_exits_cleanly_and_says_how_to_resume(setup, child, fake_cifar, tmp_path):
    """README: Ctrl-C stops with `interrupted in epoch E: RUN/last.pt holds epoch E-1 ... Resume with: ...` (130)."""
    config, reference = setup
    run, log = tmp_path / "stopped", tmp_path / "log.txt"
    proc = held_in_epoch_2(child, config, run, fake_cifar, log)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
    output = log.read_text()
    assert "Traceback" not in output
    assert "\nepoch   1/3  train loss" in output and "\r" not in output  # a log file gets plain lines, no bar
    assert (
        f"cifarlab: error: interrupted in epoch 2: {run}/last.pt holds epoch 1, the last completed one. "
        f"Resume with: cifarlab train --resume {run}"
    ) in output
    assert load_checkpoint(run, "last.pt")["epoch"] == 1

    resume(child, run, fake_cifar)
    assert_same_run(reference, run)


def test_resume_refuses_flags_that_would_change_the_run(setup, cli_error, fake_cifar):
    _, reference = setup
    err = cli_error("train", "--resume", str(reference), "--epochs", "9", "--lr", "0.1", "--data-dir", str(fake_cifar))
    assert "--epochs, --lr" in err


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(small_config, tmp_path, monkeypatch):
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
        train(small_config(out=tmp_path, limit_train=100))
    assert before and snapshot(run) == before
    assert load_checkpoint(run, "last.pt")["epoch"] == 1


def test_a_huge_learning_rate_gives_a_clear_error_not_a_traceback(small_config, fake_cifar, tmp_path, cli_error):
    config = small_config.write(tmp_path / "config.json", limit_train=100, epochs=1)
    err = cli_error(
        "train",
        "--config",
        str(config),
        "--out",
        str(tmp_path),
        "--name",
        "nan",
        "--lr",
        "1e30",
        "--data-dir",
        str(fake_cifar),
        "--device",
        "cpu",
        "--no-analysis",
        code=1,
    )
    assert "training stopped: the loss became" in err and "try a lower --lr" in err
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
def test_a_full_disk_gives_a_clear_error_and_no_earlier_file_is_corrupted(small_config, tmp_path, monkeypatch):
    run = tmp_path / "run"
    before: dict[str, str] = {}

    def after_epoch(epoch, model):
        if epoch == 1:
            before.update(snapshot(run))  # everything as it stood after epoch 1

    monkeypatch.setattr("cifarlab.base.files.tempfile", full_disk_after(run / "metrics.csv"))
    with pytest.raises(CifarlabError) as info:
        train(small_config(out=tmp_path, limit_train=100), on_epoch=after_epoch)
    message = str(info.value)
    assert "No space left on device" in message and f"cifarlab train --resume {run}" in message
    assert before and snapshot(run) == before  # same files, same bytes: nothing half-written, no temp files left
    assert load_checkpoint(run, "last.pt")["epoch"] == 1


def test_a_folder_that_refuses_writes_is_reported_before_any_work(
    tiny_run, fake_cifar, tmp_path, monkeypatch, cli_error
):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = snapshot(run)

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("cifarlab.base.files.tempfile", types.SimpleNamespace(mkstemp=refuse))
    monkeypatch.setattr("cifarlab.runs.layout.tempfile", types.SimpleNamespace(mkstemp=refuse))
    err = cli_error(
        "train", "--resume", str(run), "--data-dir", str(fake_cifar), "--device", "cpu", "--no-analysis", code=1
    )
    assert f"run folder {run} is not writable: Permission denied" in err
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


def test_a_read_only_run_folder_gives_a_clear_error(tiny_run, fake_cifar, tmp_path, cli_error):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = snapshot(run)
    try:
        if not make_read_only(run):
            pytest.skip("cannot make a folder read-only here (root without chattr)")
        flags = ["--data-dir", str(fake_cifar), "--device", "cpu", "--no-analysis"]
        assert f"run folder {run} is not writable" in cli_error("train", "--resume", str(run), *flags, code=1)
        out = run / "sub"
        err = cli_error("train", "--config", str(tiny_run / "config.json"), "--out", str(out), *flags, code=1)
        assert f"cannot create run folder {out}" in err
    finally:
        make_writable(run)
    assert snapshot(run) == before
