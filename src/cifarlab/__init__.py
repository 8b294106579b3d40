"""cifarlab: train, evaluate, explain and compare small-image classifiers (CIFAR-10, CIFAR-100, image folders).

The package's index. In a notebook or a script (docs/python-api.md)::

    import cifarlab
    run = cifarlab.train(cifarlab.recipe("seed", epochs=2))

- :class:`TrainConfig`: every option of a run, typed and checked; :func:`recipe`: a named recipe, with overrides;
- :func:`train`: train and test, returns a :class:`RunFolder`; :func:`load_run`: a run folder made before;
- :func:`analyze`, :func:`compare`, :func:`predict`, :func:`report`: the analysis, comparison, classification of
  your own images and the HTML report.
These come from :mod:`cifarlab.api`, loaded on first use (``import cifarlab`` loads neither torch nor the API).

The layers, each importing only from those above it in this list (tests/test_layers.py enforces it):
``base/`` (errors, progress, files, locks) -> ``models/`` -> ``config/`` -> ``data/`` -> ``runs/`` (the run
folder) -> ``engine/`` (training) -> ``results/`` (analysis, compare, report) -> ``tools/`` (evaluate, predict,
export, benchmark, study) -> ``sweep/`` -> ``cli/`` (the command line) -> ``api``. docs/architecture.md lists
every module.
"""

import os
from typing import Any

# PyTorch's OpenMP threads spin while they wait for each other; beside any other busy process that steals the time
# slice a partner thread needs (30x slower steps measured, docs/fast.md "Threads on a shared machine"). Sleeping
# waits cost nothing measurable on an idle machine. Must be set before torch loads; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

API = ("RunFolder", "TrainConfig", "analyze", "compare", "load_run", "predict", "recipe", "report", "train")
__all__ = [*API, "__version__"]


def __getattr__(name: str) -> Any:
    """``cifarlab.train`` and the rest of :data:`API`, read from :mod:`cifarlab.api` when first asked for."""
    if name in API:
        from cifarlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'cifarlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *API})
