"""``cifarlab report``: a self-contained HTML file with every section, report.md, and a real browser render."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarlab.base import figures
from cifarlab.cli.main import main
from cifarlab.config.train_config import make_config
from cifarlab.results import analysis
from cifarlab.results.report import report
from cifarlab.results.report_format import data_uri, esc
from cifarlab.results.report_view import SECTIONS
from processes import alive

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


class References(HTMLParser):
    """Every tag and every attribute that can make a browser fetch or go somewhere, as the browser parses them."""

    FETCHING = ("src", "href", "srcset", "action", "formaction", "data", "poster", "background", "xlink:href")

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.styles: list[str] = []
        self.refresh = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "meta" and any(name == "http-equiv" for name, _ in attrs):
            self.refresh = True
        for name, value in attrs:
            if name in self.FETCHING:
                self.refs.append((tag, name, value or ""))
            if name == "style":
                self.styles.append(value or "")

    def handle_data(self, data: str) -> None:
        if self.tags and self.tags[-1] == "style":
            self.styles.append(data)


def test_html_is_self_contained(page):
    """Nothing in the page can load from or lead to anywhere else: every reference, parsed as a browser parses the
    attributes (entities decoded), is a figure's data: URI or a link to a section of the page itself."""
    parser = References()
    parser.feed(page.read_text())
    assert not {"script", "link", "iframe", "object", "embed", "base", "form"} & set(parser.tags)
    assert not parser.refresh  # no <meta http-equiv="refresh">
    assert not any(re.search(r"@import|url\s*\(", style, re.I) for style in parser.styles)
    sources = [value for tag, name, value in parser.refs if name == "src"]
    links = [value for tag, name, value in parser.refs if name == "href"]
    assert {(tag, name) for tag, name, _ in parser.refs} <= {("img", "src"), ("a", "href")}
    assert links and all(link.startswith("#") for link in links)
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
    assert all((md_path.parent / link).is_file() for link in links)  # relative files beside it, nothing remote
    assert not re.findall(r"\]\((?![^)]*\.png\))[^)#]+\)", md)  # no link to anything but a figure or a section


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


def test_a_data_uri_holds_the_png_as_it_is():
    png = figures.png_bytes(figures.new_figure(1, 1))
    uri = data_uri(png)
    assert uri.startswith("data:image/png;base64,") and base64.b64decode(uri.split(",", 1)[1]) == png


def test_escaped_text_shows_as_typed():
    text = 'run <a href="x"> named HTTP & "test"'
    assert "<" not in esc(text) and '"' not in esc(text) and html.unescape(esc(text)) == text


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
    """`cifarlab study --quick --sequential`: both models get one config (seed, split, recipe) but the model, and
    one loaded data set; --quick is a 5,000-image slice (class-balanced: see test_train) for 3 epochs. Training
    itself is replaced by copies of analysed runs; what is tested is what the study asks for and how it ends."""
    import cifarlab.tools.study as study_module

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
                "--sequential",
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


def test_a_study_on_a_cpu_trains_its_models_side_by_side_one_core_each(fake_cifar, tmp_path, monkeypatch, capfd):
    """With a core per model, each model trains (and is analysed) in its own process on one thread, at once; their
    lines reach the terminal prefixed with the model's name, and the study ends with its comparison and report."""
    import cifarlab.tools.study as study_module

    monkeypatch.setattr(study_module, "usable_cores", lambda hyperthreads=True: 2)  # as on this project's CPUs
    argv = ["study", "--quick", "--epochs", "1", "--out", str(tmp_path), "--name", "s"]
    assert main([*argv, "--data-dir", str(fake_cifar), "--device", "cpu"]) == 0
    out = capfd.readouterr().out
    folder = tmp_path / "s"
    assert json.loads((folder / "study.json").read_text())["side_by_side"] is True
    assert "mycnn, resnet18 side by side, 1 thread each" in out
    threads = json.loads((folder / "study.json").read_text())["threads_from_epoch"]
    for model in ("mycnn", "resnet18"):
        assert threads[model]["1"] == 1  # each starts on its own core
        assert (folder / model / "analysis").is_dir() and (folder / model / "test_metrics.json").is_file()
        assert f"[{model}] test (best.pt, epoch 1): top-1" in out
    assert (folder / "report.html").is_file() and (folder / "comparison.md").is_file()


def test_a_side_by_side_model_takes_the_cores_of_the_models_that_are_done():
    """The core share of a side-by-side study: 2 cores, 2 models -> 1 thread each; once one model is done (in any
    process: the count is shared memory) the other gets both; 4 cores and 3 models -> 1 each, then 2, then 4."""
    import multiprocessing

    from cifarlab.tools.study import CoreShare

    two = two_model_share()
    assert two.threads() == 1
    two.finished()
    assert two.threads() == 2
    three = CoreShare(4, 3, multiprocessing.get_context("spawn").Value("i", 0))
    seen = [three.threads()]
    for _ in range(3):
        three.finished()
        seen.append(three.threads())
    assert seen == [1, 2, 4, 4]


def two_model_share():
    """The core share of a two-model study on 2 cores, neither model done yet."""
    import multiprocessing

    from cifarlab.tools.study import CoreShare

    return CoreShare(2, 2, multiprocessing.get_context("spawn").Value("i", 0))


