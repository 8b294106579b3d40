"""The grid of a sweep: what it trains (SweepSpec), how it runs (SweepOptions), --set and --seeds, the runs it
plans (expand, PlannedRun), the type checks of grid values, and sweep files (TOML or YAML)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifarlab.base.errors import CifarlabError, UsageError, escape
from cifarlab.base.records import loads_toml, loads_yaml, read_bounded_text
from cifarlab.config.train_config import RECIPES, TrainConfig, make_config, parse_overrides

ALIASES = {"width": "model_width"}  # the train command's flag names, where they differ from the config key
OWN_FLAGS = {
    "model": "--model",
    "recipe": "--recipe",
    "seed": "--seeds",
    "name": "--name",
    "out": "--out",
    "data_dir": "--data-dir",
}
SPEC_IGNORES = ("name", "out", "data_dir", "device")  # may change between invocations of one sweep
MAX_RUNS = 10_000  # runs in one sweep: its sweep.json stays a few MB, its plan a few seconds
MAX_SEED_DIGITS = 20  # a seed beyond 2**32 is refused later, by the config; this only keeps int() cheap


# ---------------------------------------------------------------------------------------------------------
# The grid
# ---------------------------------------------------------------------------------------------------------


@dataclass
class SweepSpec:
    """What a sweep trains. Two invocations with the same name must plan the same config for a run name."""

    name: str
    models: list[str | None] = field(default_factory=lambda: [None])  # None: the recipe's model
    recipes: list[str] = field(default_factory=lambda: ["seed"])
    grid: dict[str, list[Any]] = field(default_factory=dict)  # config key -> values (one value: every run)
    seeds: list[int] = field(default_factory=lambda: [0])
    out: str = "runs"

    @property
    def folder(self) -> Path:
        return Path(self.out) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SweepOptions:
    """How a sweep runs: none of these change what a run computes."""

    workers: int | None = None  # runs at a time on the local pool (default: physical cores)
    threads: int | None = None  # torch threads per run (default: cores / workers; Ray: cpus_per_run)
    ray: str | None = None  # None: local pool; "local": a private Ray instance; else a cluster's address
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    gather: bool = False  # Ray: train on the node's disk and send the run folder back to the driver
    retries: int = 2  # times a run whose worker died is resumed
    mlflow: str | None = None
    report: bool = True  # analyse each run (numbers and figures) and end with report.html
    images: bool = False  # also galleries and Grad-CAM in each run's analysis (slow on a CPU)
    robustness: bool = False  # after each run trains: cifarlab robustness RUN (regenerated corruptions)
    robustness_limit: int | None = None  # ... on its first N test images only (--limit)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


OPTION_KEYS = {f.name for f in dataclasses.fields(SweepOptions)}
CONFIG_KEYS = TrainConfig.field_names()


def config_key(key: str) -> str:
    """A config key as written by a user (``width``, ``batch-size``) -> the TrainConfig field name."""
    key = key.strip().replace("-", "_")
    key = ALIASES.get(key, key)
    if key in OWN_FLAGS:
        raise UsageError(f"{key} is not swept with --set: use {OWN_FLAGS[key]}")
    if key not in CONFIG_KEYS:
        raise UsageError(f"unknown config key {key!r} (see the TrainConfig fields in config.py)")
    return key


def split_values(text: str) -> list[str]:
    """``0.5,0.75,[1,2]`` -> ``["0.5", "0.75", "[1,2]"]``: commas inside brackets belong to the value."""
    values, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += ch
    values.append(current)
    return [v.strip() for v in values]


def parse_set(items: Sequence[str]) -> dict[str, list[Any]]:
    """``--set lr=0.5,0.75 --set width=16`` -> ``{"lr": [0.5, 0.75], "model_width": [16]}`` (JSON values)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise UsageError(f"--set expects KEY=VALUE[,VALUE...], got {item!r}")
        key = config_key(key)
        values = [parse_overrides([f"{key}={v}"])[key] for v in split_values(text)]
        if any(v == "" for v in values):
            raise UsageError(f"--set {item!r}: empty value")
        grid[key] = values
    return grid


