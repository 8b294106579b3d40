"""Stopping a training run from outside: Ctrl-C (SIGINT) and SIGTERM (``docker stop``, Slurm, Kubernetes).

While :class:`StopSignals` is active, either signal raises :class:`Stop` (a KeyboardInterrupt) in the main
thread, which abandons the current step; inside :meth:`StopSignals.deferred` (the checkpoint writes) the signal
waits until the block ends, so the files it writes are always whole and the run knows which epoch they hold.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any


class Stop(KeyboardInterrupt):
    """A stop request by ``signum``; the process should exit with 128 + signum, as the shell reports signals."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal number: 130 for Ctrl-C (and a KeyboardInterrupt raised by code), 143 for SIGTERM."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


class StopSignals:
    """Turn SIGINT and SIGTERM into :class:`Stop` for the duration of a ``with`` block (main thread only).

    A signal the process ignores (a job started in the background with SIGINT ignored) stays ignored."""

    def __init__(self) -> None:
        self.previous: dict[int, Any] = {}
        self.deferring = False
        self.pending: int | None = None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
                if signal.getsignal(signum) is default:
                    self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.deferring:
            self.pending = signum
            return
        raise Stop(signum)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold a stop request until the block has finished; then raise it."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.pending is not None:
            raise Stop(self.pending)
