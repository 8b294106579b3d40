"""Threads on a shared CPU: OpenMP threads that sleep while they wait, and no more threads than usable cores."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from cifarlab.base.cores import cgroup_cpu_limit
from cifarlab.engine import device


def import_and_report(env: dict[str, str]) -> str:
    """OMP_WAIT_POLICY as a fresh interpreter sees it after ``import cifarlab``."""
    code = "import os, cifarlab; print(os.environ.get('OMP_WAIT_POLICY'))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


@pytest.mark.subprocess
def test_importing_cifarlab_makes_openmp_threads_sleep_unless_the_user_chose():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert import_and_report(env).strip() == "PASSIVE"
    assert import_and_report({**env, "OMP_WAIT_POLICY": "ACTIVE"}).strip() == "ACTIVE"


def test_threads_are_cut_to_the_usable_cores_and_never_raised(monkeypatch):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(device, "usable_cores", lambda: 1)
        assert device.fit_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.setattr(device, "usable_cores", lambda: 8)
        assert device.fit_threads() == 1 and torch.get_num_threads() == 1  # a lower count set by the user is kept
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("text", "cores"), [("200000 100000\n", 2), ("50000 100000\n", 1), ("max 100000\n", None), ("junk", None)]
)
def test_a_container_cpu_quota_counts_as_its_whole_cores(tmp_path, text, cores):
    quota = tmp_path / "cpu.max"
    quota.write_text(text)
    assert cgroup_cpu_limit(str(quota)) == cores
    assert cgroup_cpu_limit(str(tmp_path / "absent")) is None


def test_physical_cores_count_each_hyperthread_pair_once(tmp_path, monkeypatch):
    """cores.usable_cores(hyperthreads=False), the sweep's count: CPUs 0 and 1 are one core's two threads."""
    from pathlib import Path

    from cifarlab.base import cores

    for cpu, core in ((0, 0), (1, 0), (2, 1), (3, 1)):
        topology = tmp_path / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text("0\n")
        (topology / "core_id").write_text(f"{core}\n")
    monkeypatch.setattr(cores, "Path", lambda p: Path(str(p).replace("/sys/devices/system/cpu", str(tmp_path))))
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(cores, "cgroup_cpu_limit", lambda: None)
    assert cores.usable_cores() == 4 and cores.usable_cores(hyperthreads=False) == 2
    monkeypatch.setattr(cores, "cgroup_cpu_limit", lambda: 1)  # a container's quota caps both counts
    assert cores.usable_cores() == cores.usable_cores(hyperthreads=False) == 1
