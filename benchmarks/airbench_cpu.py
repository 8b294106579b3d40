"""Run airbench's legacy 94% recipe (the `airbench` package, lib_airbench94) on this CPU at any widths and length:
the baseline of the CPU frontier (docs/benchmarks.md, "The CPU frontier: cifarlab beside airbench").

    python benchmarks/airbench_cpu.py --data-dir DIR --variant 32,64,128:4 [--variant 64,256,256:9.9] [--runs 1]

Each --variant is WIDTHS:EPOCHS (block1,block2,block3 channels; airbench94 is 64,256,256:9.9). airbench's own
training function runs unmodified, with four shims so that it runs on a CPU: its loaders read onto the CPU in fp32
(a CPU has no fast fp16), its network is built with `.half()` and `.cuda()` as no-ops, and its CUDA-event timer
reads `time.perf_counter()` (synchronize is a no-op). Its clock then holds what it holds on a GPU: the whitening,
the training epochs and the TTA evaluation, per-epoch evaluation left out. An untimed warm-up (one step, as
`airbench.warmup94`) comes first. Prints one RESULT line per run and a SUMMARY per variant.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from airbench_anchor import final_row, write_airbench_data  # noqa: E402  (the GPU anchor's data and parser)
from cifarlab.data.cifar10 import load_cifar10  # noqa: E402

Widths = tuple[int, int, int]  # channels of airbench's three blocks


class HostEvent:
    """The part of torch.cuda.Event that airbench's timer uses, read from the host clock."""

    def __init__(self, enable_timing: bool = True) -> None:
        self.seconds = 0.0

    def record(self) -> None:
        self.seconds = time.perf_counter()

    def elapsed_time(self, end: HostEvent) -> float:
        return 1e3 * (end.seconds - self.seconds)  # milliseconds, as CUDA events report


@contextlib.contextmanager
def on_cpu(airbench: ModuleType) -> Iterator[None]:
    """airbench's loaders on the CPU in fp32 and its timer on the host clock, for the duration of the block."""

    class CpuCifarLoader(airbench.utils.CifarLoader):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["gpu"] = "cpu"  # train() builds its test loader with the default, GPU 0
            super().__init__(*args, **kwargs)
            self.images = self.images.float()  # airbench keeps fp16; the CPU trains fp32

    with (
        mock.patch.object(airbench.utils, "CifarLoader", CpuCifarLoader),
        mock.patch.object(torch.cuda, "Event", HostEvent),
        mock.patch.object(torch.cuda, "synchronize", lambda *a, **k: None),
    ):
        yield


def cpu_net_factory(airbench: ModuleType, widths: Widths) -> Callable[[], torch.nn.Module]:
    """airbench94's network at these widths, built in fp32 on the CPU (its .half().cuda() made no-ops)."""

    def make_net() -> torch.nn.Module:
        same = lambda module, *a, **k: module  # noqa: E731
        with mock.patch.object(torch.nn.Module, "half", same), mock.patch.object(torch.nn.Module, "cuda", same):
            blocks = dict(zip(("block1", "block2", "block3"), widths, strict=True))
            return airbench.lib_airbench94.make_net94(widths=blocks)

    return make_net


def train_variant(
    airbench: ModuleType, widths: Widths, epochs: float, run: int | str, echo: bool = False
) -> tuple[float, float]:
    """One airbench94 run on the CPU (from the working folder holding cifar10/): (TTA accuracy, its seconds).
    ``echo`` prints airbench's own per-epoch table (its time column is cumulative, on its clock)."""
    hyp = airbench.lib_airbench94.hyp
    with on_cpu(airbench):
        loader = airbench.utils.CifarLoader(
            "cifar10", train=True, batch_size=hyp["opt"]["batch_size"], aug=hyp["aug"], altflip=True
        )
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            airbench.train94(loader, epochs=epochs, make_net=cpu_net_factory(airbench, widths), run=run)
    table = printed.getvalue()
    if echo:
        print(table, end="", flush=True)
    if run == "warmup":
        return 0.0, 0.0
    return final_row(table)


def parse_variant(text: str) -> tuple[Widths, float]:
    widths, _, epochs = text.partition(":")
    parts = tuple(int(w) for w in widths.split(","))
    if len(parts) != 3 or not epochs:
        raise argparse.ArgumentTypeError(f"expected WIDTHS:EPOCHS such as 32,64,128:4, got {text!r}")
    return (parts[0], parts[1], parts[2]), float(epochs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py/ (default: $CIFARLAB_DATA_DIR)")
    p.add_argument("--variant", type=parse_variant, action="append", help="WIDTHS:EPOCHS, repeatable")
    p.add_argument("--runs", type=int, default=1, help="runs per variant (airbench seeds nothing: each run differs)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    p.add_argument("--work", default="/tmp/airbench-cpu", help="airbench's working folder (WORK/cifar10/*.pt)")
    p.add_argument("--epochs-table", action="store_true", help="print airbench's per-epoch table for each run")
    args = p.parse_args()
    import airbench  # deferred: an optional benchmark dependency (the test and gpu-bench extras)

    if args.threads:
        torch.set_num_threads(args.threads)
    variants = args.variant or [((32, 64, 128), 4.0)]
    work = Path(args.work)
    write_airbench_data(load_cifar10(args.data_dir), work / "cifar10")
    os.chdir(work)
    train_variant(airbench, variants[0][0], 1, run="warmup")  # one untimed step: first-call costs off the clock
    for widths, epochs in variants:
        name = f"{','.join(map(str, widths))}:{epochs:g}"
        accuracies, seconds = [], []
        for run in range(args.runs):
            start = time.perf_counter()
            accuracy, clock = train_variant(airbench, widths, epochs, run, echo=args.epochs_table)
            wall = time.perf_counter() - start
            accuracies.append(accuracy)
            seconds.append(clock)
            print(
                f"RESULT airbench94 {name} run {run}: TTA test top-1 {100 * accuracy:.2f}%  {clock:.1f}s on its "
                f"clock, {wall:.1f}s wall (with per-epoch evaluation)",
                flush=True,
            )
        print(
            f"SUMMARY airbench94 {name}: {len(seconds)} runs, TTA test top-1 mean "
            f"{100 * statistics.mean(accuracies):.2f}%,"
            f" seconds median {statistics.median(seconds):.1f}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
