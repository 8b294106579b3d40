"""The ``cifarlab`` command line. Each sub-command is a small function; errors become one clear line."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from cifarlab.errors import CifarlabError, UsageError


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def add_common_run_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``train`` and ``study``. Defaults of None mean 'take the recipe's value'."""
    p.add_argument("--recipe", default=None, help="named set of hyperparameters (see `cifarlab recipes`); default: seed")
    p.add_argument("--epochs", type=positive_int, help="number of epochs (recipe default)")
    p.add_argument("--batch-size", type=positive_int, help="training batch size (recipe default)")
    p.add_argument("--lr", type=positive_float, help="peak learning rate (recipe default)")
    p.add_argument("--seed", type=int, help="seed for split, initial weights, shuffling, augmentation (default 0)")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py/ (default: $CIFARLAB_DATA_DIR, else ./data)")
    p.add_argument("--out", help="parent folder for runs (default: runs)")
    p.add_argument("--name", help="run folder name (default: a timestamp and the model)")
    p.add_argument("--limit-train", type=positive_int, metavar="N", help="train on a class-balanced slice of N images")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")


def overrides_from(args: argparse.Namespace) -> dict:
    keys = ("epochs", "batch_size", "lr", "seed", "data_dir", "out", "name", "limit_train", "device")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def cmd_train(args: argparse.Namespace) -> int:
    from cifarlab.config import TrainConfig, make_config
    from cifarlab.train import train

    if args.resume:
        from pathlib import Path

        run = Path(args.resume)
        if not (run / "last.pt").is_file():
            raise UsageError(f"cannot resume {run}: no last.pt there (is it a cifarlab run folder?)")
        train(TrainConfig.load(run / "config.json"), resume=run)
        return 0
    if args.config:
        if args.recipe:
            raise UsageError("--config replays a saved run; give either --config or --recipe, not both")
        base = {**TrainConfig.load(args.config).to_dict(), "name": None}  # a replay is a new run
        if args.model:
            base["model"] = args.model
        config = make_config(base.pop("recipe"), **{**base, **overrides_from(args)})
    else:
        config = make_config(args.recipe or "seed", model=args.model or "mycnn", **overrides_from(args))
    train(config)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cifarlab.evaluate import evaluate

    metrics = evaluate(args.run, split=args.split, data_dir=args.data_dir, device=args.device or "auto",
                       out=args.out)
    print(f"{args.split}: top-1 {100 * metrics['top1']:.2f}%  top-3 {100 * metrics['top3']:.2f}%  "
          f"loss {metrics['loss']:.4f}  ({metrics['n']} images, {metrics['checkpoint']} epoch {metrics['epoch']})")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from cifarlab.study import study

    overrides = overrides_from(args)
    study(recipe=args.recipe or "seed", quick=args.quick, out=overrides.pop("out", "runs"),
          name=overrides.pop("name", None), **overrides)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from cifarlab.models import MODELS, build_model, count_macs, count_params, describe

    print(f"{'name':<16} {'parameters':>12} {'MACs/image':>12}  description")
    for name in MODELS:
        model = build_model(name)
        print(f"{name:<16} {count_params(model):>12,} {count_macs(model):>12,}  {describe(name)}")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from cifarlab.config import RECIPE_HELP, RECIPES

    for name in RECIPES:
        print(f"{name:<16} {RECIPE_HELP.get(name, '')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cifarlab", description="Train, evaluate, explain and compare image classifiers on CIFAR-10.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("train", help="train one model, then evaluate it once on the test set")
    p.add_argument("--model", help="model name (see `cifarlab models`); default: mycnn")
    add_common_run_flags(p)
    p.add_argument("--config", metavar="RUN/config.json", help="replay a saved run's config (flags still override)")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last.pt")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a checkpoint on the test (or validation) set")
    p.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="a run folder (uses best.pt) or a .pt file")
    p.add_argument("--split", choices=["test", "val"], default="test", help="which split to score (default test)")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py/")
    p.add_argument("--device", help="auto (default), cpu, cuda or mps")
    p.add_argument("--out", help="folder for the metrics files (default: beside the checkpoint)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("study", help="the whole study: mycnn vs resnet18, same setup, compared")
    p.add_argument("--quick", action="store_true", help="a 5,000-image slice and 3 epochs: minutes on a CPU")
    add_common_run_flags(p)
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("models", help="list the registered models with their size and cost")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("recipes", help="list the training recipes")
    p.set_defaults(func=cmd_recipes)

    for register in EXTRA_COMMANDS:
        register(sub)
    return parser


# Further sub-commands register themselves here: each entry is a function(subparsers) that adds one parser
# and sets its ``func``.
EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CifarlabError as exc:
        print(f"cifarlab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("cifarlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
