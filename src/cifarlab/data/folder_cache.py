"""The on-disk cache of decoded image folders: under ``$CIFARLAB_CACHE_DIR`` (else ``$XDG_CACHE_HOME/cifarlab``, else
``~/.cache/cifarlab``), one ``.npy`` array and a small JSON (no pickle) per key. An entry is read only when its
JSON (read bounded) describes the expected files and size and its ``.npy`` header holds the expected shape and
fits the file; a damaged one is said and rebuilt. Entries are written atomically (array first, then the JSON that
makes them valid), a cache that cannot be written is a warning, and temporary files a killed writer left are
removed later.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from cifarlab.base.errors import CifarlabError, DataError
from cifarlab.base.files import TEMP_SUFFIX, atomic_write
from cifarlab.base.progress import log
from cifarlab.base.records import read_json

CACHE_FORMAT = 1  # layout of the cache files; part of the key
CACHE_SUBDIR = "images"
CONTENT_BLOCK = 1 << 16  # bytes hashed at each end of a file for the cache key
STALE_TEMP_SECONDS = 3600  # a cache temporary file older than this was left by a killed writer: removed


def content_digest(path: Path, size: int) -> str:
    """SHA-256 of a file's first and last :data:`CONTENT_BLOCK` bytes (all of a small file); '' if unreadable
    (the decoder then reports it)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            digest.update(f.read(CONTENT_BLOCK))
            if size > 2 * CONTENT_BLOCK:
                f.seek(size - CONTENT_BLOCK)
            digest.update(f.read(CONTENT_BLOCK))
    except OSError:
        return ""
    return digest.hexdigest()


def cache_dir() -> Path:
    """$CIFARLAB_CACHE_DIR, else $XDG_CACHE_HOME/cifarlab, else ~/.cache/cifarlab."""
    if os.environ.get("CIFARLAB_CACHE_DIR"):
        return Path(os.environ["CIFARLAB_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "cifarlab"


def cache_paths(key: str) -> tuple[Path, Path]:
    folder = cache_dir() / CACHE_SUBDIR
    return folder / f"{key}.npy", folder / f"{key}.json"


def valid_meta(meta: Any, count: int, image_size: int) -> bool:
    """The cache's JSON describes ``count`` files at this size, with a well-formed list of skipped ones."""
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT or meta.get("image_size") != image_size:
        return False
    skipped = meta.get("skipped")
    if meta.get("files") != count or not isinstance(skipped, list):
        return False
    if not all(isinstance(s, list) and len(s) == 2 and type(s[0]) is int and isinstance(s[1], str) for s in skipped):
        return False
    indices = [s[0] for s in skipped]
    return len(set(indices)) == len(indices) and all(0 <= i < count for i in indices)


def check_npy_header(path: Path, shape: tuple[int, ...]) -> None:
    """Read a ``.npy`` file's header only and refuse it (ValueError) unless it holds uint8 of ``shape``, in C
    order, and the file is large enough for it: a planted header claiming a terabyte is refused unread."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            found, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            found, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"npy format version {version} is not one cifarlab writes")
        data_start = f.tell()
    if dtype != np.uint8 or fortran or tuple(found) != shape:
        raise ValueError(f"array of {dtype} {tuple(found)}, expected uint8 {shape}")
    if os.path.getsize(path) < data_start + math.prod(shape):
        raise ValueError("the file is shorter than its header says")


def read_cache(key: str, count: int, image_size: int) -> tuple[np.ndarray, list[tuple[int, str]]] | None:
    """The cached images and skipped files (index, reason), or None when absent; a damaged entry is said and
    ignored (it is rebuilt). The JSON is read bounded; the array's header is checked before any pixel is read."""
    array_path, meta_path = cache_paths(key)
    if not meta_path.is_file():
        return None
    try:
        meta = read_json(meta_path, DataError)
        if not valid_meta(meta, count, image_size):
            raise ValueError("its description does not match the files")
        kept = count - len(meta["skipped"])
        check_npy_header(array_path, (kept, 3, image_size, image_size))
        images = np.load(array_path, allow_pickle=False)
        if images.dtype != np.uint8 or images.shape != (kept, 3, image_size, image_size):
            raise ValueError(
                f"array of {images.dtype} {images.shape}, expected uint8 {(kept, 3, image_size, image_size)}"
            )
    except (OSError, ValueError, EOFError, DataError) as exc:
        log(f"cifarlab: the cached images {array_path} are damaged ({exc}); decoding again")
        return None
    return images, [(i, reason) for i, reason in meta["skipped"]]


def write_cache(key: str, images: np.ndarray, skipped: list[tuple[int, str]], count: int, image_size: int) -> None:
    """Save the decoded images (array first, then the JSON that makes the entry valid), atomically; a cache
    folder that cannot be written is a warning, not an error."""
    array_path, meta_path = cache_paths(key)
    meta = {"format": CACHE_FORMAT, "image_size": image_size, "files": count, "skipped": [list(s) for s in skipped]}
    try:
        array_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(array_path, lambda f: np.save(f, images, allow_pickle=False))
        atomic_write(meta_path, lambda f: f.write(json.dumps(meta).encode()))  # the entry is valid from here
    except (OSError, CifarlabError) as exc:
        text = str(exc) if isinstance(exc, CifarlabError) else f"{array_path.parent}: {exc.strerror or exc}"
        log(f"cifarlab: warning: could not cache the decoded images ({text}); the next run decodes them again")


def remove_stale_temporaries(folder: Path, now: float | None = None) -> int:
    """Delete the temporary files (``.<name>.<random>.tmp``) that writers killed mid-write left in the cache
    folder, once older than :data:`STALE_TEMP_SECONDS` (a younger one may belong to a writer still at work);
    returns how many were removed."""
    now = time.time() if now is None else now
    removed = 0
    try:
        candidates = [e for e in os.scandir(folder) if e.name.startswith(".") and e.name.endswith(TEMP_SUFFIX)]
    except OSError:
        return 0
    for entry in candidates:
        try:
            if entry.is_file(follow_symlinks=False) and now - entry.stat().st_mtime > STALE_TEMP_SECONDS:
                os.unlink(entry.path)
                removed += 1
        except OSError:
            continue
    return removed
