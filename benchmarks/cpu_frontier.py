"""The CPU frontier in one command: airbench's legacy recipe at several sizes beside `cifarlab train --recipe fast
--time-budget B`, one run after the other on this machine, and the margin at each budget (issue 14, part 3).

    python benchmarks/cpu_frontier.py --data-dir DIR [--budgets 150,240,600] [--seeds 0,1,2] \\
        [--variant 32,64,128:4 ...] [--out runs/frontier]

Every run is a subprocess: each airbench variant is `benchmarks/airbench_cpu.py --variant V` (its own clock:
whitening, training, TTA), each cifarlab run an ordinary `cifarlab train ... --no-analysis` run folder (its
`seconds_used`: everything from data in memory to the end of the TTA test). Results go to OUT/frontier.json after
every run, so running the same command again skips what is done (a cifarlab folder without run.json was cut off:
it is trained again from scratch, since a resumed budget run is not planned again). Prints the table for
docs/benchmarks.md: per budget, cifarlab's mean +- std over seeds, the most accurate airbench variant whose clock
fits the budget, and the margin (the goal: at least +1 point). Run it on an idle machine: time is what it measures.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
from fast_runs import fast_train_command  # noqa: E402  (the shared train command)

# The table: the airbench sizes that fit 2 to 10 minutes on a 2-core CPU.
DEFAULT_VARIANTS = ["32,64,128:2", "16,32,64:6", "32,64,128:4", "32,64,128:6", "32,64,128:14"]
RESULT = re.compile(r"^RESULT airbench94 (\S+) run \d+: TTA test top-1 ([\d.]+)%\s+([\d.]+)s on its clock", re.M)
GOAL_MARGIN = 1.0  # points of test top-1 over the best airbench variant that fits the same time


def run_airbench(variant: str, data_dir: str, work: Path) -> dict[str, Any]:
    """One airbench run of this variant (WIDTHS:EPOCHS): its TTA test top-1 (%) and the seconds on its clock."""
    command = [sys.executable, str(BENCHMARKS / "airbench_cpu.py"), "--variant", variant, "--work", str(work)]
    done = subprocess.run([*command, "--data-dir", data_dir], capture_output=True, text=True)
    match = RESULT.search(done.stdout)
    if done.returncode != 0 or match is None:
        raise SystemExit(f"cpu_frontier: airbench {variant} failed: {(done.stderr or done.stdout).strip()[-400:]}")
    return {"top1": float(match.group(2)), "seconds": float(match.group(3))}


def run_cifarlab(budget: int, seed: int, data_dir: str, out: Path) -> dict[str, Any]:
    """One `cifarlab train --recipe fast --time-budget BUDGET` run: its test top-1 (%), seconds used and plan."""
    name = f"fast-{budget}-s{seed}"
    folder = out / name
    if folder.exists() and not (folder / "run.json").exists():
        print(f"{name}: cut off before its end last time; trained again from scratch", flush=True)
        shutil.rmtree(folder)
    if not folder.exists():
        command = fast_train_command(budget, seed, data_dir, out, name)
        if subprocess.run(command).returncode != 0:
            raise SystemExit(f"cpu_frontier: {' '.join(command)} failed")
    summary = json.loads((folder / "run.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    return {
        "top1": 100 * summary["test_top1"],
        "seconds": summary["seconds_used"],
        "width": config.get("model_width"),
        "epochs": config.get("epochs"),
    }


def best_fitting(airbench: dict[str, dict[str, Any]], budget: float) -> tuple[str, dict[str, Any]] | None:
    """The most accurate airbench variant whose clock fits the budget (None when none does)."""
    fitting = [(variant, row) for variant, row in airbench.items() if row["seconds"] <= budget]
    return max(fitting, key=lambda item: item[1]["top1"]) if fitting else None


def table(results: dict[str, Any], budgets: list[int]) -> list[str]:
    """Markdown rows: per budget, cifarlab's mean +- std over seeds beside the best airbench variant that fits."""
    lines = [
        "| budget | cifarlab fast: test top-1, mean +- std (n) | seconds used | best airbench that fits | margin "
        "| goal |",
        "| ---: | --- | --- | --- | ---: | --- |",
    ]
    for budget in budgets:
        runs = [row for key, row in results["cifarlab"].items() if key.startswith(f"{budget}:")]
        if not runs:
            continue
        top1 = [row["top1"] for row in runs]
        mean, spread = statistics.mean(top1), statistics.stdev(top1) if len(top1) > 1 else 0.0
        seconds = f"{min(r['seconds'] for r in runs):.0f}-{max(r['seconds'] for r in runs):.0f} s"
        line = f"| {budget} s | {mean:.2f} +- {spread:.2f} ({len(top1)}) | {seconds} |"
        best = best_fitting(results["airbench"], budget)
        if best is not None:
            variant, row = best
            margin = mean - row["top1"]
            verdict = "met" if margin >= GOAL_MARGIN else "missed"
            line += f" {variant}: {row['top1']:.2f}% in {row['seconds']:.0f} s | {margin:+.2f} | {verdict} |"
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py/")
    p.add_argument("--budgets", default="150,240,600", help="cifarlab's --time-budget values, in seconds")
    p.add_argument("--seeds", default="0,1,2", help="cifarlab seeds per budget")
    p.add_argument("--variant", action="append", help=f"airbench WIDTHS:EPOCHS, repeatable ({DEFAULT_VARIANTS})")
    p.add_argument("--out", default="runs/frontier", help="run folders and frontier.json")
    args = p.parse_args(argv)
    budgets = [int(b) for b in args.budgets.split(",") if b]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = out / "frontier.json"
    results = json.loads(record.read_text()) if record.exists() else {"airbench": {}, "cifarlab": {}}

    def save() -> None:
        record.write_text(json.dumps(results, indent=2))

    for variant in args.variant or DEFAULT_VARIANTS:
        if variant not in results["airbench"]:
            results["airbench"][variant] = run_airbench(variant, args.data_dir, out / "airbench-work")
            save()
        row = results["airbench"][variant]
        print(f"airbench {variant}: {row['top1']:.2f}% in {row['seconds']:.1f} s", flush=True)
    for budget in budgets:
        for seed in seeds:
            key = f"{budget}:{seed}"
            if key not in results["cifarlab"]:
                results["cifarlab"][key] = run_cifarlab(budget, seed, args.data_dir, out)
                save()
            row = results["cifarlab"][key]
            print(f"cifarlab fast {budget} s seed {seed}: {row['top1']:.2f}% in {row['seconds']:.1f} s", flush=True)
    print("\n".join(table(results, budgets)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
