"""Where the runs go: the local pool (worker threads on this machine) and Ray (tasks on a cluster, or a private
Ray instance). Both take a Job and hand back each run's result, named by the run they were given."""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from queue import Empty, Queue
from typing import Any

from cifarlab.base.errors import CifarlabError, UsageError
from cifarlab.sweep.worker import Job, execute_run

# ---------------------------------------------------------------------------------------------------------
# Where the runs go: the local pool and Ray
# ---------------------------------------------------------------------------------------------------------


class LocalPool:
    """Runs at a time on this machine, each a worker thread waiting on its training process."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sweep-worker")
        self.cancel = threading.Event()
        self.futures: dict[Future, str] = {}
        self.started: Queue = Queue()  # (run name, pid) as training processes start
        self.description = f"local pool, {workers} worker{'s' * (workers != 1)}"

    def has_room(self) -> bool:
        return len(self.futures) < self.workers

    def submit(self, job: Job) -> None:
        name = job.name
        future = self.executor.submit(execute_run, job, self.cancel, lambda pid: self.started.put((name, pid)))
        self.futures[future] = name

    def results(self, timeout: float) -> list[dict[str, Any]]:
        if not self.futures:
            return []
        done, _ = wait_futures(list(self.futures), timeout=timeout, return_when=FIRST_COMPLETED)
        results = []
        for future in done:
            name = self.futures.pop(future)
            try:
                results.append({**future.result(), "name": name})
            except Exception as exc:  # noqa: BLE001 - a broken worker fails its run, never the sweep
                results.append({"name": name, "state": "failed", "message": f"{type(exc).__name__}: {exc}"})
        return results

    def pids(self) -> list[tuple[str, int]]:
        found = []
        while True:
            try:
                found.append(self.started.get_nowait())
            except Empty:
                return found

    def interrupt(self) -> None:
        self.cancel.set()

    def close(self) -> None:
        self.cancel.set()
        self.executor.shutdown(wait=True)


def import_ray() -> Any:
    """Ray, or a usage error that says how to install it."""
    try:
        import ray  # optional extra: only --ray needs it
    except ImportError:
        raise UsageError("--ray needs Ray, an optional extra: pip install 'cifarlab[ray]'") from None
    return ray


class RayPool:
    """Runs as Ray tasks on a cluster (or a private Ray instance on this machine)."""

    def __init__(self, address: str, workers: int, cpus_per_run: float, gpus_per_run: float, retries: int) -> None:
        self.ray = ray = import_ray()
        self.own_instance = address == "local"
        kwargs: dict[str, Any] = {"log_to_driver": False}
        if self.own_instance:
            kwargs.update(num_cpus=max(1, int(workers * cpus_per_run)), include_dashboard=False)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise CifarlabError(f"--ray {address}: cannot start or reach a Ray cluster: {exc}") from None
        resources = ray.cluster_resources()
        slots = int(resources.get("CPU", 1) // cpus_per_run) if cpus_per_run else len(resources)
        if gpus_per_run:
            slots = min(slots, int(resources.get("GPU", 0) // gpus_per_run))
            if slots < 1:
                ray.shutdown()
                raise UsageError(
                    f"--gpus-per-run {gpus_per_run:g}: the Ray cluster has {resources.get('GPU', 0):g} GPUs"
                )
        self.slots = max(1, slots)
        # Ray's own retries cover a lost node or worker process (the retried task resumes from last.pt);
        # a killed training process comes back as an exit code and is retried by the driver.
        self.remote = ray.remote(execute_run).options(
            num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=retries, retry_exceptions=False
        )
        self.refs: dict[Any, str] = {}
        where = "a private Ray instance" if self.own_instance else f"the Ray cluster at {address}"
        self.description = (
            f"{where} ({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs), "
            f"{self.slots} run{'s' * (self.slots != 1)} at a time"
        )

    def has_room(self) -> bool:
        return len(self.refs) < self.slots

    def submit(self, job: Job) -> None:
        self.refs[self.remote.remote(job)] = job.name

    def results(self, timeout: float) -> list[dict[str, Any]]:
        if not self.refs:
            return []
        ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=timeout)
        results = []
        for ref in ready:
            name = self.refs.pop(ref)
            try:
                results.append({**self.ray.get(ref), "name": name})  # the run this task was given, whatever it says
            except self.ray.exceptions.TaskCancelledError:
                results.append({"name": name, "state": "interrupted", "message": "stopped by Ctrl-C"})
            except self.ray.exceptions.RayError as exc:  # a worker or node lost beyond Ray's own retries
                message = " ".join(str(exc).split())[:300]
                results.append({"name": name, "state": "died", "message": f"Ray: {type(exc).__name__}: {message}"})
        return results

    def pids(self) -> list[tuple[str, int]]:
        return []

    def interrupt(self) -> None:
        for ref in list(self.refs):
            self.ray.cancel(ref)

    def close(self) -> None:
        self.ray.shutdown()
