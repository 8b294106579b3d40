"""``cifarlab report RUN... [--out FILE.html]``: one self-contained HTML report, and a Markdown summary.

The HTML file embeds every figure as a base64 ``data:`` URI and uses no script, font, stylesheet or image
from anywhere else, so it opens from disk in any browser, offline, and can be mailed as one file. Its
print stylesheet keeps figures and tables whole on paper. ``report.md`` (beside it, same stem) holds the
table, the generated reading and links to the figure files, for pasting into a README or an assignment.

The report is built from the runs' files: their analyses are (re)computed when missing or stale, and
several runs are compared with :mod:`cifarlab.results.compare`. Both files are rendered from the Jinja2 templates in
``cifarlab/results/templates``; everything read from the runs' files (numbers, CSV cells, run, class and layer names,
config values, paths) reaches them as data and is escaped there (HTML autoescaping; literal Markdown text),
and a field that should hold a number but does not is shown as the text it holds.
"""

from __future__ import annotations

import base64
import functools
import html
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from cifarlab.base.errors import CifarlabError, UsageError
from cifarlab.base.files import atomic_write, read_json

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
GENERATED_NOTE = (
    "This reading was generated automatically from the numbers in this report, by fixed rules; "
    "it is not a person's interpretation. Check it against the tables before quoting it."
)
# The first letter of a web scheme's name; the report files never spell that word (see ``esc``).
FIGURES = [
    ("learning_curves.png", "learning curves"),
    ("confusion_matrix.png", "confusion matrix"),
    ("confusion_matrix_normalized.png", "confusion matrix, row-normalised"),
    ("misclassified.png", "misclassified"),
    ("top_losses.png", "top losses"),
    ("reliability_diagram.png", "reliability diagram"),
    ("gradcam.png", "Grad-CAM"),
]
MD_CLASS_ROWS = 20  # report.md lists at most this many classes per run (the worst); the HTML and CSV have all
PER_CLASS_HEADER = ["class", "precision", "recall", "F1", "support", "accuracy"]


# ---------------------------------------------------------------------------------------------------------
# Self-contained pieces
# ---------------------------------------------------------------------------------------------------------


def esc(text: Any) -> str:
    """HTML-escape text (``<``, ``>``, ``&`` and quotes), so a run name or platform string shows as typed."""
    return html.escape(str(text))


def data_uri(png: bytes) -> str:
    """A base64 ``data:`` URI for a PNG: the figure travels inside the page."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure(path: Path, caption: str) -> dict[str, Any]:
    """A figure for the template: its data URI (None when the file is absent), caption and file name."""
    uri = data_uri(path.read_bytes()) if path.is_file() else None
    return {"uri": uri, "caption": caption, "file": path.name}


# ---------------------------------------------------------------------------------------------------------
# Numbers from files, shown defensively: a value that is not a number is shown as the text it is
# ---------------------------------------------------------------------------------------------------------


def number(value: Any) -> float | None:
    """A JSON number (not a bool, not NaN) as a float; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def shown(value: Any) -> str:
    """Any value from a file as text; a missing one (null, NaN) as 'n/a'."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def pct(value: Any, digits: int = 1) -> str:
    """A share as a percentage ('12.5%'); anything that is not a number is shown as its text."""
    n = number(value)
    return shown(value) if n is None else f"{100 * n:.{digits}f}%"


def num(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals; anything that is not a number is shown as its text."""
    n = number(value)
    return shown(value) if n is None else f"{n:.{digits}f}"


def count(value: Any) -> str:
    """A whole number with thousands separators ('11,181,642'); anything else is shown as its text."""
    n = number(value)
    return shown(value) if n is None else f"{n:,.0f}"


def csv_number(cell: str | None, as_pct: bool = False) -> str:
    """A CSV cell of the analysis: empty means undefined (0/0); a cell that is not a number is shown as is."""
    if cell is None:
        return "n/a"
    if cell == "":
        return "undefined"
    try:
        value = float(cell)
    except ValueError:
        return cell
    return pct(value) if as_pct else num(value)


