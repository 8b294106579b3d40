"""The ``cifarlab`` command line. Each sub-command is a small function; errors become one clear line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from cifarlab.base.errors import CifarlabError, escape
from cifarlab.cli.catalog import register_models, register_recipes
from cifarlab.cli.results import register_analyze, register_compare, register_report
from cifarlab.cli.robustness import register_robustness
from cifarlab.cli.serve import register_serve
from cifarlab.cli.sweep import register_sweep
from cifarlab.cli.tools import register_benchmark, register_evaluate, register_export, register_predict, register_study
from cifarlab.cli.train import register_train


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block) pointing to --help; exit code 2."""

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())  # argparse's messages may wrap long choice lists
        self.exit(2, f"cifarlab: error: {escape(text)} (see {self.prog} --help)\n")


# Every sub-command, in the order `cifarlab --help` lists them: each adds one parser and sets its ``func``.
# The consumer modules load torch only when their command runs, so building the parser stays light.
COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    register_train,
    register_evaluate,
    register_study,
    register_analyze,
    register_robustness,
    register_compare,
    register_report,
    register_predict,
    register_export,
    register_sweep,
    register_serve,
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
