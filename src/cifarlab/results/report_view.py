"""What the report's HTML template shows: the context it is rendered from, built from the runs' views and their
comparison (the section list, the setup table of data, split, recipe, hardware and versions, each run's figures as
data URIs, per-class and confused-pair rows, calibration, Grad-CAM and robustness values, the generated reading).
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cifarlab.base.files import read_json
from cifarlab.results.report_format import both, count, csv_number, figure, num, number, pct, shown
from cifarlab.results.report_reading import GENERATED_NOTE, reading, robustness_reading
from cifarlab.results.report_runs import RunView
from cifarlab.results.robustness_files import corruption_means, words, worst_corruptions

SECTIONS = [
    ("setup", "Setup"),
    ("results", "Results"),
    ("learning-curves", "Learning curves"),
    ("confusion", "Confusion matrices"),
    ("per-class", "Per-class metrics, worst class first"),
    ("confused-pairs", "Confused pairs"),
    ("galleries", "Galleries"),
    ("calibration", "Calibration"),
    ("gradcam", "Grad-CAM"),
    ("reading", "Reading of the numbers"),
]
ROBUSTNESS_SECTION = ("robustness", "Robustness")  # before the reading, when a run has RUN/robustness/robustness.json


def sections_of(views: Sequence[RunView]) -> list[tuple[str, str]]:
    """The page's sections: SECTIONS, with Robustness before the reading when any run has a robustness analysis."""
    if not any(v.robustness for v in views):
        return list(SECTIONS)
    return [*SECTIONS[:-1], ROBUSTNESS_SECTION, SECTIONS[-1]]


def versions() -> dict[str, str]:
    """Versions of the libraries that made the report (the runs record their own python and torch)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("cifarlab", "torch", "torchvision", "torchmetrics", "captum", "matplotlib", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def split_sizes(run: Path) -> tuple[str, str]:
    """Training and validation image counts from split.json (as text; '?' when it has no such lists)."""
    split = read_json(run / "split.json") if (run / "split.json").is_file() else {}
    sizes = []
    for key in ("train", "val"):
        part = split.get(key, []) if isinstance(split, dict) else None
        sizes.append(count(len(part)) if isinstance(part, list) else "?")
    return sizes[0], sizes[1]


def setup_table(views: Sequence[RunView]) -> dict[str, Any]:
    """Data, split, recipe, hardware and versions of every run, in one table (a column per run)."""
    from cifarlab.results.compare import describe_init, describe_scaling

    def row(label: str, get: Callable[[RunView], str]) -> list[str]:
        return [label] + [get(v) for v in views]

    def value_of(key: str, source: str = "config") -> Callable[[RunView], str]:
        return lambda v: shown(getattr(v, source).get(key))

    sizes = [split_sizes(v.path) for v in views]
    rows = [
        row("model", value_of("model", "info")),
        row("recipe", value_of("recipe")),
        row("seed (split, weights, shuffling)", value_of("seed")),
        *dataset_rows(views),
        ["training images"] + [t for t, _ in sizes],
        ["validation images (held out, stratified)"] + [val for _, val in sizes],
        row("test images", lambda v: count(v.summary.get("n", 0))),
        row("test images from", lambda v: shown(v.dataset.get("test"))),
        row("data folder", data_folder),
        row("started from", lambda v: describe_init(v.info.get("init"))),
        row("recipe scaled for the dataset", lambda v: describe_scaling(v.info.get("scaling"))),
    ]
    hyper = [
        "epochs",
        "batch_size",
        "optimizer",
        "lr",
        "momentum",
        "weight_decay",
        "scheduler",
        "step_size",
        "gamma",
        "warmup_epochs",
        "label_smoothing",
        "augment",
        "limit_train",
        "freeze_epochs",
        "body_lr_scale",
    ]
    rows += [row(k, value_of(k)) for k in hyper if any(k in v.config for v in views)]
    rows += [
        row("parameters", lambda v: count(v.info.get("params", 0))),
        row("MACs per image", lambda v: count(v.info.get("macs", 0))),
        row("device", value_of("device", "info")),
        row("precision (training, scoring)", value_of("precision", "info")),
        row("CPU", value_of("cpu", "info")),
        row("threads", value_of("threads", "info")),
        row("platform", value_of("platform", "info")),
        row("python (training)", value_of("python", "info")),
        row("torch (training)", value_of("torch", "info")),
        row("training time (s)", lambda v: num(v.info.get("train_seconds", 0), 0)),
    ]
    return {
        "header": ["", *[v.name for v in views]],
        "rows": rows,
        "platform": platform.platform(),
        "made_with": ", ".join(f"{k} {val}" for k, val in versions().items()),
    }


DATASET_KINDS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "folder": "image folder"}


def dataset_rows(views: Sequence[RunView]) -> list[list[str]]:
    """Setup rows about each run's data: kind, image size, number of classes (and label set, skipped files)."""

    def kind(v: RunView) -> str:
        name = shown(v.dataset.get("kind"))
        text = DATASET_KINDS.get(name, name)
        if v.dataset.get("kind") == "cifar100" and v.dataset.get("labels") is not None:
            text += f" ({shown(v.dataset.get('labels'))} labels)"
        return text + (" (assumed: the run predates dataset records)" if v.dataset.get("assumed") else "")

    def classes(v: RunView) -> str:
        names = v.dataset.get("classes")
        return count(len(names)) if isinstance(names, list) else shown(names)

    rows = [
        ["dataset"] + [kind(v) for v in views],
        ["image size (pixels per side)"] + [shown(v.dataset.get("image_size")) for v in views],
        ["classes"] + [classes(v) for v in views],
    ]
    if any(v.dataset.get("skipped") for v in views):
        rows.append(["unreadable files skipped"] + [shown(v.dataset.get("skipped", "n/a")) for v in views])
    return rows


