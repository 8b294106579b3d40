"""The one command line the benchmarks train the fast recipe with: ``cifarlab train --recipe fast --time-budget B
--seed S --no-analysis`` into OUT/NAME on the CPU (imported by cpu_frontier.py, loaded_cpu.py and robust_recipe.py).
"""

from __future__ import annotations

import sys
from pathlib import Path


def fast_train_command(budget: int, seed: int, data_dir: str, out: Path, name: str, *extra: str) -> list[str]:
    """``cifarlab train`` for one time-budget run of the fast recipe, in this interpreter, with ``extra`` flags."""
    flags = ["--recipe", "fast", "--time-budget", str(budget), "--seed", str(seed), "--no-analysis"]
    flags += ["--data-dir", data_dir, "--out", str(out), "--name", name, "--device", "cpu", *extra]
    return [sys.executable, "-m", "cifarlab", "train", *flags]
