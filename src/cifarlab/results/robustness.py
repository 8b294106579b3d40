"""``cifarlab robustness RUN``: the run's model scored on corrupted versions of its own test images.

The model is the checkpoint the run's test scored (``test_metrics.json`` "checkpoint"; best.pt by default), rebuilt
from the checkpoint alone and scored as that test scored it (:func:`cifarlab.engine.infer.infer` at the run's TTA
level and precision, its ``eval_batch_size``). The test images are read again from the run's dataset record, as the
analysis reads them, so ``clean_top1`` is the run's test top-1 exactly (over every test image; with ``limit``, the
first N, and then it is not compared).

Corruptions come from :func:`cifarlab.data.corruptions.corrupt` (regenerated: the 15 CIFAR-10-C corruptions,
seeded) or from the published CIFAR-10-C files (:mod:`cifarlab.data.cifar10c`, CIFAR-10 at 32 px only). Images are
corrupted and scored :func:`chunk_size` at a time (1,000 CIFAR images), the next chunk corrupted in a second thread
while the current one is scored, so memory stays bounded whatever the number of corruptions. Chunk ``k`` of a
corruption is drawn with the seed :func:`chunk_seed` (``seed`` itself for the first chunk), so the same command
gives the same images and numbers, and every run of one test set sees the same corrupted images. Everything goes
into ``RUN/robustness/`` (:mod:`cifarlab.results.robustness_files`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from cifarlab.base.errors import CifarlabError, DataError, UsageError, escape
from cifarlab.data.corruptions import CORRUPTIONS, SEVERITIES, SUBSTITUTES
from cifarlab.runs.folder import RunFolder, dataset_of, load_predictions
from cifarlab.runs.layout import ROBUSTNESS_DIR

if TYPE_CHECKING:  # torch is imported where it is used, so `cifarlab --help` stays fast
    import torch

    from cifarlab.data.cifar10c import Cifar10C

DEFAULT_SEED = 0
CHUNK_PIXELS = 1000 * 32 * 32  # pixels corrupted and scored at a time: 1,000 CIFAR images, fewer larger ones
CATEGORIES = {  # CIFAR-10-C's four families, accepted as names by --corruptions
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------


def parse_corruptions(value: str | Sequence[str] | None) -> list[str]:
    """'gaussian_noise,fog', 'noise,blur' (a family), 'all' or None (every one) -> names in CIFAR-10-C's order."""
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value or ["all"])
    chosen: set[str] = set()
    for item in items:
        name = str(item).strip().lower().replace("-", "_").replace(" ", "_")
        if name == "all":
            chosen.update(CORRUPTIONS)
        elif name in CATEGORIES:
            chosen.update(CATEGORIES[name])
        elif name in CORRUPTIONS:
            chosen.add(name)
        else:
            raise UsageError(
                f"--corruptions: unknown corruption {escape(str(item))!r}; choose from all, "
                f"{', '.join(CATEGORIES)}, {', '.join(CORRUPTIONS)}"
            )
    return [c for c in CORRUPTIONS if c in chosen]


def parse_severities(value: str | Sequence[int] | None) -> list[int]:
    """'1-5', '1,3,5', '2-4' or '1,3-5' (or a list, or None: all five) -> sorted severities from 1 to 5."""
    if value is None:
        return list(SEVERITIES)
    if not isinstance(value, str):
        items = [str(v) for v in value]
    else:
        items = [v.strip() for v in value.split(",")]
    chosen: set[int] = set()
    for item in items:
        low, sep, high = item.partition("-")
        try:
            first, last = int(low), int(high if sep else low)
        except ValueError:
            raise UsageError(f"--severities: expected 1-5, 1,3,5 or 2-4, got {escape(str(value))!r}") from None
        if not (1 <= first <= last <= 5):
            raise UsageError(f"--severities: each must be from 1 to 5, low to high (got {escape(item)!r})")
        chosen.update(range(first, last + 1))
    return sorted(chosen)


def check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UsageError(f"--limit must be a whole number of at least 1 (got {escape(str(limit))})")


# ---------------------------------------------------------------------------------------------------------
# What is scored: the run's checkpoint and its test images
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Target:
    """The run's tested checkpoint, rebuilt, and the test images it is scored on."""

    run: Path
    state: dict[str, Any]
    images: torch.Tensor  # (N, 3, S, S) uint8, the scored test images in the run's test order
    labels: torch.Tensor  # (N,) int64
    positions: np.ndarray  # (N,) each image's position in the dataset's test set
    test_size: int  # images in the dataset's whole test set
    test_top1: float | None  # the run's own test top-1 (test_metrics.json)
    classes: list[str]
    limited: bool = False
    test_labels: np.ndarray | None = None  # the whole test set's labels in order, when the run's test scored them all


