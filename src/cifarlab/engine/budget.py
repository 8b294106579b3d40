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
widest width that still fits ``budget_epochs`` epochs (checked by that width's own probe): at short budgets a
narrower net trained for more epochs beats a wide one that sees each image once. While training, the :class:`Pacer`
re-fits the remaining steps to the time left whenever the machine turns out slower or faster than the probes said.
Every function that reads the budget clock takes it as ``clock`` (``time.perf_counter`` by default), so tests can
run it on a fake one.
"""

from __future__ import annotations

import io
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from cifarlab.base.errors import UsageError
from cifarlab.config.fast import WIDTH_MODELS, model_kwargs
from cifarlab.config.train_config import TrainConfig
from cifarlab.data.batches import Batches
from cifarlab.engine.device import autocast, place_model, synchronize
from cifarlab.engine.infer import tta_views
from cifarlab.engine.optim import RunLength, make_optimizer, steps_per_epoch
from cifarlab.models.registry import build_model, count_macs

WIDTHS = (16, 24, 32, 48, 64, 96, 128)  # fastcnn widths the planner chooses from (why from 16: docs/benchmarks.md)
PROBE_WIDTH = 16  # cheap width timed first to gauge the machine when the planner chooses the width
PROBE_STEPS = 3  # timed steps per probe (their median), after one untimed warm-up step
PROBE_SPREAD = 1.5  # slowest/fastest timed step above which the probe looks off and times more steps
PROBE_MAX_STEPS = 9  # the most timed steps a probe takes when its steps disagree
WIDTH_TOLERANCE = 0.15  # how far the chosen width's own probe must disagree with the first before the width moves
MARGIN = 0.03  # share of the budget kept free for timing noise (why 3%: docs/fast.md, "Steps")
TTA_SHARE = 0.1  # the most of the budget the final test may take; a lower TTA level is used beyond it
TEST_FIXED_SECONDS = 1.0  # loading the checkpoint, writing predictions and metrics after the test pass
SETUP_SECONDS = 1.0  # building the real model and its whitening after planning

Clock = Callable[[], float]
StepFunction = Callable[..., Any]  # train.train_step(model, optimizer, x, y, label_smoothing, bf16, check, jsd)


@dataclass
class Probe:
    """What one width costs, measured: one training step, one forward image, one checkpoint write."""

    width: int | None
    step_seconds: float  # data and model together
    eval_image_seconds: float
    save_seconds: float
    probe_seconds: float
    timed_steps: int = PROBE_STEPS  # more than PROBE_STEPS when the first steps disagreed
    threads: int = 1  # torch's CPU compute threads while it was timed
    data_seconds: float = 0.0  # of step_seconds, making the batch (crops, flips, AugMix): the same at any width


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
    threads: int = 1  # CPU compute threads the run uses (one when other processes made more threads slower)
    replans: list[dict[str, Any]] = field(default_factory=list)  # changes made while training (see ``Pacer``)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def record(self, length: RunLength) -> dict[str, Any]:
        """The plan as the run ended it (for run.json): the steps and epochs its pacer last set."""
        return {**self.to_dict(), "train_steps": length.total_steps, "epochs": length.epochs}


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


def training_stream(batches: Batches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of ``batches``, pass after pass without end, as training takes them (see ``steps_per_epoch``)."""
    while True:
        for _, batch in zip(range(steps_per_epoch(batches)), batches, strict=False):
            yield batch


def time_probe(
    config: TrainConfig,
    width: int | None,
    batches: Batches,
    num_classes: int,
    device: torch.device,
    train_step: StepFunction,
    steps: int = PROBE_STEPS,
    clock: Clock = time.perf_counter,
) -> Probe:
    """Train a scratch copy of the model for a few steps on real batches and time it (the copy is discarded).

    When the timed steps disagree (the slowest over PROBE_SPREAD times the fastest: another process took the
    cores for a moment), it times ``steps`` more, up to PROBE_MAX_STEPS, and keeps the median of them all."""
    t_start = clock()
    model = place_model(
        build_model(config.model, num_classes=num_classes, **model_kwargs(config, width)), device, config.channels_last
    )
    optimizer = make_optimizer(model, config)
    model.train()
    stream = training_stream(batches)

    def step() -> float:
        """One step; returns the seconds its batch took to make."""
        t0 = clock()
        x, y = next(stream)
        made = clock() - t0
        # check_finite, then AugMix's consistency weight: a JSD step runs the model on 3x the images
        train_step(model, optimizer, x, y, config.label_smoothing, config.bf16, True, config.augmix_jsd)
        return made

    times, data = timed_steps(step, steps, device, clock)
    step_seconds = statistics.median(times)  # the median shrugs off steps slowed by another process
    data_seconds = min(statistics.median(data), step_seconds)

    model.eval()
    x = next(stream)[0][: config.eval_batch_size]  # the batch size and precision validation and the test will use
    with torch.no_grad(), autocast(config.bf16, device):
        model(x)
        synchronize(device)
        t0 = clock()
        model(x)
        synchronize(device)
    eval_image_seconds = (clock() - t0) / len(x)

    t0 = clock()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, io.BytesIO())
    save_seconds = 2 * (clock() - t0) + 0.02  # in memory; doubled for the file write and fsync
    threads = torch.get_num_threads()
    return Probe(
        width, step_seconds, eval_image_seconds, save_seconds, clock() - t_start, len(times), threads, data_seconds
    )


