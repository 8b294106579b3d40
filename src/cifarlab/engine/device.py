"""Where a model computes: the device, the memory layout of its weights, and the precision of its forward pass.

Every model that trains, is probed or scores images is placed by :func:`place_model`, so training, the
time-budget probe, validation, the test, ``evaluate`` and ``predict`` all compute in the same layout.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch
from torch import nn

from cifarlab.base.cores import usable_cores
from cifarlab.base.errors import UsageError


def mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


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


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on a GPU (a clock read without it times the queueing, not the work)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@functools.cache  # a property of the hardware: asked once, not at every training step
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), where oneDNN's bf16 convolutions train
    1.6-1.9x faster than fp32 at widths 24-64 (docs/benchmarks.md, "bf16 on the CPU"); elsewhere bf16 is emulated."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own CPUID checks
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def uses_bf16(bf16: bool, device: torch.device) -> bool:
    """Whether a forward pass asked to run in bf16 does: on CUDA, and on CPUs with bf16 in hardware."""
    return bf16 and (device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16()))


def autocast(bf16: bool, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast where ``bf16`` is asked for and :func:`uses_bf16` says it pays; plain fp32 elsewhere."""
    if uses_bf16(bf16, device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
