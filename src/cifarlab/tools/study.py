"""``cifarlab study``: the course project's whole study in one command.

Trains ``mycnn`` and ``resnet18`` with the same recipe, seed and split, evaluates both once on the test set
and writes each run's error analysis, then ends with ``cifarlab compare`` (``comparison/`` and ``comparison.md``) and
``cifarlab report`` (``report.html``, self-contained, and ``report.md``) in the study folder.

On a CPU with a physical core for each model the models train side by side, each in its own process on its share
of the cores (one each on 2 cores): two small models each on one core finish sooner than one after the other on
both (docs/benchmarks.md, "The study in 35 minutes"). When one model is done (trained, tested, analysed) its core
goes to the others from their next epoch on (:class:`CoreShare`): their bits then depend on when that happens,
their scores do not beyond the seeds' spread. ``sequential=True`` trains them one after the other instead, the
same bits on every rerun.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TextIO

import torch

from cifarlab.base.cores import usable_cores
from cifarlab.base.files import atomic_write, write_json
from cifarlab.base.progress import log
from cifarlab.config.train_config import TrainConfig, make_config
from cifarlab.data.cifar10 import ImageData
from cifarlab.data.loading import load_dataset
from cifarlab.engine.device import pick_device
from cifarlab.engine.distributed import is_main_process
from cifarlab.engine.train import train
from cifarlab.results.analysis import analyze_after_training
from cifarlab.results.compare import compare, comparison_markdown
from cifarlab.results.report import report

STUDY_MODELS = ("mycnn", "resnet18")
# --quick: a class-balanced slice and a few epochs, so the whole study runs in minutes on 2 CPU cores.
QUICK = dict(limit_train=5000, epochs=3)
OnEpoch = Callable[[int, Any], None]  # train()'s per-epoch hook


def study(
    recipe: str = "seed",
    quick: bool = False,
    out: str = "runs",
    name: str | None = None,
    models: tuple[str, ...] = STUDY_MODELS,
    sequential: bool = False,
    **overrides: Any,
) -> Path:
    """Train every study model with one shared config (side by side where :func:`side_by_side` says so, else one
    after the other), then compare them. Returns the study folder."""
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
    parallel = not sequential and side_by_side(configs)
    if parallel:
        del data  # each worker reads its own copy: the parent need not hold a third (CIFAR-10: ~180 MB)
        run_dirs, threads = train_side_by_side(configs)
    else:
        run_dirs, threads = [train_and_analyze(config, data) for config in configs], {}
    comp = compare(run_dirs, out=study_dir / "comparison")
    text = comparison_markdown(comp)
    atomic_write(study_dir / "comparison.md", lambda f: f.write(text), binary=False)
    html = report(run_dirs, out=study_dir / "report.html")
    write_json(
        study_dir / "study.json",
        {
            "recipe": recipe,
            "quick": quick,
            "runs": [d.name for d in run_dirs],
            "side_by_side": parallel,
            # side by side: each model's threads from each epoch on, where changed (epochs + 1: the test on)
            "threads_from_epoch": threads,
            "seconds": time.perf_counter() - t0,
        },
    )
    log(
        "\n" + text + f"\nstudy written to {study_dir}\nreport: {html} (open it in a browser) and "
        f"{html.with_suffix('.md')}"
    )
    return study_dir


def side_by_side(configs: list[TrainConfig]) -> bool:
    """Whether the models train at once, one process each: on a CPU with a physical core for every model, and
    not under torchrun (whose processes already share one run)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or len(configs) < 2:
        return False
    on_cpu = all(pick_device(c.device).type == "cpu" for c in configs)
    return on_cpu and usable_cores(hyperthreads=False) >= len(configs)


