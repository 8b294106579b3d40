"""The run folder, its one owner: where each file lives, how it is written, and how a finished run is read.

- ``layout``: the file names, the writer's lock (:class:`RunLock`), ``metrics.csv``, new run folders;
- ``checkpoint``: ``best.pt``/``last.pt``, saved atomically and loaded safely (weights only, checked first);
- ``metrics``: top-k and per-class scores from predictions, and the test's result files;
- ``folder``: :class:`RunFolder`, the one reader of a run folder (``run.json`` migrated in one place).
"""

from cifarlab.runs.folder import RunFolder

__all__ = ["RunFolder"]
