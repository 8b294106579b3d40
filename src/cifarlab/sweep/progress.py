"""Progress of a sweep: one overall bar in a terminal (a line in a log), a line per finished run, and notes."""

from __future__ import annotations

import sys

from cifarlab.base.errors import escape

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


def note(text: str) -> None:
    """One line to stderr about something the command did differently from what a file asked."""
    print(f"cifarlab: note: {escape(text)}", file=sys.stderr, flush=True)
