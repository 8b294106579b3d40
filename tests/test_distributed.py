"""Two processes on the CPU (gloo) against one, through ``torchrun -m cifarlab train``.

Tolerances, and why:
- With a model that has no BatchNorm and no dropout, DDP with 2 x 25 images must follow exactly the same path
  as one process with 50: same global batches, gradients averaged, metrics reduced. Everything is compared to
  float32 round-off: validation loss to 1e-4 (relative), top-1 to one validation image, weights to 1e-4.
- With ``mycnn`` (BatchNorm and dropout) exact equality is not the right expectation: each rank normalises by
  the statistics of its own 25 images and draws its own dropout masks, as plain DDP does on every GPU. There
  the 2-process run must reach a validation top-1 within 5 points of the single process at every epoch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cifarlab.checkpoint import load_checkpoint
from cifarlab.runfiles import read_metrics_csv

HELPER = '''
import sys
from torch import nn
from cifarlab.models import register


@register("tiny-nobn")
def tiny_nobn(num_classes: int = 10) -> nn.Module:
    """Two strided convolutions and a linear head: no BatchNorm, no dropout, so batch splitting is exact."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))


from cifarlab.cli import main

sys.exit(main(sys.argv[1:]))
'''


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 ...`` (standalone: a free local port, so runs never collide)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=cwd, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def single(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env(), cwd=cwd, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def write_config(path: Path, **values) -> Path:
    from cifarlab.config import make_config

    config = make_config("seed", **values).to_dict()
    config["name"] = None
    path.write_text(json.dumps(config))
    return path


def test_two_processes_follow_one_process_with_the_same_global_batch(tmp_path, fake_cifar):
    helper = tmp_path / "helper.py"
    helper.write_text(HELPER)
    config = write_config(tmp_path / "config.json", model="mycnn", epochs=2, batch_size=50, lr=0.01, val_size=100,
                          data_dir=str(fake_cifar), out=str(tmp_path / "runs"), device="cpu")
    config_data = json.loads(config.read_text())
    config_data["model"] = "tiny-nobn"  # registered by the helper in every process
    config.write_text(json.dumps(config_data))
    single(str(helper), "train", "--config", str(config), "--name", "one", cwd=tmp_path)
    torchrun(str(helper), "train", "--config", str(config), "--name", "two", cwd=tmp_path)

    one, two = (read_metrics_csv(tmp_path / "runs" / n / "metrics.csv") for n in ("one", "two"))
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert abs(b["val_top1"] - a["val_top1"]) <= 1 / 100  # one image of 100
    assert one[-1]["val_top1"] > one[0]["val_top1"]  # it did learn, so the comparison means something
    w1 = torch.load(tmp_path / "runs/one/last.pt", weights_only=True)["model"]
    w2 = torch.load(tmp_path / "runs/two/last.pt", weights_only=True)["model"]
    assert w1.keys() == w2.keys()
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, tiny_run) -> tuple[Path, subprocess.CompletedProcess]:
    """tiny_run's exact config (mycnn), replayed by ``torchrun --nproc_per_node=2 -m cifarlab train``."""
    work = tmp_path_factory.mktemp("ddp")
    result = torchrun("-m", "cifarlab", "train", "--config", str(tiny_run / "config.json"), "--out", str(work / "runs"),
                      "--name", "ddp", cwd=work)
    return work / "runs" / "ddp", result


def test_mycnn_under_torchrun_matches_one_process_within_tolerance(ddp_run, tiny_run):
    run, result = ddp_run
    assert "x 2 processes" in result.stdout
    one, two = read_metrics_csv(tiny_run / "metrics.csv"), read_metrics_csv(run / "metrics.csv")
    assert [r["epoch"] for r in two] == [r["epoch"] for r in one] == [1, 2]
    for a, b in zip(one, two):
        assert abs(b["val_top1"] - a["val_top1"]) <= 0.05
    assert json.loads((run / "split.json").read_text()) == json.loads((tiny_run / "split.json").read_text())


def test_only_rank_0_writes_files_and_prints(ddp_run):
    run, result = ddp_run
    assert [p.name for p in run.parent.iterdir()] == ["ddp"]  # one run folder, not one per process
    for name in ("config.json", "split.json", "metrics.csv", "best.pt", "last.pt", "run.json", "test_metrics.json"):
        assert (run / name).is_file(), name
    epoch_lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2  # one line per epoch, from rank 0 only
    assert result.stdout.count("test (") == 1


def test_a_ddp_checkpoint_loads_and_scores_in_one_process(ddp_run, fake_cifar, tmp_path):
    from cifarlab.evaluate import evaluate

    run, _ = ddp_run
    state = load_checkpoint(run)
    assert not any(k.startswith("module.") for k in state["model"])
    written = json.loads((run / "test_metrics.json").read_text())
    again = evaluate(run, out=tmp_path, device="cpu", data_dir=str(fake_cifar))
    assert again["n"] == written["n"]
    assert again["top1"] == pytest.approx(written["top1"], abs=1e-9)
    assert again["loss"] == pytest.approx(written["loss"], rel=1e-5)
