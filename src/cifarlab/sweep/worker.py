"""One run, as a worker runs it (a thread of the local pool, or a Ray task on any node): the Job it is handed,
the state of its folder, its training and analysis processes, how their exit reads, and --ray-gather's packing
of run folders."""

from __future__ import annotations

import io
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cifarlab.base.errors import CifarlabError, escape
from cifarlab.base.files import FileLock, write_json
from cifarlab.runs.folder import RunFolder
from cifarlab.runs.layout import RUN_JSON
from cifarlab.sweep.record import HEADLINE_KEYS, LOG_DIR, SWEEP_FILE, ResultState, check_run_name, number_or_none

INTERRUPT_WAIT = 60.0  # seconds a run gets to save and exit after Ctrl-C before it is killed
POLL_SECONDS = 0.5

FolderState = Literal["done", "partial", "empty", "missing"]  # what a run folder holds (folder_state)
Analysis = Literal["none", "numbers", "full"]  # after training: no analysis, its numbers, or numbers and figures


@dataclass(frozen=True)
class Job:
    """What a worker needs to train one run (picklable, so a Ray task can take it to any node)."""

    name: str
    config: dict[str, Any]
    sweep_dir: str
    threads: int | None
    env: dict[str, str] = field(default_factory=dict)
    gather: bool = False  # train in a scratch folder of the node, send the run folder back
    analysis: Analysis = "none"
    blob: bytes | None = None  # with gather: the partial run folder to resume (pack_folder)
    robustness: bool = False  # after training: cifarlab robustness RUN
    robustness_limit: int | None = None  # its --limit


# ---------------------------------------------------------------------------------------------------------
# One run, as a worker runs it (a thread of the local pool, or a Ray task on any node)
# ---------------------------------------------------------------------------------------------------------


def folder_state(run_dir: Path) -> FolderState:
    """``done`` (run.json), ``partial`` (a last.pt to resume from), ``empty`` (no checkpoint yet), ``missing``."""
    if (run_dir / RUN_JSON).is_file():
        return "done"
    if (run_dir / "last.pt").is_file():
        return "partial"
    return "empty" if run_dir.exists() else "missing"


def headline(run_dir: Path) -> dict[str, Any]:
    """The numbers of a finished run that sweep.json keeps (from run.json)."""
    info = RunFolder(run_dir).info
    return {k: number_or_none(info.get(k)) for k in HEADLINE_KEYS}


