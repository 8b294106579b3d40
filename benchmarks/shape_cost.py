"""What one training image costs fastcnn and airbench94's network at the same three group widths (wall clock).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/shape_cost.py [--shapes 24,96,96 32,64,128 48,192,192]
        [--batch-size 512] [--steps 5] [--repeats 2] [--threads 2]

fastcnn's groups are w, 4w, 4w (width 24: 24/96/96); airbench's CPU variants are w, 2w, 4w (32/64/128), which costs
about the same multiply-accumulates. This times both networks at each shape, channels-last and fp32 as both train
on a CPU, with the same plain Nesterov SGD step on a random batch: ``--steps`` timed steps after two warm-up
steps, the median step, alternating the two networks ``--repeats`` times so that the machine's drift hits both.
It answers whether a speed gap between the two recipes is the network (the shape or its layers) or the rest of
the training loop. Needs the `airbench` package (the `test` extra).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from unittest import mock

import torch
from torch import nn

from cifarlab.cli.flags import positive_int
from cifarlab.models.fastcnn import FastCNN, FastConvGroup
from cifarlab.models.registry import count_macs

Shape = tuple[int, int, int]


def fastcnn_at(shape: Shape) -> nn.Module:
    """fastcnn (as the fast recipe builds it: Dirac init, frozen BN scale) with its three groups at ``shape``."""
    model = FastCNN(10, shape[0], dirac=True, frozen_bn_scale=True)
    model.group1 = FastConvGroup(24, shape[0], True, True)
    model.group2 = FastConvGroup(shape[0], shape[1], True, True)
    model.group3 = FastConvGroup(shape[1], shape[2], True, True)
    model.head = nn.Linear(shape[2], 10, bias=False)
    return model


def airbench_at(shape: Shape) -> nn.Module:
    """airbench94's network at ``shape``, in fp32 on the CPU (its .half().cuda() made no-ops)."""
    import airbench  # deferred: an optional benchmark dependency

    same = lambda module, *a, **k: module  # noqa: E731
    with mock.patch.object(nn.Module, "half", same), mock.patch.object(nn.Module, "cuda", same):
        return airbench.lib_airbench94.make_net94(widths=dict(block1=shape[0], block2=shape[1], block3=shape[2]))


def images_per_second(make: Callable[[Shape], nn.Module], shape: Shape, batch_size: int, steps: int) -> float:
    """Training images per wall-clock second: the median of ``steps`` timed SGD steps after two warm-up steps."""
    model = make(shape).to(memory_format=torch.channels_last).train()
    x = torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(), step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times)


def parse_shape(text: str) -> Shape:
    parts = tuple(int(w) for w in text.split(","))
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive widths such as 32,64,128, got {text!r}")
    return parts[0], parts[1], parts[2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", type=parse_shape, nargs="+", default=[(24, 96, 96), (32, 64, 128), (48, 192, 192)])
    p.add_argument("--batch-size", type=positive_int, default=512)
    p.add_argument("--steps", type=positive_int, default=5, help="timed steps per measurement (the median counts)")
    p.add_argument("--repeats", type=positive_int, default=2, help="measurements per network, alternating")
    p.add_argument("--threads", type=positive_int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"| group widths | MACs/image | fastcnn (img/s) | airbench94 net (img/s) | ratio | {args.threads} threads |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for shape in args.shapes:
        ours, theirs = [], []
        for _ in range(args.repeats):
            ours.append(images_per_second(fastcnn_at, shape, args.batch_size, args.steps))
            theirs.append(images_per_second(airbench_at, shape, args.batch_size, args.steps))
        a, b = statistics.median(ours), statistics.median(theirs)
        macs = count_macs(fastcnn_at(shape)) / 1e6
        name = "/".join(map(str, shape))
        print(f"| {name} | {macs:.1f} M | {a:,.0f} | {b:,.0f} | {a / b:.2f} | |", flush=True)


if __name__ == "__main__":
    main()
