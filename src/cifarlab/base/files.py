"""Writing files so that a crash never leaves a broken one: atomic writes, JSON and CSV, and :class:`FileLock`.

Every file cifarlab writes goes through :func:`atomic_write` (a temporary file beside the target, renamed into place,
the folder fsynced); :class:`FileLock` is the one lock (a run folder, the sweep driver, each sweep run).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cifarlab.base.errors import CifarlabError, escape
from cifarlab.base.records import read_json_object

try:
    import fcntl
except ImportError:  # Windows: msvcrt locks instead
    fcntl = None  # type: ignore[assignment]
    import msvcrt

_UMASK = os.umask(0)
os.umask(_UMASK)

TEMP_SUFFIX = ".tmp"  # atomic_write's temporary files are ".<name>.<random>.tmp" beside their target


def atomic_write(path: Path, write: Callable[[Any], None], binary: bool = True) -> None:
    """Write through ``write(file)`` into a temporary file beside ``path``, then rename it into place.

    The rename is atomic, so readers see either the old file or the complete new one. On any error the
    temporary file is removed, the old file is untouched, and the error is reported in plain words.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give run files the usual permissions
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_folder(path.parent)
    except OSError as exc:
        raise CifarlabError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries to disk, so a rename inside it survives a power cut (a no-op where folders cannot
    be opened, as on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder; the rename itself is still atomic
    finally:
        os.close(fd)


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete the temporary files that interrupted atomic writes left in ``folder``; returns them.

    Call it only while holding the folder's :class:`RunLock`, so no live writer's file is taken away."""
    stale = sorted(p for p in Path(folder).glob(f".*{TEMP_SUFFIX}") if p.is_file())
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


class FileLock:
    """An exclusive operating-system lock on one file, created if absent: released when :meth:`release` closes
    it or when the process ends, however it ends (no stale lock after a crash). The one lock of cifarlab: a run
    folder's writer (:class:`RunLock`), a sweep's driver and each sweep run's worker."""

    POLL_SECONDS = 0.5

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.fd: int | None = None

    def try_lock(self) -> bool:
        """Take the lock if it is free (True); False if another process holds it. OSError if the file cannot be
        opened."""
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if fcntl is not None:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                msvcrt.locking(self.fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def acquire(self, wait: bool = False, cancel: threading.Event | None = None) -> bool:
        """Take the lock; with ``wait``, poll until it is free or ``cancel`` is set. False (file closed) if not
        taken."""
        while not self.try_lock():
            if not wait or (cancel is not None and cancel.is_set()):
                self.release()
                return False
            time.sleep(self.POLL_SECONDS)
        return True

    def write_holder(self, text: str) -> None:
        """Say who holds the lock, in the locked file (read by :meth:`holder` from a process refused it)."""
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, text.encode("utf-8", "replace"), 0)

    def holder(self) -> str:
        """What the holder wrote, as one escaped line (at most 200 bytes read); '' if nothing."""
        try:
            with open(self.path, "rb") as f:
                return escape(f.read(200).decode("utf-8", "replace").strip())
        except OSError:
            return ""

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the file releases the lock
            self.fd = None


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON, written atomically."""
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=2) + "\n"), binary=False)


def read_json(path: Path, error: type[CifarlabError] = CifarlabError) -> dict[str, Any]:
    """A run record (config.json, run.json, test_metrics.json, ...): a JSON object, read through the bounded
    reader (records.py), so a list, a 400-digit integer or deep nesting is one ``error``, never a traceback."""
    return read_json_object(path, error)


def cell(value: Any) -> str:
    """A CSV cell: floats at full precision, undefined values empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(float(value)) if isinstance(value, (float, np.floating)) else str(value)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A small CSV, written atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([cell(v) for v in row])
    atomic_write(path, lambda f: f.write(buf.getvalue()), binary=False)
