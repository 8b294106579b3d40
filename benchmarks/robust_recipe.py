"""The fast recipe with and without ``--augmix`` at one time budget, several seeds: clean test top-1 and mean
corruption top-1 (``cifarlab robustness``, regenerated CIFAR-10-C corruptions), per severity, and the time each
full robustness evaluation took.

    PYTHONPATH=src python benchmarks/robust_recipe.py --data-dir ../shared/data/cifar10 --out /tmp/robust \
        [--budget 600] [--seeds 0,1,2] [--limit N] [--tta LEVEL] [--variants plain,augmix] [--extra RUN ...]

Runs one after the other (nothing else should run: the budget is wall time). Resumable: a run folder that already
holds robustness/robustness.json is read, not trained again. ``--extra RUN`` adds finished runs (e.g. the study's
seed-recipe models) to the table, evaluated if they have no robustness folder yet. ``--limit N`` scores the
corruptions on the first N test images (clean top-1 is then over those N too; the run's own test top-1 is printed
beside it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fast_runs import fast_train_command  # noqa: E402  (the shared train command)


def cifarlab(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "cifarlab", *args], check=True)


def robustness_of(run: Path, data_dir: str, limit: int | None = None, tta: int | None = None) -> dict[str, Any]:
    record = run / "robustness" / "robustness.json"
    if not record.is_file():
        flags = [*(["--limit", str(limit)] if limit else []), *(["--tta", str(tta)] if tta is not None else [])]
        cifarlab("robustness", str(run), "--data-dir", data_dir, *flags)
    return json.loads(record.read_text())


def trained(out: Path, name: str, data_dir: str, budget: int, seed: int, augmix: bool) -> Path:
    run = out / name
    if not (run / "run.json").is_file():
        subprocess.run(
            fast_train_command(budget, seed, data_dir, out, name, *(["--augmix"] if augmix else [])), check=True
        )
    return run


def mean_std(values: list[float]) -> str:
    mean = 100 * statistics.mean(values)
    return f"{mean:.2f}" if len(values) < 2 else f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}"


def table(rows: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| runs | n | test top-1 | clean top-1 (images scored) | mean corruption top-1 | severity 1 / 2 / 3 / 4 / 5 "
        "| evaluation (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, records in rows.items():
        per_severity = [statistics.mean(r["per_severity"][k] for r in records) for k in range(5)]
        seconds = statistics.median(r["seconds"] for r in records)
        lines.append(
            f"| {label} | {len(records)} | {mean_std([r['test_top1'] for r in records])} | "
            f"{mean_std([r['clean_top1'] for r in records])} ({records[0]['images']:,}) | "
            f"{mean_std([r['mean_corruption_top1'] for r in records])} | "
            f"{' / '.join(f'{100 * v:.1f}' for v in per_severity)} | {seconds:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--budget", type=int, default=600)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--extra", nargs="*", default=[], help="finished runs to add to the table")
    parser.add_argument("--limit", type=int, help="score the corruptions on the first N test images only")
    parser.add_argument("--tta", type=int, help="score at this TTA level (default: each run's own)")
    parser.add_argument("--variants", default="plain,augmix", help="plain, augmix or both (plain,augmix)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows: dict[str, list[dict[str, Any]]] = {}
    for extra in map(Path, args.extra):
        rows[extra.name] = [robustness_of(extra, args.data_dir, args.limit, args.tta)]
    variants = args.variants.split(",")
    for augmix in [v == "augmix" for v in ("plain", "augmix") if v in variants]:
        label = f"fast, {args.budget} s" + (", --augmix" if augmix else "")
        for seed in seeds:
            name = f"fast{'-augmix' if augmix else ''}-{args.budget}-s{seed}"
            run = trained(args.out, name, args.data_dir, args.budget, seed, augmix)
            rows.setdefault(label, []).append(robustness_of(run, args.data_dir, args.limit, args.tta))
            done = rows[label][-1]
            test = json.loads((run / "run.json").read_text())["test_top1"]
            print(
                f"{name}: test {test:.4f}; clean {done['clean_top1']:.4f}, corrupted {done['mean_corruption_top1']:.4f}"
            )
    print(table(rows))


if __name__ == "__main__":
    main()
