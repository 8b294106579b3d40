"""The model registry: each model is a named factory function whose docstring says what it is.

``build_model(name)`` makes one; ``cifarlab models`` lists them with their size and cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cifarlab.base.errors import UsageError

MODELS: dict[str, Callable[..., nn.Module]] = {}
MAX_CLASSES = 1000  # the most output classes a model may be built with (CIFAR-10 has 10)


@dataclass(frozen=True)
class Arg:
    """A factory keyword argument: its type (int, float or bool) and, for numbers, its inclusive range."""

    kind: type
    low: float | None = None
    high: float | None = None

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` for this argument, or None when it is acceptable."""
        if self.kind is bool:
            return None if isinstance(value, bool) else "must be true or false"
        allowed = (int,) if self.kind is int else (int, float)
        span = f" from {self.low:g} to {self.high:g}" if self.low is not None and self.high is not None else ""
        noun = "a whole number" if self.kind is int else "a number"
        nan = isinstance(value, float) and math.isnan(value)  # NaN would pass every range check
        if isinstance(value, bool) or not isinstance(value, allowed) or nan:  # bool is a subclass of int
            return f"must be {noun}{span}"
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            return f"must be {noun}{span}"
        return None


MODEL_ARGS: dict[str, dict[str, Arg]] = {}  # per model: the keyword arguments its factory accepts besides num_classes


def register(name: str, **args: Arg) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that adds a factory to the registry under ``name``, with the keyword arguments it accepts."""

    def add(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS[name] = factory
        MODEL_ARGS[name] = dict(args)
        return factory

    return add


def kwargs_problems(name: str, kwargs: dict[str, Any], num_classes: int = 10) -> list[str]:
    """Each keyword argument (and the class count) that model ``name``'s registry entry does not accept."""
    declared = MODEL_ARGS.get(name, {})
    problems = (
        []
        if Arg(int, 2, MAX_CLASSES).problem(num_classes) is None
        else [f"num_classes must be a whole number from 2 to {MAX_CLASSES} (got {shorten(num_classes)})"]
    )
    for key, value in kwargs.items():
        if key not in declared:
            known = ", ".join(declared) or "none"
            problems.append(f"unknown argument {shorten(key)} (model {name!r} takes: {known})")
        elif (problem := declared[key].problem(value)) is not None:
            problems.append(f"{key} {problem} (got {shorten(value)})")
    return problems


def shorten(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters: values read from files are shown escaped and short."""
    if isinstance(value, int) and value.bit_length() > 64:  # repr of a huge int is slow, or refused
        return f"a {value.bit_length()}-bit number"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def build_model(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Make a freshly initialised model from its registry name (kwargs go to the factory, e.g. a width).

    Arguments outside what the factory declares (type and range) are a UsageError, so no run can train a model
    that its own checkpoint could not be loaded into."""
    if name not in MODELS:
        raise UsageError(f"unknown model {shorten(name)}; choose from: {', '.join(sorted(MODELS))}")
    problems = kwargs_problems(name, kwargs, num_classes)
    if problems:
        raise UsageError(f"model {name!r}: {'; '.join(problems)}")
    return MODELS[name](num_classes=num_classes, **kwargs)


def model_summary(name: str) -> str:
    """First line of a model's docstring, for listings."""
    doc = MODELS[name].__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def head_name(model: nn.Module) -> str:
    """The name of the classification head: the model's last linear layer (what fine-tuning replaces)."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear layer for a head")
    return linears[-1]


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: nn.Module, image_size: int = 32) -> int:
    """Multiply-accumulates for one 3 x image_size x image_size image (convolutions and linear layers).

    Counted with forward hooks on a dummy input, so it follows whatever the forward pass really does.
    """
    total = 0

    def conv_hook(module: nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1] * (module.in_channels // module.groups)
        total += out[0].numel() * k

    def linear_hook(module: nn.Linear, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel() * module.in_features

    probe_forward(model, {nn.Conv2d: conv_hook, nn.Linear: linear_hook}, image_size)
    return int(total)


def probe_forward(model: nn.Module, hooks: dict[type, Callable], image_size: int = 32) -> None:
    """Run one blank image through ``model`` (eval mode, no gradients) with ``hooks[type]`` attached as a forward
    hook to every layer of that type; the model's mode is restored and the hooks removed afterwards.

    Used to measure what a forward pass really does (MACs, layer output sizes) without reading the code."""
    handles = [
        m.register_forward_hook(hook) for m in model.modules() for kind, hook in hooks.items() if isinstance(m, kind)
    ]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
