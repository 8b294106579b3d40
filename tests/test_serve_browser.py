"""``cifarlab serve`` in a real browser: Playwright driving Debian's Chromium (``executable_path``; Playwright's own
browser download is not reachable here) through index -> run -> most confused cell -> one image -> try a photo ->
compare, every request outside the app refused and counted, each page's screenshot checked not blank.

``CIFARLAB_SCREENSHOTS=DIR`` keeps the screenshots (docs/images/serve-*.png were made so).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serve_tree import build_tree, running_server

pytestmark = [pytest.mark.required_in_ci, pytest.mark.slow]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium found on PATH; on Debian: apt-get install chromium")


def not_blank(shot: bytes) -> bool:
    """True for a picture with content: many grey levels, and not nearly all one colour."""
    with Image.open(io.BytesIO(shot)) as im:
        grey = np.asarray(im.convert("L"))
    return len(np.unique(grey)) > 20 and float(grey.std()) > 5


def images_loaded(page: object, seconds: float = 60) -> None:
    """Wait until every image of the page is decoded (polled here: the app's CSP forbids the eval behind
    Playwright's wait_for_function)."""
    import time

    deadline = time.monotonic() + seconds
    check = "() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
    while not page.evaluate(check):  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the page's images did not load"
        time.sleep(0.1)


def test_a_student_clicks_from_the_runs_to_an_image_a_photo_and_a_comparison(
    tiny_run, crafted_run, fake_cifar, tmp_path, monkeypatch
):
    sync_api = pytest.importorskip("playwright.sync_api")
    browser_path = find_browser()
    monkeypatch.setenv("CIFARLAB_CACHE_DIR", str(tmp_path / "cache"))
    from cifarlab.serve.app import make_app

    tree = build_tree(tiny_run, crafted_run, tmp_path / "served", tmp_path / "outside")
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(photo)
    keep = os.environ.get("CIFARLAB_SCREENSHOTS")
    shots: dict[str, bytes] = {}
    outside: list[str] = []
    with running_server(make_app([tree], str(fake_cifar))) as base, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=browser_path,
            args=["--no-sandbox", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"],
        )
        page = browser.new_page(viewport={"width": 1200, "height": 900})

        def only_the_app(route: object) -> None:
            url = route.request.url  # type: ignore[attr-defined]
            if url.startswith(base):
                route.continue_()  # type: ignore[attr-defined]
            else:
                outside.append(url)
                route.abort()  # type: ignore[attr-defined]

        page.route("**/*", only_the_app)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        page.goto(base + "/")
        assert page.locator("#runs tbody tr").count() == 11
        page.fill("#filter", "sweep1")
        assert page.locator("#runs tbody tr:visible").count() == 2
        page.fill("#filter", "")
        page.click("#runs th:nth-child(7)")  # test top-1, ascending, then descending
        page.click("#runs th:nth-child(7)")
        scores = page.eval_on_selector_all("#runs tbody tr td:nth-child(7)", "cells => cells.map(c => c.dataset.value)")
        numbers = [float(v) for v in scores if v]
        assert numbers == sorted(numbers, reverse=True) and len(numbers) >= 6
        shots["runs"] = page.screenshot(full_page=True)

        page.click("#runs a[href='/runs/a']")
        page.wait_for_selector("#confusion")
        shots["run"] = page.screenshot(full_page=True)

        worst = page.locator("#worst-cell")
        true_class, pred_class = worst.inner_text().split(" (")[0].split(" → ")
        expected = json.loads(
            page.evaluate(f"fetch('/api/runs/a/samples?true={true_class}&pred={pred_class}').then(r => r.text())")
        )["total"]
        worst.click()
        page.wait_for_selector("#samples")
        assert page.locator("#samples li").count() == min(expected, 50) > 0
        images_loaded(page)
        shots["cell"] = page.screenshot(full_page=True)

        page.click("#samples li:first-child a")
        page.wait_for_selector("#cam-pred")
        images_loaded(page)
        assert page.locator("#top li").count() == 5
        shots["image"] = page.screenshot(full_page=True)

        page.goto(base + "/runs/a/try")
        page.set_input_files("input[type=file]", str(photo))
        page.click("#upload button")
        page.wait_for_selector("#top")
        assert page.locator("#top li").count() == 3
        shots["try"] = page.screenshot(full_page=True)

        page.goto(base + "/compare")
        page.select_option("select[name=a]", "a")
        page.select_option("select[name=b]", "b")
        page.click("#pick button")
        page.wait_for_selector("#counts")
        assert "right only in A" in page.inner_text("#counts")
        shots["compare"] = page.screenshot(full_page=True)
        browser.close()
    assert outside == [] and errors == []
    for name, shot in shots.items():
        assert not_blank(shot), f"the {name} page's screenshot is blank"
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            (Path(keep) / f"serve-{name}.png").write_bytes(shot)
