"""Weight averaging: a slow copy of the weights that is scored (EMA) or that pulls the weights back (lookahead)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from cifarlab.engine.optim import RunLength


class WeightAverager:
    """A slow copy of the weights, moved toward the trained ones every ``every`` optimiser steps.

    At an update with decay d: ``average = d * average + (1 - d) * weights`` for every float tensor of the state
    dict (parameters and BatchNorm statistics; counters are copied). d ramps in as ``decay**every *
    (step / total_steps)**3``: close to 0 early, when the weights move fast and averaging would only lag.
    ``total_steps`` is read from the run's :class:`~cifarlab.engine.optim.RunLength`, which a time-budget run re-plans.

    * ``ema``: training ignores the average; validation, checkpoints and the test use it.
    * ``lookahead``: after each update the weights are reset to the average (the slow weights pull the fast ones
      back), so the model itself is what is scored. The last step always updates, so a run ends on the average.
    """

    def __init__(self, model: nn.Module, mode: str, decay: float, every: int, length: RunLength) -> None:
        if mode not in ("ema", "lookahead"):
            raise ValueError(f"unknown weight averaging {mode!r}")
        self.mode, self.decay, self.every, self.length = mode, decay, every, length
        self.steps = 0  # optimiser steps seen
        self.shadow = copy.deepcopy(model)
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return self.decay**self.every * min(1.0, step / max(1, self.length.total_steps)) ** 3

    def step(self, model: nn.Module) -> None:
        """Call after each optimiser step."""
        self.steps += 1
        if self.steps % self.every == 0 or self.steps == self.length.total_steps:
            self.update(model, self.decay_at(self.steps))

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        averaged = self.shadow.state_dict()
        for name, value in model.state_dict().items():
            slow = averaged[name]
            if slow.is_floating_point():
                slow.lerp_(value, 1 - decay)
                if self.mode == "lookahead":
                    value.copy_(slow)
            else:
                slow.copy_(value)

    def scored(self, model: nn.Module) -> nn.Module:
        """The model whose weights are validated, checkpointed and tested."""
        return self.shadow if self.mode == "ema" else model

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "average": self.shadow.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.shadow.load_state_dict(state["average"])


def make_averager(model: nn.Module, config: Any, length: RunLength) -> WeightAverager | None:
    """The averager the config asks for (``weight_averaging``), or None."""
    if config.weight_averaging == "none":
        return None
    return WeightAverager(model, config.weight_averaging, config.average_decay, config.average_every, length)
