"""How fast ``cifarlab serve`` answers on a run with 10,000 test predictions: start-up, the run page, a confusion
cell, thumbnails, Grad-CAM of one image, an uploaded photo. Server time, in this process (Starlette's test client,
no network), median of repeats; the first (cold) answer is printed apart.

    PYTHONPATH=src python benchmarks/serve_bench.py --data-dir ../shared/data/cifar10 [--run RUN] [--repeats 20]

Without ``--run`` it first trains a small real run to serve (``cifarlab train --epochs 1 --limit-train 2000
--no-analysis``: the whole 10,000-image test set is predicted), in a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def make_run(out: Path, data_dir: str) -> Path:
    cmd = [sys.executable, "-m", "cifarlab", "train", "--epochs", "1", "--limit-train", "2000", "--no-analysis"]
    cmd += ["--data-dir", data_dir, "--out", str(out), "--name", "bench", "--device", "cpu", "--seed", "0"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out / "bench"


def timed(client: Any, url: str, repeats: int) -> tuple[float, float]:
    """(first answer, median of the next ``repeats``) in milliseconds; every answer must be 200."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        answer = client.get(url)
        times.append(1000 * (time.perf_counter() - start))
        assert answer.status_code == 200, (url, answer.status_code, answer.text[:200])
    return times[0], statistics.median(times[1:])


def most_confused(confusion: list[list[int]]) -> tuple[int, int]:
    """(true, predicted) of the largest off-diagonal count."""
    cells = [(n, i, j) for i, row in enumerate(confusion) for j, n in enumerate(row) if i != j]
    _, true, pred = max(cells)
    return true, pred


def startup_seconds(root: Path, repeats: int = 3) -> float:
    """Median seconds from `cifarlab serve` starting to its URL line (the app is then listening)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "cifarlab", "serve", str(root), "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        times.append(time.perf_counter() - start)
        proc.terminate()
        proc.wait(30)
        assert "http://" in line, line
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py/")
    parser.add_argument("--run", help="a finished run to serve (default: train a small one)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    os.environ.setdefault("CIFARLAB_CACHE_DIR", tempfile.mkdtemp(prefix="serve-bench-cache-"))
    from starlette.testclient import TestClient

    from cifarlab.serve.app import make_app

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else make_run(Path(tmp) / "runs", args.data_dir)
        root = run.parent
        print(f"start-up (cifarlab serve to its URL line): {startup_seconds(root):.2f} s (median of 3)")
        client = TestClient(make_app([root], args.data_dir))
        rid = run.name
        detail = client.get(f"/api/runs/{rid}").json()
        print(f"run {rid}: {detail['images']} test predictions, {len(detail['classes'])} classes")
        report = [("run page", f"/runs/{rid}")]
        true, pred = most_confused(detail["confusion"])
        names = detail["classes"]
        report.append(
            (
                f"confusion cell {names[true]} -> {names[pred]}",
                f"/runs/{rid}/cell?true={names[true]}&pred={names[pred]}",
            )
        )
        report.append(("samples API (50)", f"/api/runs/{rid}/samples?true={names[true]}&pred={names[pred]}"))
        for what, url in report:
            cold, warm = timed(client, url, args.repeats)
            print(f"{what}: first {cold:.0f} ms, then {warm:.1f} ms (median of {args.repeats})")
        items = client.get(f"/api/runs/{rid}/samples?true={names[true]}&pred={names[pred]}&limit=50").json()["items"]
        start = time.perf_counter()
        for it in items:
            assert client.get(f"/runs/{rid}/image/{it['index']}.png").status_code == 200
        made = 1000 * (time.perf_counter() - start) / len(items)
        start = time.perf_counter()
        for it in items:
            client.get(f"/runs/{rid}/image/{it['index']}.png")
        cached = 1000 * (time.perf_counter() - start) / len(items)
        print(f"thumbnails: {made:.1f} ms each when made (the first also reads the test set), {cached:.2f} ms cached")
        cams = []
        for it in items[:6]:
            start = time.perf_counter()
            assert client.get(f"/runs/{rid}/gradcam/{it['index']}/{pred}.png").status_code == 200
            cams.append(1000 * (time.perf_counter() - start))
        warm_cam = statistics.median(cams[1:])
        print(f"Grad-CAM of one image: first {cams[0]:.0f} ms (loads the model), then {warm_cam:.0f} ms (median of 5)")
        png = client.get(f"/runs/{rid}/image/{items[0]['index']}.png").content
        ups = []
        for _ in range(6):
            start = time.perf_counter()
            assert (
                client.post(f"/api/runs/{rid}/predict", files={"file": ("p.png", png, "image/png")}).status_code == 200
            )
            ups.append(1000 * (time.perf_counter() - start))
        print(f"upload and classify a photo: {statistics.median(ups[1:]):.0f} ms (median of 5)")


if __name__ == "__main__":
    main()