def both(value: Any, joiner: str) -> str:
    """A pair from a file ('8x8', '5 and 7'); anything else as its text."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{value[0]}{joiner}{value[1]}"
    return shown(value)


# ---------------------------------------------------------------------------------------------------------
# The runs
# ---------------------------------------------------------------------------------------------------------


@dataclass
class RunView:
    """One run as the report shows it: its folder, files and analysis summary."""

    path: Path
    info: dict[str, Any]
    config: dict[str, Any]
    summary: dict[str, Any]
    per_class: list[dict[str, str]]
    pairs: list[dict[str, str]]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def analysis(self) -> Path:
        return self.path / "analysis"

    @property
    def title(self) -> str:
        from cifarlab.runs.folder import run_title

        return run_title(self.name, self.info.get("model"))

    @property
    def dataset(self) -> dict[str, Any]:
        """The run's dataset record (CIFAR-10 at 32 px, marked assumed, for a run that predates records)."""
        from cifarlab.runs.folder import dataset_or_cifar10

        return dataset_or_cifar10(self.info.get("dataset"))


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def json_object(path: Path, data: Any) -> dict[str, Any]:
    """``data`` read from ``path``, which must be a JSON object."""
    if not isinstance(data, dict):
        raise CifarlabError(f"{path}: not a JSON object")
    return data


def load_view(run: Path, data_dir: str | None) -> RunView:
    """A run with an up-to-date analysis (computed now if missing or older than the predictions)."""
    from cifarlab.results.analysis import ensure_analysis
    from cifarlab.runs.folder import RunFolder

    summary = json_object(run / "analysis" / "summary.json", ensure_analysis(run, data_dir))
    folder = RunFolder(run)
    return RunView(
        run,
        folder.info,
        folder.config_record,
        summary,
        read_csv_rows(run / "analysis" / "per_class.csv"),
        read_csv_rows(run / "analysis" / "confused_pairs.csv"),
    )


def default_out(runs: Sequence[Path]) -> Path:
    """One run: RUN/report.html. Several: report.html in the current folder."""
    return runs[0] / "report.html" if len(runs) == 1 else Path("report.html")


def resolve_out(out: str | Path | None, runs: Sequence[Path]) -> Path:
    """The HTML path: a folder means folder/report.html; the name must end in .html."""
    path = default_out(runs) if out is None else Path(out)
    if path.is_dir():
        path = path / "report.html"
    if path.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out must name an .html file (got {path})")
    if not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: folder {path.parent} does not exist")
    return path


# ---------------------------------------------------------------------------------------------------------
# The reading of the numbers (generated by rules), as plain text: (bold lead, rest of the sentence)
# ---------------------------------------------------------------------------------------------------------


def gap_words(gap: float) -> str:
    """How to call a train-minus-validation top-1 gap."""
    points = 100 * gap
    if points < 0:
        return (
            "validation is above training, which happens when dropout or augmentation act only while "
            "training; no sign of overfitting"
        )
    if points < 2:
        return "little overfitting"
    if points < 10:
        return "moderate overfitting"
    return "strong overfitting: the model fits its training images much better than new ones"


def headline_sentence(view: RunView) -> tuple[str, str]:
    """Test top-1/top-3 and the best validation epoch of one run."""
    s, info = view.summary, view.info
    epochs = info.get("epochs", "?")
    rest = (
        f" reaches {pct(s.get('top1'))} test top-1 and {pct(s.get('top3'))} top-3 after {shown(epochs)} "
        f"epoch{'' if epochs == 1 else 's'}; validation top-1 peaked at {pct(info.get('best_val_top1'))} in "
        f"epoch {shown(info.get('best_epoch', '?'))}."
    )
    return view.title, rest


