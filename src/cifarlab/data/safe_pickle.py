"""Read pickles that may come from anywhere: only plain data and numpy arrays can be built, never code.

The official CIFAR-10 python-version files are pickles of dicts, lists, strings, ints and uint8 numpy arrays.
A pickle can name any importable callable and call it while loading, so a plain ``pickle.load`` of a
downloaded or shared file runs whatever the file asks for. :func:`load_restricted` allows exactly the
globals that numpy arrays need and refuses every other one with a :class:`DataError` naming the file.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np

from cifarlab.base.errors import DataError


def _rebuilder(protocol: int) -> Callable[..., np.ndarray]:
    """The function numpy's pickles of this protocol call to rebuild an array.

    Taken from what numpy itself writes, rather than imported from a private module whose path changed between
    numpy 1 (numpy.core) and numpy 2 (numpy._core)."""
    reduced = cast(tuple, np.zeros(1).__reduce_ex__(protocol))
    return cast(Callable[..., np.ndarray], reduced[0])


_RECONSTRUCT = _rebuilder(2)  # protocols 0-4: _reconstruct(ndarray, shape, dtype), then __setstate__
_FROMBUFFER = _rebuilder(5)  # protocol 5: _frombuffer(buffer, dtype, shape, order)


def _dtype(*args: Any) -> np.dtype:
    """numpy.dtype, except object dtypes (whose items could be arbitrary Python objects)."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"refused object dtype {dtype}")
    return dtype


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's array rebuilder, for plain ndarrays only (no subclasses, whose __setstate__ could be anything)."""
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"refused array subclass {subtype!r}")
    return _RECONSTRUCT(subtype, shape, dtype)


def _frombuffer(buffer: Any, dtype: Any, *layout: Any) -> np.ndarray:
    """numpy's protocol-5 array rebuilder, for bytes of a plain (non-object) dtype only."""
    if not isinstance(buffer, (bytes, bytearray)) or not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError(f"refused array from {type(buffer).__name__} with dtype {dtype!r}")
    return _FROMBUFFER(buffer, dtype, *layout)


def _latin1_encode(text: Any, encoding: str = "utf-8") -> bytes:
    """_codecs.encode as Python 3 protocol-2 pickles use it for bytes: a str and latin-1, nothing else."""
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin-1")


ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # numpy 1 pickles, and the official files
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # numpy 2 pickles
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,  # protocol 5, numpy 1
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,  # protocol 5, numpy 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1_encode,  # how Python 3 writes bytes in protocol-2 pickles
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose only globals are the entries of :data:`ALLOWED`."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused persistent id")


def load_restricted(path: Path, encoding: str = "latin1") -> Any:
    """Unpickle ``path`` allowing only plain data and numpy arrays; every failure is a one-line DataError."""
    try:
        with open(path, "rb") as f:
            return _load(f, encoding)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if text.startswith("refused "):
            raise DataError(
                f"{path}: {text}: it is not plain data (a CIFAR-10 file holds only dicts, lists, "
                "strings, numbers and arrays), and loading it could run code; not loaded"
            ) from None
        raise DataError(f"{path} is truncated or corrupt (cannot unpickle: {text})") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        ImportError,
        IndexError,
        KeyError,
        UnicodeDecodeError,
        MemoryError,
        RecursionError,
        OverflowError,
    ) as exc:
        raise DataError(
            f"{path} is truncated or corrupt (cannot unpickle: {type(exc).__name__}: {one_line(exc)})"
        ) from None


def _load(f: BinaryIO, encoding: str) -> Any:
    return RestrictedUnpickler(f, encoding=encoding).load()


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (numpy and pickle messages can span several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