def seed_parts(value: Any) -> list[str]:
    """The parts of a seeds value (``"0-2,7"`` -> ``["0-2", "7"]``; a list of whole numbers, one each)."""
    if isinstance(value, bool):
        raise UsageError(f"--seeds: expected seeds like 0-4 or 0,1,5, got {value!r}")
    if isinstance(value, int):
        return [str(value)]
    if isinstance(value, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise UsageError(f"seeds must be whole numbers, got {short(value)}")
        if len(value) > MAX_RUNS:
            raise UsageError(f"seeds: {len(value):,} seeds, more than a sweep may hold ({MAX_RUNS:,} runs)")
        return [str(v) for v in value]
    return [p.strip() for p in str(value).split(",")]


def parse_seeds(value: Any) -> list[int]:
    """``"0-4"``, ``"0,2,5"``, ``"0-2,7"``, ``3`` or ``[0, 1]`` -> a list of distinct seeds, in order. The count is
    checked against :data:`MAX_RUNS` before any list is built (``0-1000000000`` is refused, not allocated)."""
    ranges: list[tuple[int, int]] = []
    for part in seed_parts(value):
        match = re.fullmatch(rf"(-?\d{{1,{MAX_SEED_DIGITS}}})(?:-(\d{{1,{MAX_SEED_DIGITS}}}))?", part)
        if not match:
            raise UsageError(f"--seeds: expected seeds like 0-4 or 0,1,5, got {short(value)}")
        lo, hi = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if hi < lo:
            raise UsageError(f"--seeds: the range {part} is empty")
        ranges.append((lo, hi))
    count = sum(hi - lo + 1 for lo, hi in ranges)
    if count > MAX_RUNS:
        raise UsageError(f"--seeds {short(value)}: {count:,} seeds, more than a sweep may hold ({MAX_RUNS:,} runs)")
    seen: dict[int, None] = {}  # ordered and O(1) to test, unlike a list
    for lo, hi in ranges:
        seen.update(dict.fromkeys(range(lo, hi + 1)))
    return list(seen)


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for a one-line message about a value a file may make huge."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def grid_size(spec: SweepSpec) -> int:
    """How many runs the grid plans (models x recipes x every key's values x seeds), counted, not expanded."""
    return math.prod([len(spec.models), len(spec.recipes), len(spec.seeds), *(len(v) for v in spec.grid.values())])


def check_grid_size(spec: SweepSpec) -> None:
    """Refuse a grid of more than :data:`MAX_RUNS` runs before anything is planned or allocated."""
    size = grid_size(spec)
    if size > MAX_RUNS:
        parts = [f"{len(spec.models)} models", f"{len(spec.recipes)} recipes"]
        parts += [f"{len(v)} {k}" for k, v in spec.grid.items() if len(v) > 1] + [f"{len(spec.seeds)} seeds"]
        raise UsageError(
            f"sweep {spec.name}: the grid holds {size:,} runs ({' x '.join(parts)}), more than a sweep may hold "
            f"({MAX_RUNS:,}); split it into several sweeps"
        )


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def name_part(value: Any) -> str:
    """A grid value as it appears in a run folder name (file-name safe)."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


@dataclass
class PlannedRun:
    """One grid point: its folder name, the values that vary, and its config (or why it has none)."""

    name: str
    point: dict[str, Any]
    config: dict[str, Any] | None
    error: str | None = None


def expand(spec: SweepSpec, data_dir: str | None = None) -> list[PlannedRun]:
    """Every (model, recipe, grid values, seed) combination, seeds innermost. A combination whose config is
    invalid (a bad value) is planned as failed, with the reason, so the rest of the grid still runs."""
    check_grid_size(spec)
    folder = spec.folder.resolve()
    keys = list(spec.grid)
    varying = [k for k in keys if len(spec.grid[k]) > 1]
    runs: list[PlannedRun] = []
    names: set[str] = set()
    for model, recipe, values in itertools.product(
        spec.models, spec.recipes, itertools.product(*(spec.grid[k] for k in keys))
    ):
        overrides = dict(zip(keys, values, strict=True))
        label = model or RECIPES.get(recipe, {}).get("model") or TrainConfig.model
        for seed in spec.seeds:
            base = "-".join([label, recipe] + [f"{k}={name_part(overrides[k])}" for k in varying] + [f"s{seed}"])
            name, k = base, 1
            while name in names:  # values that print alike (1 and 1.0) still get folders of their own
                k += 1
                name = f"{base}-{k}"
            names.add(name)
            point = {"model": label, "recipe": recipe, **{k: overrides[k] for k in varying}, "seed": seed}
            try:
                check_types(overrides)
                config = make_config(
                    recipe, model=model, seed=seed, out=str(folder), name=name, data_dir=data_dir, **overrides
                ).to_dict()
                runs.append(PlannedRun(name, point, config))
            except (CifarlabError, TypeError, ValueError) as exc:
                runs.append(PlannedRun(name, point, None, f"bad config: {exc}"))
    return runs


FIELD_TYPES = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}


def check_types(values: dict[str, Any]) -> None:
    """A value of the wrong type for its config field (``epochs=abc``) is a bad config, said in plain words."""
    for key, value in values.items():
        allowed = {t.strip() for t in FIELD_TYPES[key].split("|")}
        ok = (
            (value is None and "None" in allowed)
            or (isinstance(value, bool) and "bool" in allowed)
            or (not isinstance(value, bool) and isinstance(value, int) and ({"int", "float"} & allowed))
            or (isinstance(value, float) and "float" in allowed)
            or (isinstance(value, str) and "str" in allowed)
        )
        if not ok:
            raise UsageError(f"{key} must be {' or '.join(sorted(allowed))}, got {json.dumps(value)}")


def same_plan(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The config keys (other than where it runs) on which two plans of one run differ. A key one plan lacks (a
    field added to the config since it was planned) counts as its default, which is what that version ran."""
    defaults = TrainConfig().to_dict()
    keys = sorted((set(old) | set(new)) - set(SPEC_IGNORES))
    return [k for k in keys if old.get(k, defaults.get(k)) != new.get(k, defaults.get(k))]


# ---------------------------------------------------------------------------------------------------------
# Sweep files (TOML or YAML)
# ---------------------------------------------------------------------------------------------------------


def read_sweep_file(path: str | Path) -> dict[str, Any]:
    """The table of a TOML (``.toml``) or YAML (``.yaml``/``.yml``, needs PyYAML) sweep file, read through the
    bounded reader (records.py): deep nesting, YAML anchors and aliases, huge integers are one UsageError."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise UsageError(f"{path}: a sweep file ends in .toml, .yaml or .yml")
    if not path.exists():
        raise UsageError(f"{path}: no such sweep file")
    text = read_bounded_text(path, UsageError)
    source = escape(str(path))
    data = loads_toml(text, source, UsageError) if suffix == ".toml" else loads_yaml(text, source, UsageError)
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a table of keys (name, model, recipe, seeds, set, ...)")
    return data


def settings_from_file(path: str | Path) -> dict[str, Any]:
    """A sweep file's keys, checked, in the form the command line gives them (``set`` as KEY -> values).

    Keys: ``name``, ``out``, ``model``/``models``, ``recipe``/``recipes``, ``seeds``, ``set`` (a table of config
    keys, each a value or a list of values), any config key at the top level (same as in ``set``), and the
    options ``workers``, ``threads``, ``ray``, ``cpus_per_run``, ``gpus_per_run``, ``gather``, ``retries``,
    ``mlflow``, ``report``, ``images``."""
    data = read_sweep_file(path)
    settings: dict[str, Any] = {"set": {}}
    try:
        for key, value in data.items():
            norm = str(key).replace("-", "_")
            if norm in ("model", "models"):
                settings["models"] = [str(v) for v in as_list(value)]
            elif norm in ("recipe", "recipes"):
                settings["recipes"] = [str(v) for v in as_list(value)]
            elif norm == "seeds":
                settings["seeds"] = parse_seeds(value)
            elif norm in ("name", "out"):
                settings[norm] = str(value)
            elif norm == "set":
                if not isinstance(value, dict):
                    raise UsageError("'set' must be a table of config keys")
                settings["set"].update({config_key(k): as_list(v) for k, v in value.items()})
            elif norm in OPTION_KEYS:
                settings[norm] = value
            else:
                settings["set"][config_key(norm)] = as_list(value)
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from None
    return settings
