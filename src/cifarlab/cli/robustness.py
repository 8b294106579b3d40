"""``cifarlab robustness RUN``: the run's model on corrupted test images (regenerated, or the CIFAR-10-C files)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from cifarlab.base.errors import UsageError
from cifarlab.cli.flags import positive_int, seed_int


def checked_now(flag: str, parse_name: str) -> Callable[[str], str]:
    """An argparse type for ``flag`` that checks its value with results.robustness's ``parse_name`` (one argparse
    line for a bad value) and passes the text on: the command parses it again."""

    def check(text: str) -> str:
        from cifarlab.results import robustness

        try:
            getattr(robustness, parse_name)(text)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{flag}: ")) from None
        return text

    return check


severities_flag = checked_now("--severities", "parse_severities")
corruptions_flag = checked_now("--corruptions", "parse_corruptions")


def cmd_robustness(args: argparse.Namespace) -> int:
    from cifarlab.results.robustness import robustness, summary_text
    from cifarlab.runs.layout import ROBUSTNESS_DIR

    record = robustness(
        args.run,
        corruptions=args.corruptions,
        severities=args.severities,
        limit=args.limit,
        cifar10c=args.cifar10c,
        data_dir=args.data_dir,
        dataset=args.dataset,
        seed=args.seed,
        device=args.device or "auto",
        tta=args.tta,
    )
    print(summary_text(record, Path(args.run) / ROBUSTNESS_DIR))
    return 0


def register_robustness(sub: argparse._SubParsersAction) -> None:
    """Add ``cifarlab robustness`` to the command line."""
    p = sub.add_parser(
        "robustness",
        help="accuracy of a finished run on corrupted test images (the 15 CIFAR-10-C corruptions)",
        description="Score the run's tested checkpoint, as its test scored it, on its test images under the 15 "
        "CIFAR-10-C corruptions at severities 1-5 (regenerated and seeded, or read from the published CIFAR-10-C "
        "files with --cifar10c); write RUN/robustness/ (robustness.json, robustness.csv, a heatmap and a gallery). "
        "See docs/robustness.md.",
    )
    p.add_argument("run", metavar="RUN", help="a finished run folder")
    p.add_argument(
        "--corruptions",
        type=corruptions_flag,
        metavar="LIST",
        help="comma-separated corruptions or families (noise, blur, weather, digital); default: all 15",
    )
    p.add_argument("--severities", type=severities_flag, metavar="1-5", help="1-5 (default), 1,3,5 or 2-4")
    p.add_argument("--limit", type=positive_int, metavar="N", help="only the first N test images (quicker)")
    p.add_argument(
        "--cifar10c",
        metavar="DIR",
        help="read the published CIFAR-10-C files (<corruption>.npy and labels.npy) from DIR instead of "
        "regenerating the corruptions (CIFAR-10 runs at 32 px)",
    )
    p.add_argument(
        "--seed", type=seed_int, default=0, metavar="N", help="seed of the regenerated corruptions (default 0)"
    )
    p.add_argument(
        "--tta",
        type=int,
        choices=(0, 1, 2),
        help="score at this test-time augmentation level instead of the run's (0: one view, 6x cheaper than 2; "
        "clean top-1 is then not the run's test top-1)",
    )
    p.add_argument(
        "--data-dir",
        help="CIFAR runs: the folder holding the CIFAR batches (default: $CIFARLAB_DATA_DIR, else ./data)",
    )
    p.add_argument(
        "--dataset",
        metavar="FOLDER",
        help="runs on an image folder: where that folder is now, if it moved (default: the folder the run recorded)",
    )
    p.add_argument("--device", help="auto (default), cpu, cuda or mps")
    p.set_defaults(func=cmd_robustness)
