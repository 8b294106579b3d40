"""What sweep.json may hold (a file anyone may have edited): its file names, the run states, each key's allowed
types, and the checks that read it back (read_sweep_record)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from cifarlab.base.errors import CifarlabError, escape
from cifarlab.base.files import read_json
from cifarlab.base.records import kind_of
from cifarlab.sweep.grid import OPTION_KEYS, short

SWEEP_FILE = "sweep.json"
LOG_DIR = "logs"
HEADLINE_KEYS = (
    "test_top1",
    "test_top3",
    "best_val_top1",
    "train_seconds",
    "images_per_second",
    "epochs",
    "params",
    "seconds_used",
)
RunState = Literal["pending", "running", "done", "interrupted", "failed"]  # a run's state in sweep.json
RUN_STATES: tuple[RunState, ...] = get_args(RunState)
ResultState = Literal[RunState, "died"]  # how one attempt ended, as a worker reports it ("died": retried)


def number_or_none(value: Any) -> float | int | None:
    """A headline number as run.json holds it; None for anything else (a forged string, list or true)."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


# What sweep.json may hold (a file anyone may have edited): each key's allowed types. Missing keys are allowed
# (an older cifarlab wrote fewer), unknown ones and wrong types are refused with one line.
NONE = type(None)
NUMBER = (int, float)
RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "status": (str,),
    "started": (str,),
    "continue_with": (str,),
    "updated": (str,),
    "spec": (dict,),
    "options": (dict,),
    "counts": (dict,),
    "groups": (list,),
    "mlflow": (dict, NONE),
    "runs": (list,),
}
SPEC_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "models": (list,),
    "recipes": (list,),
    "grid": (dict,),
    "seeds": (list,),
    "out": (str,),
}
ENTRY_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "point": (dict, NONE),
    "state": (str,),
    "attempts": (int,),
    "seconds": (*NUMBER, NONE),
    "message": (str, NONE),
    "headline": (dict, NONE),
    "config": (dict, NONE),
    "pid": (int, NONE),
    "host": (str, NONE),
}
MLFLOW_TYPES: dict[str, tuple[type, ...]] = {"uri": (str,), "run_id": (str,), "experiment": (str,)}


def check_fields(data: dict[str, Any], types: dict[str, tuple[type, ...]], where: str) -> None:
    """Refuse a key ``types`` does not know, or a value of another type (true/false is not a number here)."""
    for key, value in data.items():
        if key not in types:
            raise CifarlabError(f"{where}: unknown key {short(key)}; it was not written by cifarlab")
        allowed = types[key]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise CifarlabError(f"{where}: {key} holds {kind_of(value)} ({short(value)}), which it never does")


def check_run_name(name: str, where: str) -> None:
    """A run's name is one folder name inside the sweep folder: no separator, no '..', nothing unprintable."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or not name.isprintable() or len(name) > 255:
        raise CifarlabError(f"{where}: {short(name)} is not a run folder name")


def check_entry(entry: Any, where: str) -> None:
    """One run of sweep.json's ``runs``: an object with a name and only the keys and types cifarlab writes."""
    if not isinstance(entry, dict):
        raise CifarlabError(f"{where}: holds {kind_of(entry)}, not a run")
    if "name" not in entry:
        raise CifarlabError(f"{where}: a run without a name")
    check_fields(entry, ENTRY_TYPES, where)
    check_run_name(entry["name"], where)
    if "state" in entry and entry["state"] not in RUN_STATES:
        raise CifarlabError(f"{where}: state {short(entry['state'])} is none of {', '.join(RUN_STATES)}")
    if entry.get("attempts", 0) < 0:
        raise CifarlabError(f"{where}: attempts is negative")


def check_spec(spec: dict[str, Any], where: str) -> None:
    """sweep.json's ``spec``: the grid as the lists and tables a sweep file or the flags give."""
    check_fields(spec, SPEC_TYPES, where)
    if not all(isinstance(m, str | NONE) for m in spec.get("models", [])):
        raise CifarlabError(f"{where}: models must be names (or null)")
    if not all(isinstance(r, str) for r in spec.get("recipes", [])):
        raise CifarlabError(f"{where}: recipes must be names")
    if not all(isinstance(v, list) for v in spec.get("grid", {}).values()):
        raise CifarlabError(f"{where}: every grid key must hold a list of values")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in spec.get("seeds", [])):
        raise CifarlabError(f"{where}: seeds must be whole numbers")


def read_sweep_record(path: Path) -> dict[str, Any]:
    """A sweep's saved sweep.json, checked key by key (bounded reader, known keys, right types, every run named),
    so a forged or damaged file is one line (exit 1), never a traceback or a run placed where it names."""
    data = read_json(path)
    where = escape(str(path))
    check_fields(data, RECORD_TYPES, where)
    check_spec(data.get("spec", {}), f"{where}: spec")
    unknown = sorted(set(data.get("options", {})) - OPTION_KEYS)
    if unknown:
        raise CifarlabError(f"{where}: options: unknown key {short(unknown[0])}; it was not written by cifarlab")
    if data.get("mlflow"):
        check_fields(data["mlflow"], MLFLOW_TYPES, f"{where}: mlflow")
    names: set[str] = set()
    for k, entry in enumerate(data.get("runs", [])):
        check_entry(entry, f"{where}: runs[{k}]")
        if entry["name"] in names:
            raise CifarlabError(f"{where}: runs[{k}]: a second run named {short(entry['name'])}")
        names.add(entry["name"])
    return data
