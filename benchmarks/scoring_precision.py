"""What scoring in bf16 changes: each run's tested checkpoint scored on the test set in fp32 and in bf16.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/scoring_precision.py RUN [RUN ...] [--data-dir DIR]
        [--repeats 2]

For every run folder, loads the checkpoint its test scored (run.json's ``test_checkpoint``), then scores the test
set with the run's TTA level once per precision untimed, then ``--repeats`` times in each, alternating (fp32,
bf16, fp32, ...), and prints test top-1, the number of predictions that differ from fp32's, and the median seconds
of each. bf16 needs a CPU with bf16 instructions (AVX512-BF16 or AMX) or CUDA; elsewhere both columns are fp32 and
the script says so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from cifarlab.cli.flags import positive_int
from cifarlab.data.loading import reload
from cifarlab.engine.device import pick_device, uses_bf16
from cifarlab.engine.infer import evaluate_checkpoint, inference_model
from cifarlab.runs.checkpoint import load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders (each with run.json and its tested checkpoint)")
    parser.add_argument("--data-dir", default=None, help="CIFAR folder (default: $CIFARLAB_DATA_DIR, else ./data)")
    parser.add_argument("--repeats", type=positive_int, default=2, help="timed scorings per precision (default 2)")
    args = parser.parse_args()
    device = pick_device("auto")
    if not uses_bf16(True, device):
        print(f"note: {device} has no fast bf16; both columns below are fp32")
    print("| run | width | TTA | fp32 top-1 | bf16 top-1 | predictions that differ | fp32 s | bf16 s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for run in args.runs:
        tested = json.loads((Path(run) / "run.json").read_text())["test_checkpoint"]
        state = load_checkpoint(Path(run) / tested)
        data = reload(state.get("dataset") or {"kind": "cifar10"}, args.data_dir, None)
        model = inference_model(state, device)
        results: dict[bool, tuple[torch.Tensor, list[float]]] = {}
        for repeat in range(-1, args.repeats):  # repeat -1: untimed warm-up of both precisions (allocation, kernels)
            for bf16 in (False, True):
                variant = {**state, "config": {**state["config"], "bf16": bf16}}
                t0 = time.perf_counter()
                probs, y, _ = evaluate_checkpoint(variant, data, "test", device, 1000, model=model)
                seconds = time.perf_counter() - t0
                if repeat >= 0:
                    results.setdefault(bf16, (probs.argmax(1), []))[1].append(seconds)
        (fp32, fp32_s), (bf16, bf16_s) = results[False], results[True]
        cfg = state["config"]
        print(
            f"| {Path(run).name} | {cfg.get('model_width')} | {cfg.get('tta', 0)} "
            f"| {100 * (fp32 == y).float().mean():.2f}% | {100 * (bf16 == y).float().mean():.2f}% "
            f"| {int((fp32 != bf16).sum())} | {statistics.median(fp32_s):.1f} | {statistics.median(bf16_s):.1f} |"
        )


if __name__ == "__main__":
    main()
