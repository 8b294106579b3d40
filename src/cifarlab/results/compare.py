"""``cifarlab compare RUN... [--out DIR]``: finished runs side by side, seeds of one setup as mean +- std.

Runs whose ``config.json`` is identical except for ``seed``, ``name`` and ``out`` are one *group*: the same
experiment repeated with other seeds (a field an older run's config lacks reads as its default). Each group is one
row of the table; with n > 1 runs a number reads ``mean ± std`` (sample standard deviation, n - 1 in the
denominator) and n is shown. Every number comes from the run's files, so nothing is retrained: cost, speed and the
validation numbers from ``run.json``; test top-1, top-3, ECE and per-class accuracy recomputed from
``test_predictions.npz`` (the same numbers as the run's analysis); learning curves from ``metrics.csv``; the mean
corruption top-1 from ``robustness/robustness.json`` (a column of the table when some run has one, blank for runs
without; always in the CSV files, empty there; a seed group's mean needs every seed's value). Text from
the runs' files (folder and class names, config values) is escaped in the Markdown output, so it never becomes
markup, a link or a table cell.

Data: every run must classify the same classes. Runs of different datasets (another folder, image size or
CIFAR-100 label set) are compared side by side as separate rows, never averaged: their configs differ, so they
are in different groups, and a group whose runs have the same config but different dataset records (an image
folder whose files changed between the seeds) is refused with a usage error naming the two runs and what
differs. Splitting such a group silently would show two rows with the same label and settings, which is more
surprising than being told. A run made before runs recorded their dataset counts as CIFAR-10 at 32 pixels.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cifarlab.base.errors import UsageError
from cifarlab.base.files import atomic_write, write_json
from cifarlab.results.compare_groups import (
    COLUMNS,
    GROUP_IGNORES,
    Column,
    Group,
    RunRecord,
    check_group_data,
    dataset_differences,
    group_runs,
    load_record,
    shown_columns,
)

MAX_BAR_CLASSES = 20  # more classes than this: the per-class figure shows the ones where runs differ most
# What Markdown (CommonMark, GitHub tables, math, strikethrough) reads as syntax, escaped with a backslash.
MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]|~$#])")
HTML_IN_MARKDOWN = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
AUTOLINK = re.compile(r"(?i)(?<=[a-z0-9])(:)(?=//)|\bwww(\.)|(@)")  # what GFM turns into links by itself


def markdown_text(value: Any) -> str:
    """``value`` as literal Markdown text on one line: no HTML, link, emphasis, code or table cell break."""
    text = re.sub(r"\r\n|\r|\n", " ", str(value))
    text = MARKDOWN_SPECIALS.sub(r"\\\1", text)
    text = AUTOLINK.sub(lambda m: m.group(0)[:-1] + "\\" + m.group(0)[-1], text)  # "http\://", "www\.", "\@"
    return re.sub("[&<>]", lambda m: HTML_IN_MARKDOWN[m.group(0)], text)


def stat_cell(group: Group, column: Column) -> str:
    """A column's value for a group: mean (± std); a lone run's text as written; n/a when not a number."""
    mean, std = group.stats[column.key]
    if math.isnan(mean):
        texts = [r.texts[column.key] for r in group.runs if column.key in r.texts]
        return texts[0] if group.n == 1 and texts else "n/a"
    return column.fmt(mean, std)


def table_cells(groups: Sequence[Group]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the side-by-side table, as plain text (one row per group)."""
    columns = shown_columns(groups)
    header = ["run(s)", "model", "n", "seeds"] + [c.title for c in columns]
    rows = [
        [g.label, str(g.runs[0].config.get("model", "?")), str(g.n), ",".join(map(str, g.seeds))]
        + [stat_cell(g, c) for c in columns]
        for g in groups
    ]
    return header, rows


