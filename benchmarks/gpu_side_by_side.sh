#!/usr/bin/env bash
# The GPU comparison of docs/benchmarks.md, one command on one GPU: airbench's 94% recipe, then cifarlab's `fast`
# recipe timed the same way (--timed), eager, compiled, and with Muon at fewer epochs. Each part prints RESULT and
# SUMMARY lines; compare the SUMMARY lines (same GPU, one after the other, nothing else running).
#
#   benchmarks/gpu_side_by_side.sh DATA_DIR [AIRBENCH_WHEEL] [SEEDS]
#
# DATA_DIR holds cifar-10-batches-py/. A machine without registry access installs airbench from AIRBENCH_WHEEL
# (make it here with: pip wheel --no-deps -w wheels "airbench>=0.1.8,<0.2"). SEEDS defaults to 0,1,2,3,4.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="$1"; WHEEL="${2:-}"; SEEDS="${3:-0,1,2,3,4}"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import airbench" 2>/dev/null; then
    "$PY" -m pip install --no-deps --no-index "${WHEEL:?airbench is not installed: pass its wheel}"
fi
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
"$PY" benchmarks/airbench_anchor.py --data-dir "$DATA" --runs 5
"$PY" benchmarks/gpu_fast.py --data-dir "$DATA" --seeds "$SEEDS" --tag fast-timed --out /tmp/gpu-runs
"$PY" benchmarks/gpu_fast.py --data-dir "$DATA" --seeds "$SEEDS" --tag fast-compiled --out /tmp/gpu-runs \
    --set compile=true --set compile_mode=max-autotune
"$PY" benchmarks/gpu_fast.py --data-dir "$DATA" --seeds "$SEEDS" --tag fast-muon8 --out /tmp/gpu-runs \
    --set optimizer=muon --set epochs=8
