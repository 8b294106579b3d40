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

import argparse
import contextlib
import dataclasses
import io
import itertools
import json
import math
import os
import re
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
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import Any

from cifarlab.base.cores import usable_cores
from cifarlab.base.errors import CifarlabError, UsageError, escape
from cifarlab.base.files import FileLock, read_json, write_json
from cifarlab.base.records import kind_of, loads_toml, loads_yaml, read_bounded_text
from cifarlab.cli.flags import non_negative_int, positive_float, positive_int
from cifarlab.config.train_config import RECIPES, TrainConfig, make_config, parse_overrides
from cifarlab.runs.folder import RunFolder

try:
    import fcntl
except ImportError:  # not on Windows: runs are then not locked against a second driver
    fcntl = None  # type: ignore[assignment]

SWEEP_FILE = "sweep.json"
LOG_DIR = "logs"
ALIASES = {"width": "model_width"}  # the train command's flag names, where they differ from the config key
OWN_FLAGS = {
    "model": "--model",
    "recipe": "--recipe",
    "seed": "--seeds",
    "name": "--name",
    "out": "--out",
    "data_dir": "--data-dir",
}
SPEC_IGNORES = ("name", "out", "data_dir", "device")  # may change between invocations of one sweep
HEADLINE_KEYS = (
    "test_top1",
    "test_top3",
    "best_val_top1",
    "train_seconds",
    "images_per_second",
    "epochs",
    "params",
    "seconds_used",
)
MAX_RUNS = 10_000  # runs in one sweep: its sweep.json stays a few MB, its plan a few seconds
MAX_SEED_DIGITS = 20  # a seed beyond 2**32 is refused later, by the config; this only keeps int() cheap
INTERRUPT_WAIT = 60.0  # seconds a run gets to save and exit after Ctrl-C before it is killed
POLL_SECONDS = 0.5


# ---------------------------------------------------------------------------------------------------------
# The grid
# ---------------------------------------------------------------------------------------------------------


@dataclass
class SweepSpec:
    """What a sweep trains. Two invocations with the same name must plan the same config for a run name."""

    name: str
    models: list[str | None] = field(default_factory=lambda: [None])  # None: the recipe's model
    recipes: list[str] = field(default_factory=lambda: ["seed"])
    grid: dict[str, list[Any]] = field(default_factory=dict)  # config key -> values (one value: every run)
    seeds: list[int] = field(default_factory=lambda: [0])
    out: str = "runs"

    @property
    def folder(self) -> Path:
        return Path(self.out) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SweepOptions:
    """How a sweep runs: none of these change what a run computes."""

    workers: int | None = None  # runs at a time on the local pool (default: physical cores)
    threads: int | None = None  # torch threads per run (default: cores / workers; Ray: cpus_per_run)
    ray: str | None = None  # None: local pool; "local": a private Ray instance; else a cluster's address
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    gather: bool = False  # Ray: train on the node's disk and send the run folder back to the driver
    retries: int = 2  # times a run whose worker died is resumed
    mlflow: str | None = None
    report: bool = True  # analyse each run (numbers and figures) and end with report.html
    images: bool = False  # also galleries and Grad-CAM in each run's analysis (slow on a CPU)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


OPTION_KEYS = {f.name for f in dataclasses.fields(SweepOptions)}
CONFIG_KEYS = TrainConfig.field_names()


def config_key(key: str) -> str:
    """A config key as written by a user (``width``, ``batch-size``) -> the TrainConfig field name."""
    key = key.strip().replace("-", "_")
    key = ALIASES.get(key, key)
    if key in OWN_FLAGS:
        raise UsageError(f"{key} is not swept with --set: use {OWN_FLAGS[key]}")
    if key not in CONFIG_KEYS:
        raise UsageError(f"unknown config key {key!r} (see the TrainConfig fields in config.py)")
    return key


def split_values(text: str) -> list[str]:
    """``0.5,0.75,[1,2]`` -> ``["0.5", "0.75", "[1,2]"]``: commas inside brackets belong to the value."""
    values, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += ch
    values.append(current)
    return [v.strip() for v in values]


