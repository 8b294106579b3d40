"""The training loop, top to bottom: set up, train epoch by epoch, evaluate once on the test set.

Read it in stages: ``prepare_data`` (split and normalisation), ``make_optimizer``/``make_scheduler``,
``train_one_epoch`` (the loss is computed on the line marked ``# the loss``), ``evaluate_batches``
(validation), and ``train`` which ties them together and writes the run folder.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifarlab import distributed
from cifarlab.checkpoint import load_checkpoint, save_checkpoint, unwrap
from cifarlab.config import TrainConfig, validate
from cifarlab.data import Batches, Cifar10, balanced_subset, channel_stats, load_cifar10, stratified_split
from cifarlab.errors import CifarlabError, UsageError
from cifarlab.metrics import summarize
from cifarlab.models import build_model, count_macs, count_params
from cifarlab.progress import log, progress
from cifarlab.runfiles import new_run_dir, read_json, write_json, write_metrics_csv


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


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True,
                           weight_decay=config.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """StepLR is stepped once per epoch; the others once per batch (see ``per_batch_schedule``)."""
    if config.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    total = config.epochs * steps_per_epoch
    warmup = int(config.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
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
                    config: TrainConfig, epoch: int, dist: distributed.DistInfo, device: torch.device) -> dict:
    """One pass over the training split. Returns summed loss, correct count and images (this process)."""
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    desc = f"epoch {epoch}/{config.epochs}"
    for step, (x, y) in enumerate(progress(batches, len(batches), desc, enabled=dist.is_main)):
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)  # the loss
        if not torch.isfinite(loss):
            raise CifarlabError(
                f"training stopped: the loss became {loss.item()} at epoch {epoch}, batch {step + 1}. "
                "The last good checkpoint (last.pt) is intact; try a lower --lr."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if per_batch_schedule(config):
            scheduler.step()
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    if not per_batch_schedule(config):
        scheduler.step()
    return {"loss_sum": loss_sum, "correct": correct, "seen": seen}


@torch.no_grad()
def predict(model: nn.Module, batches: Batches) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, softmax probabilities and labels for every image of ``batches``, in order (on the CPU)."""
    model.eval()
    all_logits, all_labels = [], []
    for x, y in batches:
        all_logits.append(model(x).float().cpu())
        all_labels.append(y.cpu())
    logits = torch.cat(all_logits)
    return logits, logits.softmax(1), torch.cat(all_labels)


def evaluate_batches(model: nn.Module, batches: Batches, dist: distributed.DistInfo,
                     device: torch.device) -> dict[str, float]:
    """Loss, top-1 and top-3 over a split; each process takes its shard and the sums are reduced."""
    logits, _, y = predict(model, batches)
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


def environment() -> dict[str, Any]:
    """Hardware and versions, for the record (reports show it in their setup section)."""
    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}