def confusion_sentence(view: RunView) -> str | None:
    """The most frequent confusion, and how often it happens the other way."""
    pair = view.summary.get("most_confused")
    if not isinstance(pair, dict):
        return None
    true, predicted = shown(pair.get("true")), shown(pair.get("predicted"))
    support = next((r.get("support") for r in view.per_class if r.get("class") == true), None)
    reverse = next((p for p in view.pairs if p.get("true") == predicted and p.get("predicted") == true), None)
    text = (
        f"The most frequent confusion is {true} → {predicted}: {shown(pair.get('count'))} of {shown(support)} "
        f"{true} test images ({pct(pair.get('share_of_true'))})"
    )
    if reverse:
        text += f", and {shown(reverse.get('count'))} the other way"
    return text + "."


def class_f1_sentence(summary: dict[str, Any]) -> str | None:
    """The easiest and hardest class by F1."""
    best, worst = summary.get("best_class"), summary.get("worst_class")
    if not isinstance(best, dict) or not isinstance(worst, dict):
        return None
    if best.get("f1") == worst.get("f1"):
        return f"Every class has the same F1 ({num(best.get('f1'), 2)})."
    return (
        f"By F1 the easiest class is {shown(best.get('class'))} ({num(best.get('f1'), 2)}) "
        f"and the hardest is {shown(worst.get('class'))} ({num(worst.get('f1'), 2)})."
    )


def calibration_sentence(summary: dict[str, Any]) -> str:
    """ECE, and over- or under-confidence when the file gives it as a number."""
    text = (
        f"Expected calibration error is {num(summary.get('ece'))}: mean confidence "
        f"{pct(summary.get('mean_confidence'))} against accuracy {pct(summary.get('top1'))}"
    )
    over = number(summary.get("overconfidence"))
    if over is None:
        return text + "."
    direction = "over-confident" if over > 0 else "under-confident"
    return text + f", so the model is {direction} by {abs(100 * over):.1f} points on average."


def run_reading(view: RunView) -> list[tuple[str, str]]:
    """Sentences about one run, each from one number of its files."""
    out = [headline_sentence(view)]
    gap = number(view.info.get("train_val_gap"))
    if gap is not None:
        side = "above" if gap >= 0 else "below"
        out.append(
            (
                "",
                (
                    f"At that epoch training top-1 is {abs(100 * gap):.1f} points {side} validation "
                    f"top-1: {gap_words(gap)}."
                ),
            )
        )
    sentences = [confusion_sentence(view), class_f1_sentence(view.summary), calibration_sentence(view.summary)]
    sentences += gradcam_reading(view.summary.get("gradcam"))
    return out + [("", s) for s in sentences if s]


def gradcam_reading(g: Any) -> list[str]:
    """What the centre shares say about the 'background dominance' guess."""
    if not isinstance(g, dict):
        return []
    wrong, right = number(g.get("centre_share_wrong")), number(g.get("centre_share_right"))
    if wrong is None or right is None:
        return []
    text = (
        f"Grad-CAM ({shown(g.get('layer'))}, {both(g.get('map_size'), 'x')} maps): on misclassified images "
        f"{pct(wrong, 0)} of the evidence for the predicted class lies in the central quarter of the image, "
        f"against {pct(right, 0)} on correctly classified ones (an even spread would put 25% there). "
    )
    if wrong < right - 0.05:
        text += "Wrong answers lean more on the border, which is consistent with background dominance."
    elif wrong > right + 0.05:
        text += (
            "Wrong answers look at the centre more, not at the background: this does not support background dominance."
        )
    else:
        text += (
            "Wrong and right answers draw on the centre about equally, so these maps give no sign that the "
            "background drives the mistakes."
        )
    return [text]


