"""The runs a comparison reads and how it groups them: one :class:`RunRecord` per finished run folder (its run.json
numbers, config, dataset record and test predictions, with test top-1, top-3 and ECE recomputed), the numeric
:data:`COLUMNS` and their formats, and the seed groups (:class:`Group`: runs whose configs match but for seed,
name and out, refused when their data differ) with each column's mean and sample standard deviation.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cifarlab.base.errors import CifarlabError, UsageError
from cifarlab.config.train_config import TrainConfig
from cifarlab.runs.folder import RunFolder
from cifarlab.runs.layout import CONFIG_JSON, RUN_JSON

GROUP_IGNORES = ("seed", "name", "out")

# Config fields a run made before they existed lacks, with the values such a run used: every field added to
# TrainConfig defaults to the behaviour from before it (so a run from then matches a run from now).
FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}

# What makes two dataset records the same data (a fingerprint is compared only when both runs have one).
DATASET_FIELDS = ("kind", "image_size", "labels", "classes", "fingerprint")


def as_number(value: Any) -> float | None:
    """A JSON number as a float; None for anything else (text, bool, null, lists)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


@dataclass(frozen=True)
class Column:
    """One numeric column of the comparison: where its value comes from and how to print it."""

    key: str
    title: str
    fmt: Callable[[float, float | None], str]
    optional: bool = False  # from a file only some runs have: the tables show it when a run has it (CSV: always)


def fmt_int(mean: float, std: float | None) -> str:
    return f"{mean:,.0f}" if not std else f"{mean:,.0f} ± {std:,.0f}"


def fmt_pct(mean: float, std: float | None) -> str:
    return f"{100 * mean:.2f}%" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}%"


def fmt_points(mean: float, std: float | None) -> str:
    return f"{100 * mean:+.2f} pp" if std is None else f"{100 * mean:+.2f} ± {100 * std:.2f} pp"


def fmt_ece(mean: float, std: float | None) -> str:
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


COLUMNS = [
    Column("params", "parameters", fmt_int),
    Column("macs", "MACs/image", fmt_int),
    Column("train_seconds", "train time (s)", fmt_int),
    Column("images_per_second", "images/s", fmt_int),
    Column("best_val_top1", "best val top-1", fmt_pct),
    Column("test_top1", "test top-1", fmt_pct),
    Column("test_top3", "test top-3", fmt_pct),
    Column("ece", "ECE", fmt_ece),
    Column("train_val_gap", "train-val gap", fmt_points),
    Column("mean_corruption_top1", "mean corruption top-1", fmt_pct, optional=True),  # robustness/robustness.json
]


def robustness_value(folder: RunFolder) -> tuple[float, str | None]:
    """The run's mean corruption top-1 (robustness.json) as a number; NaN when it has none, with the reason to
    show when the file holds something else or cannot be read."""
    try:
        value = folder.robustness.get("mean_corruption_top1")
    except CifarlabError:
        return math.nan, "unreadable"
    number = as_number(value)
    if number is None:
        return math.nan, None if value is None else str(value)
    return number, None


def shown_columns(groups: Sequence[Group]) -> list[Column]:
    """The columns of the side-by-side table: every column, less optional ones no run has a value of."""
    return [
        c
        for c in COLUMNS
        if not c.optional or any(not math.isnan(r.values[c.key]) or c.key in r.texts for g in groups for r in g.runs)
    ]