def child_env(job: Job) -> dict[str, str]:
    """The worker's environment, with its share of threads and the tracking settings of the sweep."""
    threads = str(job.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
    env.update(job.env)
    return env


def interrupt_process(proc: subprocess.Popen) -> int:
    """Stop one training process as Ctrl-C would: it keeps its last whole epoch in last.pt and exits (130); killed
    if it hangs. SIGTERM, which training treats as Ctrl-C: a sweep started in the background by a shell runs with
    SIGINT ignored, and its training processes inherit that."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=INTERRUPT_WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
    return 130 if code == 128 + signal.SIGTERM else code  # stopped at the sweep's request, not killed


def run_process(
    cmd: list[str],
    job: Job,
    log_path: Path,
    cancel: threading.Event | None,
    on_start: Callable[[int], None] | None,
    keep_fd: int | None,
) -> int:
    """Run one command of a run with its output appended to the run's log; returns its exit code (130 when
    cancelled). In a new session, so a terminal's Ctrl-C reaches the driver, which passes it on once."""
    with open(log_path, "a") as log:
        log.write(f"\n$ {shlex.join(cmd)}    # on {socket.gethostname()}, {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(job),
            start_new_session=True,
            pass_fds=(keep_fd,) if keep_fd is not None else (),
        )
    if on_start is not None:
        on_start(proc.pid)
    try:
        while True:
            try:
                return proc.wait(timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                if cancel is not None and cancel.is_set():
                    return interrupt_process(proc)
    except KeyboardInterrupt:  # a Ray task is cancelled by raising this in it
        interrupt_process(proc)
        raise


def last_error(log_path: Path) -> str:
    """The reason a run failed: its ``cifarlab: error:`` line, else the last line of its output."""
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    for line in reversed(lines):
        if line.startswith("cifarlab: error:"):
            return line.removeprefix("cifarlab: error:").strip()
    return lines[-1] if lines else "no output"


def resumed_epoch(run_dir: Path) -> int | None:
    """The epoch a partial run will continue after: the one its last.pt holds (read safely), None if unreadable
    (then ``cifarlab train --resume`` says why)."""
    from cifarlab.runs.checkpoint import load_checkpoint

    try:
        return int(load_checkpoint(run_dir, "last.pt")["epoch"])
    except CifarlabError:
        return None


def attempt_state(code: int, run_dir: Path, log_path: Path) -> tuple[ResultState, str | None]:
    """A training process's exit -> the run's state and message."""
    if code == 0 and (run_dir / RUN_JSON).is_file():
        return "done", None
    if code == 0:
        return "failed", "training ended without writing run.json"
    if code == 130:
        return "interrupted", "stopped by Ctrl-C"
    if code < 0 or code >= 128:  # killed by a signal (directly, or through a shell as 128 + N)
        number = -code if code < 0 else code - 128
        name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else f"signal {number}"
        return "died", f"the worker was killed ({name})"
    return "failed", last_error(log_path)


def pack_folder(folder: Path) -> bytes:
    """A folder as a gzipped tar (the run folder sent between driver and node with --ray-gather)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return buf.getvalue()


def check_members(members: list[tarfile.TarInfo], name: str) -> None:
    """Refuse a gathered blob unless it is the folder ``name/`` and every member a plain file or folder inside it:
    no other run's folder, no absolute path, no '..', no link or device (whatever name the blob itself carries)."""
    if not any(m.name == name and m.isdir() for m in members):
        raise CifarlabError(f"the folder sent back for run {name} does not hold that run's folder")
    for member in members:
        parts = member.name.split("/")
        if member.name.startswith("/") or parts[0] != name or any(p in ("..", "") for p in parts[1:]):
            raise CifarlabError(
                f"the folder sent back for run {name} holds {escape(member.name)!r}, outside that run's folder"
            )
        if not (member.isfile() or member.isdir()):
            raise CifarlabError(
                f"the folder sent back for run {name} holds {escape(member.name)!r}, which is not a plain file "
                "(a link or a device)"
            )


def unpack_folder(blob: bytes, parent: Path, name: str) -> None:
    """Unpack ``pack_folder``'s output as ``parent/name`` (the run it was asked for), replacing that folder only
    once the whole blob has been checked and extracted beside it; a forged blob leaves every folder as it was."""
    check_run_name(name, "a gathered run")
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            members = tar.getmembers()
            check_members(members, name)
            parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".gather", dir=parent))
            try:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(staging, members=members, filter="data")
                else:  # older Pythons: every member was checked above
                    tar.extractall(staging, members=members)
                target = parent / name
                if target.is_symlink() or target.is_file():
                    target.unlink()
                elif target.exists():
                    shutil.rmtree(target)
                os.replace(staging / name, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise CifarlabError(f"the folder sent back for run {name} cannot be unpacked: {exc}") from None


def execute_run(
    job: Job, cancel: threading.Event | None = None, on_start: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Train (or resume, or skip) one run and report how it ended. The body of a local worker and of a Ray task.

    ``job``: the run's name and config, the sweep folder, threads, env, gather (and blob), analysis."""
    t0 = time.time()
    name = job.name
    gather = bool(job.gather)
    work = Path(tempfile.mkdtemp(prefix="cifarlab-sweep-")) if gather else Path(job.sweep_dir)
    logs = work / LOG_DIR
    logs.mkdir(parents=True, exist_ok=True)
    run_dir, log_path = work / name, logs / f"{name}.log"
    result: dict[str, Any] = {"name": name, "host": socket.gethostname(), "resumed_from": None}
    if not gather and not Path(job.sweep_dir, SWEEP_FILE).is_file():
        result.update(
            state="failed",
            message=f"{job.sweep_dir} is not visible on {result['host']}: put the "
            "runs on storage every node mounts at the same path, or use --ray-gather",
        )
        return result
    if gather and job.blob:
        try:
            unpack_folder(job.blob, work, name)
        except CifarlabError as exc:
            result.update(state="failed", message=str(exc))
            return result
    lock = FileLock(logs / f"{name}.lock")  # a second worker for this run (a retry while an orphan trains) waits
    try:
        if not lock.acquire(wait=True, cancel=cancel):
            result.update(state="interrupted", message="stopped by Ctrl-C while waiting for the run's lock")
            return result
        result["state"], result["message"] = execute_locked(
            job, work, run_dir, log_path, cancel, on_start, lock.fd, result
        )
    finally:
        lock.release()
    if result["state"] == "done":
        try:
            result["headline"] = headline(run_dir)
        except CifarlabError as exc:  # a run.json that is not a record: the run failed, the sweep goes on
            result.update(state="failed", message=str(exc))
    result["seconds"] = time.time() - t0
    if gather:
        if run_dir.exists():
            result["blob"] = pack_folder(run_dir)
        result["log"] = log_path.read_text(errors="replace") if log_path.is_file() else ""
        shutil.rmtree(work, ignore_errors=True)
    return result


def execute_locked(
    job: Job,
    work: Path,
    run_dir: Path,
    log_path: Path,
    cancel: threading.Event | None,
    on_start: Callable[[int], None] | None,
    fd: int | None,
    result: dict[str, Any],
) -> tuple[ResultState, str | None]:
    """The training (and analysis) commands of one run, under its lock."""
    python = [sys.executable, "-m", "cifarlab"]
    found = folder_state(run_dir)
    if found == "done":
        return "done", None
    if found == "empty":  # started, but killed before its first checkpoint: nothing to resume
        shutil.rmtree(run_dir)
    resuming = found == "partial"
    if resuming:
        result["resumed_from"] = resumed_epoch(run_dir)  # from the checkpoint, before training goes on
    data = ["--data-dir", job.config["data_dir"]] if job.config.get("data_dir") else []  # the sweep's own
    if resuming:
        cmd = python + ["train", "--resume", str(run_dir), "--no-analysis", *data]
    else:
        config_file = log_path.with_name(f"{job.name}.config.json")
        write_json(config_file, job.config)
        cmd = python + [
            "train",
            "--config",
            str(config_file),
            "--out",
            str(work),
            "--name",
            job.name,
            "--no-analysis",
            *data,
        ]
    state, message = attempt_state(run_process(cmd, job, log_path, cancel, on_start, fd), run_dir, log_path)
    if state == "done" and job.analysis != "none":
        cmd = python + ["analyze", str(run_dir), *data] + (["--no-images"] if job.analysis == "numbers" else [])
        code = run_process(cmd, job, log_path, cancel, on_start, fd)
        if code != 0:
            message = f"trained, but its analysis failed ({last_error(log_path)}); the report retries it"
    if state == "done" and job.robustness:
        message = robustness_step(job, run_dir, log_path, cancel, on_start, fd, data) or message
    return state, message


def robustness_step(
    job: Job,
    run_dir: Path,
    log_path: Path,
    cancel: threading.Event | None,
    on_start: Callable[[int], None] | None,
    fd: int | None,
    data: list[str],
) -> str | None:
    """``cifarlab robustness RUN`` for a run just trained (--robustness); a failure is the run's message, never
    a failed run."""
    limit = ["--limit", str(job.robustness_limit)] if job.robustness_limit else []
    device = ["--device", str(job.config["device"])] if job.config.get("device") else []
    cmd = [sys.executable, "-m", "cifarlab", "robustness", str(run_dir), *limit, *device, *data]
    if run_process(cmd, job, log_path, cancel, on_start, fd) != 0:
        return f"trained, but its robustness analysis failed ({last_error(log_path)})"
    return None
