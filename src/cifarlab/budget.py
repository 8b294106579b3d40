"""Training to a time budget: time a few steps, then plan the steps (and width) so the whole schedule fits.

A run cut off when time runs out ends at a high learning rate and scores badly. Instead the planner measures,
before training, what one step costs on this machine, and shortens (or lengthens) the schedule so that it ends
on time: the LR still warms up and decays to its final value. What is planned and what is reserved:

* training steps, at the measured seconds per step (data pipeline included);
* per epoch: the validation pass and the checkpoint writes;
* the final test: forward passes of every test image for each TTA view, plus a fixed allowance (when that would
  take more than a tenth of the budget, a lower TTA level is used: the time buys more training instead);
* a safety margin (a share of the budget) for timing noise on a shared machine.

The budget clock starts once the data is in memory (reading it from disk is reported, not counted); the probes
count against it. For models with a width (fastcnn) and no width fixed in the config, the planner also picks the
widest width that still fits ``budget_epochs`` epochs: at short budgets a narrower net trained for more epochs
beats a wide one that sees each image once. While training, the :class:`Pacer` re-fits the remaining steps to
the time left whenever the machine turns out slower or faster than the probes said.
"""

from __future__ import annotations

import io
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.data import Batches
from cifarlab.errors import UsageError
from cifarlab.fast import WIDTH_MODELS, autocast, tta_views
from cifarlab.models import build_model, count_macs

WIDTHS = (16, 24, 32, 48, 64, 96, 128)  # fastcnn widths the planner chooses from (12 costs nearly as much as 16)
PROBE_WIDTH = 16  # cheap width timed first to gauge the machine when the planner chooses the width
PROBE_STEPS = 3  # timed steps per probe (their median), after one untimed warm-up step
MARGIN = 0.05  # share of the budget kept free for timing noise
TTA_SHARE = 0.1  # the most of the budget the final test may take; a lower TTA level is used beyond it
TEST_FIXED_SECONDS = 1.0  # loading the checkpoint, writing predictions and metrics after the test pass
SETUP_SECONDS = 1.0  # building the real model and its whitening after planning


@dataclass
class Probe:
    """What one width costs, measured: one training step, one forward image, one checkpoint write."""

    width: int | None
    step_seconds: float
    eval_image_seconds: float
    save_seconds: float
    probe_seconds: float


@dataclass
class BudgetPlan:
    """The plan and its accounting; stored in run.json so a run can be checked against its budget."""

    budget_seconds: float
    width: int | None
    train_steps: int
    epochs: int
    steps_per_epoch: int
    warmup_epochs: float
    tta: int  # the configured level, or a lower one whose test fits TTA_SHARE of the budget
    epoch_overhead_seconds: float  # validation and checkpoint writes at the end of each epoch
    step_seconds: float
    predicted_seconds: float  # planned total: elapsed before training + training + validation + test + setup
    reserved_seconds: dict[str, float] = field(default_factory=dict)
    probes: list[dict[str, Any]] = field(default_factory=list)
    replans: list[dict[str, Any]] = field(default_factory=list)  # changes made while training (see ``Pacer``)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def epoch_overhead(probe: Probe, n_val: int) -> float:
    """Seconds added by each epoch besides its steps: the validation pass and writing best.pt and last.pt."""
    return n_val * probe.eval_image_seconds + 2 * probe.save_seconds


def final_test_seconds(probe: Probe, n_test: int, tta: int) -> float:
    return n_test * tta_views(tta) * probe.eval_image_seconds + TEST_FIXED_SECONDS


def choose_tta(probe: Probe, n_test: int, level: int, budget: float) -> int:
    """The TTA level ``level``, lowered until the final test takes at most TTA_SHARE of the budget."""
    while level > 0 and final_test_seconds(probe, n_test, level) > TTA_SHARE * budget:
        level -= 1
    return level


def fit_steps(available: float, step_seconds: float, overhead_per_epoch: float, steps_per_epoch: int) -> int:
    """The most steps whose cost (the steps, plus the overhead of every epoch they start) fits ``available``."""
    steps = max(0, int(available / (step_seconds + overhead_per_epoch / steps_per_epoch)))
    while steps > 0 and steps * step_seconds + math.ceil(steps / steps_per_epoch) * overhead_per_epoch > available:
        steps -= 1
    return steps


