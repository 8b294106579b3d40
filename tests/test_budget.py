"""The time-budget planner and pacer, on a fake clock: their accounting, and a tiny run that completes its
schedule inside the budget."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import cifarlab.engine.budget as budget_module
from cifarlab.base.errors import UsageError
from cifarlab.config.train_config import make_config
from cifarlab.data.batches import Batches
from cifarlab.engine.budget import (
    MARGIN,
    PROBE_MAX_STEPS,
    PROBE_STEPS,
    WIDTH_TOLERANCE,
    WIDTHS,
    BudgetPlan,
    Pacer,
    Probe,
    apply_plan,
    choose_tta,
    epoch_overhead,
    final_test_seconds,
    fit_steps,
    plan_budget,
    scaled,
    time_probe,
)
from cifarlab.engine.optim import RunLength
from cifarlab.engine.train import train, train_step
from cifarlab.models.registry import build_model, count_macs
from cifarlab.runs.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures in conftest.py


PROBE = Probe(width=8, step_seconds=0.5, eval_image_seconds=0.001, save_seconds=0.1, probe_seconds=2.0)


def cost(steps: int, steps_per_epoch: int, n_val: int) -> float:
    epochs = -(-steps // steps_per_epoch)
    return steps * PROBE.step_seconds + epochs * epoch_overhead(PROBE, n_val)


@pytest.mark.parametrize("available", [0.4, 3.0, 10.0, 57.3, 600.0])
def test_fit_steps_takes_the_most_steps_that_fit(available):
    steps = fit_steps(available, PROBE.step_seconds, epoch_overhead(PROBE, 100), steps_per_epoch=10)
    assert cost(steps, 10, 100) <= available or steps == 0
    assert cost(steps + 1, 10, 100) > available


def test_overheads_are_priced_from_the_probe():
    assert epoch_overhead(PROBE, n_val=1000) == pytest.approx(1000 * 0.001 + 2 * 0.1)
    assert final_test_seconds(PROBE, n_test=10000, tta=2) == pytest.approx(6 * 10.0 + 1.0)  # 6 views per image
    assert final_test_seconds(PROBE, n_test=10000, tta=0) == pytest.approx(10.0 + 1.0)


def test_tta_is_lowered_when_the_test_would_eat_the_budget():
    # 10,000 test images at 1 ms per view: 61 s with TTA 2, 21 s with mirror only, 11 s without
    assert choose_tta(PROBE, 10000, level=2, budget=1000.0) == 2
    assert choose_tta(PROBE, 10000, level=2, budget=300.0) == 1
    assert choose_tta(PROBE, 10000, level=2, budget=150.0) == 0
    assert choose_tta(PROBE, 10000, level=0, budget=1000.0) == 0


def test_apply_plan_returns_the_planned_config_and_leaves_the_original_alone():
    config = make_config("fast")  # 10 epochs, 2 of warm-up
    plan = BudgetPlan(
        budget_seconds=60,
        width=24,
        train_steps=250,
        epochs=3,
        steps_per_epoch=100,
        warmup_epochs=2.0 * 2.5 / 10,
        tta=1,
        epoch_overhead_seconds=0.5,
        step_seconds=0.1,
        predicted_seconds=55,
    )
    planned = apply_plan(config, plan)
    assert (planned.train_steps, planned.epochs, planned.model_width) == (250, 3, 24)
    assert planned.warmup_epochs == pytest.approx(0.5)  # a fifth of the 2.5 planned epochs, as in the recipe
    assert planned.tta == 1
    assert (config.train_steps, config.epochs, config.model_width, config.tta) == (None, 10, None, 2)
    with pytest.raises(AttributeError):
        planned.epochs = 4  # frozen: only the run's RunLength changes while training


class FakeClock:
    """A stopwatch the test moves by hand."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class TickingClock:
    """A stopwatch that moves ``tick`` seconds each time it is read: a run's timing without the machine's noise."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


@pytest.mark.parametrize("slowdown", [0.5, 1.0, 2.0, 3.0])
def test_pacer_refits_the_steps_so_the_schedule_ends_on_time(slowdown):
    """Planned at 0.5 s/step; the machine then runs at slowdown x that. Training must end by budget - reserves."""
    clock = FakeClock(5.0)  # probes and setup took 5 s
    plan = BudgetPlan(
        budget_seconds=100.0,
        width=8,
        train_steps=150,
        epochs=3,
        steps_per_epoch=50,
        warmup_epochs=0.6,
        tta=0,
        epoch_overhead_seconds=1.0,
        step_seconds=0.5,
        predicted_seconds=95,
        reserved_seconds={"margin": 5.0, "test": 10.0},
    )
    length = RunLength(total_steps=150, steps_per_epoch=50)
    pacer = Pacer(plan, length, started=0.0, clock=clock)
    done = 0
    while done < length.total_steps:
        clock.now += 0.5 * slowdown
        done += 1
        pacer.step()
        if done % 50 == 0 and done < length.total_steps:
            clock.now += 1.0 * slowdown  # validation and checkpoints at each epoch's end
    clock.now += 1.0 * slowdown  # the last epoch's validation
    assert done == length.total_steps  # the schedule's end moved with the plan
    assert clock.now <= 100.0 - 5.0 - 10.0 + 0.5 * slowdown  # on time, within one step
    assert clock.now >= 0.8 * (100.0 - 5.0 - 10.0)  # and the time was used
    assert plan.record(length)["train_steps"] == done and plan.record(length)["epochs"] == -(-done // 50)
    assert plan.train_steps == 150  # the plan itself is kept as planned; its replans say what changed
    if slowdown != 1.0:
        assert plan.replans and (done < 150) == (slowdown > 1.0)
        assert plan.replans[-1]["train_steps"] == done


def budget_config(fake_cifar, tmp_path, name: str, **overrides):
    values = dict(
        batch_size=100, val_size=100, data_dir=str(fake_cifar), out=str(tmp_path), name=name, device="cpu", tta=1
    )
    values.update(overrides)
    return make_config("fast", **values)


def fixed_probe(config, width, *args, **kwargs) -> Probe:
    """The probe's measurement replaced by fixed costs, so the plan depends on the clock alone."""
    return Probe(width, step_seconds=0.5, eval_image_seconds=1e-4, save_seconds=0.01, probe_seconds=0.0)


