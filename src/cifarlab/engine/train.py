"""The training engine, top to bottom: build the run, train it epoch by epoch, test it once.

Read it in this order: :func:`train` (the three stages), :func:`run_epochs` (the epoch loop: train, validate,
checkpoint), :func:`train_one_epoch` and :func:`train_step` (the forward pass, the loss, the backward pass and
the optimiser step), :func:`save_epoch` (the checkpoint) and :func:`finish` (the test set, once; run.json).
Building the run (data, time-budget plan, model, optimiser, schedule, the run folder or the resumed state) is
build.py's :func:`~cifarlab.engine.build.build_run`.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.base.errors import CifarlabError
from cifarlab.base.files import write_json
from cifarlab.base.progress import log, progress
from cifarlab.config.train_config import TrainConfig
from cifarlab.data.cifar10 import ImageData
from cifarlab.data.loading import run_record
from cifarlab.engine import distributed
from cifarlab.engine.build import Clock, Run, Stopwatch, build_run, checkpoint_state, config_as_run, off_the_clock
from cifarlab.engine.device import autocast, uses_bf16
from cifarlab.engine.infer import evaluate_checkpoint, score
from cifarlab.engine.interrupts import StopSignals, exit_code
from cifarlab.engine.optim import (
    per_batch_schedule,
)
from cifarlab.engine.tracking import open_tracker
from cifarlab.runs.checkpoint import load_checkpoint, save_checkpoint, unwrap
from cifarlab.runs.folder import FORMAT_VERSION
from cifarlab.runs.layout import RUN_JSON, write_metrics_csv
from cifarlab.runs.metrics import write_test_results


class TrainingInterrupted(CifarlabError):
    """Ctrl-C or SIGTERM during training: the run can be resumed. Exit code 128 + the signal: 130 or 143."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class NonFiniteLoss(CifarlabError):
    """The loss became NaN or infinite: training cannot go on from these weights."""


def train(
    config: TrainConfig,
    data: ImageData | None = None,
    resume: str | Path | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    clock: Clock = time.perf_counter,
) -> Path:
    """Train one model as ``config`` says, test its chosen checkpoint once, and return the run folder.

    ``resume`` continues an interrupted run from its last.pt. ``on_epoch(epoch, model)``, if given, is called
    after each epoch with the scored model (the benchmark measures test accuracy over time with it; it must not
    train the model). ``clock`` times a ``time_budget`` (tests pass a fake one). Training writes no analysis:
    ``cifarlab train`` runs it afterwards, ``cifarlab analyze RUN`` at any time.
    """
    with contextlib.ExitStack() as cleanup:  # releases the run folder's lock however training ends
        run = build_run(config, data, resume, clock, cleanup, train_step)
        run.tracker = open_tracker(run.folder, config_as_run(run), enabled=run.dist.is_main)
        cleanup.callback(run.tracker.close)
        run_epochs(run, on_epoch)
        finish(run)
    return run.folder


# --- the loop ------------------------------------------------------------------------------------------------


