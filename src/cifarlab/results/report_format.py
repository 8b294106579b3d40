"""Values from a run's files as the report shows them: defensively (a value that is not a number is shown as the text
it is, a missing one as 'n/a'), plus the self-contained pieces of the page (HTML escaping, figures as base64
``data:`` URIs).
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any


def esc(text: Any) -> str:
    """HTML-escape text (``<``, ``>``, ``&`` and quotes), so a run name or platform string shows as typed."""
    return html.escape(str(text))


def data_uri(png: bytes) -> str:
    """A base64 ``data:`` URI for a PNG: the figure travels inside the page."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure(path: Path, caption: str) -> dict[str, Any]:
    """A figure for the template: its data URI (None when the file is absent), caption and file name."""
    uri = data_uri(path.read_bytes()) if path.is_file() else None
    return {"uri": uri, "caption": caption, "file": path.name}


def number(value: Any) -> float | None:
    """A JSON number (not a bool, not NaN) as a float; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def shown(value: Any) -> str:
    """Any value from a file as text; a missing one (null, NaN) as 'n/a'."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def pct(value: Any, digits: int = 1) -> str:
    """A share as a percentage ('12.5%'); anything that is not a number is shown as its text."""
    n = number(value)
    return shown(value) if n is None else f"{100 * n:.{digits}f}%"


def num(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals; anything that is not a number is shown as its text."""
    n = number(value)
    return shown(value) if n is None else f"{n:.{digits}f}"


def count(value: Any) -> str:
    """A whole number with thousands separators ('11,181,642'); anything else is shown as its text."""
    n = number(value)
    return shown(value) if n is None else f"{n:,.0f}"


def csv_number(cell: str | None, as_pct: bool = False) -> str:
    """A CSV cell of the analysis: empty means undefined (0/0); a cell that is not a number is shown as is."""
    if cell is None:
        return "n/a"
    if cell == "":
        return "undefined"
    try:
        value = float(cell)
    except ValueError:
        return cell
    return pct(value) if as_pct else num(value)


def both(value: Any, joiner: str) -> str:
    """A pair from a file ('8x8', '5 and 7'); anything else as its text."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{value[0]}{joiner}{value[1]}"
    return shown(value)