def train_side_by_side(configs: list[TrainConfig]) -> tuple[list[Path], dict[str, dict[int, int]]]:
    """Train and analyse each model in its own process, at once, each on an equal share of the cores; returns
    the run folders in the configs' order and, per model, its thread count from each epoch on where it changed
    (``{1: 1, 15: 2}``). A run that fails raises its error once the others have finished."""
    cores = max(len(configs), usable_cores(hyperthreads=False))
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
    share = CoreShare(cores, len(configs), spawn.Value("i", 0))
    threads = share.threads()
    names = ", ".join(c.model for c in configs)
    log(f"== study: training {names} side by side, {threads} thread{'s' * (threads > 1)} each ==")
    with ProcessPoolExecutor(len(configs), mp_context=spawn, initializer=join_share, initargs=(share,)) as pool:
        futures = [pool.submit(train_in_own_process, config, os.getpid()) for config in configs]
        results = [future.result() for future in futures]
    return [run_dir for run_dir, _ in results], {
        c.model: changes for c, (_, changes) in zip(configs, results, strict=True)
    }


class CoreShare:
    """The cores of a side-by-side study, shared out again as its models finish: each running model gets
    ``cores // running`` threads. ``done`` counts the finished models across the processes."""

    def __init__(self, cores: int, models: int, done: Any) -> None:
        self.cores, self.models, self.done = cores, models, done

    def threads(self) -> int:
        return max(1, self.cores // max(1, self.models - self.done.value))

    def finished(self) -> None:
        with self.done.get_lock():
            self.done.value += 1


SHARE: CoreShare | None = None  # a side-by-side worker's view of the study's cores (set by join_share)


def join_share(share: CoreShare | None) -> None:
    """The pool initializer of a side-by-side study's workers (None lets go of it)."""
    global SHARE
    SHARE = share


def train_and_analyze(config: TrainConfig, data: ImageData, on_epoch: OnEpoch | None = None) -> Path:
    """One study model: train it, then write its error analysis (once, under torchrun too); its run folder."""
    log(f"== study: training {config.model} ({config.epochs} epochs, recipe {config.recipe}) ==")
    run_dir = train(config, data=data, on_epoch=on_epoch)
    if is_main_process():
        analyze_after_training(run_dir, data)
    return run_dir


def train_in_own_process(config: TrainConfig, parent: int) -> tuple[Path, dict[int, int]]:
    """One model of a side-by-side study, in its own process: its share of the cores as torch threads (more from
    the next epoch on once another model is done), the data read again, then :func:`train_and_analyze`; every
    line it prints starts with the model's name. It ends if the study's process (``parent``) dies. Returns the
    run folder and the thread count from each epoch on where it changed."""
    assert SHARE is not None, "the pool's initializer sets the share"
    share = SHARE
    exit_with_parent(parent)
    changes = {1: share.threads()}
    torch.set_num_threads(changes[1])

    def take_freed_cores(epoch: int, model: object) -> None:
        threads = share.threads()  # read once: another model may finish meanwhile
        if threads > torch.get_num_threads():
            torch.set_num_threads(threads)
            changes[epoch + 1] = threads  # past the last epoch: the test and the analysis
            when = f"from epoch {epoch + 1}" if epoch < config.epochs else "for the test and the analysis"
            log(f"a core came free: {threads} threads {when}")

    sys.stdout = Prefixed(sys.stdout, f"[{config.model}] ")
    data = load_dataset(config.dataset, config.data_dir, config.image_size, config.labels, config.strict)
    try:
        run_dir = train_and_analyze(config, data, take_freed_cores)
    finally:
        share.finished()  # done or failed, its core is free
    sys.stdout.flush()
    return run_dir, changes


def exit_with_parent(parent: int, every: float = 1.0) -> None:
    """End this process within ``every`` seconds of ``parent`` dying (killed alone, its pool's workers would live
    on, idle, holding memory); the run keeps the last epoch's checkpoint, so ``--resume`` goes on from it."""

    def watch() -> None:
        while os.getppid() == parent:  # a dead parent's children are handed to another process
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class Prefixed(io.TextIOBase):
    """A text stream that starts each line with ``prefix`` (two models' lines in one terminal or log); not a
    terminal, so progress prints plain lines rather than two bars fighting over one."""

    def __init__(self, stream: TextIO, prefix: str) -> None:
        self.stream, self.prefix, self.pending = stream, prefix, ""

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            self.stream.write(f"{self.prefix}{line}\n")
        return len(text)

    def flush(self) -> None:  # a line is written once it ends: print(..., flush=True) ends it first
        self.stream.flush()

    def isatty(self) -> bool:
        return False
