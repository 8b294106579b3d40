"""``cifarlab analyze RUN``: the error analysis of a finished run, from its saved test predictions.

Nothing is retrained or re-evaluated: every number comes from ``RUN/test_predictions.npz`` (true labels and
softmax probabilities of the held-out test set), computed with torchmetrics so the same code can reduce
across processes. Class names come from the run's dataset record (``run.json`` "dataset"), so any number of
classes works; images for the galleries and Grad-CAM are read again from the run's dataset
(:func:`cifarlab.data.loading.reload`) and looked up by the saved ``index``, at the run's image size.
Everything is written to ``RUN/analysis/`` (see ``docs/analysis.md`` for every file and column).

Conventions, stated once:

* "accuracy" of a class is the share of that class's test images classified correctly (the same number as
  its recall and as ``per_class_accuracy`` in ``test_metrics.json``);
* a value that is 0/0 (precision of a class never predicted, recall of a class that never occurs) is
  undefined: an empty CSV cell and ``null`` in JSON, never a made-up 0; macro averages skip such values;
* ECE is top-label expected calibration error over 15 equal-width confidence bins (L1 norm).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cifarlab.base.errors import CifarlabError
from cifarlab.base.files import atomic_write, read_json, write_csv, write_json
from cifarlab.results.analysis_metrics import (
    by_accuracy,
    compute_metrics,
    most_confused_classes,
    nanmean,
    row_normalize,
)
from cifarlab.runs.folder import (
    Predictions,
    RunFolder,
    dataset_of,
    load_predictions,
    recorded_dataset,
    require_run,
    run_title,
)
from cifarlab.runs.layout import (
    ANALYSIS_DIR,
    CONFIG_JSON,
    METRICS_CSV,
    PREDICTIONS_NPZ,
    SUMMARY_JSON,
    TEST_METRICS_JSON,
    read_metrics_csv,
)

if TYPE_CHECKING:  # torch is imported where it is used, so `cifarlab --help` stays fast
    import torch

GALLERY_SIZE = 24
TOP_LOSSES = 16
GRADCAM_SHOWN = 8
GRADCAM_SAMPLE = 64
CAPTION_NAME = 24  # class names longer than this are shortened in gallery captions (the CSV files have them whole)
# Files that only some analyses make (no mistakes, no images, no metrics.csv): removed before each analysis.
OPTIONAL_FILES = ("learning_curves.png", "misclassified.png", "top_losses.png", "gradcam.png", "gradcam_maps.npz")


# ---------------------------------------------------------------------------------------------------------
# Choosing images
# ---------------------------------------------------------------------------------------------------------


def sample_misclassified(pred: Predictions, k: int, seed: int) -> np.ndarray:
    """Positions of up to k wrong predictions drawn with a seeded generator (same run -> same images)."""
    wrong = np.flatnonzero(pred.y_pred != pred.y_true)
    if len(wrong) <= k:
        return wrong
    return np.sort(np.random.default_rng(seed).choice(wrong, size=k, replace=False))


def sample_correct(pred: Predictions, k: int, seed: int) -> np.ndarray:
    """Positions of up to k right predictions, drawn like :func:`sample_misclassified`."""
    right = np.flatnonzero(pred.y_pred == pred.y_true)
    if len(right) <= k:
        return right
    return np.sort(np.random.default_rng(seed + 1).choice(right, size=k, replace=False))


def top_losses(pred: Predictions, k: int) -> np.ndarray:
    """Positions of the k wrong predictions with the highest loss: the least probability left for the truth."""
    wrong = np.flatnonzero(pred.y_pred != pred.y_true)
    p_true = pred.probs[wrong, pred.y_true[wrong]]
    return wrong[np.argsort(p_true, kind="stable")[:k]]


def short_name(name: str, limit: int = CAPTION_NAME) -> str:
    """A class name cut to ``limit`` characters (with an ellipsis), so a caption fits under its image."""
    return name if len(name) <= limit else name[: limit - 1] + "…"


def caption(pred: Predictions, pos: int, with_true_prob: bool = False) -> str:
    """'true: cat / pred: dog (87%)' for one image of a gallery."""
    t, p = pred.y_true[pos], pred.y_pred[pos]
    text = f"true: {short_name(pred.classes[t])}\npred: {short_name(pred.classes[p])} ({pred.probs[pos, p]:.0%})"
    if with_true_prob:
        text += f"\np(true) = {100 * pred.probs[pos, t]:.2g}%"
    return text


def load_test_images(
    run: Path, pred: Predictions, data: Any = None, data_dir: str | None = None, dataset: str | None = None
) -> tuple[torch.Tensor | None, str | None]:
    """The run's held-out test images (uint8, at the run's size), or None and the reason why they cannot be shown.

    They are read again from the run's dataset record (a run without one is CIFAR-10): CIFAR from
    ``data_dir`` (--data-dir, $CIFARLAB_DATA_DIR, ./data), an image folder from ``dataset`` or else the folder
    the record names, refused when its files are not the ones the run was trained on. The images are only
    used if the labels found at the saved indices equal the saved labels, so a wrong data folder can never
    put the wrong pictures under a caption.
    """
    from cifarlab.base.progress import log
    from cifarlab.data.cifar10 import resolve_data_dir
    from cifarlab.data.loading import reload

    if data is None:
        record = recorded_dataset(run) or {"kind": "cifar10"}
        # the CIFAR folder is never the run's recorded data_dir: a run folder may come from anyone, and the
        # folder from its config would be read without the user ever naming it
        root = resolve_data_dir(data_dir).resolve()
        hint = "give --dataset FOLDER" if record.get("kind") == "folder" else "give --data-dir"
        try:
            data = reload(record, root, dataset)
        except CifarlabError as exc:
            return None, f"test images not available ({exc}); {hint}"
        except (KeyError, TypeError, ValueError) as exc:  # a record that lacks a field or holds the wrong type
            return None, f"test images not available (the run's dataset record is incomplete: {exc!r})"
        log(f"test images from {root if data.root is None else data.root}")
    labels = data.test_labels.numpy()
    if pred.index.max() >= len(labels) or (labels[pred.index] != pred.y_true).any():
        return None, "the test images found do not carry the labels saved with the run (another data folder?)"
    return data.test_images, None


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------


def write_matrix_csv(path: Path, matrix: np.ndarray, classes: Sequence[str]) -> None:
    """Rows = true class, columns = predicted class; header and first column hold the class names."""
    rows = [
        [name, *(int(v) if matrix.dtype.kind == "i" else float(v) for v in matrix[i])] for i, name in enumerate(classes)
    ]
    write_csv(path, ["true \\ predicted", *classes], rows)


def write_metric_files(out: Path, metrics: dict[str, Any], classes: Sequence[str]) -> None:
    """The CSV and JSON files of the analysis."""
    write_matrix_csv(out / "confusion_matrix.csv", metrics["confusion"], classes)
    write_matrix_csv(out / "confusion_matrix_normalized.csv", row_normalize(metrics["confusion"]), classes)
    columns = ["class", "precision", "recall", "f1", "support", "accuracy"]
    write_csv(out / "per_class.csv", columns, [[r[c] for c in columns] for r in metrics["per_class"]])
    ranked = by_accuracy(metrics["per_class"])
    write_csv(out / "per_class_by_accuracy.csv", columns, [[r[c] for c in columns] for r in ranked])
    pair_columns = ["true", "predicted", "count", "share_of_true"]
    write_csv(out / "confused_pairs.csv", pair_columns, [[r[c] for c in pair_columns] for r in metrics["pairs"]])
    write_json(out / "calibration.json", metrics["calibration"])


def heatmap_note(shown: int, total: int) -> str:
    """The line a confusion heatmap adds when it shows only some classes ('' when it shows them all)."""
    if shown == total:
        return ""
    return f"\nthe {shown} most confused of {total} classes (mistakes as true or predicted); all in the CSV"


def draw_metric_figures(
    out: Path, run: Path, metrics: dict[str, Any], classes: Sequence[str], title: str, best_epoch: int | None
) -> list[str]:
    """Confusion heatmaps, learning curves and the reliability diagram; returns the file names.

    With more than ``MAX_HEATMAP_CLASSES`` classes the heatmaps show the most confused ones (the title says
    so); the normalised one keeps each row's share of the whole true class."""
    from cifarlab.results import plots

    counts = metrics["confusion"]
    keep = most_confused_classes(counts)
    names = [classes[k] for k in keep]
    note = heatmap_note(len(keep), len(classes))
    files = [
        plots.confusion_heatmap(
            counts[np.ix_(keep, keep)],
            names,
            out / "confusion_matrix.png",
            False,
            f"{title}: confusion matrix (test images){note}",
        ).name,
        plots.confusion_heatmap(
            row_normalize(counts)[np.ix_(keep, keep)],
            names,
            out / "confusion_matrix_normalized.png",
            True,
            f"{title}: confusion matrix, share of each true class{note}",
        ).name,
    ]
    if (run / METRICS_CSV).is_file():
        rows = read_metrics_csv(run / METRICS_CSV)
        if rows:
            files.append(
                plots.learning_curves(rows, out / "learning_curves.png", f"{title}: learning curves", best_epoch).name
            )
    files.append(
        plots.reliability_diagram(
            metrics["calibration"]["bins"],
            metrics["calibration"]["ece"],
            out / "reliability_diagram.png",
            f"{title}: reliability",
        ).name
    )
    return files