def comparison_reading(comp: Any) -> list[str]:
    """Sentences comparing the groups: who wins, by how much, against the seed spread; where they differ."""
    groups = comp.groups
    if len(groups) < 2:
        if groups and groups[0].n > 1:
            m, sd = groups[0].stats["test_top1"]
            return [
                (
                    f"Over {groups[0].n} seeds test top-1 is {pct(m, 2)} with a standard deviation of "
                    f"{100 * sd:.2f} points: differences smaller than that are within seed noise."
                )
            ]
        return []
    ranked = sorted(groups, key=lambda g: -g.stats["test_top1"][0])
    best, second = ranked[0], ranked[1]
    diff = best.stats["test_top1"][0] - second.stats["test_top1"][0]
    out = [
        (
            f"{best.label} has the highest test top-1 ({pct(best.stats['test_top1'][0], 2)}), "
            f"{100 * diff:.1f} points above {second.label}."
        )
    ]
    stds = [g.stats["test_top1"][1] for g in (best, second) if g.stats["test_top1"][1] is not None]
    if stds:
        noise = max(stds)
        out.append(
            f"The largest seed-to-seed standard deviation is {100 * noise:.2f} points, so the difference is "
            + ("well beyond seed noise." if diff > 2 * noise else "not clearly beyond seed noise.")
        )
    else:
        out.append(
            "Each configuration ran with one seed, so a difference of a point or two may be seed noise; "
            "repeat with other --seed values to know."
        )
    p_best, p_second = number(best.stats["params"][0]), number(second.stats["params"][0])
    if p_best and p_second:
        ratio = p_best / p_second
        size = f"{ratio:.1f} times as many" if ratio >= 1 else f"{1 / ratio:.1f} times fewer"
        out.append(
            f"{best.label} has {size} parameters as {second.label} and trained at "
            f"{count(best.stats['images_per_second'][0])} images/s against "
            f"{count(second.stats['images_per_second'][0])}."
        )
    if comp.disagreements:
        row = comp.disagreements[0]
        accs = ", ".join(f"{k.removeprefix('accuracy ')} {pct(v)}" for k, v in row.items() if k.startswith("accuracy "))
        out.append(f"The runs disagree most on {row['class']} ({accs}).")
    return out


# ---------------------------------------------------------------------------------------------------------
# What the templates show
# ---------------------------------------------------------------------------------------------------------


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
    }


def page_title(views: Sequence[RunView]) -> str:
    return "cifarlab report: " + " vs ".join(dict.fromkeys(shown(v.info.get("model", "?")) for v in views))


def reading(views: Sequence[RunView], comp: Any) -> list[tuple[str, str]]:
    """The generated sentences of every run and of the comparison."""
    return [s for v in views for s in run_reading(v)] + [("", s) for s in comparison_reading(comp)]


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
        "sections": SECTIONS,
        "setup": setup_table(views),
        "results": {"header": header, "rows": rows, "grouped": any(g.n > 1 for g in comp.groups)},
        "comparison": comparison,
        "runs": [run_context(v) for v in views],
        "reading": reading(views, comp),
        "note": GENERATED_NOTE,
    }


# ---------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------


class Verbatim(str):
    """Markdown the report wrote itself (an escaped table, a percent-encoded link): put into report.md as is."""


def html_value(value: Any) -> Markup:
    """How the HTML template writes a value: escaped (template-made markup kept)."""
    if value is None:
        return Markup("n/a")
    if hasattr(value, "__html__"):
        return Markup(value.__html__())
    return Markup(esc(value))


def markdown_value(value: Any) -> str:
    """How the Markdown template writes a value: literal text, unless Verbatim."""
    from cifarlab.results.compare import markdown_text

    if isinstance(value, Verbatim):
        return value
    return markdown_text(shown(value))