def train(config: TrainConfig, data: Cifar10 | None = None, resume: str | Path | None = None) -> Path:
    """Train one model as ``config`` says, evaluate its best checkpoint on the test set, return the run folder."""
    # --- setup: device, processes, seed, data ------------------------------------------------------------
    validate(config)
    device = pick_device(config.device)
    dist = distributed.setup(device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if config.batch_size % dist.world_size:
        raise UsageError(f"--batch-size {config.batch_size} must divide by the {dist.world_size} processes")
    torch.manual_seed(config.seed)
    t_load = time.perf_counter()
    data = data if data is not None else load_cifar10(config.data_dir)
    load_seconds = time.perf_counter() - t_load
    prep = prepare_data(data, config)
    mean, std = torch.tensor(prep.mean), torch.tensor(prep.std)

    # --- model, optimiser, schedule -------------------------------------------------------------------
    model = build_model(config.model, num_classes=len(data.classes)).to(device)
    params, macs = count_params(model), count_macs(model)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    train_batches = Batches(data.train_images[prep.train_idx], data.train_labels[prep.train_idx],
                            config.batch_size // dist.world_size, mean, std, shuffle=True, augment=config.augment,
                            crop_padding=config.crop_padding, seed=config.seed, device=device,
                            rank=dist.rank, world_size=dist.world_size)
    val_batches = Batches(data.train_images[prep.val_idx], data.train_labels[prep.val_idx],
                          config.eval_batch_size, mean, std, device=device, rank=dist.rank,
                          world_size=dist.world_size)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, len(train_batches))
    if dist.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    # --- run folder: new, or the one being resumed ----------------------------------------------------
    history: list[dict[str, Any]] = []
    start_epoch, best_top1, train_seconds = 1, -1.0, 0.0
    if resume is not None:
        run_dir = Path(resume)
        state = load_checkpoint(run_dir, "last.pt")
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], train_batches)
        history, best_top1 = state["history"], state["best_val_top1"]
        start_epoch, train_seconds = state["epoch"] + 1, state["train_seconds"]
        log(f"resuming {run_dir} after epoch {state['epoch']}", dist.is_main)
    elif dist.is_main:
        run_dir = new_run_dir(config.out, config.name, config.model)
        config.name = run_dir.name
        config.save(run_dir / "config.json")
        write_json(run_dir / "split.json", {"seed": config.seed, "train": prep.train_idx.tolist(),
                                            "val": prep.val_idx.tolist()})
        write_json(run_dir / "normalization.json", {"mean": prep.mean, "std": prep.std, "computed_on": "train"})
    if dist.enabled:  # every process needs the folder name chosen by rank 0
        shared = [str(run_dir) if dist.is_main else None]
        torch.distributed.broadcast_object_list(shared, src=0)
        run_dir = Path(shared[0])

    def checkpoint(epoch: int) -> dict[str, Any]:
        return {"model": unwrap(model).state_dict(), "model_name": config.model, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch, "config": config.to_dict(),
                "mean": prep.mean, "std": prep.std, "classes": list(data.classes), "rng": rng_state(train_batches),
                "best_val_top1": best_top1, "history": history, "train_seconds": train_seconds}

    if dist.is_main and resume is None:
        save_checkpoint(checkpoint(0), run_dir / "last.pt")  # so even an early Ctrl-C can be resumed
    log(f"run {run_dir}: {config.model} ({params:,} parameters), recipe {config.recipe}, "
        f"{len(prep.train_idx)} train / {len(prep.val_idx)} val images, device {device}"
        + (f" x {dist.world_size} processes" if dist.enabled else ""), dist.is_main)

    # --- the epochs -----------------------------------------------------------------------------------
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            t0 = time.perf_counter()
            sums = train_one_epoch(model, train_batches, optimizer, scheduler, config, epoch, dist, device)
            loss_sum, correct, seen = distributed.all_reduce_sum(
                [sums["loss_sum"], sums["correct"], sums["seen"]], device, dist)
            t_train = time.perf_counter() - t0
            val = evaluate_batches(model, val_batches, dist, device)
            epoch_seconds = time.perf_counter() - t0
            train_seconds += epoch_seconds
            row = {"epoch": epoch, "train_loss": loss_sum / seen, "train_top1": correct / seen,
                   "val_loss": val["loss"], "val_top1": val["top1"], "val_top3": val["top3"],
                   "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": epoch_seconds,
                   "images_per_second": seen / t_train}
            history.append(row)
            improved = val["top1"] > best_top1
            best_top1 = max(best_top1, val["top1"])
            if dist.is_main:
                state = checkpoint(epoch)
                if improved:
                    save_checkpoint(state, run_dir / "best.pt")
                save_checkpoint(state, run_dir / "last.pt")
                write_metrics_csv(run_dir / "metrics.csv", history)
            log(f"epoch {epoch:3d}/{config.epochs}  train loss {row['train_loss']:.4f} top-1 "
                f"{100 * row['train_top1']:5.2f}%  |  val loss {val['loss']:.4f} top-1 {100 * val['top1']:5.2f}% "
                f"top-3 {100 * val['top3']:5.2f}%  |  lr {row['lr']:.2e}  {epoch_seconds:6.1f}s  "
                f"{row['images_per_second']:7.0f} img/s" + ("  *best" if improved else ""), dist.is_main)
    except KeyboardInterrupt:
        distributed.teardown(dist)
        raise CifarlabError(f"interrupted: {run_dir}/last.pt holds the last completed epoch. "
                            f"Resume with: cifarlab train --resume {run_dir}") from None

    # --- the test set, once, with the best-validation checkpoint --------------------------------------
    if dist.is_main:
        finish_run(run_dir, data, config, device, params, macs, train_seconds, load_seconds)
    distributed.barrier(dist)
    distributed.teardown(dist)
    return run_dir


def evaluate_checkpoint(state: dict[str, Any], data: Cifar10, split: str, device: torch.device,
                        batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probabilities, labels and official indices of ``split`` for a checkpoint, from the checkpoint alone."""
    from cifarlab.checkpoint import model_from_checkpoint

    model = model_from_checkpoint(state).to(device)
    cfg = state["config"]
    if split == "test":
        images, labels, index = data.test_images, data.test_labels, torch.arange(len(data.test_labels))
    else:
        _, index = stratified_split(data.train_labels, cfg["val_size"], cfg["seed"])
        images, labels = data.train_images[index], data.train_labels[index]
    batches = Batches(images, labels, batch_size, torch.tensor(state["mean"]), torch.tensor(state["std"]),
                      device=device)
    _, probs, y = predict(model, batches)
    return probs, y, index


def finish_run(run_dir: Path, data: Cifar10, config: TrainConfig, device: torch.device, params: int, macs: int,
               train_seconds: float, load_seconds: float) -> None:
    """Evaluate best.pt on the test set (the only time it is touched) and write the run summary."""
    state = load_checkpoint(run_dir, "best.pt")
    t0 = time.perf_counter()
    probs, y, index = evaluate_checkpoint(state, data, "test", device, config.eval_batch_size)
    test_seconds = time.perf_counter() - t0
    metrics = write_test_results(run_dir, "test", probs, y, index, list(data.classes),
                                 {"checkpoint": "best.pt", "epoch": state["epoch"]})
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
    }
    write_json(run_dir / "run.json", summary)
    log(f"test (best epoch {best['epoch']}): top-1 {100 * metrics['top1']:.2f}%  top-3 {100 * metrics['top3']:.2f}%"
        f"  loss {metrics['loss']:.4f}  ->  {run_dir}/test_metrics.json")