def markdown_table(groups: Sequence[Group], escape: Callable[[Any], str] = markdown_text) -> str:
    """The side-by-side table, one row per group, as Markdown (every cell passed through ``escape``)."""
    header, rows = table_cells(groups)
    lines = [
        "| " + " | ".join(map(escape, header)) + " |",
        "|" + "|".join(["---"] * 4 + ["---:"] * (len(header) - 4)) + "|",
    ]
    lines += ["| " + " | ".join(map(escape, cells)) + " |" for cells in rows]
    return "\n".join(lines)


def disagreements(groups: Sequence[Group]) -> list[dict[str, Any]]:
    """Per class: accuracy of each group, the spread between them, and how often the runs' predictions differ.

    The spread is taken between groups when there are several, else between the runs of the one group.
    Prediction disagreement is the share of the class's test images on which not every run gives the same
    answer (only when all runs scored the same test images). Sorted by spread, largest first; classes
    without test images are left out.
    """
    records = [r for g in groups for r in g.runs]
    classes = records[0].classes
    series = {g.label: g.per_class()[0] for g in groups} if len(groups) > 1 else {r.name: r.per_class for r in records}
    if len(series) < 2:
        return []
    stack = np.stack(list(series.values()))
    occurs = ~np.isnan(stack).any(axis=0)  # a class without test images has no accuracy to compare
    spread = np.where(occurs, np.where(occurs, stack, 0).max(axis=0) - np.where(occurs, stack, 0).min(axis=0), np.nan)
    same_images = all(
        np.array_equal(r.index, records[0].index) and not dataset_differences(r.dataset, records[0].dataset)
        for r in records
    )
    differ = None
    if same_images:
        preds = np.stack([r.y_pred for r in records])
        differ = (preds != preds[:1]).any(axis=0)
    rows = []
    for k, name in enumerate(classes):
        if not occurs[k]:
            continue
        row: dict[str, Any] = {"class": name, "spread": float(spread[k])}
        row.update({f"accuracy {label}": float(v[k]) for label, v in series.items()})
        if differ is not None:
            members = records[0].y_true == k
            row["prediction_disagreement"] = float(differ[members].mean()) if members.any() else None
        rows.append(row)
    return sorted(rows, key=lambda r: -r["spread"])


@dataclass
class Comparison:
    """Everything ``compare`` computed: groups, the Markdown table, per-class disagreements."""

    groups: list[Group]
    table: str
    disagreements: list[dict[str, Any]]

    @property
    def records(self) -> list[RunRecord]:
        return [r for g in self.groups for r in g.runs]


def build_comparison(runs: Sequence[str | Path]) -> Comparison:
    """Load and group the runs; checks they are distinct and classify the same classes."""
    if not runs:
        raise UsageError("give at least one run folder")
    paths = [Path(r) for r in runs]
    resolved = [p.resolve() for p in paths]
    if len(set(resolved)) != len(resolved):
        raise UsageError("the same run folder was given twice")
    records = [load_record(p) for p in paths]
    if any(r.classes != records[0].classes for r in records):
        raise UsageError("these runs classify different sets of classes; they cannot be compared")
    groups = group_runs(records)
    check_group_data(groups)
    return Comparison(groups, markdown_table(groups), disagreements(groups))


def disagreement_items(rows: Sequence[dict[str, Any]], top: int = 5) -> list[tuple[str, str]]:
    """The classes with the largest spread in accuracy: (class name, what differs) as plain text."""
    items = []
    for row in rows[:top]:
        accs = ", ".join(
            f"{k.removeprefix('accuracy ')} {100 * v:.1f}%" for k, v in row.items() if k.startswith("accuracy ")
        )
        extra = ""
        if row.get("prediction_disagreement") is not None:
            extra = f"; the runs' answers differ on {100 * row['prediction_disagreement']:.1f}% of its images"
        items.append((str(row["class"]), f"spread {100 * row['spread']:.1f} points ({accs}){extra}"))
    return items


