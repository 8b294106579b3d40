"""``cifarlab sweep`` on the command line: its flags, the settings they give (over a sweep file, or a sweep's
saved sweep.json with --resume), their checks, --dry-run's plan, and the command itself. The only module
of the sweep that uses argparse and cifarlab.cli.flags."""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
from pathlib import Path
from typing import Any

from cifarlab.base.errors import UsageError
from cifarlab.cli.flags import non_negative_int, positive_float, positive_int
from cifarlab.config.train_config import RECIPES
from cifarlab.sweep.driver import resolve_data_dir, run_sweep
from cifarlab.sweep.grid import (
    OPTION_KEYS,
    PlannedRun,
    SweepOptions,
    SweepSpec,
    expand,
    parse_seeds,
    parse_set,
    settings_from_file,
    short,
)
from cifarlab.sweep.pools import import_ray
from cifarlab.sweep.progress import note
from cifarlab.sweep.record import SWEEP_FILE, read_sweep_record
from cifarlab.sweep.worker import folder_state


def comma_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


TRUSTED_OPTIONS = ("mlflow", "ray")  # where artifacts go, which cluster the driver trusts: never from a file
RAY_OPTIONS = ("gather", "cpus_per_run", "gpus_per_run")  # meaningful only with --ray


def saved_options(data: dict[str, Any], args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """The options a resumed sweep keeps from its sweep.json: not workers and threads (they fit this machine), and
    never the MLflow URI or Ray address (a file must not decide where artifacts go or which cluster is trusted):
    when the file holds one the command line does not give, a note says so and the sweep runs without it."""
    options = dict(data.get("options") or {})
    recorded_uri = options.get("mlflow") or (data.get("mlflow") or {}).get("uri")
    if recorded_uri and not args.mlflow:
        note(
            f"{path} records MLflow URI {short(recorded_uri, 200)}; not used: give --mlflow "
            f"{shlex.quote(str(recorded_uri))} to log there again"
        )
    if options.get("ray") and not args.ray:
        note(
            f"{path} records Ray address {short(options['ray'], 200)}; not used (the runs go to the local pool): "
            f"give --ray {shlex.quote(str(options['ray']))} to run there again"
        )
    dropped = {"workers", "threads", *TRUSTED_OPTIONS, *(RAY_OPTIONS if not args.ray else ())}
    return {k: v for k, v in options.items() if k not in dropped}


def settings_from_args(args: argparse.Namespace) -> tuple[SweepSpec, SweepOptions]:
    """Sweep file (or a sweep's saved sweep.json with --resume), then the command line's flags on top."""
    base: dict[str, Any] = {"set": {}}
    if args.resume:
        base.update(settings_from_resume(args))
    elif args.file:
        base.update(settings_from_file(args.file))
    spec = spec_from_args(args, base)
    return spec, options_from_args(args, base)


def settings_from_resume(args: argparse.Namespace) -> dict[str, Any]:
    """--resume OUT/NAME: the grid and options saved in its sweep.json, in the form a sweep file gives them;
    refused with a flag that would change the grid."""
    saved = Path(args.resume) / SWEEP_FILE
    if not saved.is_file():
        raise UsageError(f"--resume {args.resume}: no {SWEEP_FILE} there (is it a sweep folder?)")
    data = read_sweep_record(saved)
    spec_saved = data.get("spec") or {}
    base: dict[str, Any] = {
        "name": spec_saved.get("name"),
        "out": str(Path(args.resume).parent),
        "models": spec_saved.get("models"),
        "recipes": spec_saved.get("recipes"),
        "seeds": spec_saved.get("seeds"),
        "set": dict(spec_saved.get("grid") or {}),
    }
    # the saved options hold, flags override; workers and threads fit this machine; where artifacts go and
    # which cluster is trusted come from the command line only
    base.update(saved_options(data, args, saved))
    grid_flags = [
        f
        for f, v in (
            ("--model", args.model),
            ("--recipe", args.recipe),
            ("--seeds", args.seeds),
            ("--set", args.set),
            ("--name", args.name),
            ("a sweep file", args.file),
        )
        if v
    ]
    if grid_flags:
        raise UsageError(f"--resume continues {args.resume} with its own grid; drop {', '.join(grid_flags)}")
    return base


def grid_from_args(args: argparse.Namespace, base: dict[str, Any]) -> dict[str, list[Any]]:
    """The grid of ``base`` (a sweep file or sweep.json), with --set and the every-run flags on top."""
    grid = dict(base.get("set") or {})
    grid.update(parse_set(args.set or []))
    for key, value in (
        ("epochs", args.epochs),
        ("limit_train", args.limit_train),
        ("time_budget", args.time_budget),
        ("device", args.device),
        ("batch_size", args.batch_size),
    ):
        if value is not None:
            grid[key] = [value]
    return grid


def spec_from_args(args: argparse.Namespace, base: dict[str, Any]) -> SweepSpec:
    """What the sweep trains: the flags over ``base``, its name and recipes checked."""
    grid = grid_from_args(args, base)
    name = args.name or base.get("name")
    if not name:
        raise UsageError("give the sweep a --name (its folder is OUT/NAME), a sweep file, or --resume OUT/NAME")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise UsageError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (it names a folder)")
    models: list[str | None] = [*comma_list(args.model)] if args.model else list(base.get("models") or [None])
    try:
        spec = SweepSpec(
            name=name,
            out=args.out or base.get("out") or "runs",
            models=models,
            recipes=comma_list(args.recipe) if args.recipe else list(base.get("recipes") or ["seed"]),
            grid=grid,
            seeds=parse_seeds(args.seeds) if args.seeds else list(base.get("seeds") or [0]),
        )
    except UsageError as exc:
        raise UsageError(f"{args.file}: {exc}" if args.file and not args.seeds else str(exc)) from None
    unknown_recipes = [r for r in spec.recipes if r not in RECIPES]
    if unknown_recipes:
        raise UsageError(f"unknown recipe {unknown_recipes[0]!r}; choose from: {', '.join(sorted(RECIPES))}")
    return spec


def options_from_args(args: argparse.Namespace, base: dict[str, Any]) -> SweepOptions:
    """How the sweep runs: the flags over the options of ``base``, checked."""
    from_file = {k: base[k] for k in OPTION_KEYS if k in base}
    flags = {
        "workers": args.workers,
        "threads": args.threads,
        "ray": args.ray,
        "cpus_per_run": args.cpus_per_run,
        "gpus_per_run": args.gpus_per_run,
        "gather": args.ray_gather or None,
        "retries": args.retries,
        "mlflow": args.mlflow,
        "report": False if args.no_report else None,
        "images": True if args.analysis_images else None,
        "robustness": True if args.robustness else None,
        "robustness_limit": args.robustness_limit,
    }
    values = {**from_file, **{k: v for k, v in flags.items() if v is not None}}
    try:
        options = SweepOptions(**values)
    except TypeError as exc:
        raise UsageError(f"{args.file}: {exc}") from None
    check_options(options, args.file)
    return options


def check_options(options: SweepOptions, source: str | None) -> None:
    """Options from a sweep file are checked as strictly as the flags."""
    where = f"{source}: " if source else ""
    if not (options.ray is None or isinstance(options.ray, str)):
        raise UsageError(f'{where}ray must be an address, "auto" or "local" (got {short(options.ray)})')
    if not (options.mlflow is None or isinstance(options.mlflow, str)):
        raise UsageError(f"{where}mlflow must be a tracking URI (sqlite:///mlflow.db) (got {short(options.mlflow)})")
    for key in ("gather", "report", "images", "robustness"):
        if not isinstance(getattr(options, key), bool):
            raise UsageError(f"{where}{key} must be true or false (got {short(getattr(options, key))})")
    for key in ("cpus_per_run", "gpus_per_run"):
        value = getattr(options, key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise UsageError(f"{where}{key} must be a number (got {short(value)})")
    for key in ("workers", "threads"):
        value = getattr(options, key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise UsageError(f"{where}{key} must be a whole number of at least 1 (got {short(value)})")
    limit = options.robustness_limit
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise UsageError(f"{where}robustness_limit must be a whole number of at least 1 (got {short(limit)})")
    if limit is not None and not options.robustness:
        raise UsageError(f"{where}--robustness-limit applies with --robustness only")
    if not isinstance(options.retries, int) or isinstance(options.retries, bool) or options.retries < 0:
        raise UsageError(f"{where}retries must be a whole number of 0 or more (got {short(options.retries)})")
    if options.cpus_per_run <= 0 or options.gpus_per_run < 0:
        raise UsageError(f"{where}cpus_per_run must be positive and gpus_per_run 0 or more")
    if options.ray is None and (options.gather or options.gpus_per_run):
        raise UsageError(f"{where}--ray-gather and --gpus-per-run need --ray")


def print_plan(spec: SweepSpec, planned: list[PlannedRun]) -> None:
    """--dry-run: the runs that the grid holds, one per line."""
    print(f"sweep {spec.name}: {len(planned)} runs -> {spec.folder}")
    for run in planned:
        state = folder_state(spec.folder / run.name)
        note = (
            f"  [bad config: {run.error.removeprefix('bad config: ')}]"
            if run.error
            else ("" if state == "missing" else f"  [{state}]")
        )
        values = " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in run.point.items())
        print(f"  {run.name}: {values}{note}")


def cmd_sweep(args: argparse.Namespace) -> int:
    spec, options = settings_from_args(args)
    if options.ray is not None:
        import_ray()  # says how to install Ray before anything is written
    if args.dry_run:
        print_plan(spec, expand(spec, str(resolve_data_dir(args.data_dir))))
        return 0
    run_sweep(spec, options, data_dir=args.data_dir)
    return 0


def register_sweep(sub: argparse._SubParsersAction) -> None:
    """Add ``cifarlab sweep`` to the command line."""
    p = sub.add_parser(
        "sweep",
        help="a grid of runs (models x recipes x config values x seeds) on a local pool or Ray",
        description="Train a grid of runs: every combination of --model, --recipe and --set values, times "
        "--seeds. Each run is an ordinary run folder OUT/NAME/RUN; OUT/NAME/sweep.json records the "
        "grid and each run's state and numbers. Running it again skips finished runs and resumes "
        "interrupted ones. Ends with compare and report over its runs (docs/sweep.md).",
    )
    add_grid_arguments(p)
    add_run_arguments(p)
    p.add_argument("--dry-run", action="store_true", help="print the runs of the grid and stop")
    p.set_defaults(func=cmd_sweep)


def add_grid_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of what a sweep trains: its file or name, the grid, the every-run settings, where it goes."""
    p.add_argument("file", nargs="?", metavar="SWEEP_FILE", help="a .toml or .yaml file holding the same settings")
    p.add_argument("--name", help="the sweep's name: its folder is OUT/NAME")
    p.add_argument("--resume", metavar="OUT/NAME", help="continue a stopped sweep with its saved grid")
    p.add_argument("--model", metavar="M1,M2", help="models (default: the recipe's)")
    p.add_argument("--recipe", metavar="R1,R2", help="recipes (default: seed)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=V1,V2",
        help="config key and its values (repeatable; one value sets it for every run)",
    )
    p.add_argument("--seeds", metavar="0-4", help="seeds: 0-4, 0,1,5 or 0-2,7 (default 0)")
    p.add_argument("--epochs", type=positive_int, help="epochs of every run")
    p.add_argument("--batch-size", type=positive_int, help="batch size of every run")
    p.add_argument("--limit-train", type=positive_int, metavar="N", help="train on a balanced slice of N images")
    p.add_argument("--time-budget", type=positive_float, metavar="SECONDS", help="time budget of every run")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py/ (default: $CIFARLAB_DATA_DIR, else ./data)")
    p.add_argument("--device", help="device of every run: auto (default), cpu, cuda, ...")
    p.add_argument("--out", help="parent folder of the sweep folder (default: runs)")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of how a sweep runs: the local pool or Ray, retries, MLflow, the analysis and report."""
    p.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="runs at a time on the local pool (default: one per physical core)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="torch threads per run (default: physical cores / workers; with Ray: --cpus-per-run)",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run on Ray: alone, a private Ray instance on this machine; ADDRESS (host:port, auto, "
        "ray://host:10001) a cluster (needs cifarlab[ray])",
    )
    p.add_argument("--cpus-per-run", type=positive_float, metavar="N", help="Ray: CPUs each run asks for (1)")
    p.add_argument("--gpus-per-run", type=positive_float, metavar="N", help="Ray: GPUs each run asks for (0)")
    p.add_argument(
        "--ray-gather",
        action="store_true",
        help="Ray without shared storage: train on each node's disk, send run folders to the driver",
    )
    p.add_argument(
        "--retries", type=non_negative_int, metavar="N", help="times a run whose worker died is resumed (default 2)"
    )
    p.add_argument(
        "--mlflow",
        metavar="URI",
        help="also log to this MLflow tracking store, e.g. sqlite:///mlflow.db (needs cifarlab[mlflow])",
    )
    p.add_argument(
        "--no-report",
        action="store_true",
        help="skip each run's analysis and the final report.html (comparison.md is still written)",
    )
    p.add_argument(
        "--analysis-images",
        action="store_true",
        help="each run's analysis also draws galleries and Grad-CAM (slow on a CPU)",
    )
    p.add_argument(
        "--robustness",
        action="store_true",
        help="after each run trains, score it on corrupted test images (cifarlab robustness; docs/robustness.md)",
    )
    p.add_argument(
        "--robustness-limit",
        type=positive_int,
        metavar="N",
        help="with --robustness: on the first N test images only (quicker)",
    )