def finished_run(run: str | Path) -> RunFolder:
    """The run folder, refused in one line (exit 2) unless training and its test are done."""
    folder = RunFolder.open(run)
    if not folder.finished:
        raise UsageError(f"{escape(str(run))} is not a finished run: no run.json yet (let `cifarlab train` finish)")
    return folder


def load_target(folder: RunFolder, limit: int | None, data_dir: str | None, dataset: str | None) -> Target:
    """The checkpoint the run's test used and its test images (the first ``limit`` of them), checked as the
    analysis checks them (the labels found at the saved positions must be the saved labels)."""
    import torch

    from cifarlab.results.analysis import gradcam_checkpoint, load_test_images

    pred = load_predictions(folder.path)
    images, reason = load_test_images(folder.path, pred, data_dir=data_dir, dataset=dataset)
    if images is None:
        raise DataError(f"{escape(str(folder.path))}: {reason}")
    state = gradcam_checkpoint(folder.path, pred, int(images.shape[-1]))
    n = len(pred.index) if limit is None else min(limit, len(pred.index))
    positions = pred.index[:n]
    top1 = folder.test_metrics.get("top1")
    order = np.argsort(pred.index, kind="stable")
    whole = np.array_equal(pred.index[order], np.arange(len(images)))
    return Target(
        folder.path,
        state,
        images[torch.as_tensor(positions)],
        torch.as_tensor(pred.y_true[:n]),
        positions,
        len(images),
        top1 if isinstance(top1, float) else None,
        list(pred.classes),
        n < len(pred.index),
        pred.y_true[order] if whole else None,
    )


def check_cifar10c_run(folder: RunFolder) -> None:
    """--cifar10c applies to CIFAR-10 runs at 32 px only (the files are CIFAR-10's test set at 32 px)."""
    record = dataset_of(folder.path)
    if record.get("kind") != "cifar10" or record.get("image_size", 32) != 32:
        raise UsageError(
            f"--cifar10c: the CIFAR-10-C files are CIFAR-10's test images at 32 px; this run was trained on "
            f"{escape(str(record.get('kind')))} at {escape(str(record.get('image_size')))} px (leave --cifar10c out "
            "to score regenerated corruptions)"
        )


