"""Multi-process training on PyTorch's own engine: torchrun sets the environment, DDP does the work.

``torchrun --nproc_per_node=N -m cifarlab train ...`` starts N processes with RANK/WORLD_SIZE set; each calls
:func:`setup`. Without torchrun, everything here is a no-op and training runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> DistInfo:
    """Join the process group torchrun prepared (gloo on CPU, NCCL on CUDA), if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":  # one GPU per process, chosen before NCCL starts
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


def process_device(device: torch.device, info: DistInfo) -> torch.device:
    """This process's own GPU under torchrun (cuda:LOCAL_RANK); otherwise ``device`` as it is."""
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    return device


def is_main_process() -> bool:
    """Rank 0, or no torchrun: the process that writes files and runs what follows training (the analysis)."""
    return int(os.environ.get("RANK", "0")) == 0


def broadcast_object(value: Any, info: DistInfo) -> Any:
    """Rank 0's ``value`` on every process (e.g. the run folder it chose)."""
    if not info.enabled:
        return value
    shared = [value if info.is_main else None]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def all_reduce_sum(values: list[float], device: torch.device, info: DistInfo) -> list[float]:
    """Sum a few numbers over all processes (float64, so sums of counts stay exact)."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics), which each updates locally."""
    if info.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
