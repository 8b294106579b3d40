"""The optimiser, the length of the run in optimiser steps, and the learning-rate schedule over that length.

:class:`RunLength` is the one thing about a run that changes while it trains: the pacer of a time-budget run
re-plans the number of steps, and the LR schedule and the weight averager read it afresh at every step. The
config itself never changes once training starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cifarlab.data.batches import Batches
from cifarlab.models.registry import head_name


@dataclass
class RunLength:
    """How long the run is: optimiser steps in all, and per epoch. Owned by the training loop."""

    total_steps: int  # the last step of the schedule; a time-budget run's pacer moves it while training
    steps_per_epoch: int

    @property
    def epochs(self) -> int:
        """Epochs begun by the run (the last one may stop part-way, at ``total_steps``)."""
        return math.ceil(self.total_steps / self.steps_per_epoch)

    @classmethod
    def of(cls, config: Any, steps_per_epoch: int) -> RunLength:
        """``config.train_steps`` when set (time-budget runs), else whole epochs."""
        return cls(config.train_steps or config.epochs * steps_per_epoch, steps_per_epoch)


def steps_per_epoch(batches: Batches) -> int:
    """Optimiser steps in one pass over ``batches``: one per batch, except a last batch of a single image, which
    is left out because BatchNorm cannot normalise one value per channel."""
    per_process = len(batches.images) // batches.world_size
    return len(batches) - (batches.batch_size > 1 and per_process % batches.batch_size == 1)


def param_groups(model: nn.Module, config: Any) -> list[dict[str, Any]]:
    """Trainable parameters, with BatchNorm's own at ``bias_lr_scale`` x the LR and weight decay / that factor.

    BatchNorm shifts get gradients of a different size than conv weights; a higher LR lets them keep up, and
    dividing their decay keeps the per-step shrinkage the same. Frozen parameters (a whitened stem, a frozen BN
    scale) are left out so no optimiser state or weight decay touches them.
    """
    norm_ids = {
        id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for p in m.parameters()
    }
    trainable = [p for p in model.parameters() if p.requires_grad]
    if config.bias_lr_scale == 1.0:
        groups = [{"params": trainable}]
    else:
        others = [p for p in trainable if id(p) not in norm_ids]
        norms = [p for p in trainable if id(p) in norm_ids]
        groups = [
            {"params": others},
            {
                "params": norms,
                "lr": config.lr * config.bias_lr_scale,
                "weight_decay": config.weight_decay / config.bias_lr_scale,
            },
        ]
    return groups if config.body_lr_scale == 1.0 else split_head(groups, model, config)


def split_head(groups: list[dict[str, Any]], model: nn.Module, config: Any) -> list[dict[str, Any]]:
    """Each group in two: the classification head's parameters as they were, the body's at ``body_lr_scale`` x
    the LR (fine-tuning: the body already learned its features)."""
    head = {id(p) for p in model.get_submodule(head_name(model)).parameters()}
    split = []
    for group in groups:
        lr = group.get("lr", config.lr)
        split.append({**group, "params": [p for p in group["params"] if id(p) in head]})
        split.append(
            {**group, "params": [p for p in group["params"] if id(p) not in head], "lr": lr * config.body_lr_scale}
        )
    return [g for g in split if g["params"]]


def body_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters outside the classification head: what ``freeze_epochs`` holds still."""
    head = {id(p) for p in model.get_submodule(head_name(model)).parameters()}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in head]


def make_optimizer(model: nn.Module, config: Any) -> torch.optim.Optimizer:
    """Adam, Nesterov SGD, or Muon for the conv weights and Nesterov SGD for the rest, over :func:`param_groups`."""
    groups = param_groups(model, config)
    if config.optimizer == "adam":
        fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])  # one kernel, not ~10
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay, fused=fused)
    if config.optimizer == "muon":
        return MuonSGD(
            muon_groups(groups, config), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.SGD(
        groups, lr=config.lr, momentum=config.momentum, nesterov=True, weight_decay=config.weight_decay
    )


# --- Muon ---------------------------------------------------------------------------------------------------------

NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)  # quintic coefficients: small singular values grow fast, none past ~1.2
NEWTON_SCHULZ_STEPS = 5


def orthogonalize(g: torch.Tensor, steps: int = NEWTON_SCHULZ_STEPS) -> torch.Tensor:
    """About the nearest semi-orthogonal matrix to the 2-D ``g`` (its singular values pulled to roughly 0.7-1.2,
    its singular vectors kept), by Newton-Schulz iterations: matrix products only, in bf16 on a GPU."""
    a, b, c = NEWTON_SCHULZ
    x = g.bfloat16() if g.is_cuda else g.float()
    wide = x.size(0) <= x.size(1)
    x = x if wide else x.T  # iterate on the smaller Gram matrix
    x = x / (x.norm() + 1e-7)  # every singular value at most 1, where the iteration converges
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x if wide else x.T).to(g.dtype)


def muon_groups(groups: list[dict[str, Any]], config: Any) -> list[dict[str, Any]]:
    """The conv weights (4-D) of ``groups`` in a Muon group of their own, at ``muon_lr`` and ``muon_momentum``."""
    convs = [p for g in groups for p in g["params"] if p.ndim == 4]
    conv_ids = {id(p) for p in convs}
    rest = [{**g, "params": [p for p in g["params"] if id(p) not in conv_ids]} for g in groups]
    lr = config.muon_lr * config.body_lr_scale  # conv weights are the body's (fine-tuning scales them)
    muon = {"params": convs, "muon": True, "lr": lr, "momentum": config.muon_momentum, "weight_decay": 0.0}
    return [muon, *(g for g in rest if g["params"])]


class MuonSGD(torch.optim.Optimizer):
    """Muon for the groups marked ``muon``, Nesterov SGD (as torch.optim.SGD computes it) for the others.

    Muon steps each conv weight, seen as a matrix (out channels x the rest), along the orthogonalised Nesterov
    momentum: every direction of the update moves by the same amount, whatever the gradient's scale. BatchNorm
    follows each conv, so a conv weight's scale does not matter: it is held at sqrt(out channels) (about unit norm
    per filter), so a full-rank step turns each filter by about ``lr`` radians; no weight decay is needed.
    """

    def __init__(self, params: Any, lr: float, momentum: float, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "muon": False})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad if group["muon"] or decay == 0 else p.grad.add(p, alpha=decay)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad.clone()
                else:
                    state["momentum_buffer"].mul_(momentum).add_(grad)
                step = grad.add(state["momentum_buffer"], alpha=momentum)  # Nesterov's look-ahead
                if group["muon"]:
                    step = orthogonalize(step.reshape(len(step), -1)).view_as(p)
                    p.add_(step, alpha=-lr)
                    p.mul_(len(p) ** 0.5 / (p.norm() + 1e-12))
                else:
                    p.add_(step, alpha=-lr)


def per_batch_schedule(config: Any) -> bool:
    """StepLR steps once per epoch; the other schedules once per optimiser step."""
    return config.scheduler != "step"


def make_scheduler(optimizer: torch.optim.Optimizer, config: Any, length: RunLength) -> Any:
    """StepLR, or a per-step schedule (linear warm-up, then one-cycle, cosine or constant) over ``length``."""
    if config.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    warmup = int(config.warmup_epochs * length.steps_per_epoch)

    def factor(step: int) -> float:
        total = length.total_steps  # read at every step: a time-budget run re-plans it
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        if config.scheduler == "onecycle":
            return max(0.0, 1.0 - progress)
        if config.scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