def test_budget_run_completes_its_schedule_within_the_budget(fake_cifar, tmp_path, monkeypatch):
    """A whole run on a clock that moves 0.5 s per reading (the pacer reads it once per step, as fast as the
    probe said): the plan fits, the pacer keeps the run inside the budget, and every planned step runs."""
    monkeypatch.setattr(budget_module, "time_probe", fixed_probe)
    budget = 20.0
    run = train(
        budget_config(fake_cifar, tmp_path, "budget", time_budget=budget, model_width=8), clock=TickingClock(0.5)
    )
    summary = json.loads((run / "run.json").read_text())
    plan = summary["budget_plan"]
    assert summary["time_budget"] == budget
    assert plan["predicted_seconds"] <= budget  # the planner's own accounting fits
    assert 0.8 * budget <= summary["seconds_used"] <= budget  # on the fake clock: used, and not overrun
    assert summary["train_steps"] == plan["train_steps"] >= 1
    state = load_checkpoint(run, "last.pt")
    assert state["scheduler"]["last_epoch"] == plan["train_steps"]  # every planned step ran
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == plan["epochs"] == state["config"]["epochs"] == summary["epochs"]
    assert state["config"]["train_steps"] == plan["train_steps"]  # the checkpoint records the length as it ran
    assert state["optimizer"]["param_groups"][0]["lr"] == 0.0  # the one-cycle schedule reached its final value
    assert state["model_kwargs"]["width"] == 8
    planned = json.loads((run / "config.json").read_text())  # the config as first planned
    assert planned["time_budget"] == budget and planned["model_width"] == 8
    # validation takes no time on this clock, so the pacer lengthens the run: the LR schedule follows the new end
    assert plan["replans"] and planned["train_steps"] < plan["train_steps"] == plan["replans"][-1]["train_steps"]


