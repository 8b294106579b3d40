"""The training loop, top to bottom: set up, train epoch by epoch, evaluate once on the test set.

Read it in stages: ``prepare_data`` (split and normalisation), ``make_optimizer``/``make_scheduler``,
``train_one_epoch`` (the loss is computed on the line marked ``# the loss``), ``evaluate_batches``
(validation), and ``train`` which ties them together and writes the run folder.
"""

from __future__ import annotations

import itertools
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifarlab import distributed
from cifarlab.checkpoint import load_checkpoint, save_checkpoint, unwrap
from cifarlab.config import TrainConfig, validate
from cifarlab.budget import Pacer, apply_plan, plan_budget
from cifarlab.data import (Batches, Cifar10, balanced_subset, channel_stats, load_cifar10, normalize,
                           stratified_split)
from cifarlab.errors import CifarlabError, UsageError
from cifarlab.fast import (WHITEN_IMAGES, autocast, init_whitening, make_averager, model_kwargs, param_groups,
                           tta_logits)
from cifarlab.metrics import summarize
from cifarlab.models import build_model, count_macs, count_params
from cifarlab.progress import log, progress
from cifarlab.runfiles import check_writable, new_run_dir, read_json, write_json, write_metrics_csv
from cifarlab.tracking import open_tracker


def pick_device(name: str = "auto") -> torch.device:
    """CUDA, else Apple MPS, else CPU; an explicit name is checked so a typo gives a clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but no CUDA GPU is available")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps was asked for, but Apple MPS is not available")
    return device


@dataclass
class Prepared:
    """The data of one run: split indices and training-split normalisation."""

    train_idx: torch.Tensor
    val_idx: torch.Tensor
    mean: list[float]
    std: list[float]


def prepare_data(data: Cifar10, config: TrainConfig) -> Prepared:
    """Stratified train/val split from the seed, optional balanced slice, and stats of the training split."""
    train_idx, val_idx = stratified_split(data.train_labels, config.val_size, config.seed)
    if config.limit_train is not None:
        train_idx = balanced_subset(train_idx, data.train_labels, config.limit_train, config.seed)
    mean, std = channel_stats(data.train_images[train_idx])
    return Prepared(train_idx, val_idx, mean, std)


def probe_batches(data: Cifar10, prep: Prepared, config: TrainConfig, device: torch.device) -> Batches:
    """The training stream the time-budget planner times its probes on: the run's own images and augmentation,
    shuffled with a seed of its own so that probing leaves the run's batch order untouched."""
    return Batches(data.train_images[prep.train_idx], data.train_labels[prep.train_idx], config.batch_size,
                   torch.tensor(prep.mean), torch.tensor(prep.std), shuffle=True, augment=config.augment,
                   crop_padding=config.crop_padding, seed=config.seed + 1, device=device)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, config)  # trainable parameters; BatchNorm's at bias_lr_scale x the LR
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True,
                           weight_decay=config.weight_decay)


def total_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    """Optimiser steps in the whole run: ``train_steps`` when set (time-budget runs), else whole epochs."""
    return config.train_steps or config.epochs * steps_per_epoch


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """StepLR is stepped once per epoch; the others once per batch (see ``per_batch_schedule``)."""
    if config.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    warmup = int(config.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        total = total_steps(config, steps_per_epoch)  # read afresh: a time-budget run may re-plan it
        if step < warmup:
            return (step + 1) / warmup
        progress_ = (step - warmup) / max(1, total - warmup)
        if config.scheduler == "onecycle":
            return max(0.0, 1.0 - progress_)
        if config.scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress_)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def per_batch_schedule(config: TrainConfig) -> bool:
    return config.scheduler != "step"


