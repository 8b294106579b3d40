"""SHA-256 fingerprints of three fixed CPU runs, to show that a change to the training code changes no result.

    PYTHONPATH=src python benchmarks/fingerprint.py --data-dir DIR [--out /tmp/fingerprint] [--threads 1]

The runs, each through ``python -m cifarlab train`` in a child process (``--device cpu --no-analysis --seed 0``):

* ``seed``: the seed recipe, mycnn, 2 epochs, ``--limit-train 5000``;
* ``fast``: the fast recipe, 3 epochs, ``--limit-train 5000``;
* ``resumed``: the ``fast`` run stopped after epoch 1 (a driver calls ``train(config, on_epoch=...)`` and raises
  KeyboardInterrupt from ``on_epoch``), then continued with ``cifarlab train --resume``.

For each run it prints the SHA-256 of test_metrics.json (its values, keys sorted; it holds no timings) and of
every array in test_predictions.npz (dtype, shape and bytes), plus, as extra evidence, of metrics.csv without its
timing columns and of the final weights in last.pt. Run it before and after a change on the same machine with
the same thread count and compare the lines: bit-identical results print identical lines.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

TIMING_COLUMNS = ("epoch_seconds", "images_per_second")
COMMON = ["--device", "cpu", "--no-analysis", "--seed", "0", "--limit-train", "5000"]

# Stops a run after epoch 1 the way Ctrl-C would; the run folder then holds last.pt of epoch 1.
STOP_AFTER_EPOCH_1 = """
import sys
from cifarlab.config.train_config import make_config
from cifarlab.base.errors import CifarlabError
from cifarlab.engine.train import train

data_dir, out, name = sys.argv[1:4]
config = make_config("fast", epochs=3, limit_train=5000, seed=0, device="cpu", data_dir=data_dir, out=out,
                     name=name)


def stop(epoch, model):
    if epoch == 1:
        raise KeyboardInterrupt


try:
    train(config, on_epoch=stop)
except CifarlabError as exc:
    print(f"stopped: {exc}")
    sys.exit(0)
sys.exit("the run was not stopped after epoch 1")
"""


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def array_digest(array: np.ndarray) -> str:
    return digest(f"{array.dtype.str}{array.shape}".encode() + np.ascontiguousarray(array).tobytes())


def fingerprints(run: Path) -> list[tuple[str, str]]:
    """(what, SHA-256) for the test metrics, each prediction array, the per-epoch metrics and the final weights."""
    metrics = json.loads((run / "test_metrics.json").read_text())
    rows = [("test_metrics.json", digest(json.dumps(metrics, sort_keys=True).encode()))]
    with np.load(run / "test_predictions.npz") as saved:
        rows += [(f"test_predictions.npz:{key}", array_digest(saved[key])) for key in sorted(saved.files)]
    lines = (run / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    keep = [i for i, column in enumerate(header) if column not in TIMING_COLUMNS]
    table = "\n".join(",".join(line.split(",")[i] for i in keep) for line in lines)
    rows.append(("extra metrics.csv (no timings)", digest(table.encode())))
    weights = torch.load(run / "last.pt", map_location="cpu", weights_only=True)["model"]
    rows.append(
        (
            "extra last.pt weights",
            digest(b"".join(name.encode() + weights[name].contiguous().numpy().tobytes() for name in sorted(weights))),
        )
    )
    return rows


def run(cmd: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(cmd)}\n{result.stdout[-3000:]}{result.stderr[-3000:]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", default="/tmp/cifarlab-fingerprint", help="scratch folder (emptied first)")
    p.add_argument("--threads", default="1", help="OMP_NUM_THREADS of every child (same before and after)")
    args = p.parse_args()

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": args.threads, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
    cli = [sys.executable, "-m", "cifarlab", "train", "--data-dir", args.data_dir, "--out", str(out), *COMMON]
    run([*cli, "--model", "mycnn", "--epochs", "2", "--name", "seed"], env)
    run([*cli, "--recipe", "fast", "--epochs", "3", "--name", "fast"], env)
    run([sys.executable, "-c", STOP_AFTER_EPOCH_1, args.data_dir, str(out), "resumed"], env)
    resume = [sys.executable, "-m", "cifarlab", "train", "--resume", str(out / "resumed"), "--no-analysis"]
    run([*resume, "--data-dir", args.data_dir], env)

    print(f"torch {torch.__version__}, OMP_NUM_THREADS={args.threads}")
    for name in ("seed", "fast", "resumed"):
        for what, value in fingerprints(out / name):
            print(f"{name:8s} {what:34s} {value}")
    same = fingerprints(out / "fast") == fingerprints(out / "resumed")
    print(f"resumed run identical to the uninterrupted fast run: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
