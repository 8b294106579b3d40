"""Timed runs (``--timed``): the clock airbench uses (validation and checkpoints off it), the same training and
the same results as an untimed run, and the switches of the GPU path (torch.compile's mode) wired through."""

from __future__ import annotations

import json

import pytest
import torch

import cifarlab.engine.train as train_module
from cifarlab.base.errors import CifarlabError, UsageError
from cifarlab.cli.main import main
from cifarlab.config.train_config import make_config
from cifarlab.data.cifar10 import load_cifar10
from cifarlab.engine.build import Stopwatch
from cifarlab.engine.infer import evaluate_checkpoint
from cifarlab.engine.train import train
from cifarlab.runs.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures in conftest.py

VALIDATION, SAVE, READ = 100.0, 10.0, 1.0  # seconds each takes on the fake clock below


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def slow_bookkeeping(monkeypatch, clock: FakeClock) -> None:
    """Validation, checkpoint writes and reads take time on ``clock``; nothing else does."""
    score, save, load = train_module.score, train_module.save_checkpoint, train_module.load_checkpoint

    def slow(seconds, real):
        def wrapped(*args, **kwargs):
            clock.now += seconds
            return real(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(train_module, "score", slow(VALIDATION, score))
    monkeypatch.setattr(train_module, "save_checkpoint", slow(SAVE, save))
    monkeypatch.setattr(train_module, "load_checkpoint", slow(READ, load))


def timed_config(small_config, tmp_path, name: str, **values):
    values = dict(limit_train=200, test_checkpoint="last", **values)
    return small_config(out=tmp_path, name=name, **values)


def test_a_timed_run_leaves_validation_and_checkpoints_off_its_clock(small_config, tmp_path, monkeypatch):
    clock = FakeClock()
    slow_bookkeeping(monkeypatch, clock)
    timed = json.loads(
        (train(timed_config(small_config, tmp_path, "timed", timed=True), clock=clock) / "run.json").read_text()
    )
    untimed_start = clock.now
    untimed = json.loads((train(timed_config(small_config, tmp_path, "untimed"), clock=clock) / "run.json").read_text())
    untimed_total = clock.now - untimed_start

    # 2 epochs: each validated and saved (last.pt, and best.pt when better); the test reads last.pt back
    assert timed["timed"] is True and timed["seconds_used"] == 0.0  # training and the test take no fake time
    assert timed["untimed_seconds"] == pytest.approx(untimed_total)  # the first last.pt, 2 epochs, the test's read
    assert "timed" not in untimed and "untimed_seconds" not in untimed  # an untimed run's files are as before
    # the untimed run's clock counted all of the same work
    assert untimed["seconds_used"] == pytest.approx(untimed_total)
    assert untimed_total >= SAVE + 2 * (VALIDATION + SAVE) + READ


def test_a_timed_run_trains_and_scores_exactly_as_an_untimed_one(small_config, fake_cifar, tmp_path):
    timed_run = train(timed_config(small_config, tmp_path, "timed", timed=True))
    plain_run = train(timed_config(small_config, tmp_path, "plain"))
    timed, plain = load_checkpoint(timed_run, "last.pt"), load_checkpoint(plain_run, "last.pt")
    for key, weights in plain["model"].items():
        assert torch.equal(timed["model"][key], weights), key  # the same steps on the same batches
    for row_t, row_p in zip(timed["history"], plain["history"], strict=True):
        assert row_t["train_top1"] == row_p["train_top1"] and row_t["val_top1"] == row_p["val_top1"]
        assert row_t["train_loss"] == pytest.approx(row_p["train_loss"], rel=1e-5)  # summed in float32 on the device
    # the timed run tested the model it held in memory: the same probabilities as last.pt read back from disk
    probs, _, _ = evaluate_checkpoint(timed, load_cifar10(fake_cifar), "test", torch.device("cpu"))
    saved = json.loads((timed_run / "test_metrics.json").read_text())
    assert saved["top1"] == json.loads((plain_run / "test_metrics.json").read_text())["top1"]
    assert saved["top1"] == pytest.approx(
        (probs.argmax(1) == load_cifar10(fake_cifar).test_labels).float().mean().item()
    )


def test_a_timed_run_checks_the_loss_at_each_epochs_end(small_config, tmp_path, monkeypatch):
    """No per-step check (it would wait for the GPU), but a loss that became NaN still stops the run before the
    epoch's checkpoint, with last.pt holding the last good epoch."""
    real = torch.nn.functional.cross_entropy
    run = tmp_path / "nan"

    def poisoned(logits, target, *args, **kwargs):
        loss = real(logits, target, *args, **kwargs)
        if kwargs.get("reduction", "mean") == "mean" and (run / "metrics.csv").exists():  # epoch 2's training
            return loss * float("nan")
        return loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", poisoned)
    with pytest.raises(CifarlabError, match=r"loss became nan in epoch 2.*last\.pt \(epoch 1\)"):
        train(timed_config(small_config, tmp_path, "nan", timed=True))
    assert load_checkpoint(run, "last.pt")["epoch"] == 1


def test_timed_and_a_time_budget_do_not_mix():
    with pytest.raises(UsageError, match="use one"):
        make_config("fast", timed=True, time_budget=60.0)


def test_compile_mode_must_be_one_of_torch_compiles(cli_error):
    with pytest.raises(UsageError, match="compile_mode: must be one of default, reduce-overhead, max-autotune"):
        make_config("fast", compile_mode="turbo")
    err = cli_error("train", "--compile", "turbo", code=2, one_line=False)
    assert "invalid choice" in err


def test_the_command_line_sets_timed_and_compile(small_config, fake_cifar, tmp_path, monkeypatch):
    """``--compile MODE`` reaches torch.compile with that mode, ``--timed`` the run's clock."""
    compiled = []

    def fake_compile(model, **kwargs):
        compiled.append(kwargs)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    config = small_config.write(tmp_path / "config.json", limit_train=100, epochs=1)
    args = ["train", "--config", str(config), "--data-dir", str(fake_cifar), "--out", str(tmp_path), "--no-analysis"]
    args.append("--timed")
    assert main([*args, "--name", "a", "--compile", "reduce-overhead"]) == 0
    assert compiled == [{"mode": "reduce-overhead"}]
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["compile"] is True and saved["compile_mode"] == "reduce-overhead" and saved["timed"] is True
    assert json.loads((tmp_path / "a" / "run.json").read_text())["timed"] is True
    assert main([*args, "--name", "b", "--compile"]) == 0
    assert compiled[-1] == {"mode": "default"}


def test_the_stopwatch_subtracts_the_time_it_was_stopped():
    clock = FakeClock()
    watch = Stopwatch(clock, torch.device("cpu"))
    clock.now = 3.0
    with watch.stopped():
        clock.now = 10.0
    clock.now = 12.0
    assert watch() == 5.0 and watch.paused == 7.0
    with pytest.raises(RuntimeError), watch.stopped():
        clock.now = 20.0
        raise RuntimeError("the work inside failed")
    assert watch.paused == 15.0  # stopped time counts off the clock however the work ended