def run_worker(share, fake_train, epochs, fake_cifar, tmp_path, monkeypatch):
    """One side-by-side worker (``train_in_own_process``) of ``mycnn`` with ``fake_train`` for its training, torch's
    thread count put back after; returns its run folder, its thread changes and what it printed."""
    import torch

    import cifarlab.tools.study as study_module

    monkeypatch.setattr(study_module, "train_and_analyze", fake_train)
    monkeypatch.setattr(study_module, "exit_with_parent", lambda parent: None)
    monkeypatch.setattr(study_module, "Prefixed", lambda stream, prefix: stream)
    monkeypatch.setattr(study_module, "load_dataset", lambda *args: None)
    monkeypatch.setattr(study_module.sys, "stdout", io.StringIO())
    config = make_config("seed", model="mycnn", epochs=epochs, data_dir=str(fake_cifar), out=str(tmp_path))
    before = torch.get_num_threads()
    try:
        study_module.join_share(share)
        run_dir, changes = study_module.train_in_own_process(config, parent=os.getpid())
    finally:
        torch.set_num_threads(before)
        study_module.join_share(None)
    return run_dir, changes, study_module.sys.stdout.getvalue()


def test_a_side_by_side_worker_changes_its_threads_when_a_core_comes_free(fake_cifar, tmp_path, monkeypatch):
    """In the worker, the epoch hook raises torch's thread count as soon as another model is done, from the next
    epoch on, and returns where it changed (study.json records it)."""
    import torch

    share = two_model_share()
    hooked = []

    def fake_train(config, data, on_epoch):  # epoch 1 beside the other model, which is done before epoch 2 ends
        on_epoch(1, None)
        hooked.append(torch.get_num_threads())
        share.finished()
        on_epoch(2, None)
        hooked.append(torch.get_num_threads())
        return tmp_path / config.model

    run_dir, changes, printed = run_worker(share, fake_train, 3, fake_cifar, tmp_path, monkeypatch)
    assert hooked == [1, 2] and changes == {1: 1, 3: 2} and run_dir == tmp_path / "mycnn"
    assert share.done.value == 2  # this model's own end counted too
    assert "a core came free: 2 threads from epoch 3" in printed


def test_a_core_freed_after_the_last_epoch_goes_to_the_test(fake_cifar, tmp_path, monkeypatch):
    """The hook also runs after the last epoch: a core freed then serves the test and the analysis, and the log
    says so rather than naming an epoch that never runs."""
    share = two_model_share()

    def fake_train(config, data, on_epoch):
        on_epoch(1, None)
        share.finished()  # the other model ends during this model's last epoch
        on_epoch(2, None)
        return tmp_path / config.model

    _, changes, printed = run_worker(share, fake_train, 2, fake_cifar, tmp_path, monkeypatch)
    assert changes == {1: 1, 3: 2} and "2 threads for the test and the analysis" in printed and "epoch 3" not in printed


def test_prefixed_lines_start_with_the_prefix_however_they_are_written():
    from cifarlab.tools.study import Prefixed

    stream = io.StringIO()
    lines = Prefixed(stream, "[m] ")
    lines.write("epoch 1")
    lines.write(" done\nepoch 2\n\nend")
    lines.flush()
    assert stream.getvalue() == "[m] epoch 1 done\n[m] epoch 2\n[m] \n" and not lines.isatty()
    lines.write("\n")
    assert stream.getvalue().endswith("[m] end\n")


ORPHAN = """
import multiprocessing, os, signal, sys, time
from cifarlab.tools.study import exit_with_parent

def worker(parent, pid_file):
    exit_with_parent(parent, every=0.1)
    open(pid_file, "w").write(str(os.getpid()))
    time.sleep(60)

child = multiprocessing.get_context("fork").Process(target=worker, args=(os.getpid(), sys.argv[1]))
child.start()
while not os.path.exists(sys.argv[1]) or not open(sys.argv[1]).read():
    time.sleep(0.05)
os.kill(os.getpid(), signal.SIGKILL)  # the study's process killed alone, as a SIGTERM to its pid would
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from Linux's /proc")
def test_a_side_by_side_worker_ends_when_the_study_process_is_killed(tmp_path):
    pid_file = tmp_path / "worker.pid"
    killed = subprocess.run([sys.executable, "-c", ORPHAN, str(pid_file)], capture_output=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    worker = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(worker)


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
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    done = headless(browser, tmp_path, "--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout)
    assert found, f"the page did not load in {browser}: {done.stderr[-2000:]}"
    probe = json.loads(html.unescape(found.group(1)))
    assert probe["images"] == page.read_text().count("<img ") and probe["decoded"] == probe["images"]
    assert probe["fetched"] == []
    assert probe["sections"] == [title for _, title in SECTIONS]

    shot, pdf = tmp_path / "shot.png", tmp_path / "report.pdf"
    headless(browser, tmp_path, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri())
    with Image.open(shot) as im:
        assert im.size == (1200, 1600) and len(np.unique(np.asarray(im.convert("L")))) > 20
    headless(browser, tmp_path, f"--print-to-pdf={pdf}", "--no-pdf-header-footer", page.as_uri())
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page\b", data)) >= len(SECTIONS)
