"""``cifarlab report RUN... [--out FILE.html]``: one self-contained HTML report, and a Markdown summary.

The HTML file embeds every figure as a base64 ``data:`` URI and uses no script, font, stylesheet or image
from anywhere else, so it opens from disk in any browser, offline, and can be mailed as one file. Its
print stylesheet keeps figures and tables whole on paper. ``report.md`` (beside it, same stem) holds the
table, the generated reading and links to the figure files, for pasting into a README or an assignment.

The report is built from the runs' files: their analyses are (re)computed when missing or stale, and
several runs are compared with :mod:`cifarlab.compare`.
"""

from __future__ import annotations

import argparse
import base64
import html
import os
import platform
import re
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from cifarlab.errors import CifarlabError, UsageError
from cifarlab.runfiles import atomic_write, read_json

SECTIONS = [
    ("setup", "Setup"), ("results", "Results"), ("learning-curves", "Learning curves"),
    ("confusion", "Confusion matrices"), ("per-class", "Per-class metrics"), ("confused-pairs", "Confused pairs"),
    ("galleries", "Galleries"), ("calibration", "Calibration"), ("gradcam", "Grad-CAM"),
    ("reading", "Reading of the numbers"),
]
GENERATED_NOTE = ("This reading was generated automatically from the numbers in this report, by fixed rules; "
                  "it is not a person's interpretation. Check it against the tables before quoting it.")
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 1150px; margin: 0 auto;
       padding: 1.5em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