def data_folder(v: RunView) -> str:
    """Where the images were read: the image folder for folder runs, the CIFAR folder from the config otherwise."""
    if v.dataset.get("kind") == "folder":
        return shown(v.dataset.get("path"))
    return shown(v.config.get("data_dir") or "default ($CIFARLAB_DATA_DIR or ./data)")


def accuracy_key(row: dict[str, str]) -> tuple[bool, float]:
    """Sort key of a per_class.csv row: by accuracy, rows whose accuracy is undefined or not a number last."""
    try:
        value = float(row.get("accuracy") or "nan")
    except ValueError:
        value = math.nan
    return (math.isnan(value), 0.0 if math.isnan(value) else value)


def per_class_rows(v: RunView) -> list[list[str]]:
    """class, precision, recall, F1, support, accuracy of each class from per_class.csv, worst accuracy first
    (ties and undefined accuracies in label order, the undefined ones last)."""
    return [
        [
            shown(r.get("class")),
            csv_number(r.get("precision")),
            csv_number(r.get("recall")),
            csv_number(r.get("f1")),
            shown(r.get("support")),
            csv_number(r.get("accuracy"), True),
        ]
        for r in sorted(v.per_class, key=accuracy_key)
    ]


def pair_rows(v: RunView) -> list[list[str]]:
    """'true → predicted', count and share of the true class of each confused pair, from confused_pairs.csv."""
    return [
        [
            f"{shown(p.get('true'))} → {shown(p.get('predicted'))}",
            shown(p.get("count")),
            csv_number(p.get("share_of_true"), True),
        ]
        for p in v.pairs
    ]


def gradcam_view(v: RunView) -> dict[str, Any] | None:
    """The Grad-CAM paragraph's values, or None when the analysis has none."""
    g = v.summary.get("gradcam")
    if not isinstance(g, dict):
        return None
    return {
        "layer": shown(g.get("layer")),
        "size": both(g.get("map_size"), "x"),
        "wrong": pct(g.get("centre_share_wrong")),
        "right": pct(g.get("centre_share_right")),
        "images": both(g.get("centre_share_images"), " and "),
        "figure": figure(
            v.analysis / "gradcam.png",
            "Grad-CAM on misclassified test images: the image, the "
            "evidence for the (wrong) predicted class, and the evidence for the true class",
        ),
    }


