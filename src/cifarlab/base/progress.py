"""Progress that works everywhere: a tqdm bar in a terminal, a notebook bar in Jupyter or Colab (``tqdm.auto``), a
few plain lines in a log file or CI."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout (notebooks, some runners)
        return False


def in_notebook() -> bool:
    """True inside a Jupyter kernel (Colab's included): IPython is loaded and its shell is the kernel's."""
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)() if ipython is not None else None
    return type(shell).__name__ in ("ZMQInteractiveShell", "Shell")  # Jupyter's; Colab's is google.colab's Shell


def progress(items: Iterable[T], total: int, desc: str, enabled: bool = True) -> Iterator[T]:
    """Yield from ``items``; show a bar in a terminal or a notebook, else print a line at each 25% for long
    loops (a log file)."""
    if not enabled:
        yield from items
        return
    if in_notebook():
        from tqdm.auto import tqdm as notebook_tqdm  # a widget bar where ipywidgets is installed, else text

        yield from notebook_tqdm(items, total=total, desc=desc, leave=False)
        return
    if is_terminal():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, leave=False, dynamic_ncols=True)
        return
    marks = {max(1, round(total * q)) for q in (0.25, 0.5, 0.75)} if total >= 40 else set()
    for i, item in enumerate(items, 1):
        yield item
        if i in marks:
            print(f"  {desc}: {i}/{total} batches", flush=True)


def log(message: str, enabled: bool = True) -> None:
    """Print a line at once (flush), so logs show progress as it happens."""
    if enabled:
        print(message, flush=True)