def timed_steps(
    step: Callable[[], float], steps: int, device: torch.device, clock: Clock
) -> tuple[list[float], list[float]]:
    """Each timed step's seconds, and of them the seconds ``step()`` says its batch took, after one warm-up step:
    ``steps`` of them, and ``steps`` more (up to PROBE_MAX_STEPS) while the slowest is over PROBE_SPREAD times the
    fastest."""
    step()  # warm-up: memory allocation and kernel selection make the first step slow
    synchronize(device)
    times: list[float] = []
    data: list[float] = []
    while not times or (len(times) < max(steps, PROBE_MAX_STEPS) and max(times) > PROBE_SPREAD * min(times)):
        for _ in range(steps):
            t0 = clock()
            data.append(step())
            synchronize(device)
            times.append(clock() - t0)
    return times, data


def scaled(probe: Probe, macs_from: int, macs_to: int) -> Probe:
    """A probe's costs carried to another width: the model's part in proportion to its multiply-accumulates (an
    estimate), the batch's making as it was (AugMix's chains cost the same at every width)."""
    ratio = macs_to / macs_from
    model_seconds = (probe.step_seconds - probe.data_seconds) * ratio
    return Probe(
        None,
        probe.data_seconds + model_seconds,
        probe.eval_image_seconds * ratio,
        probe.save_seconds,
        0.0,
        threads=probe.threads,
        data_seconds=probe.data_seconds,
    )


def budget_seconds(config: TrainConfig) -> float:
    """The config's time budget in seconds (a plan is only made for a config that has one)."""
    if config.time_budget is None:
        raise ValueError("a time-budget plan needs a config with a time_budget")
    return float(config.time_budget)


def plan_budget(
    config: TrainConfig,
    batches: Batches,
    n_val: int,
    n_test: int,
    num_classes: int,
    device: torch.device,
    started: float,
    train_step: StepFunction,
    clock: Clock = time.perf_counter,
) -> BudgetPlan:
    """Measure, choose a width if the config leaves it open, and fit the number of steps into the budget.

    ``batches`` is a training stream reserved for probing (its own seed), ``started`` the ``clock()`` reading at
    which the budget clock started, ``train_step`` the training loop's own step. Raises UsageError when not even
    one step fits.
    """
    budget, spe = budget_seconds(config), steps_per_epoch(batches)

    def probe(width: int | None) -> Probe:
        return time_probe(config, width, batches, num_classes, device, train_step, clock=clock)

    def available(probe: Probe) -> float:
        """Seconds left for the steps and epoch overheads, once everything else is set aside."""
        test = final_test_seconds(probe, n_test, choose_tta(probe, n_test, config.tta, budget))
        return budget - (clock() - started) - MARGIN * budget - SETUP_SECONDS - test

    choosing = config.model in WIDTH_MODELS and config.model_width is None
    first = choose_threads(probe, PROBE_WIDTH if choosing else config.model_width, device)
    if choosing:
        probes = choose_width(
            config, probe, available, n_val, spe, num_classes, int(batches.images.shape[-1]), first[-1]
        )
        probes = first[:-1] + probes
    else:
        probes = first
    last = probes[-1]
    left = available(last)
    steps = fit_steps(left, last.step_seconds, epoch_overhead(last, n_val), spe)
    if steps < 1:
        needed = budget - left + last.step_seconds + epoch_overhead(last, n_val)
        raise UsageError(
            f"--time-budget {budget:g}s is too short for {config.model}: one step, validation and the "
            f"test need about {needed:.0f}s on this machine"
        )
    return make_plan(config, probes, steps, spe, n_val, n_test, clock() - started)


