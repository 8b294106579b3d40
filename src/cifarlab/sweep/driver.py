"""``cifarlab sweep``: a grid of runs (models x recipes x config values x seeds) on a local pool or on Ray.

Each grid point is an ordinary run folder ``OUT/SWEEP/RUN/``, trained by a ``python -m cifarlab train``
subprocess (resumed with ``--resume`` when it has a ``last.pt``). ``OUT/SWEEP/sweep.json`` holds the grid,
every run's state and headline numbers; ``OUT/SWEEP/logs/RUN.log`` each run's output. The sweep ends with
``compare`` (seeds of one config as mean ± std) and ``report`` over its finished runs.

Where the runs go:

- the local pool (default): ``--workers N`` runs at a time (default: one per physical core), each with its share
  of the cores as torch threads;
- Ray (``--ray`` for a private Ray instance on this machine, ``--ray ADDRESS`` or ``--ray auto`` for a cluster):
  every run is a Ray task asking for ``--cpus-per-run`` CPUs (and ``--gpus-per-run`` GPUs). The run folders
  live on storage every node sees, or, with ``--ray-gather``, are trained on the node's disk and sent back.

Running a sweep again skips finished runs and resumes interrupted ones; a run whose worker dies is resumed
(up to ``--retries`` times); a run that fails for its own reasons is marked failed with its message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cifarlab.base.cores import usable_cores
from cifarlab.base.errors import CifarlabError, UsageError
from cifarlab.base.files import FileLock, write_json
from cifarlab.sweep.grid import PlannedRun, SweepOptions, SweepSpec, expand, same_plan
from cifarlab.sweep.mlflow_log import finish_mlflow, start_mlflow
from cifarlab.sweep.pools import LocalPool, RayPool
from cifarlab.sweep.progress import Progress, fmt_seconds
from cifarlab.sweep.record import HEADLINE_KEYS, LOG_DIR, SWEEP_FILE, RunState, number_or_none, read_sweep_record
from cifarlab.sweep.worker import INTERRUPT_WAIT, POLL_SECONDS, Job, folder_state, headline, pack_folder, unpack_folder

# ---------------------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------------------


class SweepInterrupted(CifarlabError):
    """Ctrl-C during a sweep: everything is saved and the sweep can be continued."""

    exit_code = 130


class SweepLock(FileLock):
    """One driver per sweep folder at a time (``.sweep.lock``); a second is refused naming the first."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder / ".sweep.lock")

    def __enter__(self) -> SweepLock:
        if not self.acquire():
            holder = self.holder() or "another process"
            raise UsageError(f"{self.path.parent} is being run by {holder}; wait for it or stop it")
        self.write_holder(f"pid {os.getpid()} on {socket.gethostname()}")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class Sweep:
    """The state of one sweep while it runs; sweep.json is rewritten (atomically) at every change."""

    def __init__(self, spec: SweepSpec, options: SweepOptions, planned: list[PlannedRun]) -> None:
        self.spec, self.options = spec, options
        self.folder = spec.folder.resolve()
        self.planned = planned
        self.old = read_sweep_record(self.folder / SWEEP_FILE) if (self.folder / SWEEP_FILE).is_file() else {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.mlflow: dict[str, Any] = dict(self.old.get("mlflow") or {})
        self.groups: list[dict[str, Any]] = []
        self.status = "running"
        self.started = time.strftime("%Y-%m-%d %H:%M:%S")
        self.check_against_old()
        for run in planned:
            self.runs[run.name] = self.initial_entry(run)

    def check_against_old(self) -> None:
        """Refuse a grid that plans another config under the name of an earlier run of this sweep."""
        old_runs = {r["name"]: r for r in self.old.get("runs", [])}
        for run in self.planned:
            before = old_runs.get(run.name, {}).get("config")
            if before and run.config:
                differ = same_plan(before, run.config)
                if differ:
                    k = differ[0]
                    raise UsageError(
                        f"{self.folder / SWEEP_FILE}: run {run.name} was planned with {k}="
                        f"{json.dumps(before.get(k))}, now {k}={json.dumps(run.config.get(k))}; "
                        "give this grid another --name"
                    )

    def initial_entry(self, run: PlannedRun) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": run.name,
            "point": run.point,
            "state": "pending",
            "attempts": 0,
            "seconds": None,
            "message": None,
            "headline": None,
            "config": run.config,
        }
        if run.error:
            entry.update(state="failed", message=run.error)
            return entry
        state = folder_state(self.folder / run.name)
        if state == "done":
            try:
                entry.update(state="done", headline=headline(self.folder / run.name))
            except CifarlabError as exc:  # its run.json is not a record: failed, with the reason; the rest runs
                entry.update(state="failed", message=str(exc))
                return entry
            old: dict[str, Any] = next((r for r in self.old.get("runs", []) if r["name"] == run.name), {})
            entry.update(seconds=old.get("seconds"), attempts=old.get("attempts", 0))
        elif state == "partial":
            entry["state"] = "interrupted"
        return entry

    def count(self, *states: RunState) -> int:
        return sum(1 for r in self.runs.values() if r["state"] in states)

    def save(self) -> None:
        runs = [self.runs[r.name] for r in self.planned]
        runs += [r for r in self.old.get("runs", []) if r["name"] not in self.runs]  # earlier grids' runs
        write_json(
            self.folder / SWEEP_FILE,
            {
                "name": self.spec.name,
                "status": self.status,
                "started": self.started,
                "continue_with": f"cifarlab sweep --resume {self.spec.folder}",
                "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
                "spec": self.spec.to_dict(),
                "options": self.options.to_dict(),
                "counts": {s: self.count(s) for s in ("done", "running", "pending", "interrupted", "failed")},
                "groups": self.groups,
                "mlflow": self.mlflow or None,
                "runs": runs,
            },
        )


