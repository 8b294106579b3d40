"""Test top-1 of a recipe's variants over several seeds, trained in parallel processes.

Used to choose the `seed` recipe's free knobs (batch size, StepLR step and gamma: the course project fixed only
Adam at 1e-3, StepLR and 20 epochs). Each variant is a set of config overrides; every (variant, seed) pair is one
ordinary `cifarlab train --config ...` run, so each can be inspected or replayed like any other.

    python benchmarks/seed_sweep.py --model resnet18 --seeds 0,1,2 --jobs 6 --data-dir DIR --out runs/sweep \\
        --variant base --variant b64:batch_size=64 --variant s7:step_size=7,gamma=0.1

Prints and writes (OUT/sweep.md, OUT/sweep.json) each variant's test top-1 per seed, mean and standard deviation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from cifarlab.base.errors import CifarlabError
from cifarlab.config.train_config import make_config, parse_overrides


def parse_variant(text: str) -> tuple[str, dict]:
    """'b64:batch_size=64,step_size=7' -> ('b64', {'batch_size': 64, 'step_size': 7})."""
    name, _, rest = text.partition(":")
    return name, parse_overrides([item for item in rest.split(",") if item])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--recipe", default="seed")
    p.add_argument("--variant", action="append", required=True, help="NAME[:key=value,...] (repeatable)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--jobs", type=int, default=2, help="runs trained at the same time")
    p.add_argument("--data-dir")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/sweep")
    args = p.parse_args()

    out = Path(args.out)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    variants = [parse_variant(v) for v in args.variant]
    runs = []
    for name, overrides in variants:
        for seed in (int(s) for s in args.seeds.split(",")):
            config = make_config(
                args.recipe,
                model=args.model,
                seed=seed,
                data_dir=args.data_dir,
                device=args.device,
                out=str(out),
                **overrides,
            )
            path = out / "configs" / f"{args.model}-{name}-s{seed}.json"
            config.save(path)
            runs.append((name, seed, path, f"{args.model}-{name}-s{seed}"))

    pending, active, t0 = list(runs), [], time.perf_counter()
    while pending or active:
        while pending and len(active) < args.jobs:
            name, seed, path, run = pending.pop(0)
            cmd = [sys.executable, "-m", "cifarlab", "train", "--config", str(path), "--name", run]
            if args.data_dir:  # a replayed config reads this machine's data folder, not the one saved in it
                cmd += ["--data-dir", args.data_dir]
            with open(out / f"{run}.log", "w") as log:  # the child keeps its own copy of the handle
                active.append((run, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
        time.sleep(1)
        for run, proc in [a for a in active if a[1].poll() is not None]:
            active.remove((run, proc))
            print(f"{time.perf_counter() - t0:7.0f}s  {run} exited {proc.returncode}", flush=True)

    rows, lines = (
        [],
        [
            "| variant | overrides | test top-1 per seed | mean | std | best epochs |",
            "| --- | --- | --- | ---: | ---: | --- |",
        ],
    )
    for name, overrides in variants:
        results = []
        for run_name in [r[3] for r in runs if r[0] == name]:
            summary = out / run_name / "run.json"
            if summary.is_file():
                results.append(json.loads(summary.read_text()))
        tops = [r["test_top1"] for r in results]
        mean = statistics.mean(tops) if tops else float("nan")
        std = statistics.stdev(tops) if len(tops) > 1 else 0.0
        rows.append({"variant": name, "overrides": overrides, "runs": results})
        lines.append(
            f"| {name} | {overrides or '(recipe)'} | {', '.join(f'{100 * t:.2f}' for t in tops)} | "
            f"{100 * mean:.2f} | {100 * std:.2f} | {', '.join(str(r['best_epoch']) for r in results)} |"
        )
    text = "\n".join(lines)
    print(text)
    (out / "sweep.md").write_text(text + "\n")
    (out / "sweep.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CifarlabError as exc:  # a bad --set / --variant or missing data: one line, no traceback
        sys.exit(f"{Path(__file__).name}: error: {exc}")
