"""``cifarlab study``: the course project's whole study in one command.

Trains ``mycnn`` and ``resnet18`` with the same recipe, seed and split, evaluates both once on the test set,
and writes a side-by-side comparison.
"""

from __future__ import annotations

import time
from pathlib import Path

from cifarlab.config import make_config
from cifarlab.data import load_cifar10
from cifarlab.progress import log
from cifarlab.runfiles import read_json, write_json
from cifarlab.train import train

STUDY_MODELS = ("mycnn", "resnet18")
# --quick: a class-balanced slice and a few epochs, so the whole study runs in minutes on 2 CPU cores.
QUICK = dict(limit_train=5000, epochs=3)

TABLE_COLUMNS = [
    ("model", "model", "{}"), ("params", "parameters", "{:,}"), ("train_seconds", "train time (s)", "{:.0f}"),
    ("images_per_second", "images/s", "{:.0f}"), ("best_val_top1", "best val top-1", "{:.2%}"),
    ("test_top1", "test top-1", "{:.2%}"), ("test_top3", "test top-3", "{:.2%}"),
    ("train_val_gap", "train-val gap", "{:+.2%}"),
]


def comparison_table(summaries: list[dict]) -> str:
    """A Markdown table of the headline numbers of each run."""
    lines = ["| " + " | ".join(title for _, title, _ in TABLE_COLUMNS) + " |",
             "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"]
    for s in summaries:
        lines.append("| " + " | ".join(fmt.format(s[key]) for key, _, fmt in TABLE_COLUMNS) + " |")
    return "\n".join(lines)


def study(recipe: str = "seed", quick: bool = False, out: str = "runs", name: str | None = None,
          models: tuple[str, ...] = STUDY_MODELS, **overrides) -> Path:
    """Train every study model with one shared config, then compare them. Returns the study folder."""
    overrides = {**(QUICK if quick else {}), **{k: v for k, v in overrides.items() if v is not None}}
    name = name or time.strftime("study-%Y%m%d-%H%M%S") + ("-quick" if quick else "")
    study_dir = Path(out) / name
    configs = [make_config(recipe, model=m, out=str(study_dir), name=m, **overrides) for m in models]
    data = load_cifar10(configs[0].data_dir)
    t0 = time.perf_counter()
    run_dirs = []
    for config in configs:
        log(f"== study: training {config.model} ({config.epochs} epochs, recipe {recipe}) ==")
        run_dirs.append(train(config, data=data))
    summaries = [read_json(d / "run.json") for d in run_dirs]
    table = comparison_table(summaries)
    (study_dir / "comparison.md").write_text(table + "\n")
    write_json(study_dir / "study.json", {"recipe": recipe, "quick": quick, "runs": [d.name for d in run_dirs],
                                          "seconds": time.perf_counter() - t0})
    log("\n" + table + f"\n\nstudy written to {study_dir}")
    return study_dir