@functools.cache
def environment(markdown: bool) -> Environment:
    """The Jinja2 environment of the HTML template (autoescaping) or of the Markdown one (its own escaping)."""
    loader = PackageLoader("cifarlab.results", "templates")
    if markdown:
        return Environment(
            loader=loader,
            autoescape=False,
            finalize=markdown_value,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
    return Environment(
        loader=loader, autoescape=True, finalize=html_value, undefined=StrictUndefined, keep_trailing_newline=True
    )


def render_html(views: Sequence[RunView], comp: Any, comp_dir: Path | None) -> str:
    """The whole page."""
    return environment(False).get_template("report.html").render(html_context(views, comp, comp_dir))


def link_target(path: Path, md_path: Path) -> Verbatim:
    """``path`` relative to the Markdown file, percent-encoded (no space, bracket or markup left in it)."""
    target = quote(Path(os.path.relpath(path, md_path.parent)).as_posix(), safe="/")
    return Verbatim(target)


def figure_links(files: Sequence[tuple[Path, str]], md_path: Path) -> list[dict[str, Any]]:
    """Markdown image links to the figures that exist."""
    return [{"caption": caption, "target": link_target(path, md_path)} for path, caption in files if path.is_file()]


def render_markdown(views: Sequence[RunView], comp: Any, comp_dir: Path | None, md_path: Path) -> str:
    """report.md: table, generated reading and links to the figure files (relative to the .md file)."""
    from cifarlab.results.compare import markdown_table

    comparison = (
        []
        if comp_dir is None
        else [
            (comp_dir / "learning_curves.png", "learning curves, all runs"),
            (comp_dir / "per_class_accuracy.png", "per-class accuracy, all runs"),
        ]
    )
    runs = [
        {
            "title": v.title,
            "links": figure_links([(v.analysis / name, f"{v.name}: {caption}") for name, caption in FIGURES], md_path),
            "data": data_line(v),
            "per_class": Verbatim(per_class_markdown(v)),
            "per_class_note": per_class_note(v),
        }
        for v in views
    ]
    context = {
        "run_names": [v.name for v in views],
        "grouped": any(g.n > 1 for g in comp.groups),
        "table": Verbatim(markdown_table(comp.groups, markdown_value)),
        "note": GENERATED_NOTE,
        "reading": reading(views, comp),
        "comparison_links": figure_links(comparison, md_path),
        "runs": runs,
    }
    return environment(True).get_template("report.md").render(context)


def data_line(v: RunView) -> str:
    """The run's data in one line for report.md: kind, image size, classes, and where its test images come from."""
    from cifarlab.runs.folder import dataset_line

    return f"{dataset_line(v.dataset)}; test images: {shown(v.dataset.get('test'))}"


def per_class_markdown(v: RunView, limit: int = MD_CLASS_ROWS) -> str:
    """The per-class table of report.md, worst accuracy first, at most ``limit`` rows; every cell escaped."""
    rows = per_class_rows(v)[:limit]
    lines = ["| " + " | ".join(markdown_value(c) for c in PER_CLASS_HEADER) + " |", "|---|" + "---:|" * 5]
    lines += ["| " + " | ".join(markdown_value(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def per_class_note(v: RunView, limit: int = MD_CLASS_ROWS) -> str:
    """Says the report.md table is cut ('' when it lists every class)."""
    n = len(v.per_class)
    if n <= limit:
        return ""
    return f"The {limit} worst of {n} classes; all of them in the HTML report and analysis/per_class_by_accuracy.csv."


def report(runs: Sequence[str | Path], out: str | Path | None = None, data_dir: str | None = None) -> Path:
    """Write the HTML report and report.md for ``runs``; returns the HTML path."""
    from cifarlab.results.compare import build_comparison, write_comparison
    from cifarlab.runs.folder import require_run

    if not runs:
        raise UsageError("give at least one run folder")
    paths = [require_run(r) for r in runs]
    html_path = resolve_out(out, paths)
    comp = build_comparison(paths)
    views = [load_view(p, data_dir) for p in paths]
    comp_dir = None
    if len(paths) > 1:
        comp_dir = html_path.parent / "comparison"
        write_comparison(comp, comp_dir)
    page = render_html(views, comp, comp_dir)
    atomic_write(html_path, lambda f: f.write(page), binary=False)
    md_path = html_path.with_suffix(".md")
    md = render_markdown(views, comp, comp_dir, md_path)
    atomic_write(md_path, lambda f: f.write(md), binary=False)
    return html_path