def robustness_view(v: RunView) -> dict[str, Any] | None:
    """The Robustness section's values of one run: the sentences, top-1 per severity, the worst corruptions and the
    heatmap; a note when robustness.json cannot be read; None when the run has none."""
    from cifarlab.runs.layout import ROBUSTNESS_HEATMAP

    r = v.robustness
    if not r:
        return None
    if "unreadable" in r:
        return {"note": f"robustness.json cannot be read: {shown(r['unreadable'])}"}
    per_severity = r.get("per_severity")
    levels = [*(per_severity if isinstance(per_severity, list) else [])[:5], *[None] * 5][:5]
    clean = number(r.get("clean_top1"))
    return {
        "note": None,
        "sentences": robustness_reading(v),
        "header": ["", "clean", *[f"severity {k}" for k in range(1, 6)], "mean"],
        "row": [
            "top-1",
            pct(clean),
            *[pct(x) if x is not None else "not run" for x in levels],
            pct(r.get("mean_corruption_top1")),
        ],
        "worst": [
            [words(name), pct(mean), "n/a" if clean is None else f"{100 * (mean - clean):+.1f} points"]
            for name, mean in worst_corruptions(r, 3)
        ],
        "corruptions": len(corruption_means(r)),
        "figure": figure(
            v.robustness_dir / ROBUSTNESS_HEATMAP,
            f"{v.title}: test top-1 under each corruption (rows) at each severity (columns), and the mean",
        ),
    }


def skipped_note(summary: dict[str, Any]) -> str:
    """Why the analysis skipped Grad-CAM, as one line."""
    skipped = summary.get("skipped")
    notes = "; ".join(map(str, skipped)) if isinstance(skipped, list) else shown(skipped or "")
    return notes or "not computed"


def heatmap_caption(summary: dict[str, Any]) -> str:
    """What a confusion figure leaves out when it shows only the most confused classes ('' when it shows all)."""
    shown_classes, every = summary.get("heatmap_classes"), summary.get("classes")
    if not isinstance(shown_classes, list) or not isinstance(every, list):
        return ""
    return (
        f" (the {len(shown_classes)} most confused of {len(every)} classes, by mistakes as true or predicted "
        "class; the full matrix is in analysis/confusion_matrix.csv)"
    )


def run_context(v: RunView) -> dict[str, Any]:
    """Everything the HTML template shows of one run."""
    s, a, t = v.summary, v.analysis, v.title
    part = heatmap_caption(s)
    return {
        "title": t,
        "learning": figure(a / "learning_curves.png", f"{t}: loss and top-1 per epoch; shaded: train - validation gap"),
        "confusion": [
            figure(a / "confusion_matrix.png", f"{t}: counts{part}"),
            figure(
                a / "confusion_matrix_normalized.png",
                f"{t}: each row divided by the number of test images of that class{part}",
            ),
        ],
        "per_class": per_class_rows(v),
        "pairs": pair_rows(v),
        "galleries": [
            figure(a / "misclassified.png", f"{t}: misclassified test images, a reproducible sample"),
            figure(a / "top_losses.png", f"{t}: top losses, the most confidently wrong predictions"),
        ],
        "calibration": {
            "ece": num(s.get("ece"), 4),
            "confidence": pct(s.get("mean_confidence")),
            "accuracy": pct(s.get("top1")),
            "figure": figure(a / "reliability_diagram.png", f"{t}: reliability diagram"),
        },
        "gradcam": gradcam_view(v),
        "gradcam_note": skipped_note(s),
        "robustness": robustness_view(v),
        "name": v.name,
    }


def page_title(views: Sequence[RunView]) -> str:
    return "cifarlab report: " + " vs ".join(dict.fromkeys(shown(v.info.get("model", "?")) for v in views))


def html_context(views: Sequence[RunView], comp: Any, comp_dir: Path | None) -> dict[str, Any]:
    """Everything the HTML template shows."""
    from cifarlab.results.compare import disagreement_items, table_cells

    header, rows = table_cells(comp.groups)
    comparison = None
    if comp_dir is not None:
        comparison = {
            "learning": figure(
                comp_dir / "learning_curves.png", "Learning curves of all runs (solid: validation, dotted: training)"
            ),
            "per_class": figure(comp_dir / "per_class_accuracy.png", "Test accuracy of each class, every run"),
            "disagreements": disagreement_items(comp.disagreements),
        }
    return {
        "title": page_title(views),
        "run_names": [v.name for v in views],
        "generated": time.strftime("%Y-%m-%d %H:%M"),
        "sections": sections_of(views),
        "setup": setup_table(views),
        "results": {"header": header, "rows": rows, "grouped": any(g.n > 1 for g in comp.groups)},
        "comparison": comparison,
        "runs": [run_context(v) for v in views],
        "reading": reading(views, comp),
        "note": GENERATED_NOTE,
    }
