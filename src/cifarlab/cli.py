"""The ``cifarlab`` command line. Each sub-command is a small function; errors become one clear line."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from cifarlab.base.errors import CheckpointError, CifarlabError, UsageError, escape
from cifarlab.config.train_config import COMPILE_MODES, OPTIMIZERS
from cifarlab.flags import add_data_flags, non_negative_int, positive_float, positive_int, seed_int
from cifarlab.results.analysis import register_analyze
from cifarlab.results.compare import register_compare
from cifarlab.results.report import register_report
from cifarlab.sweep import register_sweep
from cifarlab.tools.benchmark import register_benchmark

# What last.pt must hold, and of which type, for training to continue where it stopped.
RESUME_KEYS: dict[str, type | tuple[type, ...]] = {
    "optimizer": dict,
    "scheduler": dict,
    "rng": dict,
    "epoch": int,
    "history": list,
    "best_val_top1": (int, float),
    "train_seconds": (int, float),
}


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block) pointing to --help; exit code 2."""

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())  # argparse's messages may wrap long choice lists
        self.exit(2, f"cifarlab: error: {escape(text)} (see {self.prog} --help)\n")


def add_common_run_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``train`` and ``study``. Defaults of None mean 'take the recipe's value'."""
    p.add_argument(
        "--recipe", default=None, help="named set of hyperparameters (see `cifarlab recipes`); default: seed"
    )
    p.add_argument("--epochs", type=positive_int, help="number of epochs (recipe default)")
    p.add_argument("--batch-size", type=positive_int, help="training batch size (recipe default)")
    p.add_argument("--lr", type=positive_float, help="peak learning rate (recipe default)")
    p.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        help="adam, sgd (Nesterov) or muon (orthogonalised steps for conv weights; docs/fast.md); recipe default",
    )
    p.add_argument("--seed", type=seed_int, help="seed for split, initial weights, shuffling, augmentation (default 0)")
    add_data_flags(p)
    p.add_argument("--out", help="parent folder for runs (default: runs)")
    p.add_argument("--name", help="run folder name (default: a timestamp and the model)")
    p.add_argument("--limit-train", type=positive_int, metavar="N", help="train on a class-balanced slice of N images")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")


def overrides_from(args: argparse.Namespace) -> dict:
    keys = (
        "epochs",
        "batch_size",
        "lr",
        "optimizer",
        "seed",
        "data_dir",
        "out",
        "name",
        "limit_train",
        "device",
        "time_budget",
        "model_width",
        "dataset",
        "labels",
        "image_size",
        "strict",
        "timed",
        "init_from",
        "freeze_epochs",
        "body_lr_scale",
        "scale_to_data",
    )
    values = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if getattr(args, "compile_mode", None) is not None:
        values.update(compile=True, compile_mode=args.compile_mode)
    return values


def cmd_train(args: argparse.Namespace) -> int:
    from cifarlab.config.train_config import TrainConfig, make_config
    from cifarlab.data.loading import load_dataset
    from cifarlab.engine.distributed import is_main_process
    from cifarlab.engine.train import train
    from cifarlab.engine.transfer import with_init_model
    from cifarlab.results.analysis import analyze_after_training

    resume = None
    if args.resume:
        resume = Path(args.resume)
        config = resume_config(args)
    elif args.config:
        if args.recipe:
            raise UsageError("--config replays a saved run; give either --config or --recipe, not both")
        # a replay is a new run, on the data folder of this machine (--data-dir, $CIFARLAB_DATA_DIR, ./data)
        base = {**TrainConfig.load(args.config).to_dict(), "name": None, "data_dir": None}
        if args.model:
            base["model"] = args.model
        config = make_config(base.pop("recipe"), **{**base, **overrides_from(args)})
    else:
        overrides = with_init_model({"model": args.model, **overrides_from(args)})
        config = make_config(args.recipe or "seed", **overrides)
    run = train(config, resume=resume)
    if not args.no_analysis and is_main_process():  # the analysis follows training, once (rank 0 under torchrun)
        data = load_dataset(
            config.dataset, config.data_dir, config.image_size, config.labels, config.strict, allow_download=False
        )
        analyze_after_training(run, data)
    return 0


def resume_config(args: argparse.Namespace) -> Any:
    """The config of the run to resume, after checking that its config.json and last.pt belong together.

    The data folder is never the one recorded in the run: it is --data-dir, else $CIFARLAB_DATA_DIR, else ./data.
    """
    from cifarlab.base.progress import log
    from cifarlab.config.train_config import TrainConfig
    from cifarlab.data.cifar10 import resolve_data_dir
    from cifarlab.runs.checkpoint import load_checkpoint

    run = Path(args.resume)
    if not (run / "last.pt").is_file():
        raise UsageError(f"cannot resume {run}: no last.pt there (is it a cifarlab run folder?)")
    changed = [k for k in overrides_from(args) if k not in ("data_dir", "device")]
    changed += [k for k in ("model", "recipe", "config") if getattr(args, k, None)]
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise UsageError(
            f"--resume continues {run} exactly as it was configured; drop {flags} "
            "(only --data-dir and --device may change)"
        )
    config = TrainConfig.load(run / "config.json")
    check_resumable(load_checkpoint(run, "last.pt"), config.model)
    config = dataclasses.replace(config, data_dir=args.data_dir, device=args.device or config.device)
    log(f"data folder: {resolve_data_dir(args.data_dir).resolve()} (--data-dir, else $CIFARLAB_DATA_DIR, else ./data)")
    return config


