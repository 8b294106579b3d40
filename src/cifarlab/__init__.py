"""cifarlab: train, evaluate, explain and compare small-image classifiers (CIFAR-10, CIFAR-100, image folders).

The Python API is :mod:`cifarlab.api` (docs/python-api.md; ``from cifarlab import api as lab``):

- :class:`TrainConfig`: every option of a run, typed and checked;
- :func:`recipe`: a named recipe's config, with overrides;
- :func:`train`: train and test, returns a :class:`RunFolder`;
- :func:`load_run`: a run folder made before;
- :func:`analyze`, :func:`compare`, :func:`predict`, :func:`report`: the analysis, comparison, classification of
  your own images and the HTML report.
"""

import os

# PyTorch's OpenMP threads spin while they wait for each other; beside any other busy process that steals the time
# slice a partner thread needs (30x slower steps measured, docs/fast.md "Threads on a shared machine"). Sleeping
# waits cost nothing measurable on an idle machine. Must be set before torch loads; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
