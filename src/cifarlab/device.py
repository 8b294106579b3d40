"""Where a model computes: the device, the memory layout of its weights, and the precision of its forward pass.

Every model that trains, is probed or scores images is placed by :func:`place_model`, so training, the
time-budget probe, validation, the test, ``evaluate`` and ``predict`` all compute in the same layout.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from torch import nn

from cifarlab.errors import UsageError


def mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def cgroup_cpu_limit(path: str = "/sys/fs/cgroup/cpu.max") -> int | None:
    """Whole cores allowed by a Linux container's CPU quota (cgroup v2 ``cpu.max``: "QUOTA PERIOD" or "max ..."),
    at least 1; None without a quota."""
    try:
        quota, period = open(path).read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, int(quota) // int(period))
    except (ValueError, ZeroDivisionError):
        return None


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity mask where the OS has one (taskset, a container's CPU
    set), capped by a container's CPU quota (docker --cpus)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    return min(cores, quota) if quota is not None else cores


def fit_threads() -> int:
    """Use no more compute threads than usable cores (more only make threads wait for each other); a thread
    count the user set with OMP_NUM_THREADS or torch.set_num_threads is kept if it is lower."""
    threads = min(torch.get_num_threads(), usable_cores())
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads


def pick_device(name: str = "auto") -> torch.device:
    """CUDA, else Apple MPS, else CPU; an explicit name is checked so a typo gives a clear error. Fits the CPU
    thread count to the usable cores (the CPU also feeds a GPU)."""
    fit_threads()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but no CUDA GPU is available")
    if device.type == "mps" and not mps_available():
        raise UsageError("--device mps was asked for, but Apple MPS is not available")
    return device


def place_model(model: nn.Module, device: torch.device, channels_last: bool = False) -> nn.Module:
    """``model`` on ``device``, in channels-last (NHWC) layout on CPUs, where oneDNN's convolutions are faster in
    it, and wherever ``channels_last`` asks for it (tensor cores on GPUs). Evidence: docs/benchmarks.md, "Memory
    layout and precision on the CPU"."""
    model = model.to(device)
    if device.type == "cpu" or channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def autocast(bf16: bool, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA when ``bf16`` is asked for; plain fp32 elsewhere (on CPUs bf16 is not faster:
    docs/benchmarks.md, "Memory layout and precision on the CPU")."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
