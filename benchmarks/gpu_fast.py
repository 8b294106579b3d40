"""Time the `fast` recipe on a GPU as airbench times its own: one untimed warm-up run, then timed runs.

    python benchmarks/gpu_fast.py --data-dir DIR --seeds 0,1,2,3,4 [--set epochs=10 --set compile=true]

Runs are timed (`timed=true`, `--timed` on the command line): a run's time is its `seconds_used` (run.json),
from the data in memory (on the GPU) to the end of the final TTA test: the split and its statistics, building
the model and its whitening, the training steps and the test; each epoch's validation and checkpoint writes are
left off the clock (`untimed_seconds`), as airbench leaves out its per-epoch evaluation. `--set timed=false`
counts everything. The warm-up run pays for CUDA's start, cuDNN's autotuning and, with `compile=true`, the
compilation, which airbench's published times also leave out. No error analysis is written. Run
`airbench_anchor.py` right before or after it on the same GPU for the anchor.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from cifarlab.base.errors import CifarlabError
from cifarlab.config.train_config import make_config, parse_overrides
from cifarlab.data.cifar10 import load_cifar10
from cifarlab.engine.train import train


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override (a JSON value, else text)"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/gpu-fast")
    p.add_argument("--tag", default="fast")
    args = p.parse_args()

    overrides = parse_overrides(args.set)
    data = load_cifar10(args.data_dir)
    common = dict(device=args.device, out=args.out, **{"timed": True, **overrides})
    train(make_config("fast", seed=1000, name=f"{args.tag}-warmup", **{**common, "epochs": 1}), data=data)

    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        run = train(make_config("fast", seed=seed, name=f"{args.tag}-s{seed}", **common), data=data)
        summary = json.loads((Path(run) / "run.json").read_text())
        results.append(summary)
        print(
            f"RESULT {args.tag} seed {seed}: test top-1 {100 * summary['test_top1']:.2f}%  "
            f"{summary['seconds_used']:.2f}s used (train {summary['train_seconds']:.2f}s, "
            f"test {summary['test_seconds']:.2f}s)  {summary['device']}",
            flush=True,
        )
    tops = [r["test_top1"] for r in results]
    secs = [r["seconds_used"] for r in results]
    print(
        f"SUMMARY {args.tag}: {len(tops)} runs, test top-1 mean {100 * statistics.mean(tops):.2f}% "
        f"(min {100 * min(tops):.2f}, max {100 * max(tops):.2f}), seconds used median {statistics.median(secs):.2f} "
        f"(min {min(secs):.2f}, max {max(secs):.2f}), overrides {overrides}"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CifarlabError as exc:  # a bad --set / --variant or missing data: one line, no traceback
        sys.exit(f"{Path(__file__).name}: error: {exc}")
