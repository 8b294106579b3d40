"""The command line of the results: ``cifarlab analyze``, ``cifarlab compare`` and ``cifarlab report``."""

from __future__ import annotations

import argparse
from pathlib import Path

from cifarlab.results.analysis import ANALYSIS_DIR, analyze, summary_text
from cifarlab.results.compare import compare, comparison_markdown
from cifarlab.results.report import report


def cmd_analyze(args: argparse.Namespace) -> int:
    summary = analyze(args.run, data_dir=args.data_dir, images=not args.no_images, dataset=args.dataset)
    print(summary_text(summary, Path(args.run) / ANALYSIS_DIR))
    return 0


def register_analyze(sub: argparse._SubParsersAction) -> None:
    """Add ``cifarlab analyze`` to the command line."""
    p = sub.add_parser(
        "analyze",
        help="error analysis of a finished run (confusions, calibration, Grad-CAM)",
        description="Write RUN/analysis/: confusion matrix, per-class metrics, confused pairs, "
        "galleries, learning curves, calibration and Grad-CAM, from the run's saved "
        "test predictions (nothing is retrained).",
    )
    p.add_argument("run", metavar="RUN", help="a finished run folder (holding test_predictions.npz)")
    p.add_argument(
        "--data-dir",
        help="CIFAR runs: the folder holding the CIFAR batches, for the images "
        "(default: $CIFARLAB_DATA_DIR, else ./data)",
    )
    p.add_argument(
        "--dataset",
        metavar="FOLDER",
        help="runs on an image folder: where that folder is now, if it moved (default: the folder the run recorded; "
        "its files must be the ones the run was trained on)",
    )
    p.add_argument("--no-images", action="store_true", help="numbers and plots only: no galleries or Grad-CAM")
    p.set_defaults(func=cmd_analyze)


def cmd_compare(args: argparse.Namespace) -> int:
    comp = compare(args.runs, args.out)
    print(comparison_markdown(comp), end="")
    print(f"\nwritten to {args.out}/ (comparison.csv, runs.csv, figures)")
    return 0


def register_compare(sub: argparse._SubParsersAction) -> None:
    """Add ``cifarlab compare`` to the command line."""
    p = sub.add_parser(
        "compare",
        help="finished runs side by side (seeds of one setup as mean ± std)",
        description="Compare finished runs: a table on stdout (Markdown) and CSV, overlaid "
        "learning curves, per-class accuracy and the classes where runs disagree. "
        "Runs with the same config except seed are grouped as mean ± std (n).",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="finished run folders")
    p.add_argument("--out", default="comparison", help="folder for the CSV files and figures (default: comparison)")
    p.set_defaults(func=cmd_compare)


def cmd_report(args: argparse.Namespace) -> int:
    path = report(args.runs, args.out, args.data_dir)
    print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB, self-contained) and {path.with_suffix('.md')}")
    return 0


def register_report(sub: argparse._SubParsersAction) -> None:
    """Add ``cifarlab report`` to the command line."""
    p = sub.add_parser(
        "report",
        help="one self-contained HTML report (and report.md) for one or more runs",
        description="Write a self-contained HTML report (every figure embedded, no network "
        "needed) and a Markdown summary beside it, for one or more finished runs.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="finished run folders")
    p.add_argument(
        "--out",
        metavar="FILE.html",
        help="the HTML file (default: RUN/report.html for one run, "
        "./report.html for several); report.md goes beside it",
    )
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py/, if an analysis must be made")
    p.set_defaults(func=cmd_report)