@dataclass
class RunRecord:
    """What the comparison needs from one finished run folder."""

    path: Path
    config: dict[str, Any]
    values: dict[str, float]  # one number per Column key
    per_class: np.ndarray  # test accuracy of each class (NaN where a class has no test image)
    history: list[dict[str, float]]
    y_pred: np.ndarray
    y_true: np.ndarray
    index: np.ndarray
    classes: list[str]
    texts: dict[str, str] = field(default_factory=dict)  # run.json fields that hold text, not a number (NaN)
    dataset: dict[str, Any] = field(default_factory=dict)  # the dataset record (CIFAR-10 at 32 px for old runs)
    init: Any = None  # run.json's record of the checkpoint the run started from (None: random weights)

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class Group:
    """Runs of one setup that differ only in seed (and folder name)."""

    runs: list[RunRecord]
    label: str = ""
    stats: dict[str, tuple[float, float | None]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> list[int | str]:
        return [seed_of(r.config) for r in self.runs]

    def per_class(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Mean and (with n > 1) std of per-class accuracy over the group's runs."""
        stack = np.stack([r.per_class for r in self.runs])
        return stack.mean(axis=0), (stack.std(axis=0, ddof=1) if self.n > 1 else None)


def seed_of(config: dict[str, Any]) -> int | str:
    """The run's seed; shown as given when config.json holds something other than a whole number."""
    seed = config.get("seed", 0)
    number = as_number(seed)
    return int(number) if number is not None and number.is_integer() else str(seed)


def run_values(info: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """The run.json numbers of the columns; a field holding something else is NaN, its text kept to show."""
    values, texts = {}, {}
    for c in COLUMNS:
        if info.get(c.key) is None:
            continue
        number = as_number(info[c.key])
        values[c.key] = math.nan if number is None else number
        if number is None:
            texts[c.key] = str(info[c.key])
    return values, texts


def load_record(run: str | Path, folder: RunFolder | None = None, metrics: dict[str, Any] | None = None) -> RunRecord:
    """Read one run; a usage error (exit 2) if the folder is not a finished cifarlab run. A caller that holds the
    run's ``folder`` (its files already read) and the ``metrics`` of its predictions passes them, so neither is
    read or computed again."""
    from cifarlab.results.analysis_metrics import compute_metrics
    from cifarlab.runs.folder import dataset_of, require_run

    path = require_run(run)
    for needed in (RUN_JSON, CONFIG_JSON):
        if not (path / needed).is_file():
            raise UsageError(f"{path} is not a finished cifarlab run: no {needed} (let `cifarlab train` finish)")
    folder = RunFolder(path) if folder is None else folder
    info, config = folder.info, folder.config_record
    pred = folder.predictions
    metrics = compute_metrics(pred) if metrics is None else metrics
    values, texts = run_values(info)
    values.update(
        test_top1=metrics["headline"]["top1"], test_top3=metrics["headline"]["top3"], ece=metrics["calibration"]["ece"]
    )
    values["mean_corruption_top1"], text = robustness_value(folder)
    if text is not None:
        texts["mean_corruption_top1"] = text
    missing = [c.key for c in COLUMNS if c.key not in values]
    if missing:
        raise UsageError(f"{path}/run.json lacks {', '.join(missing)}; it is not from a finished cifarlab run")
    per_class = np.array([np.nan if r["accuracy"] is None else r["accuracy"] for r in metrics["per_class"]])
    try:
        history = folder.metrics
    except (ValueError, TypeError) as exc:
        raise CifarlabError(f"{path / 'metrics.csv'}: not a table of numbers ({exc})") from None
    return RunRecord(
        path,
        config,
        values,
        per_class,
        history,
        pred.y_pred,
        pred.y_true,
        pred.index,
        pred.classes,
        texts,
        dataset_of(path),
        info.get("init"),
    )


def comparable_config(config: dict[str, Any], dataset: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config as grouping sees it: the fields an older run lacks filled in with what it used (their
    defaults), and a default image size (None) replaced by the size the run's dataset record says it got."""
    full = {**FIELD_DEFAULTS, **config}
    if full["image_size"] is None and dataset and dataset.get("image_size") is not None:
        full["image_size"] = dataset["image_size"]
    return full


def group_key(config: dict[str, Any], dataset: dict[str, Any] | None = None) -> str:
    """The config without the keys that may differ inside a group, as a canonical string."""
    full = comparable_config(config, dataset)
    return json.dumps({k: v for k, v in full.items() if k not in GROUP_IGNORES}, sort_keys=True)


def dataset_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """What differs between two dataset records ('image_size 32 vs 64'); empty when they are the same data."""
    out = []
    for key in DATASET_FIELDS:
        va, vb = a.get(key), b.get(key)
        if key == "fingerprint" and (va is None or vb is None):
            continue  # a record without one (an old run) matches any
        if va != vb:
            out.append(f"{key} differs" if key == "classes" else f"{key} {va} vs {vb}")
    return out


def check_group_data(groups: Sequence[Group]) -> None:
    """Refuse a group whose runs share a config but not their data: a mean ± std would mix datasets."""
    for g in groups:
        first = g.runs[0]
        for other in g.runs[1:]:
            diffs = dataset_differences(first.dataset, other.dataset)
            if diffs:
                raise UsageError(
                    f"{first.path} and {other.path} have the same settings but were trained on different data "
                    f"({'; '.join(diffs)}): a mean ± std over them would mix datasets; compare them in separate calls"
                )


def group_runs(records: Sequence[RunRecord]) -> list[Group]:
    """Groups in order of first appearance. A single run is labelled by its folder name; a seed group by its
    model and whatever else differs between the groups (for example ``mycnn epochs=3``)."""
    groups: dict[str, Group] = {}
    for record in records:
        groups.setdefault(group_key(record.config, record.dataset), Group([])).runs.append(record)
    result = list(groups.values())
    configs = [comparable_config(g.runs[0].config, g.runs[0].dataset) for g in result]
    keys = sorted({k for c in configs for k in c} - set(GROUP_IGNORES) - {"model"})
    differing = [k for k in keys if len({json.dumps(c.get(k)) for c in configs}) > 1]
    for g, config in zip(result, configs, strict=True):
        extra = " ".join(f"{k}={config.get(k)}" for k in differing)
        g.label = f"{config.get('model', '?')} {extra}".strip() if g.n > 1 else g.runs[0].name
        g.stats = {c.key: mean_std([r.values[c.key] for r in g.runs]) for c in COLUMNS}
    seen: dict[str, int] = {}
    for g in result:
        seen[g.label] = seen.get(g.label, 0) + 1
        if seen[g.label] > 1:
            g.label = f"{g.label} #{seen[g.label]}"
    return result


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value, where it is undefined)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)
