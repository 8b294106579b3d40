"""``cifarlab sweep``: a grid of runs (models x recipes x config values x seeds) on a local pool or on Ray.

Its modules, each importing only those listed above it (its command line is cli/sweep.py):

- ``grid.py``: what a sweep trains and how it runs (SweepSpec, SweepOptions), --set and --seeds, the runs it plans
  (expand), and sweep files (TOML or YAML);
- ``record.py``: what sweep.json may hold (file names, the run states, each key's types) and its checks;
- ``progress.py``: the overall bar, a line per finished run, and notes to stderr;
- ``worker.py``: one run as a worker runs it (the Job it is handed, its processes, --ray-gather's packing);
- ``pools.py``: where the runs go: the local pool and Ray;
- ``mlflow_log.py``: the sweep's parent MLflow run and what is logged to it;
- ``driver.py``: the driver (Sweep, the state written to sweep.json; handing out runs, retries, Ctrl-C, the
  comparison and report at the end; run_sweep);
"""

from cifarlab.sweep.driver import run_sweep
from cifarlab.sweep.grid import SweepOptions, SweepSpec, expand, parse_seeds, parse_set, split_values
from cifarlab.sweep.worker import pack_folder, unpack_folder

__all__ = [
    "SweepOptions",
    "SweepSpec",
    "expand",
    "pack_folder",
    "parse_seeds",
    "parse_set",
    "split_values",
    "run_sweep",
    "unpack_folder",
]
