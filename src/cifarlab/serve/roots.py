"""The folders ``cifarlab serve`` shows: the run and sweep folders found under each served folder, by id.

An id is a run folder's path relative to the folder served (``sweep1/mycnn-s0``); with several served folders it
starts with that folder's name (``runs/sweep1/mycnn-s0``, a second folder of the same name gets ``runs~2``). Only
folders found by walking the served folders without following links are ever looked up, so an id with ``..``, an
absolute path or a link that leads out names nothing; a file inside a run is used only if its real path stays
inside the served folder (:func:`inside`).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cifarlab.base.errors import CifarlabError, UsageError, escape
from cifarlab.runs.layout import CONFIG_JSON
from cifarlab.sweep.record import SWEEP_FILE

MAX_DEPTH = 6  # folders below a served folder that are searched for runs
MAX_FOLDERS = 20_000  # folders looked at per scan, so a huge tree cannot stall the server


@dataclass(frozen=True)
class Entry:
    """One run folder found: its id, where it lies, the served folder it was found under, its sweep's id."""

    id: str
    path: Path
    root: Path
    sweep: str | None = None


@dataclass(frozen=True)
class Sweep:
    """One sweep folder found (it holds sweep.json) and the ids of the runs inside it."""

    id: str
    path: Path
    runs: tuple[str, ...]


def inside(path: Path, root: Path) -> bool:
    """True when ``path``'s real location (links followed) is ``root`` or lies under it."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a link loop
        return False


def root_labels(roots: list[Path]) -> list[str]:
    """The id prefix of each served folder: nothing for one folder; else its name, made unique with ``~2``..."""
    if len(roots) == 1:
        return [""]
    labels: list[str] = []
    for root in roots:
        base = root.resolve().name or "root"
        label, k = base, 1
        while label in labels:
            k += 1
            label = f"{base}~{k}"
        labels.append(label)
    return labels


def walk(root: Path) -> tuple[list[Path], list[Path]]:
    """(run folders, sweep folders) under ``root``, links not followed, at most MAX_DEPTH deep, in name order."""
    runs: list[Path] = []
    sweeps: list[Path] = []
    seen = 0
    stack = [(root, 0)]
    while stack and seen < MAX_FOLDERS:
        folder, depth = stack.pop()
        seen += 1
        if (folder / CONFIG_JSON).is_file():
            runs.append(folder)
            continue
        if (folder / SWEEP_FILE).is_file():
            sweeps.append(folder)
        if depth >= MAX_DEPTH:
            continue
        try:
            children = sorted(os.scandir(folder), key=lambda d: d.name, reverse=True)
        except OSError:
            continue
        stack += [
            (Path(c.path), depth + 1)
            for c in children
            if c.is_dir(follow_symlinks=False) and not c.name.startswith(".")
        ]
    return sorted(runs), sorted(sweeps)


@dataclass
class Served:
    """The served folders and what was found in them at the last :meth:`scan` (thread-safe)."""

    roots: list[Path]
    entries: dict[str, Entry] = field(default_factory=dict)
    sweeps: dict[str, Sweep] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def of(cls, folders: list[str | Path]) -> Served:
        """The folders to serve, refused in one line when one is not a folder."""
        roots = []
        for folder in folders:
            path = Path(folder)
            if not path.is_dir():
                raise UsageError(f"{escape(str(folder))}: no such folder to serve")
            roots.append(path.resolve())
        served = cls(roots)
        served.scan()
        return served

    def scan(self) -> None:
        """Find every run and sweep folder again (new runs appear, deleted ones go)."""
        entries: dict[str, Entry] = {}
        sweeps: dict[str, Sweep] = {}
        for root, label in zip(self.roots, root_labels(self.roots), strict=True):
            runs, sweep_folders = walk(root)

            def ident(path: Path, root: Path = root, label: str = label) -> str:
                rel = path.relative_to(root).as_posix()
                rel = path.name if rel == "." else rel
                return f"{label}/{rel}" if label else rel

            for sweep in sweep_folders:
                members = tuple(ident(r) for r in runs if r.parent == sweep)
                sweeps[ident(sweep)] = Sweep(ident(sweep), sweep, members)
            owner = {run: s.id for s in sweeps.values() for run in s.runs}
            for run in runs:
                entries[ident(run)] = Entry(ident(run), run, root, owner.get(ident(run)))
        with self.lock:
            self.entries, self.sweeps = entries, sweeps

    def entry(self, run_id: str) -> Entry:
        """The run with this id (a scan first if it is not known yet), else a 404-worthy :class:`NotServed`."""
        with self.lock:
            found = self.entries.get(run_id)
        if found is None:
            self.scan()
            with self.lock:
                found = self.entries.get(run_id)
        if found is None or not inside(found.path, found.root):
            raise NotServed(f"no run {escape(run_id)!r} in the served folders")
        return found


class NotServed(CifarlabError):
    """An id or file that names nothing served (the app answers 404)."""
