"""How much the time-budget planner's width probe varies: several probes in one process, as plan_budget runs them.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/probe_noise.py --data-dir DIR --seeds 0,1,2 --repeats 6

The planner prices every fastcnn width from one probe (a warm-up step, then the median of three timed steps) at
width 16. Where two widths sit near the `budget_epochs` boundary (40 minutes on a 2-core CPU), the spread printed
here decides which one a run gets.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from cifarlab.base.errors import CifarlabError
from cifarlab.config.train_config import make_config
from cifarlab.data.cifar10 import load_cifar10
from cifarlab.engine.budget import PROBE_STEPS, PROBE_WIDTH, time_probe
from cifarlab.engine.build import prepare_data, probe_batches
from cifarlab.engine.train import train_step


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir")
    p.add_argument("--seeds", default="0,1,2", help="each seed's split and batch stream, probed in turn")
    p.add_argument("--repeats", type=int, default=6, help="probes per seed")
    p.add_argument("--width", type=int, default=PROBE_WIDTH)
    p.add_argument(
        "--steps",
        default=str(PROBE_STEPS),
        help="timed steps per probe; a list (3,9) compares them side by side, interleaved",
    )
    args = p.parse_args()
    step_counts = [int(n) for n in args.steps.split(",")]

    data = load_cifar10(args.data_dir)
    device = torch.device("cpu")
    every: dict[int, list[float]] = {n: [] for n in step_counts}
    for seed in (int(s) for s in args.seeds.split(",")):
        config = make_config("fast", seed=seed)
        batches = probe_batches(data, prepare_data(data, config), config, device)  # the planner's own stream
        times: dict[int, list[float]] = {n: [] for n in step_counts}
        for _ in range(args.repeats):
            for n in step_counts:
                times[n].append(
                    time_probe(config, args.width, batches, len(data.classes), device, train_step, steps=n).step_seconds
                )
        for n in step_counts:
            every[n] += times[n]
            print(
                f"seed {seed}, {n} timed steps: width-{args.width} probe, seconds per step in order: "
                + ", ".join(f"{t:.3f}" for t in times[n]),
                flush=True,
            )
    for n, values in every.items():
        print(
            f"{n} timed steps, all {len(values)} probes: median {statistics.median(values):.3f} s, "
            f"min {min(values):.3f}, max {max(values):.3f} (max/min {max(values) / min(values):.2f}x)"
        )
    print(f"torch threads {torch.get_num_threads()}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CifarlabError as exc:
        sys.exit(f"{Path(__file__).name}: error: {exc}")