def time_probe(config: Any, width: int | None, batches: Batches, num_classes: int,
               make_optimizer: Callable[[nn.Module], torch.optim.Optimizer], device: torch.device,
               steps: int = PROBE_STEPS) -> Probe:
    """Train a scratch copy of the model for a few steps on real batches and time it (the copy is discarded)."""
    from cifarlab.fast import model_kwargs

    t_start = time.perf_counter()
    model = build_model(config.model, num_classes=num_classes, **model_kwargs(config, width)).to(device)
    if device.type == "cpu" or config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model)
    model.train()
    stream = iter(batches)

    def step() -> None:
        x, y = next(stream)
        with autocast(config, device):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up: memory allocation and kernel selection make the first step slow
    synchronize(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    step_seconds = statistics.median(times)  # the median shrugs off one step slowed by another process

    model.eval()
    x = next(stream)[0][:config.eval_batch_size]  # the batch size validation and the test will use
    with torch.no_grad():
        model(x)
        synchronize(device)
        t0 = time.perf_counter()
        model(x)
        synchronize(device)
    eval_image_seconds = (time.perf_counter() - t0) / len(x)

    t0 = time.perf_counter()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, io.BytesIO())
    save_seconds = 2 * (time.perf_counter() - t0) + 0.02  # in memory; doubled for the file write and fsync
    return Probe(width, step_seconds, eval_image_seconds, save_seconds, time.perf_counter() - t_start)


def scaled(probe: Probe, macs_from: int, macs_to: int) -> Probe:
    """A probe's costs carried to another width in proportion to its multiply-accumulates (an estimate)."""
    ratio = macs_to / macs_from
    return Probe(None, probe.step_seconds * ratio, probe.eval_image_seconds * ratio, probe.save_seconds, 0.0)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plan_budget(config: Any, batches: Batches, n_val: int, n_test: int, num_classes: int,
                make_optimizer: Callable[[nn.Module], torch.optim.Optimizer], device: torch.device,
                started: float) -> BudgetPlan:
    """Measure, choose a width if the config leaves it open, and fit the number of steps into the budget.

    ``batches`` is a training stream reserved for probing (its own seed), ``started`` the perf_counter() value at
    which the budget clock started. Raises UsageError when not even one step fits.
    """
    budget = float(config.time_budget)
    steps_per_epoch = len(batches)
    margin = MARGIN * budget
    probes: list[Probe] = []

    def tta_for(probe: Probe) -> int:
        return choose_tta(probe, n_test, config.tta, budget)

    def available(probe: Probe) -> float:
        """Seconds left for the steps and epoch overheads, once everything else is set aside."""
        elapsed = time.perf_counter() - started
        return budget - elapsed - margin - SETUP_SECONDS - final_test_seconds(probe, n_test, tta_for(probe))

    width = config.model_width
    if config.model in WIDTH_MODELS and width is None:
        base = time_probe(config, PROBE_WIDTH, batches, num_classes, make_optimizer, device)
        probes.append(base)
        base_macs = count_macs(build_model(config.model, num_classes, width=PROBE_WIDTH))
        width = WIDTHS[0]
        for candidate in WIDTHS:
            estimate = scaled(base, base_macs, count_macs(build_model(config.model, num_classes, width=candidate)))
            epochs = fit_steps(available(estimate), estimate.step_seconds, epoch_overhead(estimate, n_val),
                               steps_per_epoch) / steps_per_epoch
            if epochs >= config.budget_epochs or candidate == WIDTHS[0]:
                width = candidate
        if width != PROBE_WIDTH:
            probes.append(time_probe(config, width, batches, num_classes, make_optimizer, device))
    else:
        probes.append(time_probe(config, width, batches, num_classes, make_optimizer, device))
    probe = probes[-1]

    left = available(probe)
    steps = fit_steps(left, probe.step_seconds, epoch_overhead(probe, n_val), steps_per_epoch)
    if steps < 1:
        needed = budget - left + probe.step_seconds + epoch_overhead(probe, n_val)
        raise UsageError(f"--time-budget {budget:g}s is too short for {config.model}: one step, validation and the "
                         f"test need about {needed:.0f}s on this machine")
    epochs = math.ceil(steps / steps_per_epoch)
    elapsed = time.perf_counter() - started
    train_cost = steps * probe.step_seconds + epochs * epoch_overhead(probe, n_val)
    reserved = {"elapsed_before_training": elapsed, "setup": SETUP_SECONDS,
                "validation_and_checkpoints": epochs * epoch_overhead(probe, n_val),
                "test": final_test_seconds(probe, n_test, tta_for(probe)), "margin": margin}
    return BudgetPlan(
        budget_seconds=budget, width=width if config.model in WIDTH_MODELS else None, train_steps=steps,
        epochs=epochs, steps_per_epoch=steps_per_epoch,
        warmup_epochs=config.warmup_epochs * (steps / steps_per_epoch) / config.epochs, tta=tta_for(probe),
        epoch_overhead_seconds=epoch_overhead(probe, n_val),
        step_seconds=probe.step_seconds,
        predicted_seconds=elapsed + SETUP_SECONDS + train_cost + reserved["test"],
        reserved_seconds=reserved, probes=[asdict(p) for p in probes],
    )


