"""No markup from data: hostile names and values in run files reach report.html, report.md, comparison.md and
every figure as literal text, never as HTML, Markdown syntax or matplotlib math text."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import matplotlib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cifarlab.cli.main import main
from cifarlab.results import analysis, plots
from cifarlab.results.compare import build_comparison, comparison_markdown, markdown_text
from cifarlab.results.report import render_html, render_markdown
from cifarlab.results.report_runs import RunView, read_csv_rows

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
# Run folder names: HTML, valid and broken math text, braces, backslashes, a table pipe, a web word.
RUN_NAMES = [f"{IMG} $x^2$ {{a}} \\b", "run|$\\frac{$ % http_*x*"]
HOSTILE_CLASS = f"{IMG}$\\frac{{$ {{\\"
TEMPLATE_TAGS = {
    "html",
    "head",
    "meta",
    "title",
    "style",
    "body",
    "h1",
    "h2",
    "h3",
    "p",
    "b",
    "nav",
    "ol",
    "ul",
    "li",
    "a",
    "section",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "figure",
    "img",
    "figcaption",
    "div",
    "code",
}


class TagCollector(HTMLParser):
    """Every start tag (with its attributes) and all text of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> TagCollector:
    parser = TagCollector()
    parser.feed(page)
    parser.close()
    return parser


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def rename_class(data: dict) -> None:
    """test_metrics.json: 'cat' is called HOSTILE_CLASS (the analysis takes class names from here)."""
    data["per_class_accuracy"] = {HOSTILE_CLASS if k == "cat" else k: v for k, v in data["per_class_accuracy"].items()}


def rename_recorded_class(data: dict) -> None:
    """run.json: 'cat' is called HOSTILE_CLASS in the dataset record, when the run has one (it wins over
    test_metrics.json)."""
    record = data.get("dataset")
    if isinstance(record, dict) and isinstance(record.get("classes"), list):
        record["classes"] = [HOSTILE_CLASS if c == "cat" else c for c in record["classes"]]


def hostile_copy(crafted_run: Callable[..., Path], dest: Path, seed: int) -> Path:
    """A copy of the tiny run (with mistakes) with a hostile folder name, class name, config value and run.json
    fields (``lr`` differs between the copies, so each is a group of its own, labelled by its folder name)."""
    crafted_run(
        dest,
        seed=seed,
        config={"recipe": SCRIPT, "lr": 0.001 * (seed + 1)},
        info={"params": SCRIPT, "cpu": SCRIPT, "platform": f"{IMG} http://x"},
    )
    edit_json(dest / "test_metrics.json", rename_class)
    edit_json(dest / "run.json", rename_recorded_class)
    return dest