def parse_set(items: Sequence[str]) -> dict[str, list[Any]]:
    """``--set lr=0.5,0.75 --set width=16`` -> ``{"lr": [0.5, 0.75], "model_width": [16]}`` (JSON values)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise UsageError(f"--set expects KEY=VALUE[,VALUE...], got {item!r}")
        key = config_key(key)
        values = [parse_overrides([f"{key}={v}"])[key] for v in split_values(text)]
        if any(v == "" for v in values):
            raise UsageError(f"--set {item!r}: empty value")
        grid[key] = values
    return grid


def seed_parts(value: Any) -> list[str]:
    """The parts of a seeds value (``"0-2,7"`` -> ``["0-2", "7"]``; a list of whole numbers, one each)."""
    if isinstance(value, bool):
        raise UsageError(f"--seeds: expected seeds like 0-4 or 0,1,5, got {value!r}")
    if isinstance(value, int):
        return [str(value)]
    if isinstance(value, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise UsageError(f"seeds must be whole numbers, got {short(value)}")
        if len(value) > MAX_RUNS:
            raise UsageError(f"seeds: {len(value):,} seeds, more than a sweep may hold ({MAX_RUNS:,} runs)")
        return [str(v) for v in value]
    return [p.strip() for p in str(value).split(",")]


def parse_seeds(value: Any) -> list[int]:
    """``"0-4"``, ``"0,2,5"``, ``"0-2,7"``, ``3`` or ``[0, 1]`` -> a list of distinct seeds, in order. The count is
    checked against :data:`MAX_RUNS` before any list is built (``0-1000000000`` is refused, not allocated)."""
    ranges: list[tuple[int, int]] = []
    for part in seed_parts(value):
        match = re.fullmatch(rf"(-?\d{{1,{MAX_SEED_DIGITS}}})(?:-(\d{{1,{MAX_SEED_DIGITS}}}))?", part)
        if not match:
            raise UsageError(f"--seeds: expected seeds like 0-4 or 0,1,5, got {short(value)}")
        lo, hi = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if hi < lo:
            raise UsageError(f"--seeds: the range {part} is empty")
        ranges.append((lo, hi))
    count = sum(hi - lo + 1 for lo, hi in ranges)
    if count > MAX_RUNS:
        raise UsageError(f"--seeds {short(value)}: {count:,} seeds, more than a sweep may hold ({MAX_RUNS:,} runs)")
    seen: dict[int, None] = {}  # ordered and O(1) to test, unlike a list
    for lo, hi in ranges:
        seen.update(dict.fromkeys(range(lo, hi + 1)))
    return list(seen)


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for a one-line message about a value a file may make huge."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def grid_size(spec: SweepSpec) -> int:
    """How many runs the grid plans (models x recipes x every key's values x seeds), counted, not expanded."""
    return math.prod([len(spec.models), len(spec.recipes), len(spec.seeds), *(len(v) for v in spec.grid.values())])


def check_grid_size(spec: SweepSpec) -> None:
    """Refuse a grid of more than :data:`MAX_RUNS` runs before anything is planned or allocated."""
    size = grid_size(spec)
    if size > MAX_RUNS:
        parts = [f"{len(spec.models)} models", f"{len(spec.recipes)} recipes"]
        parts += [f"{len(v)} {k}" for k, v in spec.grid.items() if len(v) > 1] + [f"{len(spec.seeds)} seeds"]
        raise UsageError(
            f"sweep {spec.name}: the grid holds {size:,} runs ({' x '.join(parts)}), more than a sweep may hold "
            f"({MAX_RUNS:,}); split it into several sweeps"
        )


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def name_part(value: Any) -> str:
    """A grid value as it appears in a run folder name (file-name safe)."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


@dataclass
class PlannedRun:
    """One grid point: its folder name, the values that vary, and its config (or why it has none)."""

    name: str
    point: dict[str, Any]
    config: dict[str, Any] | None
    error: str | None = None


def expand(spec: SweepSpec, data_dir: str | None = None) -> list[PlannedRun]:
    """Every (model, recipe, grid values, seed) combination, seeds innermost. A combination whose config is
    invalid (a bad value) is planned as failed, with the reason, so the rest of the grid still runs."""
    check_grid_size(spec)
    folder = spec.folder.resolve()
    keys = list(spec.grid)
    varying = [k for k in keys if len(spec.grid[k]) > 1]
    runs: list[PlannedRun] = []
    names: set[str] = set()
    for model, recipe, values in itertools.product(
        spec.models, spec.recipes, itertools.product(*(spec.grid[k] for k in keys))
    ):
        overrides = dict(zip(keys, values, strict=True))
        label = model or RECIPES.get(recipe, {}).get("model") or TrainConfig.model
        for seed in spec.seeds:
            base = "-".join([label, recipe] + [f"{k}={name_part(overrides[k])}" for k in varying] + [f"s{seed}"])
            name, k = base, 1
            while name in names:  # values that print alike (1 and 1.0) still get folders of their own
                k += 1
                name = f"{base}-{k}"
            names.add(name)
            point = {"model": label, "recipe": recipe, **{k: overrides[k] for k in varying}, "seed": seed}
            try:
                check_types(overrides)
                config = make_config(
                    recipe, model=model, seed=seed, out=str(folder), name=name, data_dir=data_dir, **overrides
                ).to_dict()
                runs.append(PlannedRun(name, point, config))
            except (CifarlabError, TypeError, ValueError) as exc:
                runs.append(PlannedRun(name, point, None, f"bad config: {exc}"))
    return runs


FIELD_TYPES = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}


def check_types(values: dict[str, Any]) -> None:
    """A value of the wrong type for its config field (``epochs=abc``) is a bad config, said in plain words."""
    for key, value in values.items():
        allowed = {t.strip() for t in FIELD_TYPES[key].split("|")}
        ok = (
            (value is None and "None" in allowed)
            or (isinstance(value, bool) and "bool" in allowed)
            or (not isinstance(value, bool) and isinstance(value, int) and ({"int", "float"} & allowed))
            or (isinstance(value, float) and "float" in allowed)
            or (isinstance(value, str) and "str" in allowed)
        )
        if not ok:
            raise UsageError(f"{key} must be {' or '.join(sorted(allowed))}, got {json.dumps(value)}")


def same_plan(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The config keys (other than where it runs) on which two plans of one run differ. A key one plan lacks (a
    field added to the config since it was planned) counts as its default, which is what that version ran."""
    defaults = TrainConfig().to_dict()
    keys = sorted((set(old) | set(new)) - set(SPEC_IGNORES))
    return [k for k in keys if old.get(k, defaults.get(k)) != new.get(k, defaults.get(k))]


# ---------------------------------------------------------------------------------------------------------
# Sweep files (TOML or YAML)
# ---------------------------------------------------------------------------------------------------------


def read_sweep_file(path: str | Path) -> dict[str, Any]:
    """The table of a TOML (``.toml``) or YAML (``.yaml``/``.yml``, needs PyYAML) sweep file, read through the
    bounded reader (records.py): deep nesting, YAML anchors and aliases, huge integers are one UsageError."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise UsageError(f"{path}: a sweep file ends in .toml, .yaml or .yml")
    if not path.exists():
        raise UsageError(f"{path}: no such sweep file")
    text = read_bounded_text(path, UsageError)
    source = escape(str(path))
    data = loads_toml(text, source, UsageError) if suffix == ".toml" else loads_yaml(text, source, UsageError)
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a table of keys (name, model, recipe, seeds, set, ...)")
    return data


def settings_from_file(path: str | Path) -> dict[str, Any]:
    """A sweep file's keys, checked, in the form the command line gives them (``set`` as KEY -> values).

    Keys: ``name``, ``out``, ``model``/``models``, ``recipe``/``recipes``, ``seeds``, ``set`` (a table of config
    keys, each a value or a list of values), any config key at the top level (same as in ``set``), and the
    options ``workers``, ``threads``, ``ray``, ``cpus_per_run``, ``gpus_per_run``, ``gather``, ``retries``,
    ``mlflow``, ``report``, ``images``."""
    data = read_sweep_file(path)
    settings: dict[str, Any] = {"set": {}}
    try:
        for key, value in data.items():
            norm = str(key).replace("-", "_")
            if norm in ("model", "models"):
                settings["models"] = [str(v) for v in as_list(value)]
            elif norm in ("recipe", "recipes"):
                settings["recipes"] = [str(v) for v in as_list(value)]
            elif norm == "seeds":
                settings["seeds"] = parse_seeds(value)
            elif norm in ("name", "out"):
                settings[norm] = str(value)
            elif norm == "set":
                if not isinstance(value, dict):
                    raise UsageError("'set' must be a table of config keys")
                settings["set"].update({config_key(k): as_list(v) for k, v in value.items()})
            elif norm in OPTION_KEYS:
                settings[norm] = value
            else:
                settings["set"][config_key(norm)] = as_list(value)
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from None
    return settings


# ---------------------------------------------------------------------------------------------------------
# One run, as a worker runs it (a thread of the local pool, or a Ray task on any node)
# ---------------------------------------------------------------------------------------------------------


def folder_state(run_dir: Path) -> str:
    """``done`` (run.json), ``partial`` (a last.pt to resume from), ``empty`` (no checkpoint yet), ``missing``."""
    if (run_dir / "run.json").is_file():
        return "done"
    if (run_dir / "last.pt").is_file():
        return "partial"
    return "empty" if run_dir.exists() else "missing"


def headline(run_dir: Path) -> dict[str, Any]:
    """The numbers of a finished run that sweep.json keeps (from run.json)."""
    info = RunFolder(run_dir).info
    return {k: number_or_none(info.get(k)) for k in HEADLINE_KEYS}


def number_or_none(value: Any) -> float | int | None:
    """A headline number as run.json holds it; None for anything else (a forged string, list or true)."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def child_env(job: dict[str, Any]) -> dict[str, str]:
    """The worker's environment, with its share of threads and the tracking settings of the sweep."""
    threads = str(job["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
    env.update(job.get("env", {}))
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
    job: dict[str, Any],
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


def classify(code: int, run_dir: Path, log_path: Path) -> tuple[str, str | None]:
    """A training process's exit -> the run's state and message."""
    if code == 0 and (run_dir / "run.json").is_file():
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
    job: dict[str, Any], cancel: threading.Event | None = None, on_start: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Train (or resume, or skip) one run and report how it ended. The body of a local worker and of a Ray task.

    ``job``: name, config, sweep_dir, threads, analysis ("none", "numbers" or "full"), env, gather, blob."""
    t0 = time.time()
    name = job["name"]
    gather = bool(job.get("gather"))
    work = Path(tempfile.mkdtemp(prefix="cifarlab-sweep-")) if gather else Path(job["sweep_dir"])
    logs = work / LOG_DIR
    logs.mkdir(parents=True, exist_ok=True)
    run_dir, log_path = work / name, logs / f"{name}.log"
    result: dict[str, Any] = {"name": name, "host": socket.gethostname(), "resumed_from": None}
    if not gather and not Path(job["sweep_dir"], SWEEP_FILE).is_file():
        result.update(
            state="failed",
            message=f"{job['sweep_dir']} is not visible on {result['host']}: put the "
            "runs on storage every node mounts at the same path, or use --ray-gather",
        )
        return result
    if gather and job.get("blob"):
        try:
            unpack_folder(job["blob"], work, name)
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
    job: dict[str, Any],
    work: Path,
    run_dir: Path,
    log_path: Path,
    cancel: threading.Event | None,
    on_start: Callable[[int], None] | None,
    fd: int | None,
    result: dict[str, Any],
) -> tuple[str, str | None]:
    """The training (and analysis) commands of one run, under its lock."""
    python = [sys.executable, "-m", "cifarlab"]
    state = folder_state(run_dir)
    if state == "done":
        return "done", None
    if state == "empty":  # started, but killed before its first checkpoint: nothing to resume
        shutil.rmtree(run_dir)
    resuming = state == "partial"
    if resuming:
        result["resumed_from"] = resumed_epoch(run_dir)  # from the checkpoint, before training goes on
    data = ["--data-dir", job["config"]["data_dir"]] if job["config"].get("data_dir") else []  # the sweep's own
    if resuming:
        cmd = python + ["train", "--resume", str(run_dir), "--no-analysis", *data]
    else:
        config_file = log_path.with_name(f"{job['name']}.config.json")
        write_json(config_file, job["config"])
        cmd = python + [
            "train",
            "--config",
            str(config_file),
            "--out",
            str(work),
            "--name",
            job["name"],
            "--no-analysis",
            *data,
        ]
    state, message = classify(run_process(cmd, job, log_path, cancel, on_start, fd), run_dir, log_path)
    if state == "done" and job.get("analysis", "none") != "none":
        cmd = python + ["analyze", str(run_dir), *data] + (["--no-images"] if job["analysis"] == "numbers" else [])
        code = run_process(cmd, job, log_path, cancel, on_start, fd)
        if code != 0:
            message = f"trained, but its analysis failed ({last_error(log_path)}); the report retries it"
    return state, message


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

    def submit(self, job: dict[str, Any]) -> None:
        name = job["name"]
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

    def submit(self, job: dict[str, Any]) -> None:
        self.refs[self.remote.remote(job)] = job["name"]

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


# ---------------------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------------------


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 90:
        return f"{seconds}s"
    if seconds < 5400:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """One overall bar in a terminal (a log gets the same as a line whenever a run ends), and one printed line
    per finished run."""

    def __init__(self, total: int, finished: int, name: str) -> None:
        from cifarlab.base.progress import is_terminal

        self.bar = None
        self.total, self.finished = total, finished
        if is_terminal():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=finished,
                desc=f"sweep {name}",
                unit="run",
                dynamic_ncols=True,
                bar_format="{desc} |{bar}| {n_fmt}/{total_fmt} finished{postfix}",
            )

    def show(self, finished: int, status: str) -> None:
        if self.bar is not None:
            self.bar.n = finished
            self.bar.set_postfix_str(status, refresh=True)
        elif finished != self.finished:
            print(f"        {finished}/{self.total} finished, {status}", flush=True)
        self.finished = finished

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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

    def count(self, *states: str) -> int:
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


# What sweep.json may hold (a file anyone may have edited): each key's allowed types. Missing keys are allowed
# (an older cifarlab wrote fewer), unknown ones and wrong types are refused with one line.
NONE = type(None)
NUMBER = (int, float)
RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "status": (str,),
    "started": (str,),
    "continue_with": (str,),
    "updated": (str,),
    "spec": (dict,),
    "options": (dict,),
    "counts": (dict,),
    "groups": (list,),
    "mlflow": (dict, NONE),
    "runs": (list,),
}
SPEC_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "models": (list,),
    "recipes": (list,),
    "grid": (dict,),
    "seeds": (list,),
    "out": (str,),
}
ENTRY_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "point": (dict, NONE),
    "state": (str,),
    "attempts": (int,),
    "seconds": (*NUMBER, NONE),
    "message": (str, NONE),
    "headline": (dict, NONE),
    "config": (dict, NONE),
    "pid": (int, NONE),
    "host": (str, NONE),
}
MLFLOW_TYPES: dict[str, tuple[type, ...]] = {"uri": (str,), "run_id": (str,), "experiment": (str,)}
RUN_STATES = ("pending", "running", "done", "interrupted", "failed")


def check_fields(data: dict[str, Any], types: dict[str, tuple[type, ...]], where: str) -> None:
    """Refuse a key ``types`` does not know, or a value of another type (true/false is not a number here)."""
    for key, value in data.items():
        if key not in types:
            raise CifarlabError(f"{where}: unknown key {short(key)}; it was not written by cifarlab")
        allowed = types[key]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise CifarlabError(f"{where}: {key} holds {kind_of(value)} ({short(value)}), which it never does")


def check_run_name(name: str, where: str) -> None:
    """A run's name is one folder name inside the sweep folder: no separator, no '..', nothing unprintable."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or not name.isprintable() or len(name) > 255:
        raise CifarlabError(f"{where}: {short(name)} is not a run folder name")


def check_entry(entry: Any, where: str) -> None:
    """One run of sweep.json's ``runs``: an object with a name and only the keys and types cifarlab writes."""
    if not isinstance(entry, dict):
        raise CifarlabError(f"{where}: holds {kind_of(entry)}, not a run")
    if "name" not in entry:
        raise CifarlabError(f"{where}: a run without a name")
    check_fields(entry, ENTRY_TYPES, where)
    check_run_name(entry["name"], where)
    if "state" in entry and entry["state"] not in RUN_STATES:
        raise CifarlabError(f"{where}: state {short(entry['state'])} is none of {', '.join(RUN_STATES)}")
    if entry.get("attempts", 0) < 0:
        raise CifarlabError(f"{where}: attempts is negative")


def check_spec(spec: dict[str, Any], where: str) -> None:
    """sweep.json's ``spec``: the grid as the lists and tables a sweep file or the flags give."""
    check_fields(spec, SPEC_TYPES, where)
    if not all(isinstance(m, str | NONE) for m in spec.get("models", [])):
        raise CifarlabError(f"{where}: models must be names (or null)")
    if not all(isinstance(r, str) for r in spec.get("recipes", [])):
        raise CifarlabError(f"{where}: recipes must be names")
    if not all(isinstance(v, list) for v in spec.get("grid", {}).values()):
        raise CifarlabError(f"{where}: every grid key must hold a list of values")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in spec.get("seeds", [])):
        raise CifarlabError(f"{where}: seeds must be whole numbers")


def read_sweep_record(path: Path) -> dict[str, Any]:
    """A sweep's saved sweep.json, checked key by key (bounded reader, known keys, right types, every run named),
    so a forged or damaged file is one line (exit 1), never a traceback or a run placed where it names."""
    data = read_json(path)
    where = escape(str(path))
    check_fields(data, RECORD_TYPES, where)
    check_spec(data.get("spec", {}), f"{where}: spec")
    unknown = sorted(set(data.get("options", {})) - OPTION_KEYS)
    if unknown:
        raise CifarlabError(f"{where}: options: unknown key {short(unknown[0])}; it was not written by cifarlab")
    if data.get("mlflow"):
        check_fields(data["mlflow"], MLFLOW_TYPES, f"{where}: mlflow")
    names: set[str] = set()
    for k, entry in enumerate(data.get("runs", [])):
        check_entry(entry, f"{where}: runs[{k}]")
        if entry["name"] in names:
            raise CifarlabError(f"{where}: runs[{k}]: a second run named {short(entry['name'])}")
        names.add(entry["name"])
    return data


def resolve_options(options: SweepOptions) -> SweepOptions:
    """Fill in the defaults that depend on the machine: workers and threads."""
    cores = usable_cores(hyperthreads=False)  # a training run keeps a physical core busy
    workers = options.workers or (cores if options.ray is None else max(1, int(cores // options.cpus_per_run)))
    threads = options.threads or (
        max(1, cores // workers) if options.ray is None else max(1, int(options.cpus_per_run))
    )
    return dataclasses.replace(options, workers=workers, threads=threads)


def absolute_mlflow_uri(uri: str) -> str:
    """A relative SQLite path made absolute, so workers with another working folder reach the same store."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri


def reopen_mlflow(sweep: Sweep, client: Any) -> bool:
    """Reopen the sweep's MLflow run that sweep.json names; False (with a note) when that id is not this sweep's
    run in this store (forged, deleted, another run's): a fresh one is made instead."""
    from cifarlab.engine.tracking import reopen_reason

    run_id = sweep.mlflow["run_id"]
    reason = reopen_reason(client, run_id, f"sweep {sweep.spec.name}")
    if reason is None:
        try:
            client.update_run(run_id, status="RUNNING")
            return True
        except Exception as exc:  # noqa: BLE001 - MLflow raises many types; all mean it cannot be reopened
            reason = f"cannot be reopened ({type(exc).__name__})"
    note(f"{sweep.folder / SWEEP_FILE} names MLflow run {short(run_id)}, which {reason}; logging to a fresh one")
    return False


def start_mlflow(sweep: Sweep) -> dict[str, str]:
    """The sweep's parent MLflow run (reopened on a rerun), and the environment that nests each run under it."""
    from cifarlab.engine.tracking import log_params, mlflow_client, mlflow_experiment

    uri = absolute_mlflow_uri(sweep.options.mlflow or "")
    client = mlflow_client(uri)
    if not (sweep.mlflow.get("uri") == uri and sweep.mlflow.get("run_id") and reopen_mlflow(sweep, client)):
        experiment = mlflow_experiment(client, uri, sweep.spec.name)
        run = client.create_run(
            experiment, run_name=f"sweep {sweep.spec.name}", tags={"cifarlab.sweep": str(sweep.folder)}
        )
        spec = sweep.spec.to_dict()
        log_params(
            client,
            run.info.run_id,
            {
                "models": spec["models"],
                "recipes": spec["recipes"],
                "seeds": spec["seeds"],
                **{f"grid.{k}": v for k, v in spec["grid"].items()},
            },
        )
        sweep.mlflow = {"uri": uri, "run_id": run.info.run_id, "experiment": sweep.spec.name}
    return {
        "CIFARLAB_MLFLOW_URI": uri,
        "CIFARLAB_MLFLOW_EXPERIMENT": sweep.spec.name,
        "CIFARLAB_MLFLOW_PARENT_RUN": sweep.mlflow["run_id"],
    }


def make_job(sweep: Sweep, name: str, env: dict[str, str]) -> dict[str, Any]:
    """What a worker needs to train one run (picklable, so a Ray task can take it to any node)."""
    options = sweep.options
    job: dict[str, Any] = {
        "name": name,
        "config": sweep.runs[name]["config"],
        "sweep_dir": str(sweep.folder),
        "threads": options.threads,
        "env": env,
        "gather": options.gather and bool(options.ray),
        "analysis": "none" if not options.report else ("full" if options.images else "numbers"),
    }
    if job["gather"] and (sweep.folder / name).exists():
        job["blob"] = pack_folder(sweep.folder / name)  # a partial run goes to the node, to be resumed there
    return job


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


def finish_mlflow(sweep: Sweep) -> None:
    """Log the comparison, report and sweep.json to the sweep's MLflow run, and each group's mean test top-1."""
    from cifarlab.engine.tracking import log_metrics, mlflow_client

    client = mlflow_client(sweep.mlflow["uri"])
    run_id = sweep.mlflow["run_id"]
    metrics = {f"test_top1_mean/{g['label']}": g["test_top1"]["mean"] for g in sweep.groups}
    if metrics:
        log_metrics(client, run_id, metrics, 0)
    for name in (SWEEP_FILE, "comparison.md", "report.html", "report.md"):
        if (sweep.folder / name).is_file():
            client.log_artifact(run_id, str(sweep.folder / name))
    client.set_terminated(run_id, "FINISHED" if sweep.status == "finished" else "FAILED")


def make_pool(options: SweepOptions) -> Any:
    if options.ray is None:
        return LocalPool(options.workers or 1)
    return RayPool(options.ray, options.workers or 1, options.cpus_per_run, options.gpus_per_run, options.retries)


def run_sweep(spec: SweepSpec, options: SweepOptions, data_dir: str | None = None) -> Path:
    """Train every run of the grid not yet done, then compare and report. Returns the sweep folder."""
    options = resolve_options(options)
    if options.mlflow:
        from cifarlab.engine.tracking import require_mlflow

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
        total, skipped = len(planned), sweep.count("done")
        pool = make_pool(options)
        print(
            f"sweep {spec.name}: {total} runs ({skipped} already done, {sweep.count('interrupted')} to resume, "
            f"{sweep.count('failed')} failed before starting) on {pool.description}, {options.threads} "
            f"thread{'s' * (options.threads != 1)} per run -> {folder}",
            flush=True,
        )
        for run in sweep.runs.values():
            if run["state"] == "failed":
                print(f"FAILED  {run['name']}: {run['message']}", flush=True)
        progress = Progress(total, sweep.count("done", "failed"), spec.name)
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


def resolve_data_dir(data_dir: str | None) -> Path:
    """The data folder as an absolute path: every worker, wherever its working folder, finds the same one."""
    from cifarlab.data.cifar10 import resolve_data_dir as resolve

    return resolve(data_dir).resolve()


# ---------------------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------------------


def comma_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


TRUSTED_OPTIONS = ("mlflow", "ray")  # where artifacts go, which cluster the driver trusts: never from a file
RAY_OPTIONS = ("gather", "cpus_per_run", "gpus_per_run")  # meaningful only with --ray


def saved_options(data: dict[str, Any], args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """The options a resumed sweep keeps from its sweep.json: not workers and threads (they fit this machine), and
    never the MLflow URI or Ray address (a file must not decide where artifacts go or which cluster is trusted):
    when the file holds one the command line does not give, a note says so and the sweep runs without it."""
    options = dict(data.get("options") or {})
    recorded_uri = options.get("mlflow") or (data.get("mlflow") or {}).get("uri")
    if recorded_uri and not args.mlflow:
        note(
            f"{path} records MLflow URI {short(recorded_uri, 200)}; not used: give --mlflow "
            f"{shlex.quote(str(recorded_uri))} to log there again"
        )
    if options.get("ray") and not args.ray:
        note(
            f"{path} records Ray address {short(options['ray'], 200)}; not used (the runs go to the local pool): "
            f"give --ray {shlex.quote(str(options['ray']))} to run there again"
        )
    dropped = {"workers", "threads", *TRUSTED_OPTIONS, *(RAY_OPTIONS if not args.ray else ())}
    return {k: v for k, v in options.items() if k not in dropped}


def note(text: str) -> None:
    """One line to stderr about something the command did differently from what a file asked."""
    print(f"cifarlab: note: {escape(text)}", file=sys.stderr, flush=True)


def settings_from_args(args: argparse.Namespace) -> tuple[SweepSpec, SweepOptions]:
    """Sweep file (or a sweep's saved sweep.json with --resume), then the command line's flags on top."""
    base: dict[str, Any] = {"set": {}}
    if args.resume:
        saved = Path(args.resume) / SWEEP_FILE
        if not saved.is_file():
            raise UsageError(f"--resume {args.resume}: no {SWEEP_FILE} there (is it a sweep folder?)")
        data = read_sweep_record(saved)
        spec_saved = data.get("spec") or {}
        base.update(
            name=spec_saved.get("name"),
            out=str(Path(args.resume).parent),
            models=spec_saved.get("models"),
            recipes=spec_saved.get("recipes"),
            seeds=spec_saved.get("seeds"),
            set=dict(spec_saved.get("grid") or {}),
        )
        # the saved options hold, flags override; workers and threads fit this machine; where artifacts go and
        # which cluster is trusted come from the command line only
        base.update(saved_options(data, args, saved))
        grid_flags = [
            f
            for f, v in (
                ("--model", args.model),
                ("--recipe", args.recipe),
                ("--seeds", args.seeds),
                ("--set", args.set),
                ("--name", args.name),
                ("a sweep file", args.file),
            )
            if v
        ]
        if grid_flags:
            raise UsageError(f"--resume continues {args.resume} with its own grid; drop {', '.join(grid_flags)}")
    elif args.file:
        base.update(settings_from_file(args.file))
    grid = dict(base.get("set") or {})
    grid.update(parse_set(args.set or []))
    for key, value in (
        ("epochs", args.epochs),
        ("limit_train", args.limit_train),
        ("time_budget", args.time_budget),
        ("device", args.device),
        ("batch_size", args.batch_size),
    ):
        if value is not None:
            grid[key] = [value]
    name = args.name or base.get("name")
    if not name:
        raise UsageError("give the sweep a --name (its folder is OUT/NAME), a sweep file, or --resume OUT/NAME")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise UsageError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (it names a folder)")
    models: list[str | None] = [*comma_list(args.model)] if args.model else list(base.get("models") or [None])
    try:
        spec = SweepSpec(
            name=name,
            out=args.out or base.get("out") or "runs",
            models=models,
            recipes=comma_list(args.recipe) if args.recipe else list(base.get("recipes") or ["seed"]),
            grid=grid,
            seeds=parse_seeds(args.seeds) if args.seeds else list(base.get("seeds") or [0]),
        )
    except UsageError as exc:
        raise UsageError(f"{args.file}: {exc}" if args.file and not args.seeds else str(exc)) from None
    unknown_recipes = [r for r in spec.recipes if r not in RECIPES]
    if unknown_recipes:
        raise UsageError(f"unknown recipe {unknown_recipes[0]!r}; choose from: {', '.join(sorted(RECIPES))}")
    from_file = {k: base[k] for k in OPTION_KEYS if k in base}
    flags = {
        "workers": args.workers,
        "threads": args.threads,
        "ray": args.ray,
        "cpus_per_run": args.cpus_per_run,
        "gpus_per_run": args.gpus_per_run,
        "gather": args.ray_gather or None,
        "retries": args.retries,
        "mlflow": args.mlflow,
        "report": False if args.no_report else None,
        "images": True if args.analysis_images else None,
    }
    values = {**from_file, **{k: v for k, v in flags.items() if v is not None}}
    try:
        options = SweepOptions(**values)
    except TypeError as exc:
        raise UsageError(f"{args.file}: {exc}") from None
    check_options(options, args.file)
    return spec, options


def check_options(options: SweepOptions, source: str | None) -> None:
    """Options from a sweep file are checked as strictly as the flags."""
    where = f"{source}: " if source else ""
    if not (options.ray is None or isinstance(options.ray, str)):
        raise UsageError(f'{where}ray must be an address, "auto" or "local" (got {short(options.ray)})')
    if not (options.mlflow is None or isinstance(options.mlflow, str)):
        raise UsageError(f"{where}mlflow must be a tracking URI (sqlite:///mlflow.db) (got {short(options.mlflow)})")
    for key in ("gather", "report", "images"):
        if not isinstance(getattr(options, key), bool):
            raise UsageError(f"{where}{key} must be true or false (got {short(getattr(options, key))})")
    for key in ("cpus_per_run", "gpus_per_run"):
        value = getattr(options, key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise UsageError(f"{where}{key} must be a number (got {short(value)})")
    for key in ("workers", "threads"):
        value = getattr(options, key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise UsageError(f"{where}{key} must be a whole number of at least 1 (got {short(value)})")
    if not isinstance(options.retries, int) or isinstance(options.retries, bool) or options.retries < 0:
        raise UsageError(f"{where}retries must be a whole number of 0 or more (got {short(options.retries)})")
    if options.cpus_per_run <= 0 or options.gpus_per_run < 0:
        raise UsageError(f"{where}cpus_per_run must be positive and gpus_per_run 0 or more")
    if options.ray is None and (options.gather or options.gpus_per_run):
        raise UsageError(f"{where}--ray-gather and --gpus-per-run need --ray")


def print_plan(spec: SweepSpec, planned: list[PlannedRun]) -> None:
    """--dry-run: the runs that the grid holds, one per line."""
    print(f"sweep {spec.name}: {len(planned)} runs -> {spec.folder}")
    for run in planned:
        state = folder_state(spec.folder / run.name)
        note = (
            f"  [bad config: {run.error.removeprefix('bad config: ')}]"
            if run.error
            else ("" if state == "missing" else f"  [{state}]")
        )
        values = " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in run.point.items())
        print(f"  {run.name}: {values}{note}")


def cmd_sweep(args: argparse.Namespace) -> int:
    spec, options = settings_from_args(args)
    if options.ray is not None:
        import_ray()  # says how to install Ray before anything is written
    if args.dry_run:
        print_plan(spec, expand(spec, str(resolve_data_dir(args.data_dir))))
        return 0
    run_sweep(spec, options, data_dir=args.data_dir)
    return 0


def register_sweep(sub: argparse._SubParsersAction) -> None:
    """Add ``cifarlab sweep`` to the command line."""
    p = sub.add_parser(
        "sweep",
        help="a grid of runs (models x recipes x config values x seeds) on a local pool or Ray",
        description="Train a grid of runs: every combination of --model, --recipe and --set values, times "
        "--seeds. Each run is an ordinary run folder OUT/NAME/RUN; OUT/NAME/sweep.json records the "
        "grid and each run's state and numbers. Running it again skips finished runs and resumes "
        "interrupted ones. Ends with compare and report over its runs (docs/sweep.md).",
    )
    p.add_argument("file", nargs="?", metavar="SWEEP_FILE", help="a .toml or .yaml file holding the same settings")
    p.add_argument("--name", help="the sweep's name: its folder is OUT/NAME")
    p.add_argument("--resume", metavar="OUT/NAME", help="continue a stopped sweep with its saved grid")
    p.add_argument("--model", metavar="M1,M2", help="models (default: the recipe's)")
    p.add_argument("--recipe", metavar="R1,R2", help="recipes (default: seed)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=V1,V2",
        help="config key and its values (repeatable; one value sets it for every run)",
    )
    p.add_argument("--seeds", metavar="0-4", help="seeds: 0-4, 0,1,5 or 0-2,7 (default 0)")
    p.add_argument("--epochs", type=positive_int, help="epochs of every run")
    p.add_argument("--batch-size", type=positive_int, help="batch size of every run")
    p.add_argument("--limit-train", type=positive_int, metavar="N", help="train on a balanced slice of N images")
    p.add_argument("--time-budget", type=positive_float, metavar="SECONDS", help="time budget of every run")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py/ (default: $CIFARLAB_DATA_DIR, else ./data)")
    p.add_argument("--device", help="device of every run: auto (default), cpu, cuda, ...")
    p.add_argument("--out", help="parent folder of the sweep folder (default: runs)")
    p.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="runs at a time on the local pool (default: one per physical core)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="torch threads per run (default: physical cores / workers; with Ray: --cpus-per-run)",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run on Ray: alone, a private Ray instance on this machine; ADDRESS (host:port, auto, "
        "ray://host:10001) a cluster (needs cifarlab[ray])",
    )
    p.add_argument("--cpus-per-run", type=positive_float, metavar="N", help="Ray: CPUs each run asks for (1)")
    p.add_argument("--gpus-per-run", type=positive_float, metavar="N", help="Ray: GPUs each run asks for (0)")
    p.add_argument(
        "--ray-gather",
        action="store_true",
        help="Ray without shared storage: train on each node's disk, send run folders to the driver",
    )
    p.add_argument(
        "--retries", type=non_negative_int, metavar="N", help="times a run whose worker died is resumed (default 2)"
    )
    p.add_argument(
        "--mlflow",
        metavar="URI",
        help="also log to this MLflow tracking store, e.g. sqlite:///mlflow.db (needs cifarlab[mlflow])",
    )
    p.add_argument(
        "--no-report",
        action="store_true",
        help="skip each run's analysis and the final report.html (comparison.md is still written)",
    )
    p.add_argument(
        "--analysis-images",
        action="store_true",
        help="each run's analysis also draws galleries and Grad-CAM (slow on a CPU)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the runs of the grid and stop")
    p.set_defaults(func=cmd_sweep)