def train_one_epoch(model: nn.Module, batches: Batches, optimizer: torch.optim.Optimizer, scheduler: Any,
                    config: TrainConfig, epoch: int, dist: distributed.DistInfo, device: torch.device,
                    step_hooks: Sequence[Any] = ()) -> dict:
    """One pass over the training split. Returns summed loss, correct count and images (this process).

    ``step_hooks`` are called after every optimiser step: weight averaging (fast.py) and time-budget pacing
    (budget.py)."""
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    desc = f"epoch {epoch}/{config.epochs}"
    for step, (x, y) in enumerate(progress(batches, len(batches), desc, enabled=dist.is_main)):
        if (epoch - 1) * len(batches) + step >= total_steps(config, len(batches)):
            break  # a run of `train_steps` steps (time budget) ends part-way through its last epoch
        with autocast(config, device):  # bf16 on CUDA when config.bf16; otherwise plain fp32
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)  # the loss
        if not torch.isfinite(loss):
            raise CifarlabError(
                f"training stopped: the loss became {loss.item()} at epoch {epoch}, batch {step + 1}. "
                f"The last good checkpoint, last.pt (epoch {epoch - 1}), is intact; try a lower --lr."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if per_batch_schedule(config):
            scheduler.step()
        for hook in step_hooks:
            hook.step(unwrap(model))
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    if not per_batch_schedule(config):
        scheduler.step()
    return {"loss_sum": loss_sum, "correct": correct, "seen": seen}


@torch.no_grad()
def predict(model: nn.Module, batches: Batches, tta: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, softmax probabilities and labels for every image of ``batches``, in order (on the CPU).

    ``tta`` averages the logits over mirrored (1) and also 1-pixel-shifted (2) views of each image."""
    model.eval()
    all_logits, all_labels = [], []
    for x, y in batches:
        all_logits.append(tta_logits(model, x, tta).float().cpu())
        all_labels.append(y.cpu())
    logits = torch.cat(all_logits)
    return logits, logits.softmax(1), torch.cat(all_labels)


def evaluate_batches(model: nn.Module, batches: Batches, dist: distributed.DistInfo,
                     device: torch.device) -> dict[str, float]:
    """Loss, top-1 and top-3 over a split; each process takes its shard and the sums are reduced.

    Under DDP every process first takes rank 0's BatchNorm statistics (the ones its checkpoint saves), then
    scores with the plain model, so no collective runs per batch and shards may differ in size.
    """
    distributed.broadcast_buffers(unwrap(model), dist)
    logits, _, y = predict(unwrap(model), batches)
    top3 = logits.topk(3, dim=1).indices
    sums = [F.cross_entropy(logits, y, reduction="sum").item(), (top3[:, 0] == y).sum().item(),
            (top3 == y[:, None]).any(1).sum().item(), len(y)]
    loss_sum, top1, top3_hits, n = distributed.all_reduce_sum(sums, device, dist)
    return {"loss": loss_sum / n, "top1": top1 / n, "top3": top3_hits / n}


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


def write_test_results(run_dir: Path, split: str, probs: torch.Tensor, y_true: torch.Tensor,
                       index: torch.Tensor, classes: list[str], extra: dict[str, Any]) -> dict[str, Any]:
    """``<split>_metrics.json`` and ``<split>_predictions.npz``: the numbers, and what they are computed from."""
    from cifarlab.runfiles import atomic_write

    metrics = {"split": split, **summarize(probs, y_true, classes), **extra}
    arrays = {"y_true": y_true.numpy().astype(np.int64), "probs": probs.numpy().astype(np.float32),
              "index": index.numpy().astype(np.int64)}
    atomic_write(run_dir / f"{split}_predictions.npz", lambda f: np.savez_compressed(f, **arrays))
    write_json(run_dir / f"{split}_metrics.json", metrics)
    return metrics


class TrainingInterrupted(CifarlabError):
    """Ctrl-C during training: the run can be resumed. Exit code 130, the shell's code for SIGINT."""

    exit_code = 130


def save_epoch(run_dir: Path, state: dict[str, Any], improved: bool, history: list[dict[str, Any]]) -> None:
    """best.pt (if improved), last.pt, metrics.csv. Each write is atomic, so on a write error (full disk,
    read-only folder) every earlier file is still whole and the run can be resumed from last.pt."""
    try:
        if improved:
            save_checkpoint(state, run_dir / "best.pt")
        save_checkpoint(state, run_dir / "last.pt")
        write_metrics_csv(run_dir / "metrics.csv", history)
    except CifarlabError as exc:
        raise CifarlabError(f"{exc}. Training stopped in epoch {state['epoch']}; every file written before is "
                            "intact. Free some space or make the folder writable, then resume with: "
                            f"cifarlab train --resume {run_dir}") from None


def environment() -> dict[str, Any]:
    """Hardware and versions, for the record (reports show it in their setup section)."""
    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}


def train(config: TrainConfig, data: Cifar10 | None = None, resume: str | Path | None = None,
          on_epoch: Callable[[int, nn.Module], None] | None = None, analyze: bool = True) -> Path:
    """Train one model as ``config`` says, evaluate its best checkpoint on the test set, return the run folder.

    ``on_epoch(epoch, model)``, if given, is called after each epoch with the scored model (the benchmark uses it
    to measure test accuracy over time; it must not train the model). ``analyze=False`` skips the error analysis
    written after the test (figures, Grad-CAM: slow on a CPU); ``cifarlab analyze RUN`` writes it later."""
    # --- setup: device, processes, seed, data ------------------------------------------------------------
    validate(config)
    device = pick_device(config.device)
    dist = distributed.setup(device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if config.batch_size % dist.world_size:
        raise UsageError(f"--batch-size {config.batch_size} must divide by the {dist.world_size} processes")
    if resume is None and config.name and (Path(config.out) / config.name).exists():
        raise UsageError(f"run folder {Path(config.out) / config.name} already exists; choose another --name "
                         "(runs are never overwritten)")
    torch.manual_seed(config.seed)
    t_load = time.perf_counter()
    data = data if data is not None else load_cifar10(config.data_dir)
    load_seconds = time.perf_counter() - t_load
    budget_start = time.perf_counter()  # a --time-budget covers everything from here to the test's end
    prep = prepare_data(data, config)
    mean, std = torch.tensor(prep.mean), torch.tensor(prep.std)

    # --- time budget: time a few steps, then fit the whole schedule (and width) into it (budget.py) ----
    plan = None
    if config.time_budget is not None and resume is None:
        if dist.enabled:
            raise UsageError("--time-budget plans for one process; run it without torchrun")
        plan = plan_budget(config, probe_batches(data, prep, config, device), len(prep.val_idx), len(data.test_labels), len(data.classes),
                           lambda m: make_optimizer(m, config), device, budget_start)
        apply_plan(config, plan)
        log(f"time budget {plan.budget_seconds:.0f}s: {plan.train_steps} steps "
            f"({plan.train_steps / plan.steps_per_epoch:.2f} epochs) at {plan.step_seconds:.3f}s/step"
            + (f", width {plan.width}" if plan.width else "") + f", planned total {plan.predicted_seconds:.0f}s",
            dist.is_main)

    # --- model, optimiser, schedule -------------------------------------------------------------------
    model = build_model(config.model, num_classes=len(data.classes), **model_kwargs(config)).to(device)
    if config.whiten:  # frozen first conv that whitens 2x2 patches of (normalised) training images
        init_whitening(model, normalize(data.train_images[prep.train_idx[:WHITEN_IMAGES]], mean, std).to(device))
    params, macs = count_params(model), count_macs(model)
    if device.type == "cpu" or config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_batches = Batches(data.train_images[prep.train_idx], data.train_labels[prep.train_idx],
                            config.batch_size // dist.world_size, mean, std, shuffle=True, augment=config.augment,
                            crop_padding=config.crop_padding, seed=config.seed, device=device,
                            rank=dist.rank, world_size=dist.world_size)
    val_shard = prep.val_idx[dist.rank::dist.world_size]  # every validation image scored once, none dropped
    val_batches = Batches(data.train_images[val_shard], data.train_labels[val_shard], config.eval_batch_size,
                          mean, std, device=device)
    if config.train_steps is not None:  # whole epochs to run; the last one stops at train_steps
        config.epochs = math.ceil(config.train_steps / len(train_batches))
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, len(train_batches))
    averager = make_averager(model, config, total_steps(config, len(train_batches)))  # None unless ema/lookahead
    pacer = None if plan is None else Pacer(config, plan, budget_start, averager)  # keeps a budget run on time
    step_hooks = [hook for hook in (averager, pacer) if hook is not None]

    def scored(net: nn.Module) -> nn.Module:
        """The weights that are validated, checkpointed and tested: the EMA copy when there is one."""
        return averager.scored(unwrap(net)) if averager is not None else net

    if dist.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        model = torch.compile(model)

    # --- run folder: new, or the one being resumed ----------------------------------------------------
    history: list[dict[str, Any]] = []
    start_epoch, best_top1, train_seconds = 1, -1.0, 0.0
    if resume is not None:
        run_dir = Path(resume)
        state = load_checkpoint(run_dir, "last.pt")
        unwrap(model).load_state_dict(state.get("train_model", state["model"]))
        if averager is not None and "averager" in state:
            averager.load_state_dict(state["averager"])
        train_batches.epoch = state["epoch"]  # the alternating flip continues with the right parity
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], train_batches)
        history, best_top1 = state["history"], state["best_val_top1"]
        start_epoch, train_seconds = state["epoch"] + 1, state["train_seconds"]
        if dist.is_main:
            check_writable(run_dir)
        log(f"resuming {run_dir} after epoch {state['epoch']}", dist.is_main)
    elif dist.is_main:
        run_dir = new_run_dir(config.out, config.name, config.model)
        config.name = run_dir.name
        write_json(run_dir / "config.json", config.to_dict())
        write_json(run_dir / "split.json", {"seed": config.seed, "train": prep.train_idx.tolist(),
                                            "val": prep.val_idx.tolist()})
        write_json(run_dir / "normalization.json", {"mean": prep.mean, "std": prep.std, "computed_on": "train"})
    if dist.enabled:  # every process needs the folder name chosen by rank 0
        shared = [str(run_dir) if dist.is_main else None]
        torch.distributed.broadcast_object_list(shared, src=0)
        run_dir = Path(shared[0])
    tracker = open_tracker(run_dir, config, enabled=dist.is_main)  # TensorBoard events (and MLflow, if asked)

    def checkpoint(epoch: int) -> dict[str, Any]:
        extra = {} if averager is None else {"averager": averager.state_dict(),
                                             "train_model": unwrap(model).state_dict()}
        return {"model": unwrap(scored(model)).state_dict(), "model_name": config.model,
                "model_kwargs": model_kwargs(config), **extra, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch, "config": config.to_dict(),
                "mean": prep.mean, "std": prep.std, "classes": list(data.classes), "rng": rng_state(train_batches),
                "best_val_top1": best_top1, "history": history, "train_seconds": train_seconds}

    if dist.is_main and resume is None:
        save_checkpoint(checkpoint(0), run_dir / "last.pt")  # so even an early Ctrl-C can be resumed
    log(f"run {run_dir}: {config.model} ({params:,} parameters), recipe {config.recipe}, "
        f"{len(prep.train_idx)} train / {len(prep.val_idx)} val images, device {device}"
        + (f" x {dist.world_size} processes" if dist.enabled else ""), dist.is_main)

    # --- the epochs -----------------------------------------------------------------------------------
    epoch = saved_epoch = start_epoch - 1
    try:
        for epoch in itertools.count(start_epoch):
            if epoch > config.epochs:  # checked each time: a --time-budget run re-plans it as it goes
                break
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]  # the epoch's LR (a per-batch schedule: its starting LR)
            sums = train_one_epoch(model, train_batches, optimizer, scheduler, config, epoch, dist, device,
                                   step_hooks)
            loss_sum, correct, seen = distributed.all_reduce_sum(
                [sums["loss_sum"], sums["correct"], sums["seen"]], device, dist)
            t_train = time.perf_counter() - t0
            val = evaluate_batches(scored(model), val_batches, dist, device)
            epoch_seconds = time.perf_counter() - t0
            train_seconds += epoch_seconds
            row = {"epoch": epoch, "train_loss": loss_sum / seen, "train_top1": correct / seen,
                   "val_loss": val["loss"], "val_top1": val["top1"], "val_top3": val["top3"],
                   "lr": lr, "epoch_seconds": epoch_seconds,
                   "images_per_second": seen / t_train}
            history.append(row)
            tracker.epoch(row)
            improved = val["top1"] > best_top1
            best_top1 = max(best_top1, val["top1"])
            if dist.is_main:
                save_epoch(run_dir, checkpoint(epoch), improved, history)
            saved_epoch = epoch
            log(f"epoch {epoch:3d}/{config.epochs}  train loss {row['train_loss']:.4f} top-1 "
                f"{100 * row['train_top1']:5.2f}%  |  val loss {val['loss']:.4f} top-1 {100 * val['top1']:5.2f}% "
                f"top-3 {100 * val['top3']:5.2f}%  |  lr {row['lr']:.2e}  {epoch_seconds:6.1f}s  "
                f"{row['images_per_second']:7.0f} img/s" + ("  *best" if improved else ""), dist.is_main)
            if on_epoch is not None:
                on_epoch(epoch, unwrap(scored(model)))
    except KeyboardInterrupt:
        distributed.teardown(dist)
        raise TrainingInterrupted(f"interrupted in epoch {epoch}: {run_dir}/last.pt holds epoch {saved_epoch}, "
                                  f"the last completed one. Resume with: cifarlab train --resume {run_dir}") from None

    # --- the test set, once, with the best-validation (or last, see test_checkpoint) checkpoint ---------
    if dist.is_main:
        finish_run(run_dir, data, config, device, params, macs, train_seconds, load_seconds,
                   budget_start=budget_start, plan=None if plan is None else plan.to_dict(), analyze=analyze)
        tracker.finish(run_dir, data)
        tracker.close()
    distributed.barrier(dist)
    distributed.teardown(dist)
    return run_dir