def poison_analysis(run: Path) -> None:
    """Numbers of summary.json and a cell of per_class.csv replaced by markup (the analysis stays current)."""

    def change(s: dict) -> None:
        s.update(top1=SCRIPT, ece=SCRIPT, overconfidence=SCRIPT)
        s["most_confused"]["count"] = SCRIPT
        s["gradcam"]["centre_share_wrong"] = SCRIPT

    edit_json(run / "analysis" / "summary.json", change)
    rows = read_csv_rows(run / "analysis" / "per_class.csv")
    rows[0]["precision"] = SCRIPT
    with open(run / "analysis" / "per_class.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def hostile_runs(crafted_run, fake_cifar, tmp_path_factory) -> list[Path]:
    """Two hostile runs: the first analysed here (then poisoned), the second left for `report` to analyse."""
    root = tmp_path_factory.mktemp("hostile")
    runs = [hostile_copy(crafted_run, root / name, seed) for seed, name in enumerate(RUN_NAMES)]
    analysis.analyze(runs[0], data_dir=str(fake_cifar))
    poison_analysis(runs[0])
    return runs


@pytest.fixture(scope="module")
def hostile_report(hostile_runs, fake_cifar, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile-report") / "report.html"
    assert main(["report", *map(str, hostile_runs), "--out", str(out), "--data-dir", str(fake_cifar)]) == 0
    return out


def test_html_holds_no_markup_from_data(hostile_report):
    page = hostile_report.read_text()
    assert not re.search(r"<script|<img src=x", page, re.IGNORECASE)
    parsed = parse(page)
    assert {tag for tag, _ in parsed.tags} <= TEMPLATE_TAGS
    for tag, attrs in parsed.tags:  # only the template's attributes; every image is an embedded PNG
        assert {name for name, _ in attrs} <= {
            "lang",
            "charset",
            "name",
            "content",
            "href",
            "id",
            "class",
            "src",
            "alt",
        }
        if tag == "img":
            assert dict(attrs)["src"].startswith("data:image/png;base64,")
    text = "".join(parsed.text)
    for shown in (SCRIPT, *RUN_NAMES, HOSTILE_CLASS, f"{IMG} http://x"):
        assert shown in text  # the data is there, as text


def test_non_numbers_in_number_fields_show_as_text(hostile_report):
    text = "".join(parse(hostile_report.read_text()).text)
    assert f"Expected calibration error (top-label, 15 equal-width bins): {SCRIPT};" in text
    assert f"reaches {SCRIPT} test top-1" in text  # summary.json top1
    assert f"<td>{html.escape(SCRIPT)}</td>" in hostile_report.read_text()  # run.json params, per_class.csv cell


def test_every_figure_is_drawn_and_embedded(hostile_report, hostile_runs):
    for run in hostile_runs:
        names = {p.name for p in (run / "analysis").glob("*.png")}
        assert {
            "confusion_matrix.png",
            "learning_curves.png",
            "reliability_diagram.png",
            "misclassified.png",
            "top_losses.png",
            "gradcam.png",
        } <= names
    page = hostile_report.read_text()
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) == 2 * 7 + 2  # seven figures per run and two of the comparison: none missing
    for src in sources:
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            im.verify()
    assert "Figure not available" not in page


def test_markdown_text_leaves_nothing_for_gfm_to_autolink():
    from cifarlab.results.compare import markdown_text

    text = markdown_text("see http://x.org/a, www.x.org and me@x.org")
    assert text == "see http\\://x.org/a, www\\.x.org and me\\@x.org"  # shown the same, linked never
    assert not re.search(r"[a-z]://|\bwww\.|[a-z]@", text)


def test_markdown_report_escapes_data(hostile_report):
    md_path = hostile_report.with_suffix(".md")
    md = md_path.read_text()
    assert "<" not in md and ">" not in md
    assert "&lt;img src=x onerror=alert(1)&gt; \\$x^2\\$ {a} \\\\b" in md  # the first run's name, escaped
    assert "run\\|\\$\\\\frac{\\$ % http\\_\\*x\\*" in md  # the second's
    tables = re.findall(r"(?m)(?:^\|.*\n)+", md)  # runs of table lines: results and per-class tables
    assert len(tables) == 1 + 2  # the results table and one per-class table per run
    for table in tables:  # no cell split by a name
        assert len({len(re.findall(r"(?<!\\)\|", ln)) for ln in table.splitlines()}) == 1, table
    assert markdown_text(HOSTILE_CLASS) in md  # the class name, in a per-class table
    links = re.findall(r"!\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)\)", md)
    assert len(links) == 2 * 7 + 2
    assert all((md_path.parent / unquote(link)).is_file() for link in links)


def test_comparison_markdown_escapes_names_and_values(hostile_runs):
    comp = build_comparison(hostile_runs)
    text = comparison_markdown(comp)
    assert "<" not in text and "\\|" in text
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    assert len({len(re.findall(r"(?<!\\)\|", ln)) for ln in lines}) == 1
    assert [g.label for g in comp.groups] == RUN_NAMES
    assert all(markdown_text(name) in text for name in RUN_NAMES)
    assert all(html.escape(SCRIPT) in ln for ln in lines[2:])  # run.json params shown as the text it holds


@pytest.mark.parametrize(
    "value, expected",
    [
        ("a|b", "a\\|b"),
        ("<b>&", "&lt;b&gt;&amp;"),
        ("[x](y)", "\\[x\\](y)"),
        ("`*_~$#", "\\`\\*\\_\\~\\$\\#"),
        ("a\\b", "a\\\\b"),
        ("one\ntwo\r\nthree", "one two three"),
    ],
)
def test_markdown_text_escapes_markdown_syntax(value, expected):
    assert markdown_text(value) == expected


def test_figures_draw_names_literally(tmp_path):
    names = ["$\\frac{$", "$x^2$", "{", "\\", IMG, "%d", "_starts_with_underscore", "a$b", "^", "k"]
    before = matplotlib.rcParams["text.parse_math"]
    plots.confusion_heatmap(np.eye(10, dtype=int), names, tmp_path / "c.png", False, "$\\frac{$ title")
    plots.per_class_bars(names, {n: np.full(10, 0.5) for n in names[:3]}, {}, tmp_path / "b.png")
    rows = [{"epoch": e, "train_loss": 1.0, "val_loss": 1.1, "train_top1": 0.5, "val_top1": 0.4} for e in (1, 2)]
    plots.overlaid_learning_curves({"_$\\frac{$": rows, "$x$": rows}, tmp_path / "l.png")
    plots.image_grid(np.zeros((2, 3, 32, 32), np.uint8), names[:2], ["k", "k"], tmp_path / "g.png", names[0])
    assert all((tmp_path / f"{n}.png").is_file() for n in "cblg")
    assert matplotlib.rcParams["text.parse_math"] == before  # the setting applies while drawing only


# ----------------------------------------------------------------------------------------------------------
# Any run name
# ----------------------------------------------------------------------------------------------------------

NAMES = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=40
).filter(lambda s: s not in (".", ".."))


@pytest.fixture(scope="module")
def plain_view(hostile_runs, hostile_report) -> tuple[RunView, object]:
    """A run's files as the report reads them (the second hostile run, analysed by the report: hostile_report
    first, whatever the test order, or load_view would analyse it here, without the test images)."""
    from cifarlab.results.report_runs import load_view

    run = hostile_runs[1]
    return load_view(run, None), build_comparison([run])


def pages(view: RunView, comp, name: str, root: Path) -> tuple[str, str]:
    """HTML and Markdown of the run with ``name`` as its folder, label, model, a class and a config value."""
    per_class = [dict(r) for r in view.per_class]
    per_class[0]["class"] = name
    v = RunView(
        root / name,
        {**view.info, "model": name},
        {**view.config, "optimizer": name},
        {**view.summary, "most_confused": {**view.summary["most_confused"], "true": name}},
        per_class,
        view.pairs,
    )
    comp.groups[0].label = name
    return render_html([v], comp, None), render_markdown([v], comp, None, root / "report.md")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NAMES)
def test_any_run_name_stays_text(plain_view, tmp_path, name):
    view, comp = plain_view
    plain_page, plain_md = pages(view, comp, "plain", tmp_path)
    page, md = pages(view, comp, name, tmp_path)
    parsed = parse(page)
    assert [tag for tag, _ in parsed.tags] == [tag for tag, _ in parse(plain_page).tags]
    assert name in "".join(parsed.text)
    assert "<" not in md and "://" not in md.replace("\\://", "")
    # a name never adds a line (Markdown ends lines at \n and \r only)
    assert md.count("\n") == plain_md.count("\n") and "\r" not in md
