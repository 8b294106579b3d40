"""Small datasets: build them as image folders, then train on them from scratch and fine-tuned, and print a table.

    python benchmarks/small_data.py digits OUT                    # scikit-learn's 1,797 8x8 digits as PNGs
    python benchmarks/small_data.py imagenette OUT --per-class 50 [--source ../shared/data/imagenette2-96]
    python benchmarks/small_data.py run FOLDER --seeds 0,1,2 [--scratch "--recipe fast"] \\
        [--finetune "--recipe finetune --init-from runs/cifar-fast"] [--out runs/small] [--common "..."]

``digits`` writes ``OUT/train/<digit>/`` and ``OUT/test/<digit>/`` (every fourth image of each class is a test
image: 1,347 train, 450 test), grey 8x8 PNGs scaled to 0-255. ``imagenette`` copies the first ``--per-class``
files of each class (sorted by name, listed in ``OUT/train.txt``) of Imagenette's ``train/`` into ``OUT/train/``
and the whole ``val/`` (3,925 images) into ``OUT/val/``, with the readable class names in ``OUT/classes.txt``:
a fixed subset anyone can rebuild. ``run`` trains every setup (``--scratch``, ``--finetune``: extra arguments of
``cifarlab train``; either may be empty to skip it) for each seed, one run after the other with nothing else in
parallel, and prints test top-1 and wall time per run and as mean ± std per setup.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

IMAGENETTE_NAMES = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}


def make_digits(out: Path) -> None:
    """scikit-learn's digits (1,797 images) as grey 8x8 PNGs, every fourth image of a class held out for test."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts: dict[int, int] = {}
    for image, label in zip(digits.images, digits.target, strict=True):
        k = counts.get(int(label), 0)
        counts[int(label)] = k + 1
        split = "test" if k % 4 == 3 else "train"
        folder = out / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(image * (255 / 16), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{k:04d}.png")
    print(f"wrote {len(digits.target)} digits to {out}/train and {out}/test")


def make_imagenette(source: Path, out: Path, per_class: int) -> None:
    """The first ``per_class`` training files of each class (by name), and the whole val/ as the test set."""
    listed = []
    for wnid in sorted(IMAGENETTE_NAMES):
        files = sorted((source / "train" / wnid).iterdir())[:per_class]
        (out / "train" / wnid).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy2(f, out / "train" / wnid / f.name)
            listed.append(f"train/{wnid}/{f.name}")
    shutil.copytree(source / "val", out / "val", dirs_exist_ok=True)
    (out / "classes.txt").write_text("".join(f"{IMAGENETTE_NAMES[w]}\n" for w in sorted(IMAGENETTE_NAMES)))
    (out / "train.txt").write_text("".join(f"{name}\n" for name in listed))
    print(f"wrote {len(listed)} training images ({per_class} per class) and val/ to {out}")


def run_setups(args: argparse.Namespace) -> None:
    """Each setup for each seed, one after the other; a table of test top-1 and wall time."""
    setups = {name: extra for name, extra in (("scratch", args.scratch), ("finetune", args.finetune)) if extra}
    seeds = [int(s) for s in args.seeds.split(",")]
    rows: dict[str, list[tuple[int, float, float, dict]]] = {name: [] for name in setups}
    for seed in seeds:
        for name, extra in setups.items():
            run = f"{Path(args.folder).name}-{name}-s{seed}"
            command = [sys.executable, "-m", "cifarlab", "train", "--dataset", args.folder, "--seed", str(seed)]
            command += ["--out", args.out, "--name", run, "--no-analysis", *shlex.split(extra)]
            command += shlex.split(args.common)
            folder = Path(args.out) / run
            if not (folder / "run.json").is_file():
                shutil.rmtree(folder, ignore_errors=True)
                t0 = time.perf_counter()
                subprocess.run(command, check=True)
                wall = time.perf_counter() - t0
                (folder / "wall_seconds.txt").write_text(f"{wall:.1f}\n")
            info = json.loads((folder / "run.json").read_text())
            wall = float((folder / "wall_seconds.txt").read_text())
            rows[name].append((seed, info["test_top1"], wall, info))
            print(f"{run}: test top-1 {100 * info['test_top1']:.2f}% in {wall:.1f} s", flush=True)
    print(f"\n{args.folder}: {', '.join(f'{n} = {e!r}' for n, e in setups.items())}; common {args.common!r}")
    print("| setup | test top-1, mean ± std | per seed | wall s, mean | batch | epochs | scaled |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in rows.items():
        tops = [100 * r[1] for r in runs]
        std = statistics.stdev(tops) if len(tops) > 1 else 0.0
        walls = [r[2] for r in runs]
        info = runs[0][3]
        scaled = ", ".join(
            f"{c['field']} {c['before']}->{c['after']:.4g}"
            if isinstance(c["after"], float)
            else f"{c['field']} {c['before']}->{c['after']}"
            for c in info.get("scaling", {}).get("changes", [])
        )
        config = json.loads(
            (Path(args.out) / f"{Path(args.folder).name}-{name}-s{runs[0][0]}" / "config.json").read_text()
        )
        print(
            f"| {name} | {statistics.mean(tops):.2f} ± {std:.2f}% | {', '.join(f'{t:.2f}' for t in tops)} "
            f"| {statistics.mean(walls):.1f} | {config['batch_size']} | {info['epochs']} | {scaled or 'none'} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("digits", help="scikit-learn's digits as a train/test image folder")
    d.add_argument("out", type=Path)
    i = sub.add_parser("imagenette", help="a fixed per-class subset of Imagenette's train/, with its whole val/")
    i.add_argument("out", type=Path)
    i.add_argument("--per-class", type=int, required=True)
    i.add_argument("--source", type=Path, default=Path("../shared/data/imagenette2-96"))
    r = sub.add_parser("run", help="train the setups for each seed and print the table")
    r.add_argument("folder")
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--scratch", default="--recipe fast", help="cifarlab train arguments of the from-scratch runs")
    r.add_argument("--finetune", default="", help="cifarlab train arguments of the fine-tuned runs")
    r.add_argument("--common", default="", help="arguments added to every run (e.g. --image-size 64)")
    r.add_argument("--out", default="runs/small")
    args = p.parse_args()
    if args.command == "digits":
        make_digits(args.out)
    elif args.command == "imagenette":
        make_imagenette(args.source, args.out, args.per_class)
    else:
        run_setups(args)


if __name__ == "__main__":
    main()