# ---------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Scorer:
    """The checkpoint's model on a device, scoring as the run's test did (TTA level, precision, batch size)."""

    state: dict[str, Any]
    device: torch.device
    tta: int | None = None  # a TTA level other than the run's (None: the run's own)
    model: Any = field(init=False)

    def __post_init__(self) -> None:
        from cifarlab.engine.infer import inference_model

        self.model = inference_model(self.state, self.device)

    def probabilities(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities of uint8 (N, 3, S, S) images, batched and normalised as the run's test was."""
        import torch

        from cifarlab.data.batches import Batches
        from cifarlab.engine.infer import infer, scoring_options

        config = self.state["config"]
        mean, std = torch.tensor(self.state["mean"]), torch.tensor(self.state["std"])
        batches = Batches(images, labels, int(config.get("eval_batch_size", 1000)), mean, std, device=self.device)
        options = scoring_options(config)
        if self.tta is not None:
            options["tta"] = self.tta
        logits, _ = infer(self.model, batches, **options)
        return logits.softmax(1)


def chunk_size(side: int) -> int:
    """Images corrupted and scored at a time: 1,000 at 32 px, fewer of larger images (at least one)."""
    return max(1, CHUNK_PIXELS // (side * side))


def chunk_seed(seed: int, k: int) -> int:
    """The seed of chunk ``k`` of every corruption: ``seed`` for the first, an independent one for the others."""
    return seed if k == 0 else int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


def prefetched(make: Callable[[T], Any], jobs: Iterable[T]) -> Iterator[Any]:
    """``make(job)`` for each job, in order; the next one is made in a second thread while the caller uses this one
    (corrupting, in numpy and Pillow, overlaps scoring)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead: Future | None = None
        for job in jobs:
            future = pool.submit(make, job)
            if ahead is not None:
                yield ahead.result()
            ahead = future
        if ahead is not None:
            yield ahead.result()


Job = tuple[str, int, int]  # (corruption, severity, chunk start)


@dataclass
class Evaluation:
    """One pass over every (corruption, severity) and chunk: the hits, and the gallery image's versions."""

    target: Target
    scorer: Scorer
    source: Cifar10C | None
    seed: int
    gallery: int  # the position (in the scored images) of the image the gallery shows
    hits: dict[tuple[str, int], int] = field(default_factory=dict)
    shown: dict[tuple[str, int], tuple[np.ndarray, int]] = field(default_factory=dict)

    def corrupted(self, job: Job) -> tuple[Job, np.ndarray]:
        """The corrupted images of one chunk (uint8 NHWC)."""
        from cifarlab.data.corruptions import corrupt

        name, severity, start = job
        step = chunk_size(int(self.target.images.shape[-1]))
        stop = min(start + step, len(self.target.labels))
        if self.source is not None:
            return job, self.source.images(name, severity, self.target.positions[start:stop])
        clean = self.target.images[start:stop].permute(0, 2, 3, 1).contiguous().numpy()
        return job, corrupt(clean, name, severity, chunk_seed(self.seed, start // step))

    def score(self, job: Job, images: np.ndarray) -> None:
        """Score one corrupted chunk: its hits, and the gallery image when it is in this chunk."""
        import torch

        name, severity, start = job
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        labels = self.target.labels[start : start + len(x)]
        predicted = self.scorer.probabilities(x, labels).argmax(1)
        key = (name, severity)
        self.hits[key] = self.hits.get(key, 0) + int((predicted == labels).sum())
        if start <= self.gallery < start + len(x):
            self.shown[key] = (images[self.gallery - start].copy(), int(predicted[self.gallery - start]))

    def run(self, names: Sequence[str], severities: Sequence[int]) -> None:
        from cifarlab.base.progress import progress

        step = chunk_size(int(self.target.images.shape[-1]))
        starts = range(0, len(self.target.labels), step)
        jobs = [(name, severity, start) for name in names for severity in severities for start in starts]
        for job, images in progress(prefetched(self.corrupted, jobs), total=len(jobs), desc="robustness"):
            self.score(job, images)


def clean_scores(target: Target, scorer: Scorer) -> tuple[float, torch.Tensor]:
    """Top-1 on the clean images, computed as the run's test computed it, and the predicted classes."""
    from cifarlab.runs.metrics import topk_accuracy

    probs = scorer.probabilities(target.images, target.labels)
    return topk_accuracy(probs, target.labels, 1), probs.argmax(1)


def gallery_position(predicted: torch.Tensor, labels: torch.Tensor, first: int) -> int:
    """The first of the ``first`` images that the model gets right when clean (else the first image)."""
    right = np.flatnonzero((predicted[:first] == labels[:first]).numpy())
    return int(right[0]) if len(right) else 0


# ---------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------


def robustness(
    run: str | Path,
    corruptions: str | Sequence[str] | None = None,
    severities: str | Sequence[int] | None = None,
    limit: int | None = None,
    cifar10c: str | Path | None = None,
    data_dir: str | None = None,
    dataset: str | None = None,
    seed: int = DEFAULT_SEED,
    device: str = "auto",
    tta: int | None = None,
) -> dict[str, Any]:
    """Score ``run``'s model on its corrupted test images; write ``RUN/robustness/`` and return robustness.json.

    ``tta`` scores clean and corrupted images at another test-time augmentation level than the run's (0: one
    view, as RobustBench scores; 6 times cheaper than level 2); clean top-1 is then not the run's test top-1."""
    from cifarlab.base.progress import log
    from cifarlab.engine.device import pick_device
    from cifarlab.results.robustness_files import write_all

    t0 = time.perf_counter()
    names, levels = parse_corruptions(corruptions), parse_severities(severities)
    check_limit(limit)
    if tta is not None and (isinstance(tta, bool) or tta not in (0, 1, 2)):
        raise UsageError(f"--tta must be 0, 1 or 2 (got {escape(str(tta))})")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"--seed must be a whole number of 0 or more (got {escape(str(seed))})")
    folder = finished_run(run)
    if cifar10c is not None:
        check_cifar10c_run(folder)
    where = pick_device(device)
    target = load_target(folder, limit, data_dir, dataset)
    source = open_source(cifar10c, names, target)
    out = make_folder(folder.path / ROBUSTNESS_DIR)  # once every check has passed
    announce(target, names, levels, source, seed)
    scorer = Scorer(target.state, where, tta)
    clean, predicted = clean_scores(target, scorer)
    step = chunk_size(int(target.images.shape[-1]))
    if tta is None and not target.limited and target.test_top1 is not None and clean != target.test_top1:
        log(
            f"note: clean top-1 {100 * clean:.2f}% is not the run's test top-1 {100 * target.test_top1:.2f}% "
            "(scored on another kind of device than its test?)"
        )
    passes = Evaluation(target, scorer, source, seed, gallery_position(predicted, target.labels, step))
    passes.run(names, levels)
    record = make_record(target, passes, names, levels, clean, int(predicted[passes.gallery]))
    record["seconds"] = time.perf_counter() - t0
    write_all(out, record, target.images[passes.gallery].permute(1, 2, 0).numpy(), passes.shown)
    return record


def make_folder(out: Path) -> Path:
    """RUN/robustness/, made (or kept) and checked writable; one line when it cannot be."""
    from cifarlab.runs.layout import check_writable

    try:
        out.mkdir(exist_ok=True)
    except OSError as exc:
        raise CifarlabError(f"cannot make {escape(str(out))}: {exc.strerror or exc}") from None
    check_writable(out)
    return out


def open_source(cifar10c: str | Path | None, names: Sequence[str], target: Target) -> Cifar10C | None:
    """The checked CIFAR-10-C files (labels.npy against the run's whole test set), or None: regenerate."""
    if cifar10c is None:
        return None
    from cifarlab.data.cifar10c import open_cifar10c

    if target.test_labels is None:
        raise DataError(
            f"{escape(str(target.run))}: its test predictions do not cover the whole test set once each; "
            "--cifar10c checks the files' labels against the whole test set"
        )
    return open_cifar10c(cifar10c, names, target.test_labels)


def announce(target: Target, names: Sequence[str], levels: Sequence[int], source: Any, seed: int) -> None:
    from cifarlab.base.progress import log

    where = f"the CIFAR-10-C files in {source.folder}" if source is not None else f"regenerated, seed {seed}"
    substitutes = [n for n in names if n in SUBSTITUTES] if source is None else []
    note = "".join(f"; {n}: {SUBSTITUTES[n]}" for n in substitutes)
    log(
        f"robustness of {target.run}: {len(names)} corruption{'s' * (len(names) != 1)} x {len(levels)} "
        f"severit{'ies' if len(levels) != 1 else 'y'} on {len(target.labels):,} test images ({where}{note})"
    )


def mean_of(values: Sequence[float | None]) -> float:
    """The mean of the values that are not None (accuracies of what was run)."""
    ran = [v for v in values if v is not None]
    return sum(ran) / len(ran)


def make_record(
    target: Target, passes: Evaluation, names: Sequence[str], levels: Sequence[int], clean: float, clean_answer: int
) -> dict[str, Any]:
    """robustness.json: every accuracy (None for severities not run), their means, and how they were made."""
    n = len(target.labels)
    table = {name: [passes.hits[(name, s)] / n if s in levels else None for s in SEVERITIES] for name in names}
    per_severity = [mean_of([table[name][s - 1] for name in names]) if s in levels else None for s in SEVERITIES]
    classes, g = target.classes, passes.gallery
    return {
        "run": target.run.name,
        "clean_top1": clean,
        "mean_corruption_top1": mean_of([v for row in table.values() for v in row]),
        "corruptions": table,
        "per_severity": per_severity,
        "severities": list(levels),
        "source": "regenerated" if passes.source is None else "cifar10c-files",
        "images": n,
        "limit": n if target.limited else None,
        "test_top1": target.test_top1,
        "seed": passes.seed if passes.source is None else None,
        "substitutes": {k: v for k, v in SUBSTITUTES.items() if k in names} if passes.source is None else {},
        "checkpoint": Path(str(target.state["path"])).name,
        "tta": target.state["config"].get("tta", 0) if passes.scorer.tta is None else passes.scorer.tta,
        "tta_of_run": passes.scorer.tta is None,
        "image_size": int(target.images.shape[-1]),
        "device": str(passes.scorer.device),
        "gallery": {
            "position": int(target.positions[g]),
            "true": classes[int(target.labels[g])],
            "clean": classes[clean_answer],
            "predicted": {
                name: [classes[passes.shown[(name, s)][1]] if s in levels else None for s in SEVERITIES]
                for name in names
            },
        },
    }


def summary_text(record: dict[str, Any], out: Path) -> str:
    """One line for the terminal about a finished robustness analysis."""
    from cifarlab.results.robustness_files import corruption_means

    means = corruption_means(record)
    worst = min(means, key=lambda k: means[k])
    clean, mean = record["clean_top1"], record["mean_corruption_top1"]
    return (
        f"robustness: clean top-1 {100 * clean:.2f}%, mean under corruption {100 * mean:.2f}% "
        f"({100 * (mean - clean):+.2f} points; worst {worst} {100 * means[worst]:.2f}%)  "
        f"({record['seconds']:.1f}s)  ->  {out}/"
    )
