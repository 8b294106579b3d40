"""cifarlab: train, evaluate, explain and compare small-image classifiers (CIFAR-10, CIFAR-100, image folders)."""

import os

# PyTorch's OpenMP threads spin while they wait for each other; beside any other busy process that steals the time
# slice a partner thread needs (30x slower steps measured, docs/fast.md "Threads on a shared machine"). Sleeping
# waits cost nothing measurable on an idle machine. Must be set before torch loads; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