def draw_galleries(out: Path, pred: Predictions, images: torch.Tensor, seed: int, title: str) -> list[str]:
    """The misclassified gallery (a seeded sample) and the top-losses gallery."""
    import torch

    from cifarlab.results import plots

    files = []
    for name, positions, heading, with_p in [
        (
            "misclassified.png",
            sample_misclassified(pred, GALLERY_SIZE, seed),
            f"misclassified test images (a reproducible sample, seed {seed})",
            False,
        ),
        ("top_losses.png", top_losses(pred, TOP_LOSSES), "top losses: the most confidently wrong predictions", True),
    ]:
        if len(positions) == 0:
            continue
        pics = images[torch.as_tensor(pred.index[positions])].numpy()
        captions = [caption(pred, int(p), with_p) for p in positions]
        plots.image_grid(pics, captions, ["#b00000"] * len(pics), out / name, f"{title}: {heading}")
        files.append(name)
    return files


def gradcam_checkpoint(run: Path, pred: Predictions, size: int) -> dict[str, Any]:
    """The checkpoint the test predictions came from (test_metrics.json says which; else best.pt), refused when it
    classifies another number of classes or was trained at another image size than ``size``."""
    from cifarlab.runs.checkpoint import load_checkpoint

    checkpoint = "best.pt"
    if (run / TEST_METRICS_JSON).is_file():
        checkpoint = read_json(run / TEST_METRICS_JSON).get("checkpoint", checkpoint)
    state = load_checkpoint(run, checkpoint)
    if len(state["classes"]) != len(pred.classes):
        raise CifarlabError(
            f"the checkpoint classifies {len(state['classes'])} classes, the predictions {len(pred.classes)}"
        )
    if state.get("image_size", 32) != size:
        raise CifarlabError(f"the checkpoint was trained at {state.get('image_size', 32)} px, the images are {size} px")
    return state