def disagreement_markdown(rows: Sequence[dict[str, Any]], top: int = 5) -> str:
    """The classes with the largest spread in accuracy, as Markdown lines."""
    return "\n".join(
        f"- **{markdown_text(name)}**: {markdown_text(text)}" for name, text in disagreement_items(rows, top)
    )


def data_note(comp: Comparison) -> list[tuple[str, str]]:
    """(group label, its data) for each group when the groups were trained on different data; empty otherwise."""
    first = comp.groups[0].runs[0].dataset
    if all(not dataset_differences(g.runs[0].dataset, first) for g in comp.groups):
        return []
    from cifarlab.runs.folder import dataset_line

    return [(g.label, dataset_line(g.runs[0].dataset)) for g in comp.groups]


def describe_init(init: Any) -> str:
    """run.json's ``init`` in words: where the weights came from (any field may be missing or odd in a file)."""
    if init is None:
        return "random initialisation"
    if not isinstance(init, dict):
        return f"unreadable record ({str(init)[:40]})"
    sha = str(init.get("sha256", "?"))[:12]
    head = {"kept": "head kept", "new": "new head"}.get(str(init.get("head")), f"head {init.get('head')}")
    where = f"{init.get('model', '?')}, epoch {init.get('epoch', '?')}"
    return f"{init.get('path', '?')} ({where}, weights sha256 {sha}, {head})"


def describe_scaling(scaling: Any) -> str:
    """run.json's ``scaling`` in words: what the recipe changed for the dataset ('none' when nothing)."""
    changes = scaling.get("changes") if isinstance(scaling, dict) else None
    if not isinstance(changes, list) or not changes:
        return "none"
    parts = []
    for c in changes:
        if isinstance(c, dict):
            parts.append(f"{c.get('field', '?')} {c.get('before', '?')} -> {c.get('after', '?')}")
    return "; ".join(parts) or "none"


def init_note(comp: Comparison) -> list[tuple[str, str]]:
    """(group label, where its weights came from) when some group started from a trained model; else empty."""
    if all(g.runs[0].init is None for g in comp.groups):
        return []
    return [(g.label, describe_init(g.runs[0].init)) for g in comp.groups]


def comparison_markdown(comp: Comparison) -> str:
    """Table, the grouping note, the data of each group (when it differs) and the disagreement list: what
    ``compare`` prints."""
    text = comp.table + "\n\n"
    if any(g.n > 1 for g in comp.groups):
        text += "Runs with the same config except seed are grouped: mean ± sample std over the n seeds.\n\n"
    notes = data_note(comp)
    if notes:
        text += "These rows were trained on different data (their test sets differ too):\n\n"
        text += "\n".join(f"- **{markdown_text(label)}**: {markdown_text(data)}" for label, data in notes) + "\n\n"
    started = init_note(comp)
    if started:
        text += "Where the weights started:\n\n"
        text += "\n".join(f"- **{markdown_text(label)}**: {markdown_text(init)}" for label, init in started) + "\n\n"
    if comp.disagreements:
        text += "Classes where the runs disagree most (test accuracy):\n\n" + disagreement_markdown(comp.disagreements)
        text += "\n"
    return text