def run_epochs(run: Run, on_epoch: Callable[[int, nn.Module], None] | None = None) -> None:
    """Train epoch by epoch to the planned length; after each epoch validate, then write the checkpoints."""
    epoch = run.saved_epoch
    try:
        with StopSignals() as signals:  # SIGTERM stops training as Ctrl-C does
            for epoch in itertools.count(run.saved_epoch + 1):
                if epoch > run.length.epochs:  # read each time: a time-budget run's pacer re-plans the length
                    break
                t0 = time.perf_counter()
                lr = run.optimizer.param_groups[0]["lr"]  # the epoch's LR (per-step schedules: its first step's)
                train_sums = train_one_epoch(run, epoch)
                t_train = time.perf_counter() - t0
                with off_the_clock(run):  # a timed run's clock stops for validation and checkpoints
                    val = score(run.scored(), run.val_batches, run.dist, run.device, run.config.bf16)
                    if not math.isfinite(val["loss"]):
                        raise stopped(run, f"the validation loss became {val['loss']} at epoch {epoch}")
                    improved = record_epoch(run, epoch, train_sums, val, lr, time.perf_counter() - t0, t_train)
                    run.tracker.epoch(run.history[-1])  # before the checkpoint: a resumed run logs each epoch once
                    with signals.deferred():  # a stop request waits until the epoch's files are whole
                        save_epoch(run, epoch, improved)
                    log_epoch(run, improved)
                    if on_epoch is not None:
                        on_epoch(epoch, run.scored())
    except KeyboardInterrupt as exc:
        distributed.teardown(run.dist)
        raise TrainingInterrupted(
            f"interrupted in epoch {epoch}: {run.folder}/last.pt holds epoch {run.saved_epoch}, the last completed "
            f"one. Resume with: cifarlab train --resume {run.folder}",
            exit_code(exc),
        ) from None


