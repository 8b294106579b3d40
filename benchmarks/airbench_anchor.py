"""Time airbench's 94% recipe (the `airbench` package) on this GPU, as airbench times itself: the anchor that
`gpu_fast.py` is compared with, run one after the other on the same GPU.

    python benchmarks/airbench_anchor.py --data-dir DIR --runs 5 [--work /tmp/airbench]

airbench reads CIFAR-10 from ./cifar10/train.pt and test.pt (and downloads it through torchvision when they are
absent). This script writes both into WORK/cifar10 from DIR first, with cifarlab's reader (the same pixels and
labels cifarlab trains on), then, in WORK, runs `airbench.warmup94()` (untimed: CUDA start and cuDNN autotuning)
and `airbench.train94()` --runs times. airbench prints a table per run; its last row holds the TTA test accuracy
and `total_time_seconds`: the whitening, the training epochs and the TTA evaluation, with the per-epoch evaluation
left out (CUDA events around each part). Needs a CUDA GPU and `pip install airbench` (the `gpu-bench` extra).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
from pathlib import Path

import torch

from cifarlab.data.cifar10 import ImageData, load_cifar10


def write_airbench_data(data: ImageData, folder: Path) -> None:
    """train.pt and test.pt as airbench's CifarLoader reads them: uint8 images NHWC, int64 labels, class names."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, images, labels in (
        ("train", data.train_images, data.train_labels),
        ("test", data.test_images, data.test_labels),
    ):
        torch.save(
            {
                "images": images.permute(0, 2, 3, 1).contiguous(),  # cifarlab keeps NCHW, airbench reads NHWC
                "labels": labels.to(torch.int64),
                "classes": list(data.classes),
            },
            folder / f"{name}.pt",
        )


def final_row(printed: str) -> tuple[float, float]:
    """(TTA test accuracy, total seconds) from the last row of the table airbench prints for a run."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in printed.splitlines()]
    evals = [cells for cells in rows if len(cells) == 7 and cells[1] == "eval"]
    if not evals:
        raise ValueError("airbench printed no 'eval' row")
    return float(evals[-1][5]), float(evals[-1][6])  # run, epoch, train_loss, train_acc, val_acc, tta_val_acc, time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py/ (default: $CIFARLAB_DATA_DIR)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--work", default="/tmp/airbench", help="airbench's working folder (WORK/cifar10/*.pt)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("airbench times itself with CUDA events: it needs a CUDA GPU", file=sys.stderr)
        return 1
    import airbench  # deferred: an optional benchmark dependency

    work = Path(args.work)
    write_airbench_data(load_cifar10(args.data_dir), work / "cifar10")
    os.chdir(work)
    airbench.warmup94()
    accuracies, seconds = [], []
    for run in range(args.runs):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            airbench.train94(run=run)
        accuracy, total = final_row(printed.getvalue())
        accuracies.append(accuracy)
        seconds.append(total)
        print(f"RESULT airbench94 run {run}: TTA test top-1 {100 * accuracy:.2f}%  {total:.3f}s", flush=True)
    print(
        f"SUMMARY airbench94: {len(seconds)} runs, TTA test top-1 mean {100 * statistics.mean(accuracies):.2f}% "
        f"(min {100 * min(accuracies):.2f}, max {100 * max(accuracies):.2f}), seconds median "
        f"{statistics.median(seconds):.3f} (min {min(seconds):.3f}, max {max(seconds):.3f}), "
        f"torch {torch.__version__}, {torch.cuda.get_device_name()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
