"""What one training step of the study's models costs on this CPU: the seed recipe's step (batch 64, Adam 1e-3,
channels-last) for ``mycnn`` and ``resnet18``, in fp32 and bf16 autocast, with Adam's for-loop and fused updates,
on 1 and on all threads.

    PYTHONPATH=src python benchmarks/study_step.py [--steps 40] [--models mycnn,resnet18]

Prints one line per setting: the median milliseconds per step over ``--steps`` steps (after 10 warm-up steps, on
one fixed random batch) and what 704 such steps (one epoch of the 45,000-image split) would take. Run it with
nothing else on the machine; docs/benchmarks.md, "The study in 35 minutes", has the figures.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from cifarlab.base.cores import usable_cores
from cifarlab.models.registry import build_model

STEPS_PER_EPOCH = 704  # 45,000 training images at batch 64


def step_ms(model_name: str, bf16: bool, fused: bool, threads: int, steps: int) -> float:
    """The median time of one seed-recipe training step, in milliseconds."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(model_name).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    x = torch.randn(64, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,))
    times = []
    for i in range(steps + 10):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= 10:
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per setting (default 40)")
    parser.add_argument("--models", default="mycnn,resnet18", help="comma-separated models (default mycnn,resnet18)")
    args = parser.parse_args()
    cores = usable_cores(hyperthreads=False)
    for name in args.models.split(","):
        for bf16 in (False, True):
            for fused in (False, True):
                for threads in sorted({cores, 1}, reverse=True):
                    ms = step_ms(name, bf16, fused, threads, args.steps)
                    print(
                        f"{name:9} {'bf16' if bf16 else 'fp32'}  Adam {'fused   ' if fused else 'for-loop'}  "
                        f"{threads} thread{'s' if threads > 1 else ' '}  {ms:7.1f} ms/step  "
                        f"{ms * STEPS_PER_EPOCH / 1000:6.1f} s/epoch",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