def write_comparison(comp: Comparison, out: Path) -> list[Path]:
    """comparison.md/.csv/.json, runs.csv, disagreements.csv and the two figures, into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "comparison.md", lambda f: f.write(comparison_markdown(comp)), binary=False)
    write_tables(comp, out)
    write_json(out / "comparison.json", comparison_record(comp))
    files = [out / "comparison.md", out / "comparison.csv", out / "runs.csv"]
    return files + write_figures(comp, out)


def write_tables(comp: Comparison, out: Path) -> None:
    """comparison.csv (a row per group: mean and std of each column), runs.csv (a row per run) and, when the
    runs disagree, disagreements.csv."""
    from cifarlab.base.files import write_csv

    header = ["group", "model", "n", "seeds", "runs"]
    header += [f"{c.key}_{s}" for c in COLUMNS for s in ("mean", "std")]
    rows = [
        [
            g.label,
            g.runs[0].config.get("model"),
            g.n,
            " ".join(map(str, g.seeds)),
            " ".join(r.name for r in g.runs),
            *(v for c in COLUMNS for v in g.stats[c.key]),
        ]
        for g in comp.groups
    ]
    write_csv(out / "comparison.csv", header, rows)
    write_csv(
        out / "runs.csv",
        ["run", "group", "model", "seed", "path", *[c.key for c in COLUMNS]],
        [
            [
                r.name,
                g.label,
                r.config.get("model"),
                r.config.get("seed"),
                str(r.path),
                *(r.values[c.key] for c in COLUMNS),
            ]
            for g in comp.groups
            for r in g.runs
        ],
    )
    if comp.disagreements:
        keys = list(comp.disagreements[0])
        write_csv(out / "disagreements.csv", keys, [[row.get(k) for k in keys] for row in comp.disagreements])


def comparison_record(comp: Comparison) -> dict[str, Any]:
    """What comparison.json holds: each group (label, model, seeds, runs, dataset, stats), the disagreements."""
    return {
        "groups": [
            {
                "label": g.label,
                "model": g.runs[0].config.get("model"),
                "n": g.n,
                "seeds": g.seeds,
                "runs": [str(r.path) for r in g.runs],
                "dataset": {k: v for k, v in g.runs[0].dataset.items() if k != "test_files"},
                "stats": {k: {"mean": finite(m), "std": finite(s)} for k, (m, s) in g.stats.items()},
            }
            for g in comp.groups
        ],
        "disagreements": comp.disagreements,
        "grouped_ignoring": list(GROUP_IGNORES),
    }


def write_figures(comp: Comparison, out: Path) -> list[Path]:
    """The overlaid learning curves (when a run has a history) and the per-class accuracy bars, into ``out``."""
    from cifarlab.results import plots

    files: list[Path] = []
    curves = {f"{r.name}": r.history for r in comp.records if r.history}
    if curves:
        files.append(plots.overlaid_learning_curves(curves, out / "learning_curves.png"))
    classes = comp.records[0].classes
    keep, title = bar_classes(comp)
    means = {g.label: g.per_class()[0][keep] for g in comp.groups}
    stds = {label: None if s is None else s[keep] for label, s in ((g.label, g.per_class()[1]) for g in comp.groups)}
    names = [classes[k] for k in keep]
    files.append(plots.per_class_bars(names, means, stds, out / "per_class_accuracy.png", title=title))
    return files


def bar_classes(comp: Comparison, limit: int = MAX_BAR_CLASSES) -> tuple[np.ndarray, str]:
    """Label indices for the per-class figure, in label order, and its title: every class up to ``limit``;
    else the ``limit`` where the runs differ most (without a second run: the lowest mean accuracy)."""
    classes = comp.records[0].classes
    n = len(classes)
    if n <= limit:
        return np.arange(n), "per-class accuracy"
    if comp.disagreements:
        position = {name: k for k, name in enumerate(classes)}
        picked = [position[row["class"]] for row in comp.disagreements[:limit]]
        how = "where the runs differ most"
    else:
        mean = np.stack([g.per_class()[0] for g in comp.groups]).mean(axis=0)  # NaN: no test images, put last
        picked = list(np.lexsort((np.arange(n), np.nan_to_num(mean, nan=np.inf)))[:limit])
        how = "with the lowest accuracy"
    return np.sort(np.asarray(picked, dtype=np.int64)), f"per-class accuracy: the {len(picked)} classes {how}, of {n}"


def finite(value: float | None) -> float | None:
    """None for NaN, so comparison.json stays strict JSON."""
    return None if value is None or math.isnan(value) else value


def compare(runs: Sequence[str | Path], out: str | Path = "comparison") -> Comparison:
    """Build the comparison and write its files into ``out``."""
    comp = build_comparison(runs)
    write_comparison(comp, Path(out))
    return comp
