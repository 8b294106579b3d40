"""Small SVG charts drawn on the server (no JavaScript library, nothing fetched): learning curves and the
reliability diagram. Every text in them is escaped; every number is finite before it becomes a coordinate.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from markupsafe import Markup

WIDTH, HEIGHT, PAD = 420, 240, 40
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def finite_points(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]


def axes(x_max: float, y_min: float, y_max: float, y_label: str, x_label: str) -> list[str]:
    """The frame, four horizontal grid lines with their values, and the axis labels."""
    parts = [f'<rect x="{PAD}" y="10" width="{WIDTH - PAD - 10}" height="{HEIGHT - PAD - 10}" class="frame"/>']
    for k in range(5):
        value = y_min + (y_max - y_min) * k / 4
        y = HEIGHT - PAD - (HEIGHT - PAD - 10) * k / 4
        parts.append(f'<line x1="{PAD}" x2="{WIDTH - 10}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{PAD - 4}" y="{y + 4:.1f}" text-anchor="end">{value:.3g}</text>')
    parts.append(f'<text x="{(WIDTH + PAD) / 2}" y="{HEIGHT - 6}" text-anchor="middle">{html.escape(x_label)}</text>')
    parts.append(f'<text x="12" y="{HEIGHT / 2}" transform="rotate(-90 12 {HEIGHT / 2})" text-anchor="middle">')
    parts.append(f"{html.escape(y_label)}</text>")
    parts.append(f'<text x="{WIDTH - 10}" y="{HEIGHT - PAD + 14}" text-anchor="end">{x_max:g}</text>')
    return parts


def line_chart(series: dict[str, Sequence[tuple[float, float]]], y_label: str, x_label: str = "epoch") -> Markup:
    """Lines of (x, y) points, one per named series, with a legend; an empty chart says so."""
    clean = {name: finite_points(points) for name, points in series.items()}
    every = [p for points in clean.values() for p in points]
    if not every:
        return Markup('<p class="note">no epochs finished yet</p>')
    x_max = max(max(x for x, _ in every), 1.0)
    y_min, y_max = min(y for _, y in every), max(y for _, y in every)
    if y_max - y_min < 1e-9:
        y_min, y_max = y_min - 0.5, y_max + 0.5

    def at(x: float, y: float) -> str:
        px = PAD + (WIDTH - PAD - 10) * x / x_max
        py = HEIGHT - PAD - (HEIGHT - PAD - 10) * (y - y_min) / (y_max - y_min)
        return f"{px:.1f},{py:.1f}"

    parts = axes(x_max, y_min, y_max, y_label, x_label)
    for k, (name, points) in enumerate(clean.items()):
        colour = COLOURS[k % len(COLOURS)]
        line = " ".join(at(x, y) for x, y in points)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<text x="{PAD + 8 + 110 * k}" y="24" fill="{colour}">{html.escape(name)}</text>')
    return svg(parts, y_label)


def reliability_chart(bins: Sequence[dict[str, object]]) -> Markup:
    """Accuracy against confidence per bin (bars), with the diagonal of perfect calibration."""
    parts = axes(1.0, 0.0, 1.0, "accuracy", "confidence")
    inner_w, inner_h = WIDTH - PAD - 10, HEIGHT - PAD - 10
    for b in bins:
        lower, upper, accuracy = b.get("lower"), b.get("upper"), b.get("accuracy")
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in (lower, upper, accuracy)):
            continue
        x = PAD + inner_w * float(lower)  # type: ignore[arg-type]
        w = inner_w * (float(upper) - float(lower))  # type: ignore[arg-type]
        h = inner_h * min(max(float(accuracy), 0.0), 1.0)  # type: ignore[arg-type]
        count = b.get("count")
        parts.append(
            f'<rect x="{x:.1f}" y="{HEIGHT - PAD - h:.1f}" width="{max(w - 1, 0):.1f}" height="{h:.1f}" '
            f'class="bar"><title>{html.escape(str(count))} images</title></rect>'
        )
    parts.append(f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - 10}" y2="10" class="diagonal"/>')
    return svg(parts, "reliability diagram")


def svg(parts: list[str], label: str) -> Markup:
    body = "".join(parts)
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{html.escape(label)}">{body}</svg>'
    )