def choose_threads(probe: Callable[[int | None], Probe], width: int | None, device: torch.device) -> list[Probe]:
    """Probe ``width`` with every compute thread, then (on a CPU with several) with one, and keep the faster.

    On an idle machine two threads step about 1.8x faster than one; beside another busy process they step slower
    than one (each parallel region waits for the thread the OS has paused: docs/benchmarks.md, "A loaded CPU"),
    and a slow probe would also make the planner choose too narrow a width. Leaves torch at the chosen thread
    count; returns the probes, the chosen one last."""
    threads = torch.get_num_threads()
    every = probe(width)
    if device.type != "cpu" or threads < 2:
        return [every]
    torch.set_num_threads(1)
    single = probe(width)
    if single.step_seconds < every.step_seconds:
        return [every, single]
    torch.set_num_threads(threads)
    return [single, every]


def choose_width(
    config: TrainConfig,
    probe: Callable[[int | None], Probe],
    available: Callable[[Probe], float],
    n_val: int,
    spe: int,
    num_classes: int,
    image_size: int = 32,
    first: Probe | None = None,
) -> list[Probe]:
    """Probe the cheap width, price every width from it by multiply-accumulates (on images of ``image_size``
    pixels, as trained), take the widest that fits ``budget_epochs`` epochs, and probe that one for real.

    One probe decides only roughly: its reading drifts by about 20% from one few-second window to the next. So
    the chosen width's own probe (a second reading when it is the cheap width) checks the choice: the width moves
    one step when that reading disagrees by more than WIDTH_TOLERANCE (narrower when the width falls short of the
    epochs, wider when the next width fits them with room to spare), and the new width is probed; within that band
    the first choice stands. ``first``: the cheap width's probe when already taken. Returns the probes in the
    order taken, the chosen width's last."""

    def macs(width: int) -> int:
        return count_macs(build_model(config.model, num_classes, width=width), image_size)

    def epochs_at(width: int, base: Probe) -> float:
        """Epochs that fit at ``width``, its costs carried from the probe ``base`` by multiply-accumulates."""
        estimate = scaled(base, macs(base.width or PROBE_WIDTH), macs(width))
        return fit_steps(available(estimate), estimate.step_seconds, epoch_overhead(estimate, n_val), spe) / spe

    probes = [first or probe(PROBE_WIDTH)]
    fitting = [w for w in WIDTHS if epochs_at(w, probes[0]) >= config.budget_epochs]
    width = fitting[-1] if fitting else WIDTHS[0]
    probes.append(probe(width))
    index, target = WIDTHS.index(width), config.budget_epochs
    if index > 0 and epochs_at(width, probes[-1]) < target / (1 + WIDTH_TOLERANCE):
        probes.append(probe(WIDTHS[index - 1]))  # the first reading was fast: this width falls short
    elif index + 1 < len(WIDTHS) and epochs_at(WIDTHS[index + 1], probes[-1]) >= target * (1 + WIDTH_TOLERANCE):
        probes.append(probe(WIDTHS[index + 1]))  # the first reading was slow: the next width fits with room
    return probes


