"""``cifarlab benchmark``: training throughput against the common PIL + DataLoader pipeline, and time to accuracy.

Two measurements, written as ``benchmark.json`` and ``benchmark.md`` with a description of the machine:

* **Throughput**: images per second of real training steps (forward, backward, SGD) for each registered model, fed
  by cifarlab's pipeline (uint8 tensors in memory, whole-batch augmentation; channels-last on CPUs) and by a
  reference pipeline built the common way (a torchvision-style dataset returning PIL images through
  torchvision.transforms, a DataLoader with num_workers=0, a default-layout model). Same model, batch size and
  augmentation (random crop + flip); medians of several repeats, and their ratio. A "data only" row times each
  pipeline without a model.
* **Time to accuracy**: wall time until test top-1 first reaches 75/85/90/93/94%: for the ``fast`` recipe, one
  ``--time-budget`` run per budget (a budget run is only meaningful at its end, so each threshold gets the time
  used by the shortest budget that reached it); for the ``seed`` recipe, the test set is scored after every epoch
  (scoring time excluded) and the clock read when it first crosses the threshold. Seconds count from the data
  being in memory, as a time budget does.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cifarlab.base.errors import UsageError
from cifarlab.base.files import write_json
from cifarlab.base.progress import log
from cifarlab.config.train_config import make_config
from cifarlab.runs.folder import RunFolder

# cli.py imports this module to register the command: torch and the engine are imported inside the functions that
# run a benchmark, so that `cifarlab --help` stays quick.
if TYPE_CHECKING:
    import torch
    from torch import nn

THRESHOLDS = (0.75, 0.85, 0.90, 0.93, 0.94)


@dataclass
class Settings:
    """How much to measure. ``full()`` is what docs/benchmarks.md records; ``quick()`` runs in minutes."""

    models: tuple[str, ...] = ("mycnn", "resnet18", "resnet18-cifar", "fastcnn")
    batch_size: int = 128
    steps: int = 5  # timed training steps per repeat (after one warm-up step)
    repeats: int = 3
    budgets: tuple[float, ...] = (150.0, 240.0, 600.0)  # seconds, for the fast recipe
    seed_epochs: int | None = None  # None: the seed recipe as it is (20 epochs)
    seed: bool = True  # include the seed recipe in the time-to-accuracy table
    seed_limit_train: int | None = None

    @classmethod
    def quick(cls) -> Settings:
        return cls(batch_size=32, steps=2, repeats=2, budgets=(60.0,), seed_epochs=2, seed_limit_train=10000)


# --- the machine ---------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on. The load average shows whether other processes shared the CPU."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = round(os.getloadavg()[0], 2)
    return info


# --- throughput ----------------------------------------------------------------------------------------------------


class ReferenceCifar:
    """CIFAR-10 the common way (a map-style dataset): each item a PIL image through torchvision transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable) -> None:
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()  # HWC, as PIL wants
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def reference_loader(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int, mean: list[float], std: list[float]
) -> torch.utils.data.DataLoader:
    """Random crop (pad 4) and flip per image with PIL, batched by a DataLoader in the main process."""
    import torch
    from torchvision import transforms

    transform = transforms.Compose(
        [
            transforms.RandomCrop(images.shape[-1], padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    return torch.utils.data.DataLoader(
        # DataLoader needs only __getitem__ and __len__; subclassing Dataset would load torch with the CLI
        ReferenceCifar(images, labels, transform),  # type: ignore[arg-type]
        batch_size=batch_size,
        shuffle=True,
        num_workers=0,
    )


def endless(batches: Iterable) -> Iterator:
    while True:
        yield from batches


def images_per_second(
    batches: Iterable, steps: int, device: torch.device, model: nn.Module | None
) -> tuple[float, float]:
    """Throughput of ``steps`` training steps (or, with no model, of just producing the batches).

    Returns images per second of wall time and per second of this process's CPU time. On a machine shared with
    other jobs the wall-time rate shrinks with the share of the CPU the process gets; the CPU-time rate (all
    threads together) does not, so it shows what the pipeline costs."""
    import torch

    from cifarlab.engine.device import synchronize
    from cifarlab.engine.train import train_step

    stream = endless(batches)
    optimizer = None if model is None else torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def step() -> int:
        x, y = next(stream)
        x, y = x.to(device), y.to(device)
        if model is not None and optimizer is not None:
            train_step(model, optimizer, x, y)
        return len(y)

    step()  # warm-up
    synchronize(device)
    t0, c0, seen = time.perf_counter(), time.process_time(), 0
    for _ in range(steps):
        seen += step()
    synchronize(device)
    return seen / (time.perf_counter() - t0), seen / max(1e-9, time.process_time() - c0)


def throughput(data: Any, settings: Settings, device: torch.device, log: Callable[[str], None]) -> list[dict]:
    """Median images/s of each model with cifarlab's pipeline and the reference one, and a data-only row."""
    import torch

    from cifarlab.data.batches import Batches
    from cifarlab.data.split import channel_stats
    from cifarlab.engine.device import place_model
    from cifarlab.models.registry import build_model

    images, labels = data.train_images, data.train_labels
    mean, std = channel_stats(images[:10000])
    ours = Batches(
        images,
        labels,
        settings.batch_size,
        torch.tensor(mean),
        torch.tensor(std),
        shuffle=True,
        augment="crop-flip",
        seed=0,
        device=device,
    )
    reference = reference_loader(images, labels, settings.batch_size, mean, std)
    rows = []
    for name in (None, *settings.models):
        label = name or "(data only)"
        measured: dict[str, list[float]] = {"cifarlab": [], "reference": [], "cifarlab_cpu": [], "reference_cpu": []}
        for _ in range(settings.repeats):
            for pipeline, batches in (("cifarlab", ours), ("reference", reference)):
                model = None
                if name is not None:
                    torch.manual_seed(0)
                    model = build_model(name).train()
                    # cifarlab's side is placed as `cifarlab train` places it; the reference keeps the default layout
                    model = place_model(model, device) if pipeline == "cifarlab" else model.to(device)
                wall, cpu = images_per_second(batches, settings.steps, device, model)
                measured[pipeline].append(wall)
                measured[pipeline + "_cpu"].append(cpu)
        row: dict[str, Any] = {"model": label, "repeats": measured}
        row.update({key: statistics.median(values) for key, values in measured.items()})
        row["ratio"] = row["cifarlab"] / row["reference"]
        row["ratio_cpu"] = row["cifarlab_cpu"] / row["reference_cpu"]
        rows.append(row)
        log(
            f"throughput {label:<16} cifarlab {row['cifarlab']:8.0f} img/s   reference {row['reference']:8.0f} img/s"
            f"   x{row['ratio']:.2f} (per CPU-second x{row['ratio_cpu']:.2f})"
        )
    return rows


# --- time to accuracy ----------------------------------------------------------------------------------------------


def first_reaching(curve: list[tuple[float, float]], threshold: float) -> float | None:
    """The first time in a (seconds, top-1) curve at which top-1 is at least ``threshold``."""
    for seconds, top1 in curve:
        if top1 >= threshold:
            return seconds
    return None


def run_fast(data: Any, budget: float, out: Path, overrides: dict[str, Any], log: Callable[[str], None]) -> dict:
    from cifarlab.engine.train import train

    config = make_config("fast", time_budget=budget, out=str(out), name=f"fast-{budget:g}s", **overrides)
    run = train(config, data=data)
    folder = RunFolder(run)
    summary, planned = folder.info, folder.config_record  # the config as planned
    result = {
        "run": f"fast, --time-budget {budget:g}",
        "recipe": "fast",
        "budget": budget,
        "run_dir": str(run),
        "seconds": summary["seconds_used"],
        "test_top1": summary["test_top1"],
        "width": planned["model_width"],
        "epochs": summary["train_steps"] / summary["budget_plan"]["steps_per_epoch"],
        "tta": planned["tta"],
    }
    result["reached"] = {f"{t:.2f}": (result["seconds"] if result["test_top1"] >= t else None) for t in THRESHOLDS}
    log(f"time to accuracy: fast at {budget:g}s -> {100 * result['test_top1']:.2f}% in {result['seconds']:.0f}s")
    return result


def run_seed(
    data: Any,
    settings: Settings,
    out: Path,
    overrides: dict[str, Any],
    device: torch.device,
    log: Callable[[str], None],
) -> dict:
    """The seed recipe with the test set scored after each epoch; scoring time is taken off the clock."""
    import torch

    from cifarlab.data.batches import Batches
    from cifarlab.engine.build import prepare_data
    from cifarlab.engine.infer import infer
    from cifarlab.engine.train import train

    values = dict(overrides)
    if settings.seed_epochs is not None:
        values["epochs"] = settings.seed_epochs
    if settings.seed_limit_train is not None:
        values.setdefault("limit_train", settings.seed_limit_train)
    config = make_config("seed", out=str(out), name="seed", **values)
    prep = prepare_data(data, config)  # the same normalisation the run computes
    test = Batches(
        data.test_images, data.test_labels, 1000, torch.tensor(prep.mean), torch.tensor(prep.std), device=device
    )
    curve: list[tuple[float, float]] = []
    scoring = 0.0
    start = time.perf_counter()

    def on_epoch(epoch: int, model: nn.Module) -> None:
        nonlocal scoring
        t0 = time.perf_counter()
        logits, y = infer(model, test, config.tta, config.bf16)  # as the run's own test scores
        model.train()
        curve.append((t0 - start - scoring, (logits.argmax(1) == y).float().mean().item()))
        scoring += time.perf_counter() - t0

    run = train(config, data=data, on_epoch=on_epoch)
    result: dict[str, Any] = {
        "run": f"seed ({config.epochs} epochs" + (f", {config.limit_train} images)" if config.limit_train else ")"),
        "recipe": "seed",
        "budget": None,
        "run_dir": str(run),
        "seconds": curve[-1][0],
        "test_top1": curve[-1][1],
        "curve": curve,
        "epochs": config.epochs,
        "tta": 0,
    }
    result["reached"] = {f"{t:.2f}": first_reaching(curve, t) for t in THRESHOLDS}
    log(f"time to accuracy: seed -> {100 * result['test_top1']:.2f}% after {result['seconds']:.0f}s")
    return result


# --- report --------------------------------------------------------------------------------------------------------


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "not reached"
    return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 60:.1f} min"


def markdown(result: dict[str, Any]) -> str:
    """benchmark.md: the command, the machine, and the throughput and time-to-accuracy tables (those measured)."""
    lines = ["# cifarlab benchmark", "", f"Command: `{result['command']}`", "", machine_line(result), ""]
    if result["throughput"]:
        lines += throughput_lines(result)
    if result["accuracy"]:
        lines += accuracy_lines(result)
    return "\n".join(lines)


def machine_line(result: dict[str, Any]) -> str:
    """The machine in one line: CPU, cores and threads, torch, device (and GPU), load, OMP policy, start time."""
    m = result["machine"]
    return (
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), torch {m['torch']}, "
        f"device {m['device']}"
        + (f" ({m['gpu']})" if "gpu" in m else "")
        + (
            f"; load average {m['load_average_at_start']} at the start, {m.get('load_average_at_end')} at the end"
            if "load_average_at_start" in m
            else ""
        )
        + f"; OMP_WAIT_POLICY {m['omp_wait_policy']}. Started {result['started']}."
    )


def throughput_lines(result: dict[str, Any]) -> list[str]:
    """The training-throughput section: a row per model, both pipelines, per wall second and per CPU second."""
    s = result["settings"]
    lines = [
        f"## Training throughput (images/s; median of {s['repeats']} repeats of {s['steps']} steps, "
        f"batch {s['batch_size']}, random crop + flip)",
        "",
        "| model | cifarlab pipeline | reference pipeline (PIL + DataLoader) | ratio | "
        "cifarlab per CPU-s | reference per CPU-s | ratio per CPU-s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["throughput"]:
        lines.append(
            f"| {row['model']} | {row['cifarlab']:,.0f} | {row['reference']:,.0f} | "
            f"{row['ratio']:.2f}x | {row['cifarlab_cpu']:,.0f} | {row['reference_cpu']:,.0f} | "
            f"{row['ratio_cpu']:.2f}x |"
        )
    return lines + [
        "",
        "Images per second of wall time, and per second of CPU time of the benchmark process (all "
        "threads). On a machine shared with other jobs only the second is independent of the share of "
        "the CPU the benchmark got.",
        "",
    ]


def accuracy_lines(result: dict[str, Any]) -> list[str]:
    """The time-to-accuracy section: a row per run, and for the fast recipe the shortest budget reaching each."""
    heads = " | ".join(f"{100 * t:.0f}%" for t in THRESHOLDS)
    lines = [
        "## Time to accuracy (test top-1; seconds from data in memory to the end of the test)",
        "",
        f"| run | time used | test top-1 | {heads} |",
        "| --- | ---: | ---: | " + " | ".join("---:" for _ in THRESHOLDS) + " |",
    ]
    for row in result["accuracy"]:
        reached = " | ".join(fmt_seconds(row["reached"][f"{t:.2f}"]) for t in THRESHOLDS)
        lines.append(f"| {row['run']} | {fmt_seconds(row['seconds'])} | {100 * row['test_top1']:.2f}% | {reached} |")
    fast = [r for r in result["accuracy"] if r["recipe"] == "fast"]
    if fast:
        best = []
        for t in THRESHOLDS:
            times = [r["reached"][f"{t:.2f}"] for r in fast if r["reached"][f"{t:.2f}"] is not None]
            best.append(fmt_seconds(min(times)) if times else "not reached")
        lines.append(f"| fast, shortest budget reaching it | | | {' | '.join(best)} |")
    lines.append("")
    return lines


def benchmark(
    out: str | Path = "benchmarks/results",
    settings: Settings | None = None,
    data_dir: str | None = None,
    device: str = "auto",
    throughput_only: bool = False,
    accuracy_only: bool = False,
    overrides: dict[str, Any] | None = None,
    command: str = "cifarlab benchmark",
    dataset: str = "cifar10",
    image_size: int | None = None,
    labels: str = "fine",
    strict: bool = False,
) -> dict[str, Any]:
    """Run the measurements, write ``benchmark.json`` and ``benchmark.md`` into ``out``, return the results.

    ``overrides`` go to every training config (tests use them to fit the fake data set); ``dataset``,
    ``image_size`` and ``labels`` choose the images, as ``cifarlab train`` does."""
    from cifarlab.data.loading import load_dataset
    from cifarlab.engine.device import pick_device

    settings = settings or Settings()
    check_request(settings, throughput_only, accuracy_only)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch_device = pick_device(device)
    overrides = {
        "device": device,
        "dataset": dataset,
        "image_size": image_size,
        "labels": labels,
        "strict": strict,
        **(overrides or {}),
    }
    result: dict[str, Any] = {
        "command": command,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(torch_device),
        "settings": vars(settings).copy(),
        "throughput": [],
        "accuracy": [],
    }
    data = load_dataset(dataset, data_dir, image_size, labels, strict)
    result["dataset"] = {key: value for key, value in data.record.items() if key != "test_files"}
    if not accuracy_only:
        result["throughput"] = throughput(data, settings, torch_device, log)
    if not throughput_only:
        result["accuracy"] = time_to_accuracy(data, settings, out, overrides, torch_device)
    if hasattr(os, "getloadavg"):
        result["machine"]["load_average_at_end"] = round(os.getloadavg()[0], 2)
    write_json(out / "benchmark.json", result)
    (out / "benchmark.md").write_text(markdown(result) + "\n")
    log(f"benchmark written to {out / 'benchmark.md'} and {out / 'benchmark.json'}")
    return result


def check_request(settings: Settings, throughput_only: bool, accuracy_only: bool) -> None:
    """Usage errors for an unknown model, or for asking for only throughput and only accuracy at once."""
    from cifarlab.models.registry import MODELS

    unknown = [m for m in settings.models if m not in MODELS]
    if unknown:
        raise UsageError(f"unknown model {unknown[0]!r}; choose from: {', '.join(sorted(MODELS))}")
    if throughput_only and accuracy_only:
        raise UsageError("--throughput-only and --accuracy-only exclude each other")


def time_to_accuracy(
    data: Any, settings: Settings, out: Path, overrides: dict[str, Any], device: torch.device
) -> list[dict[str, Any]]:
    """One fast-recipe run per budget, then (unless left out) the seed recipe, in ``out/runs/<start time>/``."""
    runs = out / "runs" / time.strftime("%Y%m%d-%H%M%S")
    accuracy = [run_fast(data, budget, runs, overrides, log) for budget in settings.budgets]
    if settings.seed:
        accuracy.append(run_seed(data, settings, runs, overrides, device, log))
    return accuracy
