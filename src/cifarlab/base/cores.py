"""The CPU cores this process may use: for torch's thread count and for the processes that decode images."""

from __future__ import annotations

import os
from pathlib import Path


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


def physical_count(cpus: list[int]) -> int:
    """How many physical cores the logical CPUs ``cpus`` are (hyper-threads counted once), from Linux's topology
    files; ``len(cpus)`` where those cannot be read."""
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(
                ((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip())
            )
        except OSError:
            return len(cpus)
    return len(cores) or len(cpus)


def usable_cores(hyperthreads: bool = True) -> int:
    """The CPU cores this process may run on: its affinity mask where the OS has one (taskset, a container's CPU
    set), capped by a container's CPU quota (docker --cpus). ``hyperthreads=False`` counts each physical core
    once (the sweep: one training run per physical core)."""
    if hasattr(os, "sched_getaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        cores = len(cpus) if hyperthreads else physical_count(cpus)
    else:
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    return min(cores, quota) if quota is not None else cores