def gradcam_analysis(
    out: Path, run: Path, pred: Predictions, images: torch.Tensor, seed: int, title: str
) -> dict[str, Any]:
    """Grad-CAM for the predicted and the true class of misclassified images; the figure and centre shares.

    The centre share (evidence inside the central quarter of the image) of wrong and right predictions lets
    a user test the 'background dominance' guess: a much lower share for wrong answers says the border did it.
    """
    import torch

    from cifarlab.data.split import normalize
    from cifarlab.results import plots
    from cifarlab.results.gradcam import centre_share, find_target_layer, grad_cam, scale_maps
    from cifarlab.runs.checkpoint import model_from_checkpoint

    size = int(images.shape[-1])
    state = gradcam_checkpoint(run, pred, size)
    model = model_from_checkpoint(state)
    layer = find_target_layer(model, size)
    mean, std = torch.tensor(state["mean"]), torch.tensor(state["std"])
    wrong = sample_misclassified(pred, GRADCAM_SAMPLE, seed)
    right = sample_correct(pred, GRADCAM_SAMPLE, seed)

    def maps_for(positions: np.ndarray, labels: np.ndarray) -> np.ndarray:
        x = normalize(images[torch.as_tensor(pred.index[positions])], mean, std)
        return grad_cam(model, x, torch.as_tensor(labels[positions]), layer)

    maps_wrong_pred = maps_for(wrong, pred.y_pred)
    maps_right = maps_for(right, pred.y_pred)
    shown = wrong[:GRADCAM_SHOWN]
    maps_true = maps_for(shown, pred.y_true)
    pics = images[torch.as_tensor(pred.index[shown])].numpy()
    if len(shown):
        plots.gradcam_grid(
            pics,
            scale_maps(maps_wrong_pred[: len(shown)]),
            scale_maps(maps_true),
            [caption(pred, int(p)) for p in shown],
            out / "gradcam.png",
            f"{title}: Grad-CAM at {layer.name} ({layer.height}x{layer.width})",
        )
    arrays = {"index": pred.index[shown], "maps_predicted": maps_wrong_pred[: len(shown)], "maps_true": maps_true}
    atomic_write(out / "gradcam_maps.npz", lambda f: np.savez_compressed(f, **arrays))
    share_wrong, share_right = centre_share(maps_wrong_pred), centre_share(maps_right)
    return {
        "layer": layer.name,
        "map_size": [layer.height, layer.width],
        "images_shown": int(len(shown)),
        "figure": "gradcam.png" if len(shown) else None,
        "centre_share_wrong": nanmean([None if math.isnan(v) else float(v) for v in share_wrong]),
        "centre_share_right": nanmean([None if math.isnan(v) else float(v) for v in share_right]),
        "centre_share_images": [int(len(wrong)), int(len(right))],
        "centre_share_uniform": 0.25,
    }


