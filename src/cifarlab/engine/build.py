"""Building a run before its first epoch: processes and device, data and split, plan, model, batches, optimiser,
schedule and run folder, or all of them restored from last.pt."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarlab.base.errors import DataError, UsageError
from cifarlab.base.files import remove_stale_temp_files, write_json
from cifarlab.base.progress import log
from cifarlab.config.fast import model_kwargs
from cifarlab.config.scaling import scale_to_data
from cifarlab.config.train_config import TrainConfig, validate
from cifarlab.data.augmix import augmix_from
from cifarlab.data.batches import Batches
from cifarlab.data.cifar10 import ImageData
from cifarlab.data.loading import load_dataset, run_record, validate_dataset
from cifarlab.data.split import balanced_subset, channel_stats, normalize, stratified_split
from cifarlab.engine import distributed
from cifarlab.engine.averaging import WeightAverager, make_averager
from cifarlab.engine.budget import BudgetPlan, Pacer, StepFunction, apply_plan, plan_budget
from cifarlab.engine.device import pick_device, place_model, synchronize
from cifarlab.engine.optim import (
    RunLength,
    body_parameters,
    make_optimizer,
    make_scheduler,
    steps_per_epoch,
)
from cifarlab.engine.tracking import NullTracker, Tracker
from cifarlab.engine.transfer import apply_init, check_fits, init_record, load_init
from cifarlab.models.fastcnn import WHITEN_IMAGES, init_whitening
from cifarlab.models.registry import build_model, count_macs, count_params
from cifarlab.runs.checkpoint import load_checkpoint, save_checkpoint, unwrap
from cifarlab.runs.layout import CONFIG_JSON, RunLock, check_writable, new_run_dir

Clock = Callable[[], float]


class Stopwatch:
    """The clock of a timed run (``config.timed``): it waits for the GPU before each reading, and stops while
    work that airbench's timer also leaves out runs (per-epoch validation, checkpoints, reading the tested
    checkpoint back), so ``seconds_used`` is the training, the whitening and the final test."""

    def __init__(self, clock: Clock, device: torch.device) -> None:
        self.clock, self.device, self.paused = clock, device, 0.0

    def __call__(self) -> float:
        synchronize(self.device)
        return self.clock() - self.paused

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        synchronize(self.device)
        start = self.clock()
        try:
            yield
        finally:
            synchronize(self.device)
            self.paused += self.clock() - start


@dataclass
class Prepared:
    """The data of one run: split indices and training-split normalisation."""

    train_idx: torch.Tensor
    val_idx: torch.Tensor
    mean: list[float]
    std: list[float]


@dataclass
class Run:
    """One training run: made by :func:`build_run`, advanced by :func:`run_epochs`, tested by :func:`finish`."""

    config: TrainConfig  # frozen: what changes while training lives in ``length``
    data: ImageData
    prep: Prepared
    device: torch.device
    dist: distributed.DistInfo
    folder: Path
    model: nn.Module  # the model that trains (inside DDP or torch.compile when they are used)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    length: RunLength
    train_batches: Batches
    val_batches: Batches
    averager: WeightAverager | None
    pacer: Pacer | None
    plan: BudgetPlan | None
    params: int
    macs: int
    load_seconds: float
    budget_start: float  # the budget clock's reading when the data was in memory
    clock: Clock
    history: list[dict[str, Any]] = field(default_factory=list)
    best_top1: float = -1.0
    train_seconds: float = 0.0
    saved_epoch: int = 0  # the epoch last.pt holds
    tracker: Tracker | NullTracker = field(default_factory=NullTracker)  # TensorBoard events (and MLflow)
    scaling: dict[str, Any] = field(default_factory=dict)  # what the recipe changed for this dataset (scaling.py)
    init: dict[str, Any] | None = None  # the checkpoint the weights started from (transfer.py), or None
    body: list[nn.Parameter] = field(default_factory=list)  # held still for the first ``freeze_epochs`` epochs

    def scored(self) -> nn.Module:
        """The plain model that is validated, checkpointed and tested: the EMA copy when there is one."""
        model = unwrap(self.model)
        return self.averager.scored(model) if self.averager is not None else model


def checkpoint_state(run: Run, epoch: int) -> dict[str, Any]:
    """Everything needed to resume the run after ``epoch``, or to use its model (keys: checkpoint.py)."""
    model = unwrap(run.model)
    extra = {} if run.averager is None else {"averager": run.averager.state_dict(), "train_model": model.state_dict()}
    return {
        "model": run.scored().state_dict(),
        "model_name": run.config.model,
        "model_kwargs": model_kwargs(run.config),
        **extra,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "epoch": epoch,
        "config": config_as_run(run).to_dict(),
        "mean": run.prep.mean,
        "std": run.prep.std,
        "classes": list(run.data.classes),
        "image_size": run.data.image_size,
        "dataset": run_record(run.data),
        "rng": rng_state(run.train_batches),
        "best_val_top1": run.best_top1,
        "history": run.history,
        "train_seconds": run.train_seconds,
        "scaling": run.scaling,
        "init": run.init,
    }


def config_as_run(run: Run) -> TrainConfig:
    """The config with the length the run has now (a time-budget run's pacer may have re-planned it)."""
    steps = run.length.total_steps if run.config.train_steps is not None else None
    return replace(run.config, epochs=run.length.epochs, train_steps=steps)


def rng_state(batches: Batches) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state(), "batches": batches.generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor], batches: Batches) -> None:
    torch.set_rng_state(state["torch"])
    batches.generator.set_state(state["batches"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def build_run(
    config: TrainConfig,
    data: ImageData | None,
    resume: str | Path | None,
    clock: Clock,
    cleanup: contextlib.ExitStack,
    step: StepFunction,
) -> Run:
    """Everything a run needs before its first epoch, in the order that fixes its random numbers: processes and
    device, the data and its split, the time-budget plan, model, batches, optimiser, schedule, weight averaging,
    then the run folder (a new one, or the resumed one with every state restored from last.pt). ``step`` is the
    training step (``train.train_step``) that a time budget times."""
    init, device, dist = start_run(config, resume, cleanup)
    torch.manual_seed(config.seed)
    data, load_seconds = read_data(config, data)
    # a resumed run's config.json holds the scaled values already
    config, scaling = scale_config(config, data, dist) if resume is None else (config, {})
    if config.timed:
        clock = Stopwatch(clock, device)
    budget_start = clock()  # a --time-budget covers everything from here to the test's end
    prep = prepare_data(data, config)
    validate_dataset(data, prep.mean, prep.std, dist.is_main)  # what its checkpoints would be refused for
    plan = None
    if config.time_budget is not None and resume is None:
        cleanup.callback(torch.set_num_threads, torch.get_num_threads())  # the planner may choose fewer threads
        plan, config = plan_run(config, data, prep, device, dist, budget_start, clock, step)
    model, params, macs, head_kept = make_model(config, data, prep, device, init)
    train_batches, val_batches = make_batches(config, data, prep, device, dist)
    config, length, optimizer, scheduler, averager = make_training(config, model, train_batches)
    pacer = None if plan is None else Pacer(plan, length, budget_start, clock)  # keeps a budget run on time
    model = wrap_model(model, config, device, dist)
    folder, config = create_folder(config, data, prep, dist, cleanup) if resume is None else (Path(resume), config)
    run = Run(
        config,
        data,
        prep,
        device,
        dist,
        folder,
        model,
        optimizer,
        scheduler,
        length,
        train_batches,
        val_batches,
        averager,
        pacer,
        plan,
        params,
        macs,
        load_seconds,
        budget_start,
        clock,
        scaling=scaling,
        init=None if init is None else init_record(init, head_kept),
        body=body_parameters(unwrap(model)) if config.freeze_epochs else [],
    )
    open_folder(run, resume, head_kept)
    return run


def start_run(
    config: TrainConfig, resume: str | Path | None, cleanup: contextlib.ExitStack
) -> tuple[dict[str, Any] | None, torch.device, distributed.DistInfo]:
    """The checks before anything is done: the config, the checkpoint ``--init-from`` names (read and checked
    first; None without one), then the processes and device, the resumed folder claimed, a new one's name free."""
    validate(config)
    init = None
    if config.init_from is not None and resume is None:  # read and checked before anything else is done
        init = load_init(config.init_from)
        check_fits(config, init)
    device, dist = start_processes(config)
    if resume is not None and dist.is_main:
        claim_folder(Path(resume), cleanup)
    if resume is None and config.name and (Path(config.out) / config.name).exists():
        raise UsageError(
            f"run folder {Path(config.out) / config.name} already exists; choose another --name "
            "(runs are never overwritten)"
        )
    return init, device, dist


def read_data(config: TrainConfig, data: ImageData | None) -> tuple[ImageData, float]:
    """The run's dataset (``data`` when given, else loaded as the config says) and the seconds loading took."""
    t_load = time.perf_counter()
    data = (
        data
        if data is not None
        else load_dataset(config.dataset, config.data_dir, config.image_size, config.labels, config.strict)
    )
    return data, time.perf_counter() - t_load


def scale_config(
    config: TrainConfig, data: ImageData, dist: distributed.DistInfo
) -> tuple[TrainConfig, dict[str, Any]]:
    """The recipe scaled for the dataset's size and classes (said in one line when it changed), and the record of
    what changed."""
    config, scaled = scale_to_data(config, len(data.train_labels), len(data.classes))
    if scaled.message():
        log(scaled.message(), dist.is_main)
    return config, scaled.record()


def make_training(
    config: TrainConfig, model: nn.Module, train_batches: Batches
) -> tuple[TrainConfig, RunLength, torch.optim.Optimizer, Any, WeightAverager | None]:
    """The run's length in steps (a ``train_steps`` run's config gets the whole epochs to run), optimiser,
    learning-rate schedule and weight averaging."""
    length = RunLength.of(config, steps_per_epoch(train_batches))
    if config.train_steps is not None:  # whole epochs to run; the last one stops at train_steps
        config = replace(config, epochs=length.epochs)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, length)
    averager = make_averager(model, config, length)
    return config, length, optimizer, scheduler, averager


def open_folder(run: Run, resume: str | Path | None, head_kept: bool) -> None:
    """The run's first lines, and its folder made resumable: a resumed run's states restored from last.pt, a new
    run's last.pt written before any epoch (so even an early Ctrl-C can be resumed)."""
    config, dist, folder = run.config, run.dist, run.folder
    if run.init is not None:
        log(
            f"starting from {run.init['path']} ({run.init['model']}, epoch {run.init['epoch']}; "
            f"{'head kept' if head_kept else 'new head for ' + str(len(run.data.classes)) + ' classes'})",
            dist.is_main,
        )
    if resume is not None:
        restore(run, load_checkpoint(folder, "last.pt"))
    elif dist.is_main:
        with off_the_clock(run):
            save_checkpoint(checkpoint_state(run, 0), folder / "last.pt")  # so even an early Ctrl-C can be resumed
    log(
        f"run {folder}: {config.model} ({run.params:,} parameters), recipe {config.recipe}, "
        f"{len(run.prep.train_idx)} train / {len(run.prep.val_idx)} val images, device {run.device}"
        + (f" x {dist.world_size} processes" if dist.enabled else ""),
        dist.is_main,
    )


def start_processes(config: TrainConfig) -> tuple[torch.device, distributed.DistInfo]:
    """The device of this process, and its place among the processes torchrun started (if any)."""
    device = pick_device(config.device)
    dist = distributed.setup(device)
    device = distributed.process_device(device, dist)
    if dist.enabled and config.freeze_epochs:
        raise UsageError(
            "--freeze-epochs trains one process (DDP cannot freeze parameters part-way); run it without torchrun"
        )
    if config.batch_size % dist.world_size:
        raise UsageError(f"--batch-size {config.batch_size} must divide by the {dist.world_size} processes")
    return device, dist


def claim_folder(folder: Path, cleanup: contextlib.ExitStack) -> None:
    """Make sure the folder being resumed can be written and no other process writes it; clear stale temp files."""
    check_writable(folder)
    cleanup.enter_context(RunLock(folder))
    remove_stale_temp_files(folder)


def prepare_data(data: ImageData, config: TrainConfig) -> Prepared:
    """Stratified train/val split from the seed, optional balanced slice, and stats of the training split."""
    train_idx, val_idx = stratified_split(data.train_labels, config.val_size, config.seed, len(data.classes))
    if config.limit_train is not None and config.limit_train > len(train_idx):
        raise UsageError(
            f"limit_train: must be at most {len(train_idx)} (the training images left after validation), "
            f"got {config.limit_train}"
        )
    if config.limit_train is not None:
        train_idx = balanced_subset(train_idx, data.train_labels, config.limit_train, config.seed)
    mean, std = channel_stats(data.train_images[train_idx])
    return Prepared(train_idx, val_idx, mean, std)


def probe_batches(data: ImageData, prep: Prepared, config: TrainConfig, device: torch.device) -> Batches:
    """The training stream the time-budget planner times its probes on: the run's own images and augmentation,
    shuffled with a seed of its own so that probing leaves the run's batch order untouched."""
    return Batches(
        data.train_images[prep.train_idx],
        data.train_labels[prep.train_idx],
        config.batch_size,
        torch.tensor(prep.mean),
        torch.tensor(prep.std),
        shuffle=True,
        augment=config.augment,
        crop_padding=config.crop_padding,
        seed=config.seed + 1,
        device=device,
        augmix=augmix_from(config),
    )


def plan_run(
    config: TrainConfig,
    data: ImageData,
    prep: Prepared,
    device: torch.device,
    dist: distributed.DistInfo,
    started: float,
    clock: Clock,
    step: StepFunction,
) -> tuple[BudgetPlan, TrainConfig]:
    """Time a few steps, fit the whole schedule (and width) into the budget (budget.py); the planned config."""
    if dist.enabled:
        raise UsageError("--time-budget plans for one process; run it without torchrun")
    plan = plan_budget(
        config,
        probe_batches(data, prep, config, device),
        len(prep.val_idx),
        len(data.test_labels),
        len(data.classes),
        device,
        started,
        step,
        clock,
    )
    log(
        f"time budget {plan.budget_seconds:.0f}s: {plan.train_steps} steps "
        f"({plan.train_steps / plan.steps_per_epoch:.2f} epochs) at {plan.step_seconds:.3f}s/step"
        + (f", width {plan.width}" if plan.width else "")
        + (f", {plan.threads} thread (busy CPU)" if max(p["threads"] for p in plan.probes) > plan.threads else "")
        + f", planned total {plan.predicted_seconds:.0f}s"
    )
    return plan, apply_plan(config, plan)


def make_model(
    config: TrainConfig, data: ImageData, prep: Prepared, device: torch.device, init: dict[str, Any] | None = None
) -> tuple[nn.Module, int, int, bool]:
    """The freshly initialised model (or the init checkpoint's weights in it), placed on the device, with its
    parameter and multiply-accumulate counts, and whether the init's head was kept."""
    model = build_model(config.model, num_classes=len(data.classes), **model_kwargs(config))
    head_kept = apply_init(model, init, list(data.classes)) if init is not None else False
    model = model.to(device)
    if config.whiten and init is None:  # frozen first conv that whitens 2x2 patches of (normalised) training images
        images = data.train_images[prep.train_idx[:WHITEN_IMAGES]]
        init_whitening(model, normalize(images, torch.tensor(prep.mean), torch.tensor(prep.std)).to(device))
    params, macs = count_params(model), count_macs(model, data.image_size)
    return place_model(model, device, config.channels_last), params, macs, head_kept


def make_batches(
    config: TrainConfig, data: ImageData, prep: Prepared, device: torch.device, dist: distributed.DistInfo
) -> tuple[Batches, Batches]:
    """This process's shard of the shuffled, augmented training split, and its slice of the validation split."""
    mean, std = torch.tensor(prep.mean), torch.tensor(prep.std)
    train = Batches(
        data.train_images[prep.train_idx],
        data.train_labels[prep.train_idx],
        config.batch_size // dist.world_size,
        mean,
        std,
        shuffle=True,
        augment=config.augment,
        crop_padding=config.crop_padding,
        seed=config.seed,
        device=device,
        rank=dist.rank,
        world_size=dist.world_size,
        augmix=augmix_from(config),
    )
    val_shard = prep.val_idx[dist.rank :: dist.world_size]  # every validation image scored once, none dropped
    val = Batches(
        data.train_images[val_shard], data.train_labels[val_shard], config.eval_batch_size, mean, std, device=device
    )
    return train, val


def wrap_model(model: nn.Module, config: TrainConfig, device: torch.device, dist: distributed.DistInfo) -> nn.Module:
    """DistributedDataParallel under torchrun, then torch.compile when asked for."""
    if dist.enabled:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        # for a module torch.compile returns an OptimizedModule (an nn.Module); its annotation only says Callable
        model = torch.compile(model, mode=config.compile_mode)  # type: ignore[assignment]
    return model


def create_folder(
    config: TrainConfig, data: ImageData, prep: Prepared, dist: distributed.DistInfo, cleanup: contextlib.ExitStack
) -> tuple[Path, TrainConfig]:
    """A new run folder (made and locked by the main process) with config.json, split.json, normalization.json;
    returns it with the config named after it."""
    folder = None
    if dist.is_main:
        folder = new_run_dir(config.out, config.name, config.model)
        cleanup.enter_context(RunLock(folder))
        named = replace(config, name=folder.name)
        write_json(folder / CONFIG_JSON, named.to_dict())
        split = {"seed": config.seed, "train": prep.train_idx.tolist(), "val": prep.val_idx.tolist()}
        if "test_files" in data.record:  # a folder whose held-out images cifarlab chose
            split["test_files"] = data.record["test_files"]
        write_json(folder / "split.json", split)
        write_json(folder / "normalization.json", {"mean": prep.mean, "std": prep.std, "computed_on": "train"})
    folder = Path(distributed.broadcast_object(str(folder), dist))  # every process writes nothing, but logs it
    return folder, replace(config, name=folder.name)


def restore(run: Run, state: dict[str, Any]) -> None:
    """Continue from last.pt: weights, averager, optimiser, schedule, random streams, history and length."""
    recorded = state.get("dataset", {}).get("fingerprint")
    if recorded is not None and recorded != run.data.record.get("fingerprint"):
        raise DataError(
            f"{run.folder} was trained on other images than the ones found now (their file list differs); "
            "resume it with the same data"
        )
    unwrap(run.model).load_state_dict(state.get("train_model", state["model"]))
    if run.averager is not None and "averager" in state:
        run.averager.load_state_dict(state["averager"])
    run.train_batches.epoch = state["epoch"]  # the alternating flip continues with the right parity
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"], run.train_batches)
    if run.config.train_steps is not None:  # a time-budget run goes on with the length its pacer last set
        run.length.total_steps = state["config"].get("train_steps") or run.length.total_steps
    run.history, run.best_top1 = state["history"], state["best_val_top1"]
    run.scaling = state["scaling"] if isinstance(state.get("scaling"), dict) else {}
    run.init = state["init"] if isinstance(state.get("init"), dict) else None
    run.saved_epoch, run.train_seconds = state["epoch"], state["train_seconds"]
    log(f"resuming {run.folder} after epoch {state['epoch']}", run.dist.is_main)


def off_the_clock(run: Run) -> contextlib.AbstractContextManager[Any]:
    """Stops a timed run's clock for the work inside; every other run's clock keeps running."""
    return run.clock.stopped() if isinstance(run.clock, Stopwatch) else contextlib.nullcontext()
