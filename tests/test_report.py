"""``cifarlab report``: a self-contained HTML file with every section, report.md, and a real browser render."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarlab import analysis, plots
from cifarlab.cli import main
from cifarlab.report import SECTIONS, data_uri, esc, png_with_padding, report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def two_runs(crafted_run, tmp_path_factory) -> list[Path]:
    """Two crafted runs; the ``page`` fixture writes their analyses. Tests that write into a run copy it first."""
    root = tmp_path_factory.mktemp("report")
    return [
        crafted_run(root / "mycnn", seed=0),
        crafted_run(
            root / "resnet18", seed=1, config={"model": "resnet18"}, info={"model": "resnet18", "params": 11_181_642}
        ),
    ]


@pytest.fixture(scope="module")
def page(two_runs, fake_cifar, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("page") / "report.html"
    assert report(two_runs, out, data_dir=str(fake_cifar)) == out
    return out


def test_html_has_every_section_in_order(page):
    text = page.read_text()
    assert re.findall(r'<section id="([^"]+)">', text) == [sid for sid, _ in SECTIONS]
    for sid, title in SECTIONS:
        assert f'href="#{sid}"' in text and f"<h2>{html.escape(title)}</h2>" in text
    reading = text[text.index('<section id="reading">') :]
    assert "Automatically generated" in reading and "cat → dog" in html.unescape(reading)


def test_html_is_self_contained(page):
    text = page.read_text()
    assert "http" not in text.lower()
    assert not re.search(r"<(script|link|iframe)\b|@import|url\(", text)
    sources = re.findall(r'src="([^"]*)"', text)
    assert len(sources) >= 13  # 2 x 7 figures per run, less absent ones, plus the comparison figures
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            im.verify()
            assert im.format == "PNG"


def test_html_holds_the_numbers(page, two_runs):
    text = html.unescape(page.read_text())
    summary = json.loads((two_runs[0] / "analysis" / "summary.json").read_text())
    assert f"{100 * summary['top1']:.2f}%" in text  # the results table
    assert f"{summary['ece']:.4f}" in text  # calibration
    assert "python" in text and "torch" in text and "training images" in text  # setup
    assert "@media print" in text


def test_markdown_summary_links_existing_figures(page):
    md_path = page.with_suffix(".md")
    md = md_path.read_text()
    assert "| run(s) | model | n |" in md and "## Reading of the numbers (automatically generated)" in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) >= 10
    assert all((md_path.parent / link).is_file() for link in links)
    assert "http" not in md.lower()


def test_single_run_report_goes_into_the_run(two_runs, page, fake_cifar, tmp_path):
    run = Path(shutil.copytree(two_runs[0], tmp_path / "mycnn"))
    path = report([run], data_dir=str(fake_cifar))
    assert path == run / "report.html" and (run / "report.md").is_file()
    assert 'id="gradcam"' in path.read_text()


def test_report_redoes_an_analysis_older_than_the_predictions(crafted_run, fake_cifar, tmp_path):
    """README: `report` re-runs the analysis when it is older than the predictions (and reuses a current one)."""
    run = crafted_run(tmp_path / "run")
    analysis.analyze(run, data_dir=str(fake_cifar), images=False)
    summary = run / "analysis" / "summary.json"
    first = summary.read_bytes()
    assert json.loads(first)["top1"] < 1
    report([run], tmp_path / "current.html", data_dir=str(fake_cifar))
    assert summary.read_bytes() == first  # current: reused as it is

    with np.load(run / "test_predictions.npz") as f:
        y, index = f["y_true"], f["index"]
    np.savez_compressed(run / "test_predictions.npz", y_true=y, probs=np.eye(10, dtype=np.float32)[y], index=index)
    later = summary.stat().st_mtime + 10
    os.utime(run / "test_predictions.npz", (later, later))  # newer, even on a file system with coarse times
    report([run], tmp_path / "newer.html", data_dir=str(fake_cifar))
    again = json.loads(summary.read_text())
    assert again["top1"] == 1.0 and again["misclassified"] == 0
    assert "100.00%" in html.unescape((tmp_path / "newer.html").read_text())


def png_spelling_http() -> bytes:
    """A valid PNG whose base64 spells 'http' at every byte alignment (the word's bytes sit in a text chunk
    three times, one byte apart), so no padding can avoid it."""
    word = base64.b64decode("http")
    data = b"Comment\x00" + word + b"." + word + b"." + word
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    png = plots.png_bytes(plots.new_figure(1, 1))
    return png[:33] + chunk + png[33:]


def test_data_uri_avoids_http_by_alignment():
    png = plots.png_bytes(plots.new_figure(1, 1))
    spelled = png[:33] + base64.b64decode("httpHTTPhttp") + png[33:]
    assert "http" in base64.b64encode(spelled).decode().lower()
    uri = data_uri(spelled)
    assert "http" not in uri.lower() and "\n" not in uri
    decoded = base64.b64decode(uri.split(",", 1)[1])
    assert decoded[:33] == spelled[:33] and decoded.endswith(spelled[33:]) and decoded[37:41] == b"tEXt"


def test_data_uri_breaks_the_word_when_every_alignment_spells_it():
    png = png_spelling_http()
    for candidate in (png, png_with_padding(png, 2), png_with_padding(png, 3)):
        assert "http" in base64.b64encode(candidate).decode().lower()
    uri = data_uri(png)
    assert "http" not in uri.lower() and "\n" in uri
    assert base64.b64decode(uri.split(",", 1)[1]) == png_with_padding(png, 3)  # newlines are not data


def test_padding_chunk_keeps_the_picture():
    fig = plots.new_figure(2, 1)
    fig.add_subplot().plot([0, 1], [1, 0])
    png = plots.png_bytes(fig)
    with Image.open(io.BytesIO(png)) as a, Image.open(io.BytesIO(png_with_padding(png, 5))) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_escaped_text_keeps_its_meaning_without_the_word():
    text = "run <a> named HTTP-test"
    assert "http" not in esc(text).lower() and html.unescape(esc(text)) == text


def test_cli_report_errors_exit_2(tmp_path, two_runs, cli_error, fake_cifar):
    data = ["--data-dir", str(fake_cifar)]
    assert "no such run folder" in cli_error(
        "report", str(tmp_path / "missing"), "--out", str(tmp_path / "r.html"), *data
    )
    assert ".html" in cli_error("report", str(two_runs[0]), "--out", str(tmp_path / "report.txt"), *data)
    assert list(tmp_path.iterdir()) == []


def test_study_trains_both_models_alike_and_ends_with_comparison_and_report(
    two_runs, page, fake_cifar, tmp_path, monkeypatch
):
    """`cifarlab study --quick`: both models get one config (seed, split, recipe) but the model, and one loaded
    data set; --quick is a 5,000-image slice (class-balanced: see test_train) for 3 epochs. Training itself is
    replaced by copies of analysed runs; what is tested is what the study asks for and how it ends."""
    import cifarlab.study as study_module

    calls = []

    def fake_train(config, data=None, **kwargs):
        calls.append((config, data))
        source = next(r for r in two_runs if r.name == config.model)
        return Path(shutil.copytree(source, Path(config.out) / config.name))

    monkeypatch.setattr(study_module, "train", fake_train)
    assert (
        main(
            [
                "study",
                "--quick",
                "--out",
                str(tmp_path),
                "--name",
                "s",
                "--data-dir",
                str(fake_cifar),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    folder = tmp_path / "s"
    (mycnn, data_a), (resnet, data_b) = calls
    assert (mycnn.model, resnet.model) == ("mycnn", "resnet18")
    assert data_a is data_b and len(data_a.train_labels) == 1000  # read once, from --data-dir
    shared = {k: v for k, v in mycnn.to_dict().items() if k not in ("model", "name")}
    assert shared == {k: v for k, v in resnet.to_dict().items() if k not in ("model", "name")}
    assert (shared["recipe"], shared["seed"], shared["val_size"]) == ("seed", 0, None)  # same split (10%) and recipe
    # the fake set (900 training images after validation) is smaller than --quick's 5,000-image slice: all of it
    assert (shared["limit_train"], shared["epochs"], shared["out"]) == (None, 3, str(folder))
    assert (mycnn.name, resnet.name) == ("mycnn", "resnet18")

    assert (folder / "report.html").is_file() and (folder / "report.md").is_file()
    assert (folder / "comparison.md").read_text().startswith("| run(s) |")
    assert {"comparison.csv", "per_class_accuracy.png"} <= {p.name for p in (folder / "comparison").iterdir()}
    text = (folder / "report.html").read_text()
    assert "mycnn" in text and "resnet18" in text


# ----------------------------------------------------------------------------------------------------------
# A real browser
# ----------------------------------------------------------------------------------------------------------

PROBE = """<script>window.addEventListener("load", function () {
  var imgs = Array.from(document.images);
  var p = document.createElement("pre"); p.id = "probe";
  p.textContent = JSON.stringify({
    images: imgs.length,
    decoded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
    fetched: performance.getEntriesByType("resource").map(function (e) { return e.name; })
      .filter(function (n) { return n.indexOf("data:") !== 0; }),
    sections: Array.from(document.querySelectorAll("section h2")).map(function (h) { return h.textContent; })
  });
  document.body.appendChild(p);
});</script>"""


def find_browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        "no Chromium or Chrome found on PATH (looked for " + ", ".join(BROWSERS) + "); on Debian: "
        "apt-get install chromium"
    )


def headless(browser: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the browser headless with a fresh profile and host name resolution switched off (no network)."""
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    profile.mkdir()
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND",
    ]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=180)


@pytest.mark.required_in_ci
@pytest.mark.subprocess
def test_report_renders_in_headless_chromium(page, tmp_path):
    browser = find_browser()
    probed = tmp_path / "probed.html"
    extra = f'<img id="broken-word" src="{data_uri(png_spelling_http())}">'  # a URI with a newline inside
    probed.write_text(page.read_text().replace("</body>", extra + PROBE + "</body>"))
    done = headless(browser, tmp_path, "--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout)
    assert found, f"the page did not load in {browser}: {done.stderr[-2000:]}"
    probe = json.loads(html.unescape(found.group(1)))
    assert probe["images"] == page.read_text().count("<img ") + 1 and probe["decoded"] == probe["images"]
    assert probe["fetched"] == []
    assert probe["sections"] == [title for _, title in SECTIONS]

    shot, pdf = tmp_path / "shot.png", tmp_path / "report.pdf"
    headless(browser, tmp_path, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri())
    with Image.open(shot) as im:
        assert im.size == (1200, 1600) and len(np.unique(np.asarray(im.convert("L")))) > 20
    headless(browser, tmp_path, f"--print-to-pdf={pdf}", "--no-pdf-header-footer", page.as_uri())
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page\b", data)) >= len(SECTIONS)