def evaluate_checkpoint(state: dict[str, Any], data: Cifar10, split: str, device: torch.device,
                        batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probabilities, labels and official indices of ``split`` for a checkpoint, from the checkpoint alone."""
    from cifarlab.checkpoint import model_from_checkpoint

    model = model_from_checkpoint(state).to(device)
    cfg = state["config"]
    if device.type == "cpu" or cfg.get("channels_last"):  # as in training: oneDNN convolutions ~2x faster in NHWC
        model = model.to(memory_format=torch.channels_last)
    if split == "test":
        images, labels, index = data.test_images, data.test_labels, torch.arange(len(data.test_labels))
    else:
        _, index = stratified_split(data.train_labels, cfg["val_size"], cfg["seed"])
        images, labels = data.train_images[index], data.train_labels[index]
    batches = Batches(images, labels, batch_size, torch.tensor(state["mean"]), torch.tensor(state["std"]),
                      device=device)
    _, probs, y = predict(model, batches, tta=cfg.get("tta", 0))
    return probs, y, index


def finish_run(run_dir: Path, data: Cifar10, config: TrainConfig, device: torch.device, params: int, macs: int,
               train_seconds: float, load_seconds: float, budget_start: float | None = None,
               plan: dict[str, Any] | None = None, analyze: bool = True) -> None:
    """Evaluate best.pt (or last.pt, per ``test_checkpoint``) on the test set, once, and write the run summary.

    ``budget_start`` is when the budget clock started (data in memory); the time used up to the end of the test
    is recorded whether or not the run had a ``time_budget``, with the planner's accounting (``plan``) if any."""
    tested = f"{config.test_checkpoint}.pt"
    state = load_checkpoint(run_dir, tested)
    t0 = time.perf_counter()
    probs, y, index = evaluate_checkpoint(state, data, "test", device, config.eval_batch_size)
    test_seconds = time.perf_counter() - t0
    seconds_used = None if budget_start is None else time.perf_counter() - budget_start
    metrics = write_test_results(run_dir, "test", probs, y, index, list(data.classes),
                                 {"checkpoint": tested, "epoch": state["epoch"], "tta": config.tta})
    history = state["history"]
    best = max(history, key=lambda r: r["val_top1"])
    last = load_checkpoint(run_dir, "last.pt")["history"]
    ips = [r["images_per_second"] for r in last]
    summary = {
        "name": run_dir.name, "model": config.model, "recipe": config.recipe, "seed": config.seed,
        "params": params, "macs": macs, "epochs": config.epochs,
        "train_images": len(read_json(run_dir / "split.json")["train"]),
        "train_seconds": train_seconds, "test_seconds": test_seconds, "data_load_seconds": load_seconds,
        "images_per_second": float(np.median(ips)), "best_epoch": best["epoch"],
        "best_val_top1": best["val_top1"], "train_top1_at_best": best["train_top1"],
        "train_val_gap": best["train_top1"] - best["val_top1"], "test_top1": metrics["top1"],
        "test_top3": metrics["top3"], "test_loss": metrics["loss"], "device": str(device), **environment(),
        "test_checkpoint": tested, "tta": config.tta, "train_steps": config.train_steps,
        "time_budget": config.time_budget, "seconds_used": seconds_used, "budget_plan": plan,
    }
    write_json(run_dir / "run.json", summary)
    log(f"test ({tested}, epoch {state['epoch']}): top-1 {100 * metrics['top1']:.2f}%  "
        f"top-3 {100 * metrics['top3']:.2f}%  loss {metrics['loss']:.4f}  ->  {run_dir}/test_metrics.json")
    if analyze:
        from cifarlab.analysis import analyze_after_training

        analyze_after_training(run_dir, data)
