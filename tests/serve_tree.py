"""The folder tree the serve tests serve: crafted runs (known mistakes), a sweep of two seeds, a run still training,
and hostile runs (bad JSON, NaN, wrong array shapes, forged numbers, markup in names, links that lead out)."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

Crafted = Any  # conftest's crafted_run fixture: crafted(dest, seed=0, config=None, info=None)

HOSTILE_NAME = '<script>alert("x")</script>'
HOSTILE = ("bad-json", "nan-run", "wrong-shapes", "markup", "forged", "linked-file")


def build_tree(tiny_run: Path, crafted: Crafted, root: Path, outside: Path) -> Path:
    """runs/ with a, b (crafted, seeds 0 and 1), sweep1/{s0,s1}, training, the hostile runs and a link out."""
    runs = root / "runs"
    runs.mkdir(parents=True)
    crafted(runs / "a", seed=0)
    crafted(runs / "b", seed=1, config={"seed": 1})
    sweep = runs / "sweep1"
    sweep.mkdir()
    (sweep / "sweep.json").write_text(json.dumps({"name": "sweep1", "runs": [{"name": "s0"}, {"name": "s1"}]}))
    crafted(sweep / "s0", seed=2)
    crafted(sweep / "s1", seed=3, config={"seed": 1})
    training = runs / "training"
    shutil.copytree(tiny_run, training, ignore=shutil.ignore_patterns("run.json", "test_*", "analysis"))
    lines = (training / "metrics.csv").read_text().splitlines()
    (training / "metrics.csv").write_text("\n".join(lines[:2]) + "\n")
    make_hostile(tiny_run, crafted, runs, outside)
    (runs / "escape").symlink_to(outside / "elsewhere", target_is_directory=True)
    return runs


def make_hostile(tiny_run: Path, crafted: Crafted, runs: Path, outside: Path) -> None:
    crafted(runs / "bad-json")
    (runs / "bad-json" / "run.json").write_text('{"test_top1": 0.5,')
    crafted(runs / "nan-run")
    (runs / "nan-run" / "run.json").write_text('{"test_top1": NaN, "epochs": 2}')
    crafted(runs / "wrong-shapes")
    np.savez(
        runs / "wrong-shapes" / "test_predictions.npz", y_true=np.zeros(5), probs=np.zeros((4, 10)), index=np.arange(5)
    )
    names = [HOSTILE_NAME, *[f"c{k}" for k in range(1, 10)]]
    crafted(
        runs / "markup",
        config={"model": HOSTILE_NAME},
        info={"dataset": {**json.loads((tiny_run / "run.json").read_text())["dataset"], "classes": names}},
    )
    crafted(runs / "forged", info={"test_top1": 7.5, "train_seconds": "<b>fast</b>"})
    crafted(runs / "linked-file")
    outside.mkdir(exist_ok=True)
    (outside / "secret.npz").write_bytes((runs / "linked-file" / "test_predictions.npz").read_bytes())
    (runs / "linked-file" / "test_predictions.npz").unlink()
    (runs / "linked-file" / "test_predictions.npz").symlink_to(outside / "secret.npz")
    elsewhere = outside / "elsewhere"
    shutil.copytree(tiny_run, elsewhere)


def tree_fingerprint(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (links not followed) with its SHA-256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """The app served by uvicorn on a free local port in a thread; yields its base URL."""
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
