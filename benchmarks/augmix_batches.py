"""What AugMix costs: images per second of one pass of ``Batches`` over 50,000 CIFAR-sized uint8 images (batch
512, the fast recipe's translate-altflip), without AugMix, with it, and with the two views of the consistency loss;
then, with ``--steps N``, the fast recipe's training step (fastcnn at ``--width``, 32: the planner's width at 10
minutes) on 512 and on 3 x 512 images.

    PYTHONPATH=src python benchmarks/augmix_batches.py [--images 50000] [--threads 2] [--steps 5] [--width 32]

Random images (the cost does not depend on their content); one pass each, the first batch untimed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cifarlab.config.fast import model_kwargs
from cifarlab.config.train_config import make_config
from cifarlab.data.augmix import AugMix
from cifarlab.data.batches import Batches
from cifarlab.engine.device import place_model
from cifarlab.engine.optim import make_optimizer
from cifarlab.engine.train import train_step
from cifarlab.models.registry import build_model


def batches_per_second(images: torch.Tensor, augmix: AugMix | None) -> float:
    labels = torch.zeros(len(images), dtype=torch.long)
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    batches = Batches(
        images, labels, 512, mean, std, shuffle=True, augment="translate-altflip", crop_padding=2, augmix=augmix
    )
    stream = iter(batches)
    next(stream)  # the first batch: allocation
    t0, seen = time.perf_counter(), 0
    for _, y in stream:
        seen += len(y)
    return seen / (time.perf_counter() - t0)


def step_seconds(images: int, steps: int, jsd: float, width: int) -> float:
    """Median seconds of the fast recipe's training step on ``images`` images (3x with ``jsd`` > 0)."""
    config = make_config("fast", model_width=width)
    model = place_model(build_model("fastcnn", num_classes=10, **model_kwargs(config)), torch.device("cpu"), True)
    optimizer = make_optimizer(model, config)
    x, y = torch.randn(images * (3 if jsd else 1), 3, 32, 32), torch.zeros(images, dtype=torch.long)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        train_step(model, optimizer, x, y, config.label_smoothing, config.bf16, True, jsd)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=0, help="also time N training steps without and with the JSD")
    p.add_argument("--width", type=int, default=32, help="fastcnn's width for --steps")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8)
    for name, augmix in (("off", None), ("augmix", AugMix()), ("augmix, jsd views", AugMix(views=2))):
        print(f"Batches {name:18s} {batches_per_second(images, augmix):9,.0f} images/s")
    if args.steps:
        plain, jsd = step_seconds(512, args.steps, 0.0, args.width), step_seconds(512, args.steps, 12.0, args.width)
        print(
            f"fast step (width {args.width}), 512 images: {plain:.3f} s ({512 / plain:,.0f} images/s); "
            f"with the JSD (3 x 512): {jsd:.3f} s, x{jsd / plain:.2f}"
        )


if __name__ == "__main__":
    main()