def test_planner_takes_the_widest_width_that_fits_the_epochs(monkeypatch):
    """Probes are replaced by costs in proportion to each width's MACs: the choice is pure accounting."""
    macs = {w: count_macs(build_model("fastcnn", width=w)) for w in WIDTHS}
    probed = []

    def fake_probe(config, width, *args, **kwargs):
        probed.append(width)
        return Probe(
            width,
            step_seconds=0.01 * macs[width] / macs[16],
            eval_image_seconds=1e-5,
            save_seconds=0.01,
            probe_seconds=0.0,
        )

    monkeypatch.setattr(budget_module, "time_probe", fake_probe)
    images = torch.zeros(100, 3, 32, 32, dtype=torch.uint8)
    batches = Batches(images, torch.zeros(100, dtype=torch.long), 1, torch.zeros(3), torch.ones(3))  # 100 steps
    config = make_config("fast", time_budget=60.0, budget_epochs=4.0)
    plan = plan_budget(
        config,
        batches,
        n_val=1000,
        n_test=10000,
        num_classes=10,
        device=torch.device("cpu"),
        started=100.0,
        train_step=train_step,
        clock=FakeClock(102.0),
    )  # 2 s have passed

    def epochs_that_fit(width: int) -> float:
        left = 60.0 - 2.0 - MARGIN * 60.0 - 1.0 - (10000 * 6 * 1e-5 + 1.0)  # elapsed, margin, setup, test with TTA 2
        probe = fake_probe(config, width)
        return fit_steps(left, probe.step_seconds, epoch_overhead(probe, 1000), 100) / 100

    fitting = [w for w in WIDTHS if epochs_that_fit(w) >= 4.0]
    assert plan.width == max(fitting) and plan.width != WIDTHS[-1]
    assert probed[:2] == [16, plan.width]  # the cheap probe, then the chosen width
    assert plan.tta == 2 and plan.train_steps / 100 >= 4.0
    assert plan.train_steps == int(epochs_that_fit(plan.width) * 100)
    assert plan.reserved_seconds["elapsed_before_training"] == 2.0
    assert plan.predicted_seconds <= 60.0
    planned = apply_plan(config, plan)
    assert planned.model_width == plan.width and planned.epochs == plan.epochs


def scripted_step(clock: FakeClock, seconds: list[float]):
    """A training step that takes the next of ``seconds`` on ``clock`` (the warm-up step first)."""
    durations = iter(seconds)

    def step(*args) -> None:
        clock.now += next(durations)

    return step


def tiny_batches(size: int = 32, n: int = 100) -> Batches:
    images = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    return Batches(images, torch.zeros(n, dtype=torch.long), 1, torch.zeros(3), torch.ones(3))


def probe_with_steps(seconds: list[float]) -> Probe:
    clock = FakeClock()
    config = make_config("fast", time_budget=60.0)
    step = scripted_step(clock, seconds)
    return time_probe(config, 16, tiny_batches(), 10, torch.device("cpu"), step, clock=clock)


def test_a_probe_whose_steps_agree_times_three_steps():
    probe = probe_with_steps([5.0, 0.20, 0.22, 0.21])  # warm-up, then three steps within PROBE_SPREAD
    assert probe.timed_steps == PROBE_STEPS == 3
    assert probe.step_seconds == pytest.approx(0.21)
    assert probe.probe_seconds == pytest.approx(5.63)  # read on the injected clock, warm-up included


def test_a_probe_whose_steps_disagree_times_more_steps():
    """A step slowed 4x by another process: the probe times three more; all six still disagree, so three more."""
    probe = probe_with_steps([5.0, 0.20, 0.80, 0.21] + [0.20, 0.22, 0.21] + [0.20, 0.20, 0.23] + [9.9] * 5)
    assert probe.timed_steps == PROBE_MAX_STEPS == 9  # and no further: the last five durations are never taken
    assert probe.step_seconds == pytest.approx(0.21)  # the median of the nine, untouched by the slow step


def width_plan(monkeypatch, readings: list[float], budget: float = 40.0):
    """Plan a width with probes that cost each width's MACs times the next of ``readings`` (the machine's speed
    as each probe saw it, 1.0 = its true speed). Returns the plan and the widths probed."""
    macs = {w: count_macs(build_model("fastcnn", width=w)) for w in WIDTHS}
    speeds, probed = iter(readings), []

    def fake_probe(config, width, *args, **kwargs):
        probed.append(width)
        seconds = 0.01 * macs[width] / macs[16] * next(speeds)
        return Probe(width, step_seconds=seconds, eval_image_seconds=1e-5, save_seconds=0.01, probe_seconds=0.0)

    monkeypatch.setattr(budget_module, "time_probe", fake_probe)
    config = make_config("fast", time_budget=budget, budget_epochs=4.0)
    plan = plan_budget(
        config,
        tiny_batches(),
        1000,
        10000,
        10,
        torch.device("cpu"),
        started=0.0,
        train_step=train_step,
        clock=FakeClock(0.0),
    )
    return plan, probed