def resolve_options(options: SweepOptions) -> SweepOptions:
    """Fill in the defaults that depend on the machine: workers and threads."""
    cores = usable_cores(hyperthreads=False)  # a training run keeps a physical core busy
    workers = options.workers or (cores if options.ray is None else max(1, int(cores // options.cpus_per_run)))
    threads = options.threads or (
        max(1, cores // workers) if options.ray is None else max(1, int(options.cpus_per_run))
    )
    return dataclasses.replace(options, workers=workers, threads=threads)


def make_job(sweep: Sweep, name: str, env: dict[str, str]) -> Job:
    """What a worker needs to train one run (picklable, so a Ray task can take it to any node)."""
    options = sweep.options
    gather = options.gather and bool(options.ray)
    return Job(
        name=name,
        config=sweep.runs[name]["config"],
        sweep_dir=str(sweep.folder),
        threads=options.threads,
        env=env,
        gather=gather,
        analysis="none" if not options.report else ("full" if options.images else "numbers"),
        robustness=options.robustness,
        robustness_limit=options.robustness_limit,
        # a partial run goes to the node, to be resumed there
        blob=pack_folder(sweep.folder / name) if gather and (sweep.folder / name).exists() else None,
    )


def epochs_done(sweep: Sweep, name: str) -> int:
    """Epochs a run has in its metrics.csv so far (0 before its first epoch ends)."""
    csv = sweep.folder / name / "metrics.csv"
    return max(0, len(csv.read_text(errors="replace").splitlines()) - 1) if csv.is_file() else 0


def planned_epochs(run: dict[str, Any]) -> int:
    """The epochs a run's config plans (at least 1)."""
    return max(1, int(run["config"].get("epochs") or 1))


def share_left(sweep: Sweep, name: str) -> float:
    """The part of a run still to train, 0 to 1, by the epochs in its metrics.csv."""
    return min(1.0, max(0.0, 1.0 - epochs_done(sweep, name) / planned_epochs(sweep.runs[name])))


def whole_run_seconds(run: dict[str, Any], result: dict[str, Any]) -> float | None:
    """What a whole run costs, from one finished attempt: a run resumed after epoch k of n trained only
    (n - k) / n of it, so its seconds are scaled up (None when the attempt trained nothing)."""
    seconds = result.get("seconds")
    if not seconds:
        return None
    epochs = planned_epochs(run)
    share = 1.0 - min(epochs, result.get("resumed_from") or 0) / epochs
    return seconds / share if share > 0 else None


def eta(sweep: Sweep, slots: int, durations: list[float]) -> float | None:
    """Seconds left: the share of every unfinished run still to train (by the epochs in its metrics.csv), at the
    mean cost of a whole run measured in this invocation, ``slots`` runs at a time."""
    if not durations:
        return None
    left = sum(share_left(sweep, name) for name, run in sweep.runs.items() if run["state"] not in ("done", "failed"))
    return left * (sum(durations) / len(durations)) / max(1, min(slots, math.ceil(left)))


def status_text(sweep: Sweep, slots: int, durations: list[float]) -> str:
    """``2 running, 0 failed, ~4m10s left`` (the time is estimated once a run has finished)."""
    left = eta(sweep, slots, durations)
    return f"{sweep.count('running')} running, {sweep.count('failed')} failed, " + (
        "time left: known after the first run" if left is None else f"~{fmt_seconds(left)} left"
    )


def finished_line(run: dict[str, Any], attempts_note: str) -> str:
    """One line for a run that has just ended."""
    if run["state"] == "done":
        h = run["headline"] or {}
        top1 = h.get("test_top1")
        numbers = f"test top-1 {100 * top1:.2f}%" if top1 is not None else ""
        note = f"; {run['message']}" if run.get("message") else ""
        return f"done    {run['name']}  {numbers}  ({fmt_seconds(run['seconds'])}{attempts_note}){note}"
    return f"FAILED  {run['name']}: {run['message']}"


def drive(sweep: Sweep, pool: Any, env: dict[str, str], progress: Progress) -> None:
    """Hand out runs as workers free up, retry runs whose worker died, record every change in sweep.json."""
    options = sweep.options
    queue = deque(name for name, run in sweep.runs.items() if run["state"] in ("pending", "interrupted"))
    slots: int = getattr(pool, "slots", options.workers or 1)
    durations: list[float] = []

    def start_runs() -> None:
        while queue and pool.has_room():
            name = queue.popleft()
            run = sweep.runs[name]
            run.update(state="running", attempts=run["attempts"] + 1, message=None, pid=None, host=None)
            pool.submit(make_job(sweep, name, env))
            sweep.save()

    start_runs()
    while queue or any(r["state"] == "running" for r in sweep.runs.values()):
        changed = False
        for name, pid in pool.pids():
            sweep.runs[name].update(pid=pid, host=socket.gethostname())
            changed = True
        for result in pool.results(POLL_SECONDS):
            changed = True
            handle_result(sweep, result, queue, progress, durations)
        start_runs()  # a freed worker takes the next run before the status line counts the running ones
        if changed:
            sweep.save()
        progress.show(sweep.count("done", "failed"), status_text(sweep, slots, durations))


def handle_result(
    sweep: Sweep, result: dict[str, Any], queue: deque, progress: Progress, durations: list[float]
) -> None:
    """Record how one run ended: done, failed, interrupted, or died (then queued again to be resumed)."""
    run = sweep.runs[result["name"]]  # the pool's own name for the task, never one the result carries
    if sweep.options.gather and "blob" in result:
        try:
            unpack_folder(result["blob"], sweep.folder, run["name"])
        except CifarlabError as exc:  # a forged or broken blob fails its run; the rest of the sweep goes on
            result = {**result, "state": "failed", "message": str(exc)}
    if "log" in result:
        with open(sweep.folder / LOG_DIR / f"{run['name']}.log", "a") as log:
            log.write(result["log"])
    state = result["state"]
    run.update(pid=None, host=result.get("host"), message=result.get("message"))
    if state == "died" and run["attempts"] <= sweep.options.retries:
        run["state"] = "pending"
        queue.appendleft(run["name"])
        progress.line(
            f"retry   {run['name']}: {result.get('message')}; resuming it from its last checkpoint "
            f"(attempt {run['attempts'] + 1} of {sweep.options.retries + 1})"
        )
        return
    if state == "died":
        state, run["message"] = "failed", f"{result.get('message')}, {run['attempts']} times"
    run["state"] = state
    if state == "interrupted":
        return
    run["seconds"] = number_or_none(result.get("seconds"))
    if state == "done":
        sent = result.get("headline")
        numbers: dict[str, Any] = sent if isinstance(sent, dict) else {}
        run["headline"] = {k: number_or_none(numbers.get(k)) for k in HEADLINE_KEYS}
        whole = whole_run_seconds(run, result)
        if whole is not None:
            durations.append(whole)
    note = f", attempt {run['attempts']}" if run["attempts"] > 1 else ""
    if result.get("resumed_from") is not None:
        note += f", resumed after epoch {result['resumed_from']}"
    progress.line(finished_line(run, note))


def stop_cleanly(sweep: Sweep, pool: Any, progress: Progress) -> None:
    """Ctrl-C: every running run saves its last whole epoch and stops; the states are recorded."""
    progress.line("stopping: each running run keeps its last whole epoch (Ctrl-C again is ignored) ...")
    previous = (
        signal.signal(signal.SIGINT, signal.SIG_IGN) if threading.current_thread() is threading.main_thread() else None
    )
    try:
        pool.interrupt()
        deadline = time.monotonic() + INTERRUPT_WAIT + 10
        while any(r["state"] == "running" for r in sweep.runs.values()) and time.monotonic() < deadline:
            for result in pool.results(POLL_SECONDS):
                handle_result(sweep, result, deque(), progress, [])
        for run in sweep.runs.values():
            if run["state"] in ("running", "pending") and folder_state(sweep.folder / run["name"]) == "partial":
                run["state"] = "interrupted"
            elif run["state"] == "running":
                run["state"] = "pending"
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (a scheduler or ``kill``) stops the sweep as cleanly as Ctrl-C does."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def compare_and_report(sweep: Sweep, data_dir: str | None) -> str:
    """compare and report over the finished runs of the grid; the groups go into sweep.json."""
    from cifarlab.base.files import atomic_write
    from cifarlab.results.compare import build_comparison, comparison_markdown, write_comparison
    from cifarlab.results.report import report

    done = [sweep.folder / r.name for r in sweep.planned if sweep.runs[r.name]["state"] == "done"]
    if not done:
        return "no run finished, so there is nothing to compare"
    comp = build_comparison(done)
    text = comparison_markdown(comp)
    atomic_write(sweep.folder / "comparison.md", lambda f: f.write(text), binary=False)
    if sweep.options.report:
        report(done, out=sweep.folder / "report.html", data_dir=data_dir)  # writes comparison/ too
    else:
        write_comparison(comp, sweep.folder / "comparison")
    sweep.groups = [
        {
            "label": g.label,
            "model": g.runs[0].config.get("model"),
            "n": g.n,
            "seeds": g.seeds,
            "runs": [r.name for r in g.runs],
            **{k: {"mean": m, "std": s} for k, (m, s) in g.stats.items()},
        }
        for g in comp.groups
    ]
    return text


def make_pool(options: SweepOptions) -> Any:
    if options.ray is None:
        return LocalPool(options.workers or 1)
    return RayPool(options.ray, options.workers or 1, options.cpus_per_run, options.gpus_per_run, options.retries)


def run_sweep(spec: SweepSpec, options: SweepOptions, data_dir: str | None = None) -> Path:
    """Train every run of the grid not yet done, then compare and report. Returns the sweep folder."""
    options = resolve_options(options)
    if options.mlflow:
        from cifarlab.engine.mlflow_run import require_mlflow

        require_mlflow()
    data_dir = str(resolve_data_dir(data_dir))
    planned = expand(spec, data_dir)
    folder = spec.folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOG_DIR).mkdir(exist_ok=True)
    with SweepLock(folder):
        sweep = Sweep(spec, options, planned)
        sweep.save()
        env = start_mlflow(sweep) if options.mlflow else {}
        total = len(planned)
        pool = make_pool(options)
        announce(sweep, pool)
        run_all(sweep, pool, env, Progress(total, sweep.count("done", "failed"), spec.name))
        failed = [r["name"] for r in sweep.runs.values() if r["state"] == "failed"]
        sweep.status = "failed" if failed else "finished"
        text = compare_and_report(sweep, data_dir)
        sweep.save()
        if options.mlflow:
            finish_mlflow(sweep)
            sweep.save()
    print(
        "\n"
        + text
        + f"\nsweep written to {folder} (sweep.json, comparison.md"
        + (", report.html" if options.report and sweep.groups else "")
        + ")",
        flush=True,
    )
    if failed:
        raise CifarlabError(
            f"sweep {spec.name}: {len(failed)} of {total} runs failed ({', '.join(failed)}); "
            f"their messages are in {folder / SWEEP_FILE}, their output in {folder / LOG_DIR}/"
        )
    return folder


def announce(sweep: Sweep, pool: Any) -> None:
    """The sweep's first line (its runs, where they go), and a line per run that failed before starting."""
    options = sweep.options
    print(
        f"sweep {sweep.spec.name}: {len(sweep.planned)} runs ({sweep.count('done')} already done, "
        f"{sweep.count('interrupted')} to resume, {sweep.count('failed')} failed before starting) on "
        f"{pool.description}, {options.threads} thread{'s' * (options.threads != 1)} per run -> {sweep.folder}",
        flush=True,
    )
    for run in sweep.runs.values():
        if run["state"] == "failed":
            print(f"FAILED  {run['name']}: {run['message']}", flush=True)


def run_all(sweep: Sweep, pool: Any, env: dict[str, str], progress: Progress) -> None:
    """Drive the runs to the end, then close the bar and the pool; Ctrl-C (or SIGTERM) stops every run cleanly,
    records it and raises SweepInterrupted."""
    spec = sweep.spec
    try:
        with sigterm_as_ctrl_c():
            drive(sweep, pool, env, progress)
    except KeyboardInterrupt:
        stop_cleanly(sweep, pool, progress)
        sweep.status = "interrupted"
        sweep.save()
        progress.close()
        pool.close()
        raise SweepInterrupted(
            f"sweep {spec.name} interrupted: {sweep.count('done')} done, {sweep.count('interrupted')} "
            f"stopped part-way (they resume from their last epoch), {sweep.count('pending')} not started. "
            f"Continue with: cifarlab sweep --resume {spec.folder}"
        ) from None
    progress.close()
    pool.close()


def resolve_data_dir(data_dir: str | None) -> Path:
    """The data folder as an absolute path: every worker, wherever its working folder, finds the same one."""
    from cifarlab.data.cifar10 import resolve_data_dir as resolve

    return resolve(data_dir).resolve()