def summary_of(run: Path, pred: Predictions, metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers for tools (summary.json)."""
    run_info = RunFolder(run).info
    per_class = [r for r in metrics["per_class"] if r["f1"] is not None]
    by_f1 = sorted(per_class, key=lambda r: r["f1"])
    cal = metrics["calibration"]
    shown = most_confused_classes(metrics["confusion"])
    return {
        "run": run.name,
        "model": run_info.get("model"),
        **metrics["headline"],
        "misclassified": int((pred.y_pred != pred.y_true).sum()),
        "macro_precision": nanmean([r["precision"] for r in metrics["per_class"]]),
        "macro_recall": nanmean([r["recall"] for r in metrics["per_class"]]),
        "macro_f1": nanmean([r["f1"] for r in metrics["per_class"]]),
        "ece": cal["ece"],
        "mean_confidence": cal["mean_confidence"],
        "overconfidence": cal["overconfidence"],
        "most_confused": metrics["pairs"][0] if metrics["pairs"] else None,
        "best_class": {"class": by_f1[-1]["class"], "f1": by_f1[-1]["f1"]} if by_f1 else None,
        "worst_class": {"class": by_f1[0]["class"], "f1": by_f1[0]["f1"]} if by_f1 else None,
        "best_epoch": run_info.get("best_epoch"),
        "train_val_gap": run_info.get("train_val_gap"),
        "classes": list(pred.classes),
        "worst_classes": [
            {"class": r["class"], "accuracy": r["accuracy"]} for r in by_accuracy(metrics["per_class"])[:5]
        ],
        "heatmap_classes": None if len(shown) == len(pred.classes) else [pred.classes[k] for k in shown],
        "dataset": {k: v for k, v in dataset_of(run).items() if k != "test_files"},
    }


def analyze(
    run: str | Path, data: Any = None, data_dir: str | None = None, images: bool = True, dataset: str | None = None
) -> dict[str, Any]:
    """Write the whole analysis of ``run`` into ``RUN/analysis/`` and return its summary.

    ``data`` (a loaded :class:`cifarlab.data.cifar10.ImageData`) saves reading the images again right after training;
    otherwise they come from the run's dataset (``data_dir``: the CIFAR folder; ``dataset``: an image folder
    that has moved since training).
    With ``images=False`` (or when the test images cannot be found) galleries and Grad-CAM are skipped and
    the reason is recorded in ``summary.json``.
    """
    t0 = time.perf_counter()
    run = require_run(run)
    pred = load_predictions(run)
    metrics = compute_metrics(pred)
    out = run / ANALYSIS_DIR
    out.mkdir(exist_ok=True)
    for name in OPTIONAL_FILES:  # from an earlier analysis; never left to show what this one did not make
        (out / name).unlink(missing_ok=True)
    write_metric_files(out, metrics, pred.classes)
    summary = summary_of(run, pred, metrics)
    config = RunFolder(run).config_record if (run / CONFIG_JSON).is_file() else {}
    seed, title = int(config.get("seed", 0)), run_title(run.name, summary["model"])
    files = draw_metric_figures(out, run, metrics, pred.classes, title, summary["best_epoch"])
    skipped: list[str] = []
    gradcam = None
    pics, reason = (
        (None, "images not asked for") if not images else load_test_images(run, pred, data, data_dir, dataset)
    )
    if pics is None:
        skipped.append(f"galleries and Grad-CAM: {reason}")
    else:
        files += draw_galleries(out, pred, pics, seed, title)
        try:
            gradcam = gradcam_analysis(out, run, pred, pics, seed, title)
            files += [gradcam["figure"]] if gradcam["figure"] else []
        except CifarlabError as exc:
            skipped.append(f"Grad-CAM: {exc}")
    summary.update(gradcam=gradcam, skipped=skipped, figures=files, seconds=time.perf_counter() - t0)
    write_json(out / SUMMARY_JSON, summary)
    return summary


def is_current(run: Path) -> bool:
    """True if ``RUN/analysis/summary.json`` exists and is newer than the test predictions it was made from."""
    summary, source = run / ANALYSIS_DIR / SUMMARY_JSON, run / PREDICTIONS_NPZ
    return summary.is_file() and source.is_file() and summary.stat().st_mtime >= source.stat().st_mtime


def ensure_analysis(run: Path, data_dir: str | None = None) -> dict[str, Any]:
    """The run's analysis summary, (re)computing the analysis when missing or older than the predictions."""
    if is_current(run):
        return read_json(run / ANALYSIS_DIR / SUMMARY_JSON)
    return analyze(run, data_dir=data_dir)


def summary_text(summary: dict[str, Any], out: Path) -> str:
    """Two lines for the terminal about a finished analysis."""
    pair = summary["most_confused"]
    confused = f"most confused {pair['true']} -> {pair['predicted']} ({pair['count']})" if pair else "no mistakes"
    text = (
        f"analysis: top-1 {100 * summary['top1']:.2f}%  ECE {summary['ece']:.4f}  {confused}  "
        f"({summary['seconds']:.1f}s)  ->  {out}/"
    )
    for note in summary["skipped"]:
        text += f"\n  skipped {note}"
    return text


def analyze_after_training(run_dir: Path, data: Any) -> None:
    """Called at the end of ``train``: a failed analysis is reported but never fails a finished run."""
    from cifarlab.base.progress import log

    try:
        summary = analyze(run_dir, data=data)
    except Exception as exc:  # noqa: BLE001 - the run is finished and saved; a missing figure must not undo it
        log(f"analysis not written ({type(exc).__name__}: {exc}); retry with: cifarlab analyze {run_dir}")
        return
    log(summary_text(summary, run_dir / ANALYSIS_DIR))
