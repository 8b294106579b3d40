"""Training end to end: the files of a run, their consistency, determinism and replay."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cifarlab.checkpoint import load_checkpoint, model_from_checkpoint
from cifarlab.config import TrainConfig, make_config, parse_overrides
from cifarlab.data import CLASSES
from cifarlab.errors import UsageError
from cifarlab.evaluate import evaluate
from cifarlab.models import build_model
from cifarlab.runfiles import METRICS_COLUMNS, read_metrics_csv
from cifarlab.optim import make_optimizer
from cifarlab.train import train

RUN_FILES = ["config.json", "split.json", "normalization.json", "metrics.csv", "best.pt", "last.pt", "run.json",
             "test_metrics.json", "test_predictions.npz"]


@pytest.mark.parametrize("name", ["mycnn", "resnet18", "resnet18-cifar"])
def test_a_few_steps_lower_the_loss_on_a_tiny_batch(name):
    torch.manual_seed(0)
    model = build_model(name)
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 10
    optimizer = make_optimizer(model, make_config("seed", model=name))
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_a_run_writes_every_file(tiny_run):
    for name in RUN_FILES:
        assert (tiny_run / name).is_file(), name
    rows = read_metrics_csv(tiny_run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2] and list(rows[0]) == METRICS_COLUMNS
    for r in rows:
        for key in ("train_top1", "val_top1", "val_top3"):
            assert 0 <= r[key] <= 1
    summary = json.loads((tiny_run / "run.json").read_text())
    assert summary["best_val_top1"] == max(r["val_top1"] for r in rows)
    assert summary["params"] > 0 and summary["macs"] > 0 and summary["train_seconds"] > 0
    split = json.loads((tiny_run / "split.json").read_text())
    assert len(split["val"]) == 100 and not set(split["train"]) & set(split["val"])


def test_checkpoint_holds_everything_to_resume(tiny_run):
    state = load_checkpoint(tiny_run / "last.pt")
    for key in ("model", "optimizer", "scheduler", "epoch", "config", "mean", "std", "classes", "rng"):
        assert key in state
    assert state["epoch"] == 2 and state["classes"] == list(CLASSES)
    norm = json.loads((tiny_run / "normalization.json").read_text())
    assert state["mean"] == norm["mean"] and len(state["std"]) == 3
    model_from_checkpoint(state)  # loads into a fresh model without error


def test_test_metrics_match_the_saved_predictions(tiny_run):
    metrics = json.loads((tiny_run / "test_metrics.json").read_text())
    saved = np.load(tiny_run / "test_predictions.npz")
    y, probs, index = saved["y_true"], saved["probs"], saved["index"]
    assert y.dtype == np.int64 and probs.dtype == np.float32 and probs.shape == (len(y), 10)
    assert np.array_equal(index, np.arange(len(y)))
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    top3 = np.argsort(-probs, axis=1)[:, :3]
    assert metrics["top1"] == (top3[:, 0] == y).mean()  # exactly: stored as count / n in float64
    assert metrics["top3"] == (top3 == y[:, None]).any(1).mean()
    assert metrics["loss"] == pytest.approx(-np.log(probs[np.arange(len(y)), y]).mean(), rel=1e-5)
    for c, name in enumerate(CLASSES):
        assert metrics["per_class_accuracy"][name] == pytest.approx((top3[y == c, 0] == c).mean(), abs=1e-6)


def test_evaluate_reproduces_test_metrics_from_the_checkpoint_alone(tiny_run, tmp_path):
    original = json.loads((tiny_run / "test_metrics.json").read_text())
    again = evaluate(tiny_run / "best.pt", split="test", out=tmp_path, device="cpu")
    for key in ("top1", "top3", "n", "epoch"):
        assert again[key] == original[key]
    assert again["loss"] == pytest.approx(original["loss"], rel=1e-6)
    a, b = np.load(tiny_run / "test_predictions.npz"), np.load(tmp_path / "test_predictions.npz")
    assert np.allclose(a["probs"], b["probs"], atol=1e-6)


def test_evaluate_on_validation_uses_the_runs_split(tiny_run, tmp_path):
    metrics = evaluate(tiny_run, split="val", out=tmp_path, device="cpu")
    saved = np.load(tmp_path / "val_predictions.npz")
    assert sorted(saved["index"].tolist()) == json.loads((tiny_run / "split.json").read_text())["val"]
    best = json.loads((tiny_run / "run.json").read_text())["best_val_top1"]
    assert metrics["top1"] == pytest.approx(best, abs=1e-9)


def test_learns_the_generated_data(tiny_run):
    assert json.loads((tiny_run / "run.json").read_text())["test_top1"] > 0.5  # chance is 0.1


def test_same_seed_same_metrics_and_replay_from_config(fake_cifar, tmp_path, tiny_run):
    from cifarlab.cli import main

    assert main(["train", "--config", str(tiny_run / "config.json"), "--out", str(tmp_path), "--name", "replay",
                 "--no-analysis"]) == 0
    run = tmp_path / "replay"
    assert (tiny_run / "analysis" / "summary.json").is_file() and not (run / "analysis").exists()
    assert TrainConfig.load(run).to_dict() == {**TrainConfig.load(tiny_run).to_dict(), "out": str(tmp_path),
                                               "name": "replay"}
    a, b = read_metrics_csv(tiny_run / "metrics.csv"), read_metrics_csv(run / "metrics.csv")
    for ra, rb in zip(a, b):
        for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top3"):
            assert ra[key] == rb[key], key
    assert json.loads((run / "test_metrics.json").read_text())["top1"] == \
        json.loads((tiny_run / "test_metrics.json").read_text())["top1"]


def test_other_seed_other_split(fake_cifar, tmp_path, tiny_run):
    config = make_config("seed", model="mycnn", epochs=1, batch_size=50, val_size=100, data_dir=str(fake_cifar),
                         out=str(tmp_path), name="s1", seed=1, limit_train=100, device="cpu")
    run = train(config)
    split, other = (json.loads((r / "split.json").read_text()) for r in (run, tiny_run))
    assert split["val"] != other["val"]
    assert len(split["train"]) == 100


def test_run_files_get_ordinary_permissions(tiny_run):
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    for name in ("best.pt", "metrics.csv", "config.json"):
        assert stat.S_IMODE((tiny_run / name).stat().st_mode) == 0o666 & ~umask, name


def test_key_value_overrides_read_json_else_text():
    overrides = parse_overrides(["batch_size=64", "bf16=false", "weight_averaging=ema", "lr=1e-3"])
    assert overrides == {"batch_size": 64, "bf16": False, "weight_averaging": "ema", "lr": 0.001}
    assert make_config("fast", **overrides).batch_size == 64
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_overrides(["batch_size"])
    with pytest.raises(UsageError, match="unknown config key 'batchsize'"):
        parse_overrides(["batchsize=64"])
