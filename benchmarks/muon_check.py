"""Test top-1 of the fast recipe with Nesterov SGD and with Muon for the conv weights, on a short fixed schedule.

    python benchmarks/muon_check.py --data-dir DIR [--width 16] [--epochs 4] [--seed 0] [--muon-lrs 0.1,0.2,0.4]

A fixed number of epochs (no time budget), so a busy machine changes the time, not the result. Prints one RESULT
line per run: the optimizer, its test top-1 (TTA as in the recipe) and the seconds used.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cifarlab.config.train_config import make_config
from cifarlab.data.cifar10 import load_cifar10
from cifarlab.engine.train import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--muon-lrs", default="0.1,0.2,0.4")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/muon-check")
    args = p.parse_args()
    data = load_cifar10(args.data_dir)
    variants = [("sgd", {})] + [
        (f"muon{lr}", {"optimizer": "muon", "muon_lr": float(lr)}) for lr in args.muon_lrs.split(",")
    ]
    for name, override in variants:
        config = make_config(
            "fast",
            model_width=args.width,
            epochs=args.epochs,
            seed=args.seed,
            device=args.device,
            out=args.out,
            name=f"{name}-s{args.seed}",
            **override,
        )
        summary = json.loads((Path(train(config, data=data)) / "run.json").read_text())
        print(
            f"RESULT {name}: test top-1 {100 * summary['test_top1']:.2f}%  {summary['seconds_used']:.0f}s", flush=True
        )


if __name__ == "__main__":
    main()