def test_the_chosen_widths_own_probe_moves_the_width_back_when_the_first_reading_was_off(monkeypatch):
    true_plan, true_probed = width_plan(monkeypatch, [1.0, 1.0])
    true_width = true_plan.width
    assert true_probed == [16, true_width] and 16 < true_width < WIDTHS[-1]
    index = WIDTHS.index(true_width)

    # the first reading ran 40% fast: it picks a wider width, whose own probe (at the true speed) takes it back
    fast_plan, fast_probed = width_plan(monkeypatch, [0.6, 1.0, 1.0])
    assert fast_probed[1] > true_width and fast_plan.width == WIDTHS[WIDTHS.index(fast_probed[1]) - 1]
    assert len(fast_plan.probes) == 3 and fast_plan.probes[-1]["width"] == fast_plan.width

    # the first reading ran 60% slow: it picks a narrower width, whose own probe moves it one step up
    slow_plan, slow_probed = width_plan(monkeypatch, [1.6, 1.0, 1.0])
    assert slow_probed[1] < true_width and slow_plan.width == WIDTHS[WIDTHS.index(slow_probed[1]) + 1]
    assert abs(WIDTHS.index(slow_plan.width) - index) <= 1 and abs(WIDTHS.index(fast_plan.width) - index) <= 1


def test_within_the_tolerance_the_first_choice_stands(monkeypatch):
    """A second reading 10% off the first, either way, is noise: no third probe, the width stays."""
    first, _ = width_plan(monkeypatch, [1.0, 1.0])
    for second in (1 / (1 + 0.66 * WIDTH_TOLERANCE), 1 + 0.66 * WIDTH_TOLERANCE):
        plan, probed = width_plan(monkeypatch, [1.0, second])
        assert probed == [16, first.width] and plan.width == first.width


def test_the_cheap_width_is_read_twice_before_it_is_kept(monkeypatch):
    """At a budget where the cheap width is the choice, a second reading at normal speed after a slow first one
    moves it up only when the next width fits the epochs with room to spare."""
    plan, probed = width_plan(monkeypatch, [1.0, 1.0], budget=10.0)
    assert plan.width == 16 and probed == [16, 16]  # width 24 fits 3.5 epochs: the second reading agrees
    true, _ = width_plan(monkeypatch, [1.0, 1.0], budget=14.0)
    assert true.width == 24  # 5.4 epochs at the machine's true speed
    slow, probed = width_plan(monkeypatch, [2.0, 1.0, 1.0], budget=14.0)  # 2x slow: the cheap width looked best
    assert probed == [16, 16, 24] and slow.width == 24


def test_too_short_a_budget_is_a_usage_error(fake_cifar, tmp_path):
    with pytest.raises(UsageError, match="too short"):
        train(budget_config(fake_cifar, tmp_path, "short", time_budget=0.5, model_width=8))
    assert not (tmp_path / "short").exists()  # refused before any run folder is made


def test_time_budget_needs_a_per_step_schedule():
    with pytest.raises(UsageError, match="per-step schedule"):
        make_config("seed", time_budget=60.0)


def test_cli_time_budget_must_be_positive(capsys):
    from cifarlab.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--recipe", "fast", "--time-budget", "0"])
    assert exc.value.code == 2
    assert "must be positive" in capsys.readouterr().err


@pytest.mark.parametrize("size", [16, 64])
def test_the_planner_prices_widths_at_the_runs_image_size(size, monkeypatch):
    """The widths are compared by their cost on the images the run trains on, not on 32-px ones."""
    priced = []

    def macs(model, image_size=32):
        priced.append(image_size)
        return count_macs(model, image_size)

    monkeypatch.setattr(budget_module, "count_macs", macs)
    monkeypatch.setattr(
        budget_module, "time_probe", lambda config, width, *a, **k: Probe(width, 0.01 * width / 16, 1e-5, 0.01, 0.0)
    )
    images = torch.zeros(50, 3, size, size, dtype=torch.uint8)
    batches = Batches(images, torch.zeros(50, dtype=torch.long), 1, torch.zeros(3), torch.ones(3))
    plan = plan_budget(
        make_config("fast", time_budget=60.0),
        batches,
        n_val=37,
        n_test=113,
        num_classes=37,
        device=torch.device("cpu"),
        started=0.0,
        train_step=train_step,
        clock=FakeClock(0.0),
    )
    assert priced and set(priced) == {size}
    assert plan.width in WIDTHS and plan.steps_per_epoch == 50 and plan.train_steps >= 1


