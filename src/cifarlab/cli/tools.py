"""The command line of the tools: ``evaluate``, ``predict``, ``export``, ``study`` and ``benchmark``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cifarlab.base.errors import UsageError
from cifarlab.cli.flags import add_data_flags, positive_int
from cifarlab.cli.train import add_common_run_flags, overrides_from
from cifarlab.tools.benchmark import Settings, benchmark


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cifarlab.tools.evaluate import evaluate

    metrics = evaluate(
        args.run,
        split=args.split,
        data_dir=args.data_dir,
        device=args.device or "auto",
        out=args.out,
        dataset=args.dataset,
    )
    print(
        f"{args.split}: top-1 {100 * metrics['top1']:.2f}%  top-3 {100 * metrics['top3']:.2f}%  "
        f"loss {metrics['loss']:.4f}  ({metrics['n']} images, {metrics['checkpoint']} epoch {metrics['epoch']}, "
        f"data {metrics['data_dir']})"
    )
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from cifarlab.tools.study import study

    overrides = overrides_from(args)
    study(
        recipe=args.recipe or "seed",
        quick=args.quick,
        sequential=args.sequential,
        out=overrides.pop("out", "runs"),
        name=overrides.pop("name", None),
        **overrides,
    )
    return 0


def register_evaluate(sub: argparse._SubParsersAction) -> None:
    """Add ``cifarlab evaluate`` to the command line."""
    p = sub.add_parser("evaluate", help="score a checkpoint on the test (or validation) set")
    p.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="a run folder (uses best.pt) or a .pt file")
    p.add_argument("--split", choices=["test", "val"], default="test", help="which split to score (default test)")
    p.add_argument("--data-dir", help="folder holding the CIFAR files (default: $CIFARLAB_DATA_DIR, else ./data)")
    p.add_argument(
        "--dataset",
        metavar="FOLDER",
        help="the run's image folder, if it has moved (default: the folder the run recorded; its file list must match)",
    )
    p.add_argument("--device", help="auto (default), cpu, cuda or mps")
    p.add_argument("--out", help="folder for the metrics files (default: beside the checkpoint)")
    p.set_defaults(func=cmd_evaluate)


def register_study(sub: argparse._SubParsersAction) -> None:
    """Add ``cifarlab study`` to the command line."""
    p = sub.add_parser("study", help="the whole study: mycnn vs resnet18, same setup, compared")
    p.add_argument("--quick", action="store_true", help="a 5,000-image slice and 3 epochs: minutes on a CPU")
    p.add_argument(
        "--sequential",
        action="store_true",
        help="train the models one after the other, each on every core, the same bits on every rerun (default on "
        "a CPU with a core per model: side by side, one process each on its share of the cores, and a model that "
        "is done hands its cores on to the others from their next epoch)",
    )
    add_common_run_flags(p)
    p.set_defaults(func=cmd_study)


def cmd_predict(args: argparse.Namespace) -> int:
    from cifarlab.tools.predict import predict_files, render

    results = predict_files(args.checkpoint, args.images, top_k=args.top_k, device=args.device or "cpu")
    print(render(results, args.json))
    failed = [r for r in results if r.error is not None]
    if failed and not args.json:
        print(f"cifarlab: {len(failed)} of {len(results)} files could not be classified", file=sys.stderr)
    return 1 if failed else 0


def register_predict(sub: argparse._SubParsersAction) -> None:
    """Add ``cifarlab predict`` to the command line."""
    p = sub.add_parser("predict", help="classify your own images (any format and size) with a trained model")
    p.add_argument("--checkpoint", required=True, metavar="RUN_OR_FILE", help="a run folder (uses best.pt) or a .pt")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of images")
    p.add_argument(
        "--top-k", type=positive_int, default=3, help="classes to show per image (default 3; at most the model's)"
    )
    p.add_argument("--json", action="store_true", help="print a JSON list instead of one line per image")
    p.add_argument("--device", help="cpu (default), auto, cuda or mps")
    p.set_defaults(func=cmd_predict)


def cmd_export(args: argparse.Namespace) -> int:
    from cifarlab.tools.export import export, sidecar

    info = export(args.run, args.out, fmt=args.format, data_dir=args.data_dir, dataset=args.dataset)
    check, size = info["check"], info["image_size"]
    print(
        f"wrote {args.out} ({info['format']}; input float32 N x 3 x {size} x {size} RGB in [0, 1], "
        f"normalisation inside; output logits) and {sidecar(Path(args.out))}"
    )
    print(
        f"checked on {check['images']} with {check['runtime']}: max |logit difference| "
        f"{check['max_abs_logit_diff']:.1e} (tolerance {check['tolerance']:g})"
    )
    return 0


def register_export(sub: argparse._SubParsersAction) -> None:
    """Add ``cifarlab export`` to the command line."""
    p = sub.add_parser("export", help="write a trained model as ONNX or TorchScript, normalisation inside")
    p.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="a run folder (uses best.pt) or a .pt file")
    p.add_argument("--format", choices=["onnx", "torchscript"], help="default: from the --out suffix")
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the model (FILE.json goes beside it)")
    p.add_argument(
        "--data-dir", help="CIFAR folder for the check on held-out images (image-folder runs use their recorded folder)"
    )
    p.add_argument("--dataset", metavar="FOLDER", help="the run's image folder, if it has moved since training")
    p.set_defaults(func=cmd_export)


def parse_list(text: str, kind: Callable[[str], Any]) -> tuple:
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("the list is empty")
    return values


def cmd_benchmark(args: argparse.Namespace) -> int:
    settings = Settings.quick() if args.quick else Settings()
    if args.models:
        settings.models = args.models
    for key in ("batch_size", "steps", "repeats", "seed_epochs"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            raise UsageError(f"--{key.replace('_', '-')} must be at least 1 (got {getattr(args, key)})")
    for key in ("batch_size", "steps", "repeats", "budgets", "seed_epochs"):
        if getattr(args, key) is not None:
            setattr(settings, key, getattr(args, key))
    settings.seed = not args.no_seed
    if any(b <= 0 for b in settings.budgets):
        raise UsageError("--budgets must be positive numbers of seconds")
    benchmark(
        args.out,
        settings,
        args.data_dir,
        args.device or "auto",
        args.throughput_only,
        args.accuracy_only,
        command=command_line(args),
        dataset=args.dataset or "cifar10",
        image_size=args.image_size,
        labels=args.labels or "fine",
        strict=bool(args.strict),
    )
    return 0


def command_line(args: argparse.Namespace) -> str:
    """The command as typed, rebuilt from the parsed flags (for the record in the results)."""
    parts = ["cifarlab benchmark"]
    for key, value in sorted(vars(args).items()):
        if key in ("func", "command") or value in (None, False):
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, tuple):
            parts.append(f"{flag} {','.join(f'{v:g}' if isinstance(v, float) else str(v) for v in value)}")
        elif not (key == "out" and value == "benchmarks/results"):
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def register_benchmark(sub: argparse._SubParsersAction) -> None:
    """Add ``cifarlab benchmark`` to the command line."""

    def budgets(text: str) -> tuple:
        return parse_list(text, float)

    def models(text: str) -> tuple:
        return parse_list(text, str)

    p = sub.add_parser(
        "benchmark",
        help="throughput vs a PIL+DataLoader pipeline, and time to accuracy",
        description="Measure training throughput of each model with cifarlab's pipeline and with "
        "the common PIL + DataLoader one, and the time the fast and seed recipes take "
        "to reach 75-94%% test accuracy. Writes OUT/benchmark.json and OUT/benchmark.md.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small settings that finish in minutes (batch 32, 2 steps x 2 repeats, one 60 s budget, "
        "seed recipe for 2 epochs on 10,000 images)",
    )
    p.add_argument("--out", default="benchmarks/results", help="folder for the results (default benchmarks/results)")
    p.add_argument("--models", type=models, help="comma-separated models to time (default: all registered)")
    p.add_argument("--batch-size", type=int, help="batch size for the throughput runs (default 128)")
    p.add_argument("--steps", type=int, help="timed steps per repeat (default 5)")
    p.add_argument("--repeats", type=int, help="repeats per measurement; the median is kept (default 3)")
    p.add_argument(
        "--budgets",
        type=budgets,
        metavar="S1,S2,...",
        help="time budgets in seconds for the fast recipe (default 150,240,600)",
    )
    p.add_argument("--seed-epochs", type=int, help="epochs of the seed recipe (default: its 20)")
    p.add_argument("--no-seed", action="store_true", help="leave the seed recipe out of the time-to-accuracy runs")
    p.add_argument("--throughput-only", action="store_true", help="skip the time-to-accuracy runs")
    p.add_argument("--accuracy-only", action="store_true", help="skip the throughput measurements")
    add_data_flags(p)
    p.add_argument("--device", help="auto (default), cpu, cuda or mps")
    p.set_defaults(func=cmd_benchmark)
