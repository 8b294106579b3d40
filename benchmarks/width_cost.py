"""What one training image costs fastcnn at each width, in CPU time (so a busy machine does not skew it).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/width_cost.py [--threads 1] [--batch-size 256]
        [--layout nhwc|nchw] [--bf16] [--compile] [--optimizer sgd|muon] [--wall] [--steps 3]

Times ``--steps`` (3) training steps (after a warm-up step) and one forward pass per width with time.process_time():
images per CPU-second is what one core would do alone. The time-budget planner prices widths by their
multiply-accumulates; this shows where that estimate is off (small widths cost more than their MACs suggest).
``--layout nchw`` measures what cifarlab does not do on a CPU (device.py): the default memory layout instead of
channels-last. ``--bf16`` measures bf16 autocast, which the fast recipe trains with on CPUs that have bf16
instructions (AVX512-BF16 or AMX; device.py), without it fp32 as on other CPUs. ``--compile`` times the model
under torch.compile (the ``--compile`` option of ``cifarlab train``; three untimed steps compile it first),
``--optimizer muon`` the Muon step instead of SGD. ``--wall`` reads the wall clock instead (images per second, as
a run on an idle machine sees it: how well the threads share the work, which CPU time hides), over ``--steps``
steps.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from cifarlab.cli.flags import positive_int
from cifarlab.config.fast import model_kwargs
from cifarlab.config.train_config import make_config
from cifarlab.engine.device import place_model
from cifarlab.engine.optim import make_optimizer
from cifarlab.engine.train import train_step
from cifarlab.models.registry import build_model, count_macs


def precision(bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on the CPU, or plain fp32."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--widths", default="12,16,24,32,48,64")
    parser.add_argument("--layout", choices=["nhwc", "nchw"], default="nhwc", help="nhwc: as cifarlab places it")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (the fast recipe, where bf16 pays)")
    parser.add_argument("--compile", action="store_true", help="the model under torch.compile (default mode)")
    parser.add_argument("--optimizer", choices=["sgd", "muon"], default="sgd", help="the fast recipe's, or Muon")
    parser.add_argument("--wall", action="store_true", help="wall-clock images per second instead of per CPU-s")
    parser.add_argument("--steps", type=positive_int, default=3, help="timed training steps per width")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = make_config("fast", optimizer=args.optimizer)
    layout = torch.channels_last if args.layout == "nhwc" else torch.contiguous_format
    x = torch.randn(args.batch_size, 3, 32, 32).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (args.batch_size,))
    clock, unit = (time.perf_counter, "s") if args.wall else (time.process_time, "CPU-s")
    print(f"| width | MACs/image | train images per {unit} | eval images per {unit} |")
    print("| ---: | ---: | ---: | ---: |")
    for width in (int(w) for w in args.widths.split(",")):
        model = build_model("fastcnn", **model_kwargs(config, width))
        model = place_model(model, torch.device("cpu")) if args.layout == "nhwc" else model
        optimizer = make_optimizer(model, config)
        stepped = torch.compile(model) if args.compile else model
        with precision(args.bf16):
            for _ in range(3 if args.compile else 1):  # warm-up (and compilation)
                train_step(stepped, optimizer, x, y, config.label_smoothing)
            c0 = clock()
            for _ in range(args.steps):
                train_step(stepped, optimizer, x, y, config.label_smoothing)
        train_rate = args.steps * args.batch_size / (clock() - c0)
        model.eval()
        with torch.no_grad(), precision(args.bf16):
            for _ in range(2 if args.compile else 1):  # warm-up (a compiled model recompiles for eval mode)
                stepped(x)
            c0 = clock()
            stepped(x)
            eval_rate = args.batch_size / (clock() - c0)
        print(f"| {width} | {count_macs(model) / 1e6:.1f} M | {train_rate:,.0f} | {eval_rate:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