def thread_probe(seconds: dict[int, float], probed: list[tuple[int | None, int]]):
    """A probe whose step time depends on torch's thread count as ``seconds`` says (a busy or an idle CPU)."""

    def fake_probe(config, width, *args, **kwargs):
        threads = torch.get_num_threads()
        probed.append((width, threads))
        return Probe(width, seconds[threads] * width / 16, 1e-5, 0.01, 0.0, threads=threads)

    return fake_probe


@pytest.mark.parametrize(("seconds", "chosen"), [({1: 0.2, 2: 0.3}, 1), ({1: 0.19, 2: 0.1}, 2)])
def test_the_planner_keeps_one_thread_where_two_step_slower(monkeypatch, two_threads, seconds, chosen):
    """Beside another busy process two threads step slower than one (docs/benchmarks.md, "A loaded CPU"): the
    planner probes both, keeps the faster for the whole run, prices the widths at it and records it."""
    probed: list[tuple[int | None, int]] = []
    monkeypatch.setattr(budget_module, "time_probe", thread_probe(seconds, probed))
    plan = plan_budget(
        make_config("fast", time_budget=60.0),
        tiny_batches(),
        n_val=100,
        n_test=1000,
        num_classes=10,
        device=torch.device("cpu"),
        started=0.0,
        train_step=train_step,
        clock=FakeClock(1.0),
    )
    assert torch.get_num_threads() == chosen == plan.threads
    assert probed[:2] == [(16, 2), (16, 1)]  # every thread, then one, at the cheap width
    assert all(t == chosen for _, t in probed[2:])  # the width's own probes run as the run will
    assert [p["threads"] for p in plan.probes][-1] == chosen and len(plan.probes) == len(probed)


def test_a_budget_run_on_a_busy_cpu_records_its_one_thread_and_gives_the_threads_back(
    fake_cifar, tmp_path, monkeypatch, two_threads
):
    """The run trains at the thread count its planner chose (run.json says so) and leaves torch's count as it was."""
    monkeypatch.setattr(budget_module, "time_probe", thread_probe({1: 0.2, 2: 0.5}, []))
    config = budget_config(fake_cifar, tmp_path, "busy", time_budget=20.0, model_width=16)
    run = train(config, clock=TickingClock(0.2))
    assert torch.get_num_threads() == 2
    summary = json.loads((run / "run.json").read_text())
    assert summary["threads"] == 1 == summary["budget_plan"]["threads"]
    assert [p["threads"] for p in summary["budget_plan"]["probes"]] == [2, 1]


class SlowBatches(Batches):
    """Batches that take ``seconds`` on ``clock`` to make (AugMix's chains, say), whatever model trains on them."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        images = torch.zeros(100, 3, 32, 32, dtype=torch.uint8)
        super().__init__(images, torch.zeros(100, dtype=torch.long), 1, torch.zeros(3), torch.ones(3))
        self.clock, self.seconds = clock, seconds

    def __iter__(self):
        for batch in super().__iter__():
            self.clock.now += self.seconds
            yield batch


def test_a_probe_times_the_batch_apart_and_other_widths_are_priced_on_the_model_alone():
    """A width probe's step = making the batch + the model's step; only the model's part grows with the MACs (an
    AugMix batch priced as if it grew with the width made the planner choose far too narrow a net)."""
    clock = FakeClock()
    step = scripted_step(clock, [5.0, 0.10, 0.10, 0.10])
    config = make_config("fast", time_budget=60.0)
    probe = time_probe(config, 16, SlowBatches(clock, 0.3), 10, torch.device("cpu"), step, clock=clock)
    assert probe.step_seconds == pytest.approx(0.4) and probe.data_seconds == pytest.approx(0.3)
    wider = scaled(probe, 1, 8)
    assert wider.step_seconds == pytest.approx(0.3 + 8 * 0.1) and wider.data_seconds == pytest.approx(0.3)
    assert wider.eval_image_seconds == pytest.approx(8 * probe.eval_image_seconds)  # the test has no AugMix
