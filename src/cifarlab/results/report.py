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

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from cifarlab.base.errors import UsageError
from cifarlab.base.files import atomic_write
from cifarlab.results.report_format import esc, shown
from cifarlab.results.report_reading import GENERATED_NOTE, reading
from cifarlab.results.report_runs import RunView, load_view
from cifarlab.results.report_view import html_context, per_class_rows

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
WORST_HEADER = ["worst corruption", "mean top-1", "against clean"]


# ---------------------------------------------------------------------------------------------------------
# Where the report goes
# ---------------------------------------------------------------------------------------------------------


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
def template_environment(markdown: bool) -> Environment:
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
    return template_environment(False).get_template("report.html").render(html_context(views, comp, comp_dir))


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
        "robustness": robustness_markdown(views, md_path),
    }
    return template_environment(True).get_template("report.md").render(context)


def markdown_rows(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table, every cell escaped; the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(markdown_value(c) for c in row) + " |" for row in [header, *rows]]
    return "\n".join([lines[0], "|---|" + "---:|" * (len(header) - 1), *lines[1:]])


def robustness_markdown(views: Sequence[RunView], md_path: Path) -> list[dict[str, Any]]:
    """The Robustness section of report.md: for each run with robustness.json, its sentences, top-1 per severity
    and the worst corruptions, and a link to its heatmap (a note instead when the file cannot be read)."""
    from cifarlab.results.report_view import robustness_view
    from cifarlab.runs.layout import ROBUSTNESS_HEATMAP

    out: list[dict[str, Any]] = []
    for v in views:
        r = robustness_view(v)
        if r is None:
            continue
        entry: dict[str, Any] = {"title": v.title, "sentences": [r["note"]], "table": Verbatim(""), "links": []}
        if not r["note"]:
            tables = [markdown_rows(r["header"], [r["row"]]), markdown_rows(WORST_HEADER, r["worst"])]
            heatmap = [(v.robustness_dir / ROBUSTNESS_HEATMAP, f"{v.name}: top-1 under corruption")]
            entry.update(
                sentences=r["sentences"], table=Verbatim("\n\n".join(tables)), links=figure_links(heatmap, md_path)
            )
        out.append(entry)
    return out


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