def check_resumable(state: dict[str, Any], model: str) -> None:
    """Refuse a last.pt that is for another model than config.json, or lacks what resuming needs."""
    path = state["path"]
    if state["model_name"] != model:
        raise CheckpointError(
            f"{path}: holds a {state['model_name']!r} model but config.json beside it says "
            f"{model!r}; cannot resume a run whose files disagree"
        )
    wrong = [
        key
        for key, kind in RESUME_KEYS.items()
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool)
    ]
    if wrong:
        raise CheckpointError(
            f"{path}: cannot resume from it: {', '.join(wrong)} missing or of the wrong type "
            "(resuming needs the optimizer, scheduler and RNG states, epoch, history, best "
            "validation top-1 and training time)"
        )


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
        out=overrides.pop("out", "runs"),
        name=overrides.pop("name", None),
        **overrides,
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from cifarlab.models.registry import MODELS, build_model, count_macs, count_params, model_summary

    print(f"{'name':<16} {'parameters':>12} {'MACs/image':>12}  description")
    for name in MODELS:
        model = build_model(name)
        print(f"{name:<16} {count_params(model):>12,} {count_macs(model):>12,}  {model_summary(name)}")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from cifarlab.config.train_config import RECIPE_HELP, RECIPES

    for name in RECIPES:
        print(f"{name:<16} {RECIPE_HELP.get(name, '')}")
    return 0


def register_train(sub: argparse._SubParsersAction) -> None:
    """Add ``cifarlab train`` to the command line."""
    p = sub.add_parser("train", help="train one model, then evaluate it once on the test set")
    p.add_argument("--model", help="model name (see `cifarlab models`); default: the recipe's, else mycnn")
    add_common_run_flags(p)
    p.add_argument("--config", metavar="RUN/config.json", help="replay a saved run's config (flags still override)")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last.pt")
    p.add_argument(
        "--time-budget",
        type=positive_float,
        metavar="SECONDS",
        help="plan steps (and width) so training + the final test fit in SECONDS (recipes fast, "
        "resnet18-cifar; docs/fast.md)",
    )
    p.add_argument(
        "--init-from",
        metavar="RUN_OR_CHECKPOINT",
        help="start from a trained run's weights (its tested checkpoint, or a best.pt/last.pt): same model and "
        "width, a new head when the classes differ (recipe finetune; docs/datasets.md)",
    )
    p.add_argument(
        "--freeze-epochs",
        type=non_negative_int,
        metavar="N",
        help="with --init-from: train only the head for the first N epochs (recipe default; finetune: 0)",
    )
    p.add_argument(
        "--body-lr-scale",
        type=positive_float,
        metavar="F",
        help="with --init-from: the LR of everything but the head is F x the LR (recipe default; finetune: 0.3)",
    )
    p.add_argument(
        "--no-scale",
        dest="scale_to_data",
        action="store_false",
        default=None,
        help="keep the recipe's validation size, batch size, LR and schedule as written, even on a small dataset "
        "(by default they adapt to it, and run.json's scaling says how)",
    )
    p.add_argument(
        "--no-analysis",
        action="store_true",
        help="skip the error analysis written after the test (figures, Grad-CAM; slow on a CPU): "
        "`cifarlab analyze RUN` writes it later",
    )
    p.add_argument(
        "--width",
        dest="model_width",
        type=positive_int,
        metavar="N",
        help="channel width of models that take one (fastcnn; default 64, or the budget planner's)",
    )
    p.add_argument(
        "--compile",
        dest="compile_mode",
        nargs="?",
        const="default",
        choices=COMPILE_MODES,
        help="torch.compile the model; MODE reduce-overhead or max-autotune also use CUDA graphs on a GPU "
        "(compiling takes a minute or more, on the clock)",
    )
    p.add_argument(
        "--timed",
        action="store_true",
        default=None,
        help="time as airbench does: per-epoch validation and checkpoints off the clock (run.json's "
        "seconds_used), no per-step GPU syncs (docs/fast.md)",
    )
    p.set_defaults(func=cmd_train)


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
    add_common_run_flags(p)
    p.set_defaults(func=cmd_study)


def register_models(sub: argparse._SubParsersAction) -> None:
    """Add ``cifarlab models`` to the command line."""
    p = sub.add_parser("models", help="list the registered models with their size and cost")
    p.set_defaults(func=cmd_models)


def register_recipes(sub: argparse._SubParsersAction) -> None:
    """Add ``cifarlab recipes`` to the command line."""
    p = sub.add_parser("recipes", help="list the training recipes")
    p.set_defaults(func=cmd_recipes)


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


# Every sub-command, in the order `cifarlab --help` lists them: each adds one parser and sets its ``func``.
# The consumer modules load torch only when their command runs, so building the parser stays light.
COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    register_train,
    register_evaluate,
    register_study,
    register_analyze,
    register_compare,
    register_report,
    register_predict,
    register_export,
    register_sweep,
    register_benchmark,
    register_models,
    register_recipes,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``cifarlab`` parser: one OneLineParser per sub-command, added in COMMANDS order."""
    parser = OneLineParser(
        prog="cifarlab", description="Train, evaluate, explain and compare image classifiers on CIFAR-10."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # output still buffered for a closed pipe fails here, inside the handlers below
        return code
    except CifarlabError as exc:
        print(f"cifarlab: error: {escape(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("cifarlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`cifarlab models | head`): stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so Python's final flush of stdout does not fail again
        return 141  # 128 + SIGPIPE, the status a shell reports for a tool stopped by a closed pipe


if __name__ == "__main__":
    sys.exit(main())
