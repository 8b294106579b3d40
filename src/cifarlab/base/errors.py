"""Errors that the CLI turns into a short message and an exit code, never a traceback."""


class CifarlabError(Exception):
    """A problem the user can fix (bad data, bad file, bad run folder). Exit code 1."""

    exit_code = 1


class UsageError(CifarlabError):
    """A bad command-line argument. Exit code 2, like argparse's own errors."""

    exit_code = 2


class DataError(CifarlabError):
    """CIFAR-10 could not be found, downloaded or read."""


class CheckpointError(CifarlabError):
    """A checkpoint is missing, truncated, unsafe or from another model."""


def escape(text: str) -> str:
    """Characters that are not printable (newlines, tabs, escape sequences, bidi controls) as Python escapes,
    so a file name or a message can never forge lines or move the terminal's cursor."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
