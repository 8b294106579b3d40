"""The loaded-CPU promise: the fast recipe beside one competing CPU-bound process with twice the budget reaches at
least what the idle machine reaches with the budget (issue 31, goal 1).

    PYTHONPATH=src python benchmarks/loaded_cpu.py --data-dir ../shared/data/cifar10 --out /tmp/loaded \
        [--budget 120] [--seeds 0,1,2]

Trains ``--recipe fast --time-budget B --seed S`` for every seed on the idle machine, then ``--time-budget 2B``
for every seed while one ``python -c "while True: pass"`` runs at normal priority for the whole run (started before
the run, stopped after it). Nothing else should run. Prints each run's test top-1, seconds used, the width and the
thread count its planner chose, then the mean ± std of each condition. Resumable: a finished run folder is read.
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


def trained(out: Path, name: str, data_dir: str, budget: int, seed: int, loaded: bool) -> dict[str, Any]:
    run = out / name
    if not (run / "run.json").is_file():
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if loaded else None
        try:
            subprocess.run(fast_train_command(budget, seed, data_dir, out, name), check=True)
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
    return json.loads((run / "run.json").read_text())


def describe(label: str, record: dict[str, Any]) -> str:
    plan = record["budget_plan"]
    return (
        f"{label}: test top-1 {100 * record['test_top1']:.2f}%, {record['seconds_used']:.0f} s used, "
        f"width {plan['width']}, {plan['train_steps']} steps, {record['threads']} thread(s), "
        f"probes {[(p['width'], p['threads'], round(p['step_seconds'], 3)) for p in plan['probes']]}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--budget", type=int, default=120, help="the idle run's budget; the loaded run gets twice it")
    p.add_argument("--seeds", default="0,1,2")
    args = p.parse_args()
    out, seeds = Path(args.out), [int(s) for s in args.seeds.split(",")]
    results: dict[str, list[float]] = {}
    for loaded in (False, True):
        budget = args.budget * (2 if loaded else 1)
        label = f"{'loaded' if loaded else 'idle'} {budget} s"
        for seed in seeds:
            name = f"{'loaded' if loaded else 'idle'}-{budget}-s{seed}"
            record = trained(out, name, args.data_dir, budget, seed, loaded)
            print(describe(f"{label}, seed {seed}", record), flush=True)
            results.setdefault(label, []).append(100 * record["test_top1"])
    for label, values in results.items():
        spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        print(f"{label}: test top-1 {statistics.mean(values):.2f}{spread}% over seeds {args.seeds}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
