"""The server's caches, each bounded: one LRU, by entry count (runs, datasets, models) or by bytes (PNGs), always
thread-safe, and the on-disk cache of Grad-CAM pictures under ``$CIFARLAB_CACHE_DIR/serve`` (never a run folder).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from cifarlab.base.errors import CifarlabError
from cifarlab.base.files import atomic_write

V = TypeVar("V")


class LRU(Generic[V]):
    """Values whose costs add up to at most ``budget`` (by default each costs 1: a count); the least recently used
    go first, and a value that alone costs more than the budget is not kept. :meth:`get_or_make` makes a missing
    value once, under a per-key lock, so 50 requests for one run read its files once."""

    def __init__(self, budget: int, cost: Callable[[V], int] = lambda _: 1) -> None:
        self.budget = budget
        self.cost = cost
        self.used = 0
        self.items: OrderedDict[object, V] = OrderedDict()
        self.lock = threading.Lock()
        self.making: dict[object, threading.Lock] = {}

    def __len__(self) -> int:
        return len(self.items)

    def get(self, key: object) -> V | None:
        with self.lock:
            if key not in self.items:
                return None
            self.items.move_to_end(key)
            return self.items[key]

    def put(self, key: object, value: V) -> None:
        if self.cost(value) > self.budget:
            return
        with self.lock:
            if key in self.items:
                self.used -= self.cost(self.items.pop(key))
            self.items[key] = value
            self.used += self.cost(value)
            while self.used > self.budget:
                _, dropped = self.items.popitem(last=False)
                self.used -= self.cost(dropped)

    def get_or_make(self, key: object, make: Callable[[], V]) -> V:
        found = self.get(key)
        if found is not None:
            return found
        with self.lock:
            key_lock = self.making.setdefault(key, threading.Lock())
        with key_lock:
            found = self.get(key)
            if found is None:
                found = make()
                self.put(key, found)
        with self.lock:
            self.making.pop(key, None)
        return found


class ByteCache(LRU[bytes]):
    """Byte strings up to ``budget`` bytes in all (an :class:`LRU` whose cost is the length)."""

    def __init__(self, budget: int) -> None:
        super().__init__(budget, cost=len)


def disk_cache_dir() -> Path:
    """Where the server keeps what outlives it (Grad-CAM pictures): ``$CIFARLAB_CACHE_DIR/serve``."""
    from cifarlab.data.folder_cache import cache_dir  # here: the data package loads torch

    return cache_dir() / "serve"


def disk_key(*parts: object) -> str:
    """A file name for a cache entry: the SHA-256 of its parts."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def disk_get_or_make(name: str, make: Callable[[], bytes]) -> bytes:
    """The cached file ``name`` (a :func:`disk_key`), made and stored atomically when missing; a cache that cannot
    be written is skipped (the answer is still given)."""
    path = disk_cache_dir() / f"{name}.png"
    try:
        return path.read_bytes()
    except OSError:
        pass
    data = make()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(data))
    except (OSError, CifarlabError):
        pass
    return data
