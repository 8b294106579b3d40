"""``cifarlab study``: the course project's whole study in one command.

Trains ``mycnn`` and ``resnet18`` with the same recipe, seed and split, evaluates both once on the test set
and writes each run's error analysis, then ends with ``cifarlab compare`` (``comparison/`` and ``comparison.md``) and
``cifarlab report`` (``report.html``, self-contained, and ``report.md``) in the study folder.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cifarlab.base.files import atomic_write, write_json
from cifarlab.base.progress import log
from cifarlab.config.train_config import make_config
from cifarlab.data.loading import load_dataset
from cifarlab.engine.distributed import is_main_process
from cifarlab.engine.train import train
from cifarlab.results.analysis import analyze_after_training
from cifarlab.results.compare import compare, comparison_markdown
from cifarlab.results.report import report

STUDY_MODELS = ("mycnn", "resnet18")
# --quick: a class-balanced slice and a few epochs, so the whole study runs in minutes on 2 CPU cores.
QUICK = dict(limit_train=5000, epochs=3)


def study(
    recipe: str = "seed",
    quick: bool = False,
    out: str = "runs",
    name: str | None = None,
    models: tuple[str, ...] = STUDY_MODELS,
    **overrides: Any,
) -> Path:
    """Train every study model with one shared config, then compare them. Returns the study folder."""
    explicit = {k: v for k, v in overrides.items() if v is not None}
    overrides = {**(QUICK if quick else {}), **explicit}
    name = name or time.strftime("study-%Y%m%d-%H%M%S") + ("-quick" if quick else "")
    study_dir = Path(out) / name
    first = make_config(recipe, model=models[0], out=str(study_dir), name=models[0], **overrides)
    data = load_dataset(first.dataset, first.data_dir, first.image_size, first.labels, first.strict)
    if quick and "limit_train" not in explicit and len(data.train_labels) * 9 // 10 < QUICK["limit_train"]:
        overrides.pop("limit_train")  # a small folder: --quick trains on all of it
    configs = [make_config(recipe, model=m, out=str(study_dir), name=m, **overrides) for m in models]
    t0 = time.perf_counter()
    run_dirs = []
    for config in configs:
        log(f"== study: training {config.model} ({config.epochs} epochs, recipe {recipe}) ==")
        run_dirs.append(train(config, data=data))
        if is_main_process():  # once, under torchrun too
            analyze_after_training(run_dirs[-1], data)
    comp = compare(run_dirs, out=study_dir / "comparison")
    text = comparison_markdown(comp)
    atomic_write(study_dir / "comparison.md", lambda f: f.write(text), binary=False)
    html = report(run_dirs, out=study_dir / "report.html")
    write_json(
        study_dir / "study.json",
        {"recipe": recipe, "quick": quick, "runs": [d.name for d in run_dirs], "seconds": time.perf_counter() - t0},
    )
    log(
        "\n" + text + f"\nstudy written to {study_dir}\nreport: {html} (open it in a browser) and "
        f"{html.with_suffix('.md')}"
    )
    return study_dir
