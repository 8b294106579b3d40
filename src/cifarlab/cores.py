"""The CPU cores this process may use: for torch's thread count and for the processes that decode images."""

from __future__ import annotations

import os


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
