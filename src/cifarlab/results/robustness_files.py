"""The files of a robustness analysis, ``RUN/robustness/``: robustness.json, robustness.csv (corruption, severity,
top1; a ``clean`` row at severity 0 first), the corruption x severity heatmap and the gallery of one test image under
every corruption with the model's answers; and the reading of a robustness.json record that the report and the
terminal share (each corruption's mean, the worst ones), written to take any record read back from a file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from cifarlab.base.figures import literal_text, new_figure, save_png
from cifarlab.base.files import write_csv, write_json
from cifarlab.runs.layout import ROBUSTNESS_CSV, ROBUSTNESS_GALLERY, ROBUSTNESS_HEATMAP, ROBUSTNESS_JSON

SEVERITY_COUNT = 5
RIGHT, WRONG = "#1a7f37", "#b00000"  # caption colours of a right and a wrong answer
CAPTION_NAME = 16  # class names longer than this are shortened under gallery images


# ---------------------------------------------------------------------------------------------------------
# Reading a record (robustness.json, possibly from elsewhere: every value checked)
# ---------------------------------------------------------------------------------------------------------


def fraction(value: Any) -> float | None:
    """A JSON number in [0, 1] as a float; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        return None
    return float(value)


def corruption_table(record: dict[str, Any]) -> dict[str, list[float | None]]:
    """``corruptions`` of a record: name -> the accuracy at each severity (None where not run or not a number)."""
    table = record.get("corruptions")
    if not isinstance(table, dict):
        return {}
    return {
        str(name): [fraction(v) for v in row[:SEVERITY_COUNT]] if isinstance(row, list) else []
        for name, row in table.items()
    }


def corruption_means(record: dict[str, Any]) -> dict[str, float]:
    """Each corruption's mean accuracy over the severities that were run (corruptions with none left out)."""
    means = {}
    for name, row in corruption_table(record).items():
        ran = [v for v in row if v is not None]
        if ran:
            means[name] = sum(ran) / len(ran)
    return means


def worst_corruptions(record: dict[str, Any], k: int = 3) -> list[tuple[str, float]]:
    """The ``k`` corruptions with the lowest mean accuracy, lowest first (ties in CIFAR-10-C's order)."""
    means = corruption_means(record)
    return sorted(means.items(), key=lambda item: item[1])[:k]


def words(name: str) -> str:
    """'gaussian_noise' -> 'gaussian noise'."""
    return name.replace("_", " ")


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------


def write_all(
    out: Path, record: dict[str, Any], clean: np.ndarray, shown: dict[tuple[str, int], tuple[np.ndarray, int]]
) -> None:
    """robustness.csv, the two figures, then robustness.json (last: its presence says the folder is complete).
    ``clean``: the gallery's image (H, W, 3 uint8); ``shown``: its corrupted versions and answers."""
    title = f"{record['run']}: {record['images']:,} test images"
    rows: list[list[Any]] = [["clean", 0, record["clean_top1"]]]
    rows += [
        [name, severity, value]
        for name, row in record["corruptions"].items()
        for severity, value in enumerate(row, 1)
        if value is not None
    ]
    write_csv(out / ROBUSTNESS_CSV, ["corruption", "severity", "top1"], rows)
    heatmap(record, out / ROBUSTNESS_HEATMAP, title)
    gallery(record, clean, shown, out / ROBUSTNESS_GALLERY, title)
    record["files"] = [ROBUSTNESS_JSON, ROBUSTNESS_CSV, ROBUSTNESS_HEATMAP, ROBUSTNESS_GALLERY]
    write_json(out / ROBUSTNESS_JSON, record)


@literal_text
def heatmap(record: dict[str, Any], path: Path, title: str) -> Path:
    """Top-1 (%) of every corruption (rows) at every severity (columns), each cell written; a mean column."""
    table = corruption_table(record)
    names = list(table)
    means = corruption_means(record)
    cells = np.array([[math.nan if v is None else 100 * v for v in table[n]] + [100 * means[n]] for n in names])
    fig = new_figure(7.6, 1.9 + 0.42 * len(names))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(cells), cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02, label="top-1 (%)")
    ax.set_xticks(range(SEVERITY_COUNT + 1), [str(s) for s in range(1, SEVERITY_COUNT + 1)] + ["mean"])
    ax.set_yticks(range(len(names)), [words(n) for n in names])
    ax.set_xlabel("severity")
    ax.axvline(SEVERITY_COUNT - 0.5, color="white", linewidth=3)
    for i in range(len(names)):
        for j in range(SEVERITY_COUNT + 1):
            value = cells[i, j]
            ax.text(j, i, "-" if math.isnan(value) else f"{value:.1f}", ha="center", va="center", fontsize=8)
    clean, mean = 100 * record["clean_top1"], 100 * record["mean_corruption_top1"]
    source = "CIFAR-10-C files" if record.get("source") == "cifar10c-files" else "regenerated corruptions"
    ax.set_title(f"{title}, {source}\nclean top-1 {clean:.1f}%, mean under corruption {mean:.1f}%")
    return save_png(fig, path)


@literal_text
def gallery(
    record: dict[str, Any],
    clean: np.ndarray,
    shown: dict[tuple[str, int], tuple[np.ndarray, int]],
    path: Path,
    title: str,
) -> Path:
    """One test image: clean in the first row, then a row per corruption, a column per severity, each with the
    model's answer under it (green when right, red when wrong). Drawn as one montage (one axes: quick)."""
    severities = [int(s) for s in record["severities"]]
    names = list(record["corruptions"])
    answers, true = record["gallery"]["predicted"], record["gallery"]["true"]
    side = int(clean.shape[0])
    gap, band, left = max(2, side // 16), side // 4, 5 * side // 2  # between tiles, caption band, row labels
    row_h, col_w = side + band + gap, side + gap
    canvas = np.full((row_h * (len(names) + 1), left + col_w * len(severities), 3), 255, dtype=np.uint8)
    width = 1.25 * canvas.shape[1] / col_w  # inches: 1.25 per tile
    fig = new_figure(width, width * canvas.shape[0] / canvas.shape[1] + 0.7)
    ax = fig.add_subplot()
    ax.axis("off")
    cells = [(0, 0, clean, record["gallery"]["clean"], "")]
    for i, name in enumerate(names, 1):
        cells += [(i, j, shown[(name, s)][0], answers[name][s - 1], f"s{s}: ") for j, s in enumerate(severities)]
    for row, col, image, answer, prefix in cells:
        y, x = row * row_h, left + col * col_w
        canvas[y : y + side, x : x + side] = image
        colour = RIGHT if answer == true else WRONG
        ax.text(
            x + side / 2,
            y + side + band / 2,
            f"{prefix}{short_name(str(answer))}",
            ha="center",
            va="center",
            fontsize=7,
            color=colour,
        )
    for i, label in enumerate(["clean", *map(words, names)]):
        ax.text(left - 2 * gap, i * row_h + side / 2, label, ha="right", va="center", fontsize=8)
    ax.imshow(canvas, interpolation="nearest" if side <= 64 else "antialiased")
    ax.set_title(f"{title}\none test image (true class: {short_name(true)}) under every corruption", fontsize=9)
    return save_png(fig, path)


def short_name(name: str) -> str:
    return name if len(name) <= CAPTION_NAME else name[: CAPTION_NAME - 1] + "…"