def make_plan(
    config: TrainConfig, probes: list[Probe], steps: int, spe: int, n_val: int, n_test: int, elapsed: float
) -> BudgetPlan:
    """The plan for ``steps`` steps at the last probe's costs, with the seconds it reserves for everything else."""
    budget, probe = budget_seconds(config), probes[-1]
    epochs = math.ceil(steps / spe)
    tta = choose_tta(probe, n_test, config.tta, budget)
    overhead = epoch_overhead(probe, n_val)
    reserved = {
        "elapsed_before_training": elapsed,
        "setup": SETUP_SECONDS,
        "validation_and_checkpoints": epochs * overhead,
        "test": final_test_seconds(probe, n_test, tta),
        "margin": MARGIN * budget,
    }
    return BudgetPlan(
        budget_seconds=budget,
        width=probe.width if config.model in WIDTH_MODELS else None,
        train_steps=steps,
        epochs=epochs,
        steps_per_epoch=spe,
        warmup_epochs=config.warmup_epochs * (steps / spe) / config.epochs,
        tta=tta,
        epoch_overhead_seconds=overhead,
        step_seconds=probe.step_seconds,
        predicted_seconds=elapsed + SETUP_SECONDS + steps * probe.step_seconds + epochs * overhead + reserved["test"],
        reserved_seconds=reserved,
        probes=[asdict(p) for p in probes],
        threads=probe.threads,
    )


def apply_plan(config: TrainConfig, plan: BudgetPlan) -> TrainConfig:
    """The config of the planned run (saved as config.json): it runs ``train_steps`` steps, scaled warm-up."""
    return replace(
        config,
        train_steps=plan.train_steps,
        epochs=plan.epochs,
        warmup_epochs=plan.warmup_epochs,
        tta=plan.tta,
        model_width=plan.width if plan.width is not None else config.model_width,
    )


class Pacer:
    """Keeps a time-budget run on time: every few steps, re-fits the remaining steps to the time actually left.

    A shared machine can slow down (or speed up) after the probes. The pacer times the steps as they run (leaving
    out the pause for validation at each epoch's end) and re-fits the run's ``length.total_steps`` at the speed
    just measured. Only future steps change; the LR schedule and the weight averaging read the length afresh, so
    the learning rate still reaches its final value exactly at the last step.
    """

    def __init__(self, plan: BudgetPlan, length: RunLength, started: float, clock: Clock = time.perf_counter) -> None:
        self.plan, self.length, self.started, self.clock = plan, length, started, clock
        self.every = max(5, plan.train_steps // 25)  # about 25 re-fits per run
        self.done = 0  # steps taken
        self.mark: tuple[int, float] | None = None  # (steps, time) where the stopwatch was last read

    def step(self) -> None:
        """Call after each optimiser step."""
        now = self.clock()
        self.done += 1
        if self.mark is None or (self.done - 1) % self.length.steps_per_epoch == 0:
            self.mark = (self.done, now)  # first step of the run or of an epoch: the gap before it held validation
            return
        if self.done - self.mark[0] >= self.every:
            step_seconds = (now - self.mark[1]) / (self.done - self.mark[0])
            self.mark = (self.done, now)
            self.refit(step_seconds, now)

    def refit(self, step_seconds: float, now: float) -> None:
        """Set the run's total steps to the most that still fit, at ``step_seconds`` per step from now on."""
        plan, spe, done = self.plan, self.length.steps_per_epoch, self.done
        overhead = plan.epoch_overhead_seconds * step_seconds / plan.step_seconds  # slows down with the steps
        left = (
            plan.budget_seconds - (now - self.started) - plan.reserved_seconds["margin"] - plan.reserved_seconds["test"]
        )

        def cost(more: int) -> float:  # the steps, and the validation of every epoch not yet validated
            return more * step_seconds + (math.ceil((done + more) / spe) - (done - 1) // spe) * overhead

        more = max(0, int(left / step_seconds))
        while more > 1 and cost(more) > left:
            more -= 1
        total = done + max(1, more)  # at least one more step, so the schedule ends at its final value
        if total != self.length.total_steps:
            plan.replans.append(
                {
                    "after_step": done,
                    "elapsed": round(now - self.started, 3),
                    "step_seconds": round(step_seconds, 5),
                    "train_steps": total,
                }
            )
        self.length.total_steps = total