def train_one_epoch(run: Run, epoch: int) -> list[float]:
    """One pass over the training split: the summed loss, correct count and images, over all processes.

    A timed run sums on the device and checks the loss once, at the epoch's end: reading a number back from a GPU
    each step would make the CPU wait for it instead of queueing the next step."""
    model, length, config = run.model, run.length, run.config
    model.train()
    loss_sum: Any = torch.zeros((), device=run.device) if config.timed else 0.0
    correct: Any = torch.zeros((), dtype=torch.long, device=run.device) if config.timed else 0
    seen = 0
    taken = (epoch - 1) * length.steps_per_epoch  # optimiser steps before this epoch
    for p in run.body:  # fine-tuning: only the head trains in the first freeze_epochs epochs
        p.requires_grad_(epoch > config.freeze_epochs)
    batches = progress(
        run.train_batches, length.steps_per_epoch, f"epoch {epoch}/{length.epochs}", enabled=run.dist.is_main
    )
    for i, (x, y) in enumerate(batches):
        if i == length.steps_per_epoch or taken + i >= length.total_steps:
            break  # a lone last image (see optim.steps_per_epoch), or a run's end part-way into an epoch
        try:
            loss, logits = train_step(
                model,
                run.optimizer,
                x,
                y,
                config.label_smoothing,
                config.bf16,
                check_finite=not config.timed,
                jsd=config.augmix_jsd,
            )
        except NonFiniteLoss as exc:
            raise stopped(run, f"{exc} at epoch {epoch}, batch {i + 1}") from None
        if per_batch_schedule(config):
            run.scheduler.step()
        if run.averager is not None:
            run.averager.step(unwrap(model))
        if run.pacer is not None:
            run.pacer.step()
        if config.timed:
            loss_sum += loss.float() * len(y)
            correct += (logits.argmax(1) == y).sum()
        else:
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    if not per_batch_schedule(config):
        run.scheduler.step()
    if config.timed:
        loss_sum, correct = loss_sum.item(), int(correct)
        if not math.isfinite(loss_sum):
            raise stopped(run, f"the loss became {loss_sum} in epoch {epoch}")
    return distributed.all_reduce_sum([loss_sum, correct, seen], run.device, run.dist)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    label_smoothing: float = 0.0,
    bf16: bool = False,
    check_finite: bool = True,
    jsd: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on a batch: forward pass, loss, backward pass, update. Returns the loss and the logits.

    With ``jsd`` > 0 (AugMix's consistency loss), ``x`` holds the clean images, then two AugMix views of them
    (3 x len(y) rows, one forward pass): the loss is the clean images' cross-entropy plus ``jsd`` times the
    Jensen-Shannon divergence of each image's three predictions, and the logits returned are the clean ones.
    A NaN or infinite loss raises :class:`NonFiniteLoss` before the weights are touched (unless ``check_finite``
    is off: a timed run checks once per epoch)."""
    with autocast(bf16, x.device):  # bf16 when asked for, on CUDA and bf16-capable CPUs; else fp32
        logits = model(x)  # the forward pass
    clean = logits[: len(y)]
    loss = F.cross_entropy(clean.float(), y, label_smoothing=label_smoothing)  # the loss
    if jsd > 0:  # the clean image and its two AugMix views should be predicted alike
        loss = loss + jsd * jensen_shannon(*logits.float().split(len(y)))
    if check_finite and not torch.isfinite(loss):
        raise NonFiniteLoss(f"the loss became {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # the backward pass: the loss's gradient for every weight
    optimizer.step()  # the optimiser step: move the weights against their gradients
    return loss.detach(), clean.detach()


def jensen_shannon(*logits: torch.Tensor) -> torch.Tensor:
    """The Jensen-Shannon divergence of the predictions that ``logits`` give each image (AugMix's consistency
    loss): the mean KL divergence of each prediction from their average, averaged over the batch. 0 when they
    agree."""
    logp = torch.stack([F.log_softmax(z, dim=1) for z in logits])  # (K, N, classes)
    log_mean = torch.logsumexp(logp, 0) - math.log(len(logits))  # log of the averaged prediction
    return torch.stack([F.kl_div(log_mean, lp, reduction="batchmean", log_target=True) for lp in logp]).mean()


def stopped(run: Run, what: str) -> NonFiniteLoss:
    """The error that ends a run whose loss stopped being a number; last.pt still holds the last good epoch."""
    return NonFiniteLoss(
        f"training stopped: {what}. The last good checkpoint, last.pt (epoch {run.saved_epoch}), "
        "is intact; try a lower --lr."
    )


def record_epoch(
    run: Run,
    epoch: int,
    train_sums: list[float],
    val: dict[str, float],
    lr: float,
    epoch_seconds: float,
    train_seconds: float,
) -> bool:
    """Add the epoch's row to the history; True when its validation top-1 is the best so far."""
    loss_sum, correct, seen = train_sums
    run.train_seconds += epoch_seconds
    run.history.append(
        {
            "epoch": epoch,
            "train_loss": loss_sum / seen,
            "train_top1": correct / seen,
            "val_loss": val["loss"],
            "val_top1": val["top1"],
            "val_top3": val["top3"],
            "lr": lr,
            "epoch_seconds": epoch_seconds,
            "images_per_second": seen / train_seconds,
        }
    )
    improved = val["top1"] > run.best_top1
    run.best_top1 = max(run.best_top1, val["top1"])
    return improved


def log_epoch(run: Run, improved: bool) -> None:
    row = run.history[-1]
    log(
        f"epoch {row['epoch']:3d}/{run.length.epochs}  train loss {row['train_loss']:.4f} top-1 "
        f"{100 * row['train_top1']:5.2f}%  |  val loss {row['val_loss']:.4f} top-1 {100 * row['val_top1']:5.2f}% "
        f"top-3 {100 * row['val_top3']:5.2f}%  |  lr {row['lr']:.2e}  {row['epoch_seconds']:6.1f}s  "
        f"{row['images_per_second']:7.0f} img/s" + ("  *best" if improved else ""),
        run.dist.is_main,
    )


# --- the checkpoint ---------------------------------------------------------------------------------------------


def save_epoch(run: Run, epoch: int, improved: bool) -> None:
    """best.pt (if improved), last.pt and metrics.csv, written by the main process. Each write is atomic, so on a
    write error (full disk, read-only folder) every earlier file is still whole and last.pt can be resumed."""
    if run.dist.is_main:
        state = checkpoint_state(run, epoch)
        try:
            if improved:
                save_checkpoint(state, run.folder / "best.pt")
            save_checkpoint(state, run.folder / "last.pt")
            write_metrics_csv(run.folder / "metrics.csv", run.history)
        except CifarlabError as exc:
            raise CifarlabError(
                f"{exc}. Training stopped in epoch {epoch}; every file written before is intact. "
                "Free some space or make the folder writable, then resume with: "
                f"cifarlab train --resume {run.folder}"
            ) from None
    run.saved_epoch = epoch


# --- setup -------------------------------------------------------------------------------------------------------


# --- the test ----------------------------------------------------------------------------------------------------


def finish(run: Run) -> None:
    """Score best.pt (or last.pt, per ``test_checkpoint``) on the test set, once, and write run.json.

    The budget clock stops at the end of the test: run.json records the time used since the data was in memory,
    with the planner's accounting when the run had a time budget."""
    if run.dist.is_main:
        tested = f"{run.config.test_checkpoint}.pt"
        with off_the_clock(run):
            state = load_checkpoint(run.folder, tested)
        # a timed run tests the model in memory, which last.pt holds: rebuilding it would be on the clock
        model = run.scored() if run.config.timed and tested == "last.pt" else None
        t0 = time.perf_counter()
        probs, y, index = evaluate_checkpoint(
            state, run.data, "test", run.device, run.config.eval_batch_size, model=model
        )
        test_seconds = time.perf_counter() - t0
        seconds_used = run.clock() - run.budget_start
        metrics = write_test_results(
            run.folder,
            "test",
            probs,
            y,
            index,
            list(run.data.classes),
            {"checkpoint": tested, "epoch": state["epoch"], "tta": run.config.tta},
        )
        write_json(run.folder / RUN_JSON, run_summary(run, metrics, tested, test_seconds, seconds_used))
        run.tracker.finish(run.folder, run.data)
        log(
            f"test ({tested}, epoch {state['epoch']}): top-1 {100 * metrics['top1']:.2f}%  "
            f"top-3 {100 * metrics['top3']:.2f}%  loss {metrics['loss']:.4f}  ->  {run.folder}/test_metrics.json"
        )
    distributed.barrier(run.dist)
    distributed.teardown(run.dist)


def run_summary(
    run: Run, metrics: dict[str, Any], tested: str, test_seconds: float, seconds_used: float
) -> dict[str, Any]:
    """run.json: what was trained, how long it took, how it scored, on what machine."""
    config, history = config_as_run(run), run.history
    best = max(history, key=lambda r: r["val_top1"])
    return {
        "format_version": FORMAT_VERSION,
        "name": run.folder.name,
        "model": config.model,
        "recipe": config.recipe,
        "dataset": run_record(run.data),
        "seed": config.seed,
        "params": run.params,
        "macs": run.macs,
        "epochs": config.epochs,
        "train_images": len(run.prep.train_idx),
        "train_seconds": run.train_seconds,
        "test_seconds": test_seconds,
        "data_load_seconds": run.load_seconds,
        "images_per_second": float(np.median([r["images_per_second"] for r in history])),
        "best_epoch": best["epoch"],
        "best_val_top1": best["val_top1"],
        "train_top1_at_best": best["train_top1"],
        "train_val_gap": best["train_top1"] - best["val_top1"],
        "test_top1": metrics["top1"],
        "test_top3": metrics["top3"],
        "test_loss": metrics["loss"],
        "device": str(run.device),
        "precision": "bf16" if uses_bf16(config.bf16, run.device) else "fp32",  # training and scoring
        **hardware_record(),
        "test_checkpoint": tested,
        "tta": config.tta,
        "train_steps": config.train_steps,
        "time_budget": config.time_budget,
        "seconds_used": seconds_used,
        **({"timed": True, "untimed_seconds": run.clock.paused} if isinstance(run.clock, Stopwatch) else {}),
        "budget_plan": None if run.plan is None else run.plan.record(run.length),
        "scaling": run.scaling,
        "init": run.init,
    }


def hardware_record() -> dict[str, Any]:
    """Hardware and versions, for the record (reports show it in their setup section)."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