def apply_plan(config: Any, plan: BudgetPlan) -> None:
    """Write the plan into the config (saved as config.json): the loop then simply runs ``train_steps`` steps."""
    config.train_steps = plan.train_steps
    config.epochs = plan.epochs
    config.warmup_epochs = plan.warmup_epochs
    config.tta = plan.tta
    if plan.width is not None:
        config.model_width = plan.width


class Pacer:
    """Keeps a time-budget run on time: every few steps, re-fits the remaining steps to the time actually left.

    A shared machine can slow down (or speed up) after the probes. The pacer times the steps as they run (leaving
    out the pause for validation at each epoch's end) and re-fits ``train_steps`` at the speed just measured. Only
    future steps change; the LR schedule and the weight averaging read ``train_steps`` afresh, so the learning
    rate still reaches its final value exactly at the last step.
    """

    def __init__(self, config: Any, plan: BudgetPlan, started: float, averager: Any = None) -> None:
        self.config, self.plan, self.started, self.averager = config, plan, started, averager
        self.every = max(5, plan.train_steps // 25)  # about 25 re-fits per run
        self.done = 0  # steps taken
        self.mark: tuple[int, float] | None = None  # (steps, time) where the stopwatch was last read

    def step(self, model: Any = None) -> None:
        """Call after each optimiser step."""
        now = time.perf_counter()
        self.done += 1
        if self.mark is None or (self.done - 1) % self.plan.steps_per_epoch == 0:
            self.mark = (self.done, now)  # first step of the run or of an epoch: the gap before it held validation
            return
        if self.done - self.mark[0] >= self.every:
            step_seconds = (now - self.mark[1]) / (self.done - self.mark[0])
            self.mark = (self.done, now)
            self.refit(step_seconds, now)

    def refit(self, step_seconds: float, now: float) -> None:
        """Set ``train_steps`` to the most steps that still fit, at ``step_seconds`` per step from now on."""
        plan, spe, done = self.plan, self.plan.steps_per_epoch, self.done
        overhead = plan.epoch_overhead_seconds * step_seconds / plan.step_seconds  # slows down with the steps
        left = (plan.budget_seconds - (now - self.started) - plan.reserved_seconds["margin"]
                - plan.reserved_seconds["test"])

        def cost(more: int) -> float:  # the steps, and the validation of every epoch not yet validated
            return more * step_seconds + (math.ceil((done + more) / spe) - (done - 1) // spe) * overhead

        more = max(0, int(left / step_seconds))
        while more > 1 and cost(more) > left:
            more -= 1
        total = done + max(1, more)  # at least one more step, so the schedule ends at its final value
        if total != plan.train_steps:
            plan.replans.append({"after_step": done, "elapsed": round(now - self.started, 3),
                                 "step_seconds": round(step_seconds, 5), "train_steps": total})
        plan.train_steps = self.config.train_steps = total
        plan.epochs = self.config.epochs = math.ceil(total / spe)
        if self.averager is not None:
            self.averager.total_steps = total
