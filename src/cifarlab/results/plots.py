"""The figures of the analysis, comparison and report, drawn with matplotlib's object API.

Figures are built from ``matplotlib.figure.Figure`` directly, never through ``pyplot``: no global figure
state, no GUI backend to pick or switch (the Agg canvas is attached to each figure), nothing to close,
and it works in notebooks and headless CI alike. Every PNG is written atomically and without the
``Software`` metadata entry, which would otherwise carry a web address into the self-contained HTML report.
Names from run files (run folders, class names, captions) are drawn as typed: every figure is made with
math-text parsing off, so ``$``, ``\\``, ``{`` or ``%`` in a name is neither interpreted nor an error
(a process-wide matplotlib setting while the figure is made: draw figures from one thread at a time).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes

from cifarlab.base.figures import literal_text, new_figure, save_png

RUN_COLORS = [
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]


TICK_NAME = 20  # class names longer than this are shortened on heatmap axes
NEAREST_UP_TO = 64  # images up to this size are enlarged pixel by pixel; larger ones are smoothed when shrunk


def tick_name(name: str) -> str:
    """A class name short enough for a heatmap axis (an ellipsis marks a cut)."""
    return name if len(name) <= TICK_NAME else name[: TICK_NAME - 1] + "…"


def interpolation_for(size: int) -> str:
    """'nearest' for small images (crisp enlarged pixels), 'antialiased' for large ones (no aliasing when shrunk)."""
    return "nearest" if size <= NEAREST_UP_TO else "antialiased"


@literal_text
def confusion_heatmap(matrix: np.ndarray, classes: Sequence[str], path: Path, normalized: bool, title: str) -> Path:
    """A heatmap with class names on both axes and the value written in every cell; up to about 20 classes
    (the figure and its text grow and shrink with the count, so each cell stays readable)."""
    n = len(classes)
    extra = max(0, n - 10)
    fig = new_figure(8.2 + 0.45 * extra, 7.0 + 0.42 * extra)
    ax = fig.add_subplot()
    shown = np.nan_to_num(matrix.astype(float))
    vmax = 1.0 if normalized else max(1.0, float(shown.max()))
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=vmax)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="share of the true class" if normalized else "images")
    names = [tick_name(c) for c in classes]
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    cell_font = max(6.0, 8.0 - 0.2 * extra)
    for i in range(n):
        for j in range(n):
            value = matrix[i, j]
            text = ("-" if np.isnan(value) else f"{value:.2f}") if normalized else f"{int(value)}"
            dark = shown[i, j] > 0.6 * vmax
            ax.text(j, i, text, ha="center", va="center", fontsize=cell_font, color="white" if dark else "black")
    return save_png(fig, path)


def epoch_ticks(ax: Axes, epochs: Sequence[int]) -> None:
    """Whole epochs on the x axis (every epoch when there are few, so one epoch is not drawn as 0.96-1.04)."""
    from matplotlib.ticker import MaxNLocator

    if len(epochs) <= 12:
        ax.set_xticks(list(epochs))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


@literal_text
def learning_curves(rows: list[dict], path: Path, title: str, best_epoch: int | None = None) -> Path:
    """Loss and top-1 per epoch, train and validation; the train-validation gap is shaded."""
    epochs = [r["epoch"] for r in rows]
    fig = new_figure(11, 4.2)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train", color=RUN_COLORS[0])
    ax_loss.plot(epochs, [r["val_loss"] for r in rows], "s-", label="validation", color=RUN_COLORS[1])
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    train_top1 = np.array([100 * r["train_top1"] for r in rows])
    val_top1 = np.array([100 * r["val_top1"] for r in rows])
    ax_acc.plot(epochs, train_top1, "o-", label="train", color=RUN_COLORS[0])
    ax_acc.plot(epochs, val_top1, "s-", label="validation", color=RUN_COLORS[1])
    ax_acc.fill_between(
        epochs,
        val_top1,
        train_top1,
        where=train_top1 >= val_top1,
        color=RUN_COLORS[1],
        alpha=0.15,
        label="train - validation gap",
        interpolate=True,
    )
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="top-1 accuracy")
    if best_epoch is not None and best_epoch in epochs:
        k = epochs.index(best_epoch)
        gap = train_top1[k] - val_top1[k]
        for ax in (ax_loss, ax_acc):
            ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1)
        ax_acc.annotate(
            f"best epoch {best_epoch}\ngap {gap:+.1f} points",
            (best_epoch, val_top1[k]),
            xytext=(0.03, 0.95),
            textcoords="axes fraction",
            ha="left",
            va="top",
            fontsize=9,
            arrowprops={"arrowstyle": "->", "color": "grey"},
        )
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, loc="lower right" if ax is ax_acc else "upper right")
        epoch_ticks(ax, epochs)
    fig.suptitle(title)
    return save_png(fig, path)


@literal_text
def reliability_diagram(bins: list[dict], ece: float, path: Path, title: str) -> Path:
    """Accuracy against confidence per bin (a calibrated model follows the diagonal), and how many per bin."""
    fig = new_figure(6.2, 6.6)
    ax, ax_count = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    lower = np.array([b["lower"] for b in bins])
    width = np.array([b["upper"] - b["lower"] for b in bins])
    count = np.array([b["count"] for b in bins])
    acc = np.array([b["accuracy"] if b["accuracy"] is not None else 0.0 for b in bins])
    conf = np.array([b["confidence"] if b["confidence"] is not None else 0.0 for b in bins])
    filled = count > 0
    ax.bar(
        lower[filled],
        acc[filled],
        width=width[filled],
        align="edge",
        color=RUN_COLORS[0],
        edgecolor="black",
        linewidth=0.5,
        label="accuracy in bin",
    )
    ax.bar(
        lower[filled],
        (conf - acc)[filled],
        bottom=acc[filled],
        width=width[filled],
        align="edge",
        color=RUN_COLORS[1],
        alpha=0.35,
        edgecolor=RUN_COLORS[1],
        hatch="//",
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"{title}\nECE {ece:.4f} ({len(bins)} bins)")
    ax.legend(loc="upper left", fontsize=9)
    ax.grid(alpha=0.3)
    ax_count.bar(lower, count, width=width, align="edge", color="grey", edgecolor="black", linewidth=0.5)
    ax_count.set(xlabel="confidence (top predicted probability)", ylabel="images")
    ax_count.grid(alpha=0.3)
    return save_png(fig, path)


@literal_text
def image_grid(
    images: np.ndarray, captions: list[str], colors: list[str], path: Path, title: str, ncols: int = 6
) -> Path:
    """Images (N, 3, S, S uint8, any S) in a grid, each with a caption under it; the figure's size does not depend
    on S (small images are enlarged, large ones shrunk)."""
    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig = new_figure(2.0 * ncols, 2.45 * nrows + 0.5)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for k, ax in enumerate(axes):
        ax.axis("off")
        if k < n:
            ax.imshow(np.transpose(images[k], (1, 2, 0)), interpolation=interpolation_for(images.shape[-1]))
            ax.set_title(captions[k], fontsize=8.5, color=colors[k])
    fig.suptitle(title)
    return save_png(fig, path)


@literal_text
def gradcam_grid(
    images: np.ndarray, maps_pred: np.ndarray, maps_true: np.ndarray, captions: list[str], path: Path, title: str
) -> Path:
    """One row per image: the image, Grad-CAM for the (wrong) predicted class, Grad-CAM for the true class
    (any image size S; the figure's size does not depend on it)."""
    n = len(images)
    smooth = interpolation_for(images.shape[-1])
    fig = new_figure(7.5, 2.3 * n + 0.6)
    axes = fig.subplots(n, 3, squeeze=False)
    for k in range(n):
        rgb = np.transpose(images[k], (1, 2, 0))
        axes[k, 0].imshow(rgb, interpolation=smooth)
        axes[k, 0].set_title(captions[k], fontsize=8.5)
        for col, (maps, label) in enumerate([(maps_pred, "evidence for predicted"), (maps_true, "for true")], 1):
            axes[k, col].imshow(rgb, interpolation=smooth)
            axes[k, col].imshow(maps[k], cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
            axes[k, col].set_title(label if maps[k].max() > 0 else f"{label}: none", fontsize=8.5)
        for ax in axes[k]:
            ax.axis("off")
    fig.suptitle(title)
    return save_png(fig, path)


@literal_text
def overlaid_learning_curves(curves: dict[str, list[dict]], path: Path) -> Path:
    """Validation loss and top-1 (solid) and train top-1 (dotted) of several runs on shared axes."""
    fig = new_figure(11, 4.2)
    ax_loss, ax_acc = fig.subplots(1, 2)
    lines: dict[Any, list] = {ax_loss: [], ax_acc: []}
    labels: list[str] = []
    for k, (label, rows) in enumerate(curves.items()):
        color = RUN_COLORS[k % len(RUN_COLORS)]
        epochs = [r["epoch"] for r in rows]
        lines[ax_loss] += ax_loss.plot(epochs, [r["val_loss"] for r in rows], "o-", color=color)
        lines[ax_loss] += ax_loss.plot(epochs, [r["train_loss"] for r in rows], ":", color=color)
        lines[ax_acc] += ax_acc.plot(epochs, [100 * r["val_top1"] for r in rows], "o-", color=color)
        lines[ax_acc] += ax_acc.plot(epochs, [100 * r["train_top1"] for r in rows], ":", color=color)
        labels += [f"{label} (val)", f"{label} (train)"]
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="top-1 accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(lines[ax], labels, fontsize=7)  # explicit labels: a name starting with '_' is still listed
        epoch_ticks(ax, sorted({r["epoch"] for rows in curves.values() for r in rows}))
    return save_png(fig, path)


@literal_text
def per_class_bars(
    classes: Sequence[str],
    values: dict[str, np.ndarray],
    errors: dict[str, np.ndarray | None],
    path: Path,
    ylabel: str = "test accuracy (%)",
    title: str = "per-class accuracy",
) -> Path:
    """One group of bars per class, one bar per run (or seed group, with its std as an error bar)."""
    fig = new_figure(12, 4.5)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(values))
    x = np.arange(len(classes))
    bars = []
    for k, (label, v) in enumerate(values.items()):
        err = errors.get(label)
        bars.append(
            ax.bar(
                x + (k - (len(values) - 1) / 2) * width,
                100 * np.nan_to_num(v),
                width,
                color=RUN_COLORS[k % len(RUN_COLORS)],
                yerr=None if err is None else 100 * err,
                capsize=2,
            )
        )
    ax.set_xticks(x, [tick_name(c) for c in classes], rotation=30, ha="right")
    ax.set(ylabel=ylabel, ylim=(0, 100), title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(bars, list(values), fontsize=8)  # explicit labels: a name starting with '_' is still listed
    return save_png(fig, path)
