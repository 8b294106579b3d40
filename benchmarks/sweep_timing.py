"""Wall time of one small sweep run three ways: sequentially, on the local pool, and on Ray; and the seed study.

The sweep is 2 models x 2 seeds of small runs (a class-balanced slice, a few epochs), each way a fresh
``cifarlab sweep`` in its own folder:

- sequential: ``--workers 1`` with every core as torch threads (one run after another);
- pool: ``--workers 2`` (one thread each on a 2-core machine);
- Ray: ``--ray --workers 2``, a private Ray instance with 2 CPUs, one CPU per run (its start-up counted).

    python benchmarks/sweep_timing.py --data-dir DIR                    # the timing (tens of minutes on 2 cores)
    python benchmarks/sweep_timing.py --data-dir DIR --seed-study       # + 2 models x 5 seeds of the seed recipe
    python benchmarks/sweep_timing.py --data-dir DIR --smoke            # a minute: tiny runs, to check it works

Prints a Markdown table (wall time, ratio to sequential, each sweep's mean test top-1 per model) and, with
--seed-study, each model's test top-1 as mean ± std (n); everything is also in each sweep's sweep.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

WAYS = {
    "sequential": ["--workers", "1"],
    "pool, --workers 2": ["--workers", "2"],
    "Ray, 2 CPUs": ["--ray", "--workers", "2", "--cpus-per-run", "1"],
}


def sweep(name: str, args: list[str], out: Path) -> tuple[float, dict]:
    """Run one ``cifarlab sweep``; its wall time and its sweep.json."""
    cmd = [sys.executable, "-m", "cifarlab", "sweep", "--name", name, "--out", str(out), *args]
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    result = subprocess.run(cmd)
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        sys.exit(f"the sweep {name} failed (exit code {result.returncode})")
    return seconds, json.loads((out / name / "sweep.json").read_text())


def group_line(group: dict) -> str:
    mean, std = 100 * group["test_top1"]["mean"], group["test_top1"]["std"]
    spread = f" ± {100 * std:.2f}" if std is not None else ""
    return f"{group['label']}: {mean:.2f}{spread}% (n={group['n']})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py/")
    p.add_argument("--out", default="runs/bench-sweep", help="parent of the sweep folders (made fresh per call)")
    p.add_argument("--models", default="mycnn,resnet18")
    p.add_argument("--limit-train", type=int, default=5000, help="training images per run (default 5000)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-ray", action="store_true", help="time only the sequential and pool sweeps")
    p.add_argument("--seed-study", action="store_true", help="also the seed recipe, 2 models x seeds 0-4")
    p.add_argument("--study-workers", type=int, default=2, help="workers of the seed study (default 2)")
    p.add_argument("--smoke", action="store_true", help="tiny runs (500 images, 1 epoch): checks the script")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config value for every run (e.g. val_size=100 for a small generated data set)",
    )
    args = p.parse_args()

    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    limit, epochs = (500, 1) if args.smoke else (args.limit_train, args.epochs)
    common = [
        "--model",
        args.models,
        "--recipe",
        "seed",
        "--seeds",
        "0-1",
        "--limit-train",
        str(limit),
        "--epochs",
        str(epochs),
        "--device",
        args.device,
        "--no-report",
    ]
    if args.data_dir:
        common += ["--data-dir", args.data_dir]
    for item in args.set:
        common += ["--set", item]
    rows = []
    for way, flags in WAYS.items():
        if args.skip_ray and way.startswith("Ray"):
            continue
        name = way.split(",")[0].lower()
        seconds, data = sweep(name, common + flags, out)
        rows.append((way, seconds, data))
    base = rows[0][1]
    lines = [
        f"4-run sweep ({args.models} x seeds 0,1; {limit} training images, {epochs} epochs, "
        f"device {args.device}); folders under {out}",
        "",
        "| how | wall time (s) | ratio to sequential | threads per run | test top-1 (mean per model) |",
        "|---|---:|---:|---:|---|",
    ]
    for way, seconds, data in rows:
        tops = "; ".join(group_line(g) for g in data["groups"])
        lines.append(f"| {way} | {seconds:.0f} | {seconds / base:.2f} | {data['options']['threads']} | {tops} |")
    print("\n" + "\n".join(lines), flush=True)

    if args.seed_study:
        study = [
            "--model",
            args.models,
            "--recipe",
            "seed",
            "--seeds",
            "0-4",
            "--device",
            args.device,
            "--workers",
            str(args.study_workers),
        ]
        if args.data_dir:
            study += ["--data-dir", args.data_dir]
        for item in args.set:
            study += ["--set", item]
        if args.smoke:
            study += ["--limit-train", "500", "--epochs", "1", "--no-report"]
        seconds, data = sweep("seed-study", study, out)
        print(f"\nseed study (recipe seed, seeds 0-4; {seconds / 60:.0f} min, {args.study_workers} workers):")
        for group in data["groups"]:
            print("  " + group_line(group))
    return 0


if __name__ == "__main__":
    sys.exit(main())
