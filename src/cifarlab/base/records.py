"""Reading JSON, TOML and YAML that someone else may have written: sizes and nesting bounded, loaders safe.

Every structured file cifarlab reads (config.json, run.json, classes.json, a CIFAR-100 or cache description,
sweep.json, a TOML/YAML sweep file, a ``--set`` value) goes through this module, so one place decides what a
hostile file can cost: at most :data:`MAX_BYTES` read, nesting at most :data:`MAX_DEPTH` deep, integers at most
:data:`MAX_INT_DIGITS` digits, no YAML anchors or aliases (alias bombs, self-reference) and no YAML tags beyond
the safe loader's. Every failure is one ``error(...)`` (a :class:`CifarlabError` subclass chosen by the caller)
whose message starts with the file's name.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from cifarlab.base.errors import CifarlabError, escape

MAX_BYTES = 16 * 1024 * 1024  # a run's own records are kilobytes; sweep.json of 10,000 runs is a few MB
MAX_DEPTH = 32  # the deepest record cifarlab writes is 5 levels
MAX_INT_DIGITS = 30  # beyond any count, seed or size; Python's own limit (4,300) still lets 400 digits through

_NOT_GIVEN = object()


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def check_depth(value: Any, source: str, error: type[CifarlabError], max_depth: int = MAX_DEPTH) -> Any:
    """``value`` unchanged if no list or dict in it is nested deeper than ``max_depth`` (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Any
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > max_depth:
            raise error(f"{source}: nested more than {max_depth} levels deep")
        stack.extend((child, depth + 1) for child in children)
    return value


def read_bounded_text(path: str | Path, error: type[CifarlabError], max_bytes: int = MAX_BYTES) -> str:
    """A text file's UTF-8 content, refused (one ``error``) when it is larger than ``max_bytes`` or not a file."""
    path = Path(path)
    source = escape(str(path))
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise error(f"{source}: no such file") from None
    except IsADirectoryError:
        raise error(f"{source}: is a folder, not a file") from None
    except OSError as exc:
        raise error(f"{source}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise error(f"{source}: larger than {max_bytes:,} bytes, too large to be a cifarlab record")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{source}: not UTF-8 text (byte {exc.start})") from None


def loads_json(
    text: str,
    source: str,
    error: type[CifarlabError] = CifarlabError,
    *,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
    not_json: Any = _NOT_GIVEN,
) -> Any:
    """The value of a JSON text, bounded. ``not_json``, when given, is returned for text that is not JSON at all
    (a ``--set`` value read as a plain string); limits are refused either way."""
    if len(text) > max_bytes:
        raise error(f"{source}: larger than {max_bytes:,} characters, too large to be a cifarlab record")
    try:
        value = json.loads(text, parse_int=_parse_int)
    except RecursionError:
        raise error(f"{source}: nested too deeply") from None
    except json.JSONDecodeError as exc:
        if not_json is not _NOT_GIVEN:
            return not_json
        raise error(f"{source}: not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from None
    except ValueError as exc:  # an integer too long (ours or Python's own limit)
        raise error(f"{source}: {exc}") from None
    return check_depth(value, source, error, max_depth)


def read_json(path: str | Path, error: type[CifarlabError] = CifarlabError, *, max_bytes: int = MAX_BYTES) -> Any:
    """The value of a JSON file, bounded (see :func:`loads_json`)."""
    text = read_bounded_text(path, error, max_bytes)
    return loads_json(text, escape(str(path)), error, max_bytes=max_bytes)


def kind_of(value: Any) -> str:
    """A JSON value's kind in words, for a message: 'a list', 'a string', 'null'."""
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "true or false", type(None): "null"}
    for kind, words in kinds.items():
        if isinstance(value, kind):
            return words
    return "a number" if isinstance(value, int | float) else type(value).__name__


def json_object(value: Any, source: str, error: type[CifarlabError] = CifarlabError) -> dict[str, Any]:
    """``value`` if it is a JSON object (every cifarlab record is one); else one ``error`` naming its kind."""
    if not isinstance(value, dict):
        raise error(f"{source}: holds {kind_of(value)}, not a JSON object; it is not a cifarlab record")
    return value


def read_json_object(
    path: str | Path, error: type[CifarlabError] = CifarlabError, *, max_bytes: int = MAX_BYTES
) -> dict[str, Any]:
    """The JSON object of a record file, bounded (see :func:`loads_json`); anything but an object is refused."""
    return json_object(read_json(path, error, max_bytes=max_bytes), escape(str(path)), error)


def loads_toml(text: str, source: str, error: type[CifarlabError] = CifarlabError) -> Any:
    """The table of a TOML text, bounded."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        try:
            import tomli as tomllib
        except ImportError:
            raise error(f"{source}: reading TOML needs Python 3.11+ (or: pip install tomli)") from None
    if len(text) > MAX_BYTES:
        raise error(f"{source}: larger than {MAX_BYTES:,} characters")
    try:
        value = tomllib.loads(text)
    except RecursionError:
        raise error(f"{source}: nested too deeply") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{source}: not valid TOML: {exc}") from None
    _check_ints(value, source, error)
    return check_depth(value, source, error)


def loads_yaml(text: str, source: str, error: type[CifarlabError] = CifarlabError) -> Any:
    """The value of a YAML text through PyYAML's safe loader, with anchors and aliases refused, bounded."""
    try:
        import yaml  # optional: only YAML sweep files need it
    except ImportError:
        raise error(f"{source}: reading YAML needs PyYAML (pip install pyyaml); or write it as TOML") from None
    if len(text) > MAX_BYTES:
        raise error(f"{source}: larger than {MAX_BYTES:,} characters")

    class NoAliasLoader(yaml.SafeLoader):
        """The safe loader, refusing ``&anchor``/``*alias`` (the only way YAML can grow or refer to itself)."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            # refused at the event, before anything is built: nodes do not keep their anchor, events do
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent):
                raise yaml.YAMLError(f"aliases (*name) are not allowed, line {event.start_mark.line + 1}")
            if getattr(event, "anchor", None):
                raise yaml.YAMLError(f"anchors (&name) are not allowed, line {event.start_mark.line + 1}")
            return super().compose_node(parent, index)

    loader = NoAliasLoader(text)
    try:
        value = loader.get_single_data()
    except RecursionError:
        raise error(f"{source}: nested too deeply") from None
    except yaml.YAMLError as exc:
        raise error(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()
    _check_ints(value, source, error)
    return check_depth(value, source, error)


def _check_ints(value: Any, source: str, error: type[CifarlabError]) -> None:
    """Refuse integers longer than :data:`MAX_INT_DIGITS` digits anywhere in a parsed TOML/YAML value."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, bool):
            continue
        if isinstance(item, int):
            if item.bit_length() > MAX_INT_DIGITS * 3.33:
                raise error(f"{source}: an integer of more than {MAX_INT_DIGITS} digits")
        elif depth <= MAX_DEPTH + 1 and isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
            stack.extend((k, depth + 1) for k in item)
        elif depth <= MAX_DEPTH + 1 and isinstance(item, list | tuple):
            stack.extend((v, depth + 1) for v in item)
