#!/usr/bin/env bash
# The full benchmark recorded in docs/benchmarks.md: every model's throughput, the fast recipe at 2.5, 4 and 10
# minutes, and the seed recipe (20 epochs). Hours on a 2-core CPU; pass --quick for a version that takes minutes.
# Extra arguments go to `cifarlab benchmark` (e.g. --data-dir DIR, --out DIR, --budgets 150,240).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec .venv/bin/cifarlab benchmark --budgets 150,240,600 "$@"
