"""``cifarlab train``: a new run from a recipe, flags and ``--set``, or ``--resume`` of a stopped one."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from cifarlab.base.errors import CheckpointError, UsageError
from cifarlab.cli.flags import add_data_flags, non_negative_int, positive_float, positive_int, seed_int
from cifarlab.config.train_config import COMPILE_MODES, OPTIMIZERS

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
    p.add_argument(
        "--fp32",
        dest="bf16",
        action="store_false",
        default=None,
        help="train and score in fp32 where the recipe asks for bf16 (recipes seed, fast...: bf16 only on CUDA and "
        "CPUs with bf16 in hardware; run.json's precision says which ran)",
    )


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
        "augmix",
        "augmix_jsd",
        "bf16",
    )
    values = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if getattr(args, "compile_mode", None) is not None:
        values.update(compile=True, compile_mode=args.compile_mode)
    if values.get("augmix_jsd"):  # the consistency loss is over AugMix views
        values["augmix"] = True
    return values


def cmd_train(args: argparse.Namespace) -> int:
    from cifarlab.config.train_config import TrainConfig, make_config
    from cifarlab.data.loading import load_dataset
    from cifarlab.engine.distributed import is_main_process
    from cifarlab.engine.train import train
    from cifarlab.engine.transfer import with_init_model
    from cifarlab.results.analysis import analyze_after_training
    from cifarlab.runs.folder import RunFolder

    resume = None
    if args.resume:
        resume = Path(args.resume)
        config = resume_config(args)
    elif args.config:
        if args.recipe:
            raise UsageError("--config replays a saved run; give either --config or --recipe, not both")
        # a replay is a new run, on the data folder of this machine (--data-dir, $CIFARLAB_DATA_DIR, ./data)
        source = Path(args.config)  # a config.json, or the run folder holding it
        saved = RunFolder.open(source).config if source.is_dir() else TrainConfig.load(source)
        base = {**saved.to_dict(), "name": None, "data_dir": None}
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
    from cifarlab.data.cifar10 import resolve_data_dir
    from cifarlab.runs.checkpoint import load_checkpoint
    from cifarlab.runs.folder import RunFolder

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
    config = RunFolder(run).config
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
    add_transfer_flags(p)
    add_augmix_flags(p)
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
    add_speed_flags(p)
    p.set_defaults(func=cmd_train)


def add_transfer_flags(p: argparse.ArgumentParser) -> None:
    """``train``'s flags for starting from a trained model: where from, the head-only epochs, the body's LR."""
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


def add_augmix_flags(p: argparse.ArgumentParser) -> None:
    """``train``'s flags for AugMix training (robustness to corruptions; data/augmix.py)."""
    p.add_argument(
        "--augmix",
        action="store_true",
        default=None,
        help="AugMix: train on mixtures of augmentation chains (none of them a CIFAR-10-C corruption); width, "
        "depth and severity: the config's augmix_* fields",
    )
    p.add_argument(
        "--augmix-jsd",
        type=positive_float,
        metavar="WEIGHT",
        help="with AugMix (implies --augmix), add WEIGHT x the Jensen-Shannon consistency loss over the clean image "
        "and two AugMix views (the paper: 12; each step then runs 3x the images); without it, off",
    )


def add_speed_flags(p: argparse.ArgumentParser) -> None:
    """``train``'s flags for how the model runs: its width, torch.compile, and timing as airbench does."""
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