h3 { margin-bottom: 0.3em; } .muted { color: #666; font-size: 0.92em; }
nav ol { columns: 2; } table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.55em; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
table.setup td { text-align: left; }
figure { margin: 0.8em 0 1.4em; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; } .generated { border-left: 4px solid #e0a800; background: #fff8e1;
padding: 0.6em 1em; } .note { color: #8a5a00; }
@page { size: A4; margin: 14mm; }
@media print {
  body { max-width: none; padding: 0; font-size: 10pt; } nav { display: none; }
  h2 { break-before: page; } h2, h3 { break-after: avoid; }
  figure, table, .generated { break-inside: avoid; } figure img { max-height: 240mm; }
}
"""


# ---------------------------------------------------------------------------------------------------------
# Self-contained pieces
# ---------------------------------------------------------------------------------------------------------

def esc(text: Any) -> str:
    """HTML-escape text. The 'h' of a web scheme becomes a character reference, so the file never holds
    that word even when a run name or a platform string contains it; browsers show the text unchanged."""
    return re.sub(r"(?i)h(?=ttp)", lambda m: f"&#{ord(m.group(0))};", html.escape(str(text)))


def png_with_padding(png: bytes, pad: int) -> bytes:
    """The same PNG with a ``tEXt`` chunk of 20 + ``pad`` bytes after its header: same pixels, shifted bytes."""
    data = b"Comment\x00" + b"." * pad
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    return png[:33] + chunk + png[33:]


def data_uri(png: bytes) -> str:
    """A base64 ``data:`` URI for a PNG whose text never contains 'http' in any letter case.

    Base64 of compressed pixels spells four given letters by chance about once per million characters,
    so a large figure often does. Base64 encodes 3 bytes at a time: no chunk, or a padding chunk of 22 or
    23 bytes, gives the three possible alignments, hence three different encodings of the picture. If all
    three spell the word, a newline is put inside each occurrence: URL parsers remove newlines from a URL
    before reading it (WHATWG URL standard), so browsers decode the same bytes.
    """
    text = ""
    for pad in (None, 2, 3):
        text = base64.b64encode(png if pad is None else png_with_padding(png, pad)).decode("ascii")
        if "http" not in text.lower():
            return "data:image/png;base64," + text
    return "data:image/png;base64," + re.sub(r"(?i)h(?=ttp)", "h\n", text)


def figure(path: Path, caption: str) -> str:
    """An embedded figure with its caption, or a note when the file is absent."""
    if not path.is_file():
        return f'<p class="note">Figure not available: {esc(path.name)} was not produced.</p>'
    return (f'<figure><img src="{data_uri(path.read_bytes())}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain HTML table; cells are escaped."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_to_html_table(markdown: str) -> str:
    """The comparison's Markdown table as an HTML table."""
    lines = [ln.strip().strip("|").split("|") for ln in markdown.strip().splitlines() if ln.startswith("|")]
    header, rows = [c.strip() for c in lines[0]], [[c.strip() for c in ln] for ln in lines[2:]]
    return html_table(header, rows)


def pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


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
        from cifarlab.analysis import run_title

        return run_title(self.name, self.info.get("model"))


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_view(run: Path, data_dir: str | None) -> RunView:
    """A run with an up-to-date analysis (computed now if missing or older than the predictions)."""
    from cifarlab.analysis import ensure_analysis

    summary = ensure_analysis(run, data_dir)
    return RunView(run, read_json(run / "run.json"), read_json(run / "config.json"), summary,
                   read_csv_rows(run / "analysis" / "per_class.csv"),
                   read_csv_rows(run / "analysis" / "confused_pairs.csv"))


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
# The reading of the numbers (generated by rules)
# ---------------------------------------------------------------------------------------------------------

def gap_words(gap: float) -> str:
    """How to call a train-minus-validation top-1 gap."""
    points = 100 * gap
    if points < 0:
        return ("validation is above training, which happens when dropout or augmentation act only while "
                "training; no sign of overfitting")
    if points < 2:
        return "little overfitting"
    if points < 10:
        return "moderate overfitting"
    return "strong overfitting: the model fits its training images much better than new ones"


def run_reading(view: RunView) -> list[str]:
    """Sentences about one run, each from one number of its files."""
    s, info = view.summary, view.info
    epochs = info.get("epochs", "?")
    out = [f"<b>{esc(view.title)}</b> reaches {pct(s['top1'])} test top-1 and {pct(s['top3'])} top-3 after "
           f"{esc(epochs)} epoch{'' if epochs == 1 else 's'}; validation top-1 peaked at "
           f"{pct(info.get('best_val_top1'))} in epoch {esc(info.get('best_epoch', '?'))}."]
    if info.get("train_val_gap") is not None:
        gap = info["train_val_gap"]
        side = "above" if gap >= 0 else "below"
        out.append(f"At that epoch training top-1 is {abs(100 * gap):.1f} points {side} validation top-1: "
                   f"{gap_words(gap)}.")
    pair = s.get("most_confused")
    if pair:
        support = next((int(r["support"]) for r in view.per_class if r["class"] == pair["true"]), None)
        reverse = next((p for p in view.pairs
                        if p["true"] == pair["predicted"] and p["predicted"] == pair["true"]), None)
        text = (f"The most frequent confusion is {esc(pair['true'])} &rarr; {esc(pair['predicted'])}: "
                f"{pair['count']} of {support} {esc(pair['true'])} test images ({pct(pair['share_of_true'])})")
        if reverse:
            text += f", and {reverse['count']} the other way"
        out.append(text + ".")
    if s.get("best_class") and s.get("worst_class") and s["best_class"]["f1"] == s["worst_class"]["f1"]:
        out.append(f"Every class has the same F1 ({num(s['best_class']['f1'], 2)}).")
    elif s.get("best_class") and s.get("worst_class"):
        out.append(f"By F1 the easiest class is {esc(s['best_class']['class'])} ({num(s['best_class']['f1'], 2)}) "
                   f"and the hardest is {esc(s['worst_class']['class'])} ({num(s['worst_class']['f1'], 2)}).")
    over = s["overconfidence"]
    direction = "over-confident" if over > 0 else "under-confident"
    out.append(f"Expected calibration error is {num(s['ece'])}: mean confidence {pct(s['mean_confidence'])} against "
               f"accuracy {pct(s['top1'])}, so the model is {direction} by {abs(100 * over):.1f} points on average.")
    out.extend(gradcam_reading(s.get("gradcam")))
    return out


def gradcam_reading(g: dict[str, Any] | None) -> list[str]:
    """What the centre shares say about the 'background dominance' guess."""
    if not g or g.get("centre_share_wrong") is None or g.get("centre_share_right") is None:
        return []
    wrong, right = g["centre_share_wrong"], g["centre_share_right"]
    text = (f"Grad-CAM ({esc(g['layer'])}, {g['map_size'][0]}x{g['map_size'][1]} maps): on misclassified images "
            f"{pct(wrong, 0)} of the evidence for the predicted class lies in the central quarter of the image, "
            f"against {pct(right, 0)} on correctly classified ones (an even spread would put 25% there). ")
    if wrong < right - 0.05:
        text += "Wrong answers lean more on the border, which is consistent with background dominance."
    elif wrong > right + 0.05:
        text += ("Wrong answers look at the centre more, not at the background: this does not support "
                 "background dominance.")
    else:
        text += ("Wrong and right answers draw on the centre about equally, so these maps give no sign that the "
                 "background drives the mistakes.")
    return [text]


def comparison_reading(comp: Any) -> list[str]:
    """Sentences comparing the groups: who wins, by how much, against the seed spread; where they differ."""
    groups = comp.groups
    if len(groups) < 2:
        if groups and groups[0].n > 1:
            m, sd = groups[0].stats["test_top1"]
            return [f"Over {groups[0].n} seeds test top-1 is {pct(m, 2)} with a standard deviation of "
                    f"{100 * sd:.2f} points: differences smaller than that are within seed noise."]
        return []
    ranked = sorted(groups, key=lambda g: -g.stats["test_top1"][0])
    best, second = ranked[0], ranked[1]
    diff = best.stats["test_top1"][0] - second.stats["test_top1"][0]
    out = [f"{esc(best.label)} has the highest test top-1 ({pct(best.stats['test_top1'][0], 2)}), "
           f"{100 * diff:.1f} points above {esc(second.label)}."]
    stds = [g.stats["test_top1"][1] for g in (best, second) if g.stats["test_top1"][1] is not None]
    if stds:
        noise = max(stds)
        out.append(f"The largest seed-to-seed standard deviation is {100 * noise:.2f} points, so the difference is "
                   + ("well beyond seed noise." if diff > 2 * noise else "not clearly beyond seed noise."))
    else:
        out.append("Each configuration ran with one seed, so a difference of a point or two may be seed noise; "
                   "repeat with other --seed values to know.")
    p_best, p_second = best.stats["params"][0], second.stats["params"][0]
    if p_best and p_second:
        ratio = p_best / p_second
        size = f"{ratio:.1f} times as many" if ratio >= 1 else f"{1 / ratio:.1f} times fewer"
        out.append(f"{esc(best.label)} has {size} parameters as {esc(second.label)} and trained at "
                   f"{best.stats['images_per_second'][0]:,.0f} images/s against "
                   f"{second.stats['images_per_second'][0]:,.0f}.")
    if comp.disagreements:
        row = comp.disagreements[0]
        accs = ", ".join(f"{esc(k.removeprefix('accuracy '))} {pct(v)}" for k, v in row.items()
                         if k.startswith("accuracy "))
        out.append(f"The runs disagree most on {esc(row['class'])} ({accs}).")
    return out


# ---------------------------------------------------------------------------------------------------------
# Sections
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


def setup_section(views: Sequence[RunView]) -> str:
    """Data, split, recipe, hardware and versions of every run, in one table (a column per run)."""
    def row(label: str, get) -> list[str]:
        return [label] + [str(get(v)) for v in views]

    split_sizes = []
    for v in views:
        split = read_json(v.path / "split.json") if (v.path / "split.json").is_file() else {}
        split_sizes.append((len(split.get("train", [])), len(split.get("val", []))))
    rows = [
        row("model", lambda v: v.info.get("model")),
        row("recipe", lambda v: v.config.get("recipe")),
        row("seed (split, weights, shuffling)", lambda v: v.config.get("seed")),
        ["training images"] + [f"{t:,}" for t, _ in split_sizes],
        ["validation images (held out, stratified)"] + [f"{val:,}" for _, val in split_sizes],
        row("test images (official test set)", lambda v: f"{v.summary.get('n', 0):,}"),
        row("data folder", lambda v: v.config.get("data_dir") or "default ($CIFARLAB_DATA_DIR or ./data)"),
    ]
    hyper = ["epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "scheduler", "step_size",
             "gamma", "warmup_epochs", "label_smoothing", "augment", "limit_train"]
    rows += [row(k, lambda v, k=k: v.config.get(k)) for k in hyper if any(k in v.config for v in views)]
    rows += [
        row("parameters", lambda v: f"{v.info.get('params', 0):,}"),
        row("MACs per image", lambda v: f"{v.info.get('macs', 0):,}"),
        row("device", lambda v: v.info.get("device")),
        row("CPU", lambda v: v.info.get("cpu")),
        row("threads", lambda v: v.info.get("threads")),
        row("platform", lambda v: v.info.get("platform")),
        row("python (training)", lambda v: v.info.get("python")),
        row("torch (training)", lambda v: v.info.get("torch")),
        row("training time (s)", lambda v: f"{v.info.get('train_seconds', 0):.0f}"),
    ]
    made_with = ", ".join(f"{k} {val}" for k, val in versions().items())
    return (html_table(["", *[v.name for v in views]], rows).replace("<table>", '<table class="setup">', 1)
            + f'<p class="muted">Report made with {esc(made_with)} on {esc(platform.platform())}.</p>')


def per_run(views: Sequence[RunView], body) -> str:
    """A sub-section per run (no sub-heading when there is only one run)."""
    parts = []
    for v in views:
        heading = f"<h3>{esc(v.title)}</h3>" if len(views) > 1 else ""
        parts.append(heading + body(v))
    return "".join(parts)


def per_class_html(v: RunView) -> str:
    def show(value: str, as_pct: bool = False) -> str:
        if value == "":
            return "undefined"
        return pct(float(value)) if as_pct else f"{float(value):.3f}"

    rows = [[r["class"], show(r["precision"]), show(r["recall"]), show(r["f1"]), r["support"],
             show(r["accuracy"], True)] for r in v.per_class]
    return html_table(["class", "precision", "recall", "F1", "support", "accuracy"], rows)


def pairs_html(v: RunView) -> str:
    if not v.pairs:
        return "<p>No mistakes: no confused pairs.</p>"
    rows = [[f"{p['true']} → {p['predicted']}", p["count"], pct(float(p["share_of_true"]))] for p in v.pairs]
    return html_table(["true → predicted", "images", "share of the true class"], rows)


def gradcam_html(v: RunView) -> str:
    g = v.summary.get("gradcam")
    if not g:
        notes = "; ".join(v.summary.get("skipped", [])) or "not computed"
        return f'<p class="note">Grad-CAM not available: {esc(notes)}</p>'
    text = (f"<p>Target layer <code>{esc(g['layer'])}</code> ({g['map_size'][0]}x{g['map_size'][1]} before "
            f"upsampling). Share of the evidence in the central quarter of the image: misclassified "
            f"{pct(g['centre_share_wrong'])}, correctly classified {pct(g['centre_share_right'])} "
            f"({g['centre_share_images'][0]} and {g['centre_share_images'][1]} images; 25% = evenly spread).</p>")
    return text + figure(v.analysis / "gradcam.png", "Grad-CAM on misclassified test images: the image, the "
                         "evidence for the (wrong) predicted class, and the evidence for the true class")


def sections_html(views: Sequence[RunView], comp: Any, comp_dir: Path | None) -> dict[str, str]:
    """The body of every section, by id."""
    many = comp_dir is not None
    reading = "".join(f"<li>{s}</li>" for v in views for s in run_reading(v))
    reading += "".join(f"<li>{s}</li>" for s in comparison_reading(comp))
    grouped = any(g.n > 1 for g in comp.groups)
    results = markdown_to_html_table(comp.table) + (
        '<p class="muted">Runs with the same config except seed are grouped: mean ± sample std over n seeds.</p>'
        if grouped else "")
    learning = (figure(comp_dir / "learning_curves.png", "Learning curves of all runs (solid: validation, "
                       "dotted: training)") if many else "")
    learning += per_run(views, lambda v: figure(v.analysis / "learning_curves.png",
                                                f"{v.title}: loss and top-1 per epoch; shaded: train - validation gap"))
    per_class = ""
    if many:
        from cifarlab.compare import disagreement_markdown

        per_class += figure(comp_dir / "per_class_accuracy.png", "Test accuracy of each class, every run")
        lines = disagreement_markdown(comp.disagreements).splitlines()
        if lines:
            items = "".join("<li>" + esc(ln.removeprefix("- ")).replace("**", "") + "</li>" for ln in lines)
            per_class += f"<p>Classes where the runs disagree most:</p><ul>{items}</ul>"
    per_class += per_run(views, per_class_html)
    return {
        "setup": setup_section(views),
        "results": results,
        "learning-curves": learning,
        "confusion": per_run(views, lambda v: figure(v.analysis / "confusion_matrix.png", f"{v.title}: counts")
                             + figure(v.analysis / "confusion_matrix_normalized.png",
                                      f"{v.title}: each row divided by the number of test images of that class")),
        "per-class": '<p class="muted">Accuracy of a class is the share of its test images classified '
                     "correctly (equal to its recall). Undefined: 0/0, e.g. precision of a class never "
                     "predicted.</p>" + per_class,
        "confused-pairs": per_run(views, pairs_html),
        "galleries": per_run(views, lambda v: figure(v.analysis / "misclassified.png", f"{v.title}: misclassified "
                                                     "test images, a reproducible sample")
                             + figure(v.analysis / "top_losses.png", f"{v.title}: top losses, the most confidently "
                                      "wrong predictions")),
        "calibration": per_run(views, lambda v: f"<p>Expected calibration error (top-label, 15 equal-width bins): "
                               f"<b>{num(v.summary['ece'], 4)}</b>; mean confidence {pct(v.summary['mean_confidence'])}"
                               f", accuracy {pct(v.summary['top1'])}.</p>"
                               + figure(v.analysis / "reliability_diagram.png", f"{v.title}: reliability diagram")),
        "gradcam": '<p class="muted">Grad-CAM weighs a convolution layer\'s feature maps by the gradient of a class '
                   "score: bright areas raised the score of that class. Compare the evidence for the wrong answer "
                   "with the evidence for the true class.</p>" + per_run(views, gradcam_html),
        "reading": f'<div class="generated"><p><b>Automatically generated.</b> {esc(GENERATED_NOTE)}</p>'
                   f"<ul>{reading}</ul></div>",
    }


def render_html(views: Sequence[RunView], comp: Any, comp_dir: Path | None) -> str:
    """The whole page."""
    bodies = sections_html(views, comp, comp_dir)
    title = "cifarlab report: " + " vs ".join(dict.fromkeys(v.info.get("model", "?") for v in views))
    nav = "".join(f'<li><a href="#{sid}">{esc(name)}</a></li>' for sid, name in SECTIONS)
    sections = "".join(f'<section id="{sid}"><h2>{esc(name)}</h2>{bodies[sid]}</section>' for sid, name in SECTIONS)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{esc(title)}</h1><p class=\"muted\">Runs: {esc(', '.join(v.name for v in views))}. "
            f"Generated {esc(time.strftime('%Y-%m-%d %H:%M'))} by cifarlab from the run folders; every figure is "
            f"embedded in this file.</p><nav><b>Contents</b><ol>{nav}</ol></nav>{sections}</body></html>\n")


def plain(text: str) -> str:
    """Generated HTML sentences as plain text for Markdown."""
    return html.unescape(re.sub("<[^>]+>", "", text))


def render_markdown(views: Sequence[RunView], comp: Any, comp_dir: Path | None, md_path: Path) -> str:
    """report.md: table, generated reading and links to the figure files (relative to the .md file)."""
    def link(path: Path, caption: str) -> str:
        return f"![{caption}]({Path(os.path.relpath(path, md_path.parent)).as_posix()})" if path.is_file() else ""

    lines = ["# cifarlab report", "", "Runs: " + ", ".join(f"`{v.name}`" for v in views), "", "## Results", "",
             comp.table, ""]
    if any(g.n > 1 for g in comp.groups):
        lines += ["Runs with the same config except seed are grouped: mean ± sample std over n seeds.", ""]
    lines += ["## Reading of the numbers (automatically generated)", "", f"_{GENERATED_NOTE}_", ""]
    lines += [f"- {plain(s)}" for v in views for s in run_reading(v)]
    lines += [f"- {plain(s)}" for s in comparison_reading(comp)]
    lines += ["", "## Figures", ""]
    if comp_dir is not None:
        lines += [link(comp_dir / "learning_curves.png", "learning curves, all runs"), "",
                  link(comp_dir / "per_class_accuracy.png", "per-class accuracy, all runs"), ""]
    for v in views:
        lines += [f"### {v.title}", ""]
        for name, caption in [("learning_curves.png", "learning curves"), ("confusion_matrix.png", "confusion matrix"),
                              ("confusion_matrix_normalized.png", "confusion matrix, row-normalised"),
                              ("misclassified.png", "misclassified"), ("top_losses.png", "top losses"),
                              ("reliability_diagram.png", "reliability diagram"), ("gradcam.png", "Grad-CAM")]:
            shown = link(v.analysis / name, f"{v.name}: {caption}")
            if shown:
                lines += [shown, ""]
    return "\n".join(lines) + "\n"


def report(runs: Sequence[str | Path], out: str | Path | None = None, data_dir: str | None = None) -> Path:
    """Write the HTML report and report.md for ``runs``; returns the HTML path."""
    from cifarlab.analysis import require_run
    from cifarlab.compare import build_comparison, write_comparison

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
    if "http" in page.lower():
        raise CifarlabError("internal error: the report would contain a web address")
    atomic_write(html_path, lambda f: f.write(page), binary=False)
    md_path = html_path.with_suffix(".md")
    md = render_markdown(views, comp, comp_dir, md_path)
    atomic_write(md_path, lambda f: f.write(md), binary=False)
    return html_path


def cmd_report(args: argparse.Namespace) -> int:
    path = report(args.runs, args.out, args.data_dir)
    print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB, self-contained) and {path.with_suffix('.md')}")
    return 0


def register_report_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``cifarlab report`` to the command line."""
    p = sub.add_parser("report", help="one self-contained HTML report (and report.md) for one or more runs",
                       description="Write a self-contained HTML report (every figure embedded, no network "
                                   "needed) and a Markdown summary beside it, for one or more finished runs.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="finished run folders")
    p.add_argument("--out", metavar="FILE.html", help="the HTML file (default: RUN/report.html for one run, "
                                                      "./report.html for several); report.md goes beside it")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py/, if an analysis must be made")
    p.set_defaults(func=cmd_report)
