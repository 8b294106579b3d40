"""matplotlib without pyplot or a display: a new figure, text drawn as typed, PNG bytes written atomically.

The primitives every figure of cifarlab is made with (the analysis's plots, the TensorBoard images): no global figure
state, no GUI backend, nothing to close; PNGs carry no ``Software`` metadata (it holds a web address).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cifarlab.base.files import atomic_write

DPI = 100


Draw = TypeVar("Draw", bound=Callable[..., Any])


def literal_text(draw: Draw) -> Draw:
    """Make a figure function create and save all its text as typed: never parsed as math text or LaTeX."""

    @functools.wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
            return draw(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def new_figure(width: float, height: float) -> Figure:
    """A figure with an Agg canvas attached, so it can be saved without pyplot."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """Render to PNG in memory; no metadata, so the file holds pixels only."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def save_png(fig: Figure, path: Path) -> Path:
    """Write the figure as a PNG atomically (a crash never leaves half an image)."""
    data = png_bytes(fig)
    atomic_write(Path(path), lambda f: f.write(data))
    return Path(path)
