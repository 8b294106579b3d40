"""``cifarlab serve``: every endpoint through Starlette's test client, the hostile cases (ids and links that lead
out, damaged and forged runs, markup in names, oversized and bomb uploads), the upload answer equal to
``cifarlab predict --json``, nothing written into a run folder, and 50 concurrent requests on a real server."""

from __future__ import annotations

import io
import json
import math
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serve_tree import HOSTILE, HOSTILE_NAME, build_tree, running_server, tree_fingerprint

pytestmark = pytest.mark.required_in_ci
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the suite's proxy is for downloads only


@pytest.fixture(scope="module")
def tree(tiny_run, crafted_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    return build_tree(tiny_run, crafted_run, root, root / "outside")


@pytest.fixture(scope="module")
def lab(tree, fake_cifar, tmp_path_factory):
    from starlette.testclient import TestClient

    from cifarlab.serve.app import make_app

    mp = pytest.MonkeyPatch()
    mp.setenv("CIFARLAB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    app = make_app([tree], str(fake_cifar))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client
    mp.undo()


def npz(run: Path) -> dict[str, np.ndarray]:
    with np.load(run / "test_predictions.npz") as f:
        return {k: f[k] for k in f.files}


def photo_png(seed: int = 0, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size + 10, 3), dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


def test_the_runs_list_has_every_run_with_its_numbers_and_status(lab, tree):
    runs = {r["id"]: r for r in lab.get("/api/runs").json()}
    assert set(runs) == {"a", "b", "sweep1/s0", "sweep1/s1", "training", *HOSTILE}
    saved = npz(tree / "a")
    top1 = float((saved["probs"].argmax(1) == saved["y_true"]).mean())
    assert runs["a"]["test_top1"] == pytest.approx(top1) and runs["a"]["status"] == "done"
    assert (runs["a"]["model"], runs["a"]["recipe"], runs["b"]["seed"]) == ("mycnn", "seed", 1)
    assert runs["training"]["status"] == "training" and runs["training"]["epochs_done"] == 1
    assert {runs[name]["status"] for name in ("bad-json", "nan-run", "wrong-shapes", "linked-file")} == {"error"}
    assert "escape" not in runs  # a link to a folder outside is never followed


def test_a_run_detail_holds_its_confusion_matrix_from_the_saved_predictions(lab, tree):
    detail = lab.get("/api/runs/a").json()
    saved = npz(tree / "a")
    expected = np.zeros((10, 10), dtype=int)
    np.add.at(expected, (saved["y_true"], saved["probs"].argmax(1)), 1)
    assert detail["confusion"] == expected.tolist() and len(detail["classes"]) == 10
    assert detail["images"] == len(saved["y_true"]) and detail["classes"][3] == "cat"


@pytest.mark.parametrize("sort", ["confidence", "loss"])
def test_samples_of_a_confusion_cell_are_its_images_sorted_and_paged(lab, tree, sort):
    saved = npz(tree / "a")
    y, probs, index = saved["y_true"], saved["probs"], saved["index"]
    rows = np.flatnonzero((y == 3) & (probs.argmax(1) == 5))  # cat -> dog, the crafted main confusion
    answer = lab.get(f"/api/runs/a/samples?true=cat&pred=dog&sort={sort}&limit=500").json()
    assert answer["total"] == len(rows) > 3
    assert sorted(item["index"] for item in answer["items"]) == sorted(index[rows].tolist())
    values = [item[sort] for item in answer["items"]]
    assert values == sorted(values, reverse=True)
    first = answer["items"][0]
    row = int(np.flatnonzero(index == first["index"])[0])
    assert first["confidence"] == pytest.approx(float(probs[row, 5]))
    assert first["loss"] == pytest.approx(-math.log(max(float(probs[row, 3]), 1e-12)))
    page = lab.get(f"/api/runs/a/samples?true=cat&pred=dog&sort={sort}&offset=2&limit=2").json()
    assert page["items"] == answer["items"][2:4] and page["total"] == answer["total"]
    diagonal = lab.get("/api/runs/a/samples?true=cat&pred=cat").json()
    assert diagonal["total"] == int(((y == 3) & (probs.argmax(1) == 3)).sum())


@pytest.mark.parametrize(
    "query",
    [
        "true=cat&pred=unicorn",
        "true=cat&pred=dog&sort=size",
        "true=cat&pred=dog&limit=0",
        "pred=dog",
        "true=cat&pred=dog&offset=-1",
    ],
)
def test_bad_sample_parameters_are_one_line_400s(lab, query):
    answer = lab.get(f"/api/runs/a/samples?{query}")
    assert answer.status_code == 400 and "\n" not in answer.json()["error"]


def test_an_uploaded_photo_gets_the_answer_of_predict_json(lab, tree, tmp_path, monkeypatch, capsys):
    from cifarlab.cli.main import main

    monkeypatch.chdir(tmp_path)
    Path("photo.png").write_bytes(photo_png())
    assert main(["predict", "--checkpoint", str(tree / "a"), "--json", "photo.png"]) == 0
    expected = json.loads(capsys.readouterr().out)[0]
    answer = lab.post("/api/runs/a/predict", files={"file": ("photo.png", photo_png(), "image/png")})
    assert answer.status_code == 200 and answer.json() == expected
    Path("photo.png").unlink()


def test_the_try_page_shows_what_the_model_receives_and_its_top3(lab):
    page = lab.post("/runs/a/try", files={"file": ("photo.png", photo_png(1), "image/png")})
    assert page.status_code == 200
    assert page.text.count('<img src="data:image/png;base64,') == 3 and page.text.count('<span class="bar"') == 3
    assert "what the model receives (32 × 32)" in page.text


def test_uploads_over_the_byte_cap_or_the_pixel_cap_are_refused_in_one_line(lab, monkeypatch):
    from cifarlab.serve import upload

    monkeypatch.setattr(upload, "MAX_UPLOAD_BYTES", 1000)
    big = lab.post("/api/runs/a/predict", files={"file": ("big.png", photo_png(size=200), "image/png")})
    assert big.status_code == 413 and "upload too large" in big.json()["error"]
    monkeypatch.undo()
    bomb = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(bomb, format="PNG")  # 144 million pixels in a ~20 kB file
    answer = lab.post("/api/runs/a/predict", files={"file": ("bomb.png", bomb.getvalue(), "image/png")})
    assert answer.status_code == 400 and "too large to decode safely" in answer.json()["error"]
    junk = lab.post("/api/runs/a/predict", files={"file": ("x.png", b"not an image", "image/png")})
    assert junk.status_code == 400 and junk.json()["file"] == "x.png"
    missing = lab.post("/api/runs/a/predict", data={"other": "1"})
    assert missing.status_code == 400 and "'file'" in missing.json()["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/runs/..%2F..%2Fetc",
        "/api/runs/%2Fetc%2Fpasswd",
        "/api/runs/escape",
        "/api/runs/a%2F..%2F..%2Foutside",
        "/runs/escape",
        "/runs/a/image/99999.png",
        "/runs/a/gradcam/0/10.png",
        "/api/runs/nope/samples?true=cat&pred=dog",
    ],
)
def test_ids_and_files_that_lead_out_or_name_nothing_are_404(lab, path):
    assert lab.get(path).status_code == 404


def test_every_page_answers_and_hostile_runs_show_an_error_only_for_themselves(lab, tree):
    index = lab.get("/")
    assert index.status_code == 200 and index.text.count("<tr data-id=") == 5 + len(HOSTILE)
    assert HOSTILE_NAME not in index.text and "&lt;script&gt;" in index.text
    for name in ("bad-json", "nan-run", "wrong-shapes", "linked-file"):
        page = lab.get(f"/runs/{name}")
        assert page.status_code == 200 and 'id="run-error"' in page.text, name
        assert lab.get(f"/api/runs/{name}").json()["status"] == "error"
    markup = lab.get("/runs/markup")
    assert markup.status_code == 200 and HOSTILE_NAME not in markup.text and "<script>" not in markup.text
    forged = lab.get("/api/runs/forged").json()
    assert forged["test_top1"] == pytest.approx(lab.get("/api/runs/a").json()["test_top1"])  # recomputed, not 7.5
    assert forged["train_seconds"] is None and "<b>" not in lab.get("/").text
    assert "linked-file" in lab.get("/").text and "leads outside" in lab.get("/api/runs/linked-file").json()["error"]


def test_run_cell_image_compare_and_png_pages(lab, tree):
    run = lab.get("/runs/a")
    assert run.status_code == 200 and 'id="worst-cell"' in run.text and run.text.count("<svg") == 3
    cell = lab.get("/runs/a/cell?true=cat&pred=dog&sort=loss")
    total = lab.get("/api/runs/a/samples?true=cat&pred=dog").json()["total"]
    assert cell.status_code == 200 and cell.text.count('class="thumb"') == min(total, 50)
    first = lab.get("/api/runs/a/samples?true=cat&pred=dog").json()["items"][0]["index"]
    image = lab.get(f"/runs/a/image/{first}")
    assert image.status_code == 200 and 'id="cam-true"' in image.text
    png = lab.get(f"/runs/a/image/{first}.png")
    assert png.headers["content-type"] == "image/png" and Image.open(io.BytesIO(png.content)).size == (32, 32)
    cam = lab.get(f"/runs/a/gradcam/{first}/5.png")
    assert cam.status_code == 200 and Image.open(io.BytesIO(cam.content)).size == (32, 32)
    compare = lab.get("/compare?a=a&b=b")
    assert compare.status_code == 200 and 'id="counts"' in compare.text
    assert "connect-src" not in run.headers["content-security-policy"]
    assert run.headers["content-security-policy"].startswith("default-src 'self'")


def test_compare_counts_right_in_one_wrong_in_the_other_by_test_position(lab, tree):
    from cifarlab.serve.app import Lab

    a, b = npz(tree / "a"), npz(tree / "b")
    right_a = dict(zip(a["index"].tolist(), (a["probs"].argmax(1) == a["y_true"]).tolist(), strict=True))
    right_b = dict(zip(b["index"].tolist(), (b["probs"].argmax(1) == b["y_true"]).tolist(), strict=True))
    shared = sorted(set(right_a) & set(right_b))
    lab_state: Lab = lab.app.state.lab
    from cifarlab.serve.compare_view import compare_runs

    result = compare_runs(lab_state.run("a"), lab_state.run("b"), "a_only", 0, 500)
    assert result["counts"]["a_only"] == sum(right_a[i] and not right_b[i] for i in shared)
    assert result["counts"]["b_only"] == sum(right_b[i] and not right_a[i] for i in shared)
    assert sorted(it["index"] for it in result["items"]) == [i for i in shared if right_a[i] and not right_b[i]]
    refused = lab.get("/compare?a=a&b=training")
    assert refused.status_code == 422 and "still training" in refused.text


def test_sweeps_show_as_groups_with_mean_and_std(lab):
    from cifarlab.serve.views import group_rows

    rows = lab.app.state.lab.rows()
    groups = group_rows(rows)
    assert len(groups) == 1 and groups[0]["sweep"] == "sweep1" and groups[0]["done"] == 2
    scores = [r["test_top1"] for r in rows if r["sweep"] == "sweep1"]
    assert groups[0]["mean"] == pytest.approx(np.mean(scores)) and groups[0]["std"] == pytest.approx(
        np.std(scores, ddof=1)
    )
    assert "Sweeps" in lab.get("/").text


def test_nothing_is_written_into_the_served_folders_and_gradcam_is_cached_outside(
    tree, fake_cifar, tmp_path, monkeypatch
):
    from starlette.testclient import TestClient

    from cifarlab.serve.app import make_app

    monkeypatch.setenv("CIFARLAB_CACHE_DIR", str(tmp_path / "cache"))
    before = tree_fingerprint(tree)
    with TestClient(make_app([tree], str(fake_cifar))) as client:
        first = client.get("/api/runs/a/samples?true=cat&pred=dog").json()["items"][0]["index"]
        for url in ("/", "/runs/a", f"/runs/a/image/{first}", f"/runs/a/gradcam/{first}/3.png", "/compare?a=a&b=b"):
            assert client.get(url).status_code == 200
        client.post("/api/runs/a/predict", files={"file": ("p.png", photo_png(), "image/png")})
    assert tree_fingerprint(tree) == before
    assert len(list((tmp_path / "cache" / "serve").glob("*.png"))) == 1


def test_a_run_that_is_written_again_is_read_again(tree, crafted_run, tmp_path):
    from starlette.testclient import TestClient

    from cifarlab.serve.app import make_app

    crafted_run(tmp_path / "runs" / "x", seed=0)
    with TestClient(make_app([tmp_path / "runs"])) as client:
        before = client.get("/api/runs/x").json()["test_top1"]
        crafted_run(tmp_path / "runs" / "y", seed=5)
        (tmp_path / "runs" / "x" / "test_predictions.npz").write_bytes(
            (tmp_path / "runs" / "y" / "test_predictions.npz").read_bytes()
        )
        after = client.get("/api/runs/x").json()["test_top1"]
        assert {r["id"] for r in client.get("/api/runs").json()} == {"x", "y"}
    assert before != after


def test_caches_are_bounded():
    from cifarlab.serve.caches import LRU, ByteCache

    cache = ByteCache(100)
    for k in range(10):
        cache.put(k, bytes(30))
    assert cache.used <= 100 and cache.get(9) is not None and cache.get(0) is None
    cache.put(9, bytes(200))  # more than the whole budget: not kept, the old value stays
    cache.put(8, bytes(60))  # a new value for a kept key: its old bytes are given back
    assert cache.get(9) == bytes(30) and cache.get(8) == bytes(60) and cache.used == 90 and len(cache) == 2
    lru: LRU[int] = LRU(3)
    for k in range(5):
        lru.get_or_make(k, lambda k=k: k * k)
    assert len(lru) == 3 and lru.get(4) == 16 and lru.get(1) is None


def test_fifty_concurrent_requests_are_all_answered_and_memory_stays_bounded(tree, fake_cifar, tmp_path, monkeypatch):
    from cifarlab.serve.app import make_app

    monkeypatch.setenv("CIFARLAB_CACHE_DIR", str(tmp_path / "cache"))
    app = make_app([tree], str(fake_cifar))
    with running_server(app) as base:
        items = json.load(LOCAL.open(f"{base}/api/runs/a/samples?true=cat&pred=dog&limit=10"))["items"]
        urls = ["/", "/api/runs", "/runs/a", "/runs/b", "/runs/a/cell?true=cat&pred=dog", "/compare?a=a&b=b"]
        urls += [f"/runs/a/image/{it['index']}.png" for it in items] + [
            f"/runs/a/gradcam/{it['index']}/5.png" for it in items[:4]
        ]
        urls = (urls * 5)[:50]

        def get(url: str) -> int:
            with LOCAL.open(base + url, timeout=120) as answer:
                answer.read()
                return answer.status

        with ThreadPoolExecutor(50) as pool:
            codes = list(pool.map(get, urls))
    assert codes == [200] * 50
    lab = app.state.lab
    assert lab.images.pngs.used <= lab.images.pngs.budget and len(lab.explainer.models) <= lab.explainer.models.budget
    assert len(lab.store.cache) <= lab.store.cache.budget


def test_serve_prints_its_url_answers_and_warns_off_loopback(child, tree, tmp_path):
    log = tmp_path / "serve.log"
    proc = child.start("-m", "cifarlab", "serve", str(tree), "--port", "0", "--host", "0.0.0.0", log=log)
    try:
        url = None
        for _ in range(600):
            text = log.read_text() if log.exists() else ""
            if "http://" in text and "no authentication" in text:
                url = text.split("http://", 1)[1].split("/", 1)[0]
                break
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        assert url is not None, log.read_text()
        port = url.rsplit(":", 1)[1]
        runs = json.load(LOCAL.open(f"http://127.0.0.1:{port}/api/runs", timeout=60))
        assert len(runs) == 5 + len(HOSTILE) and "11 runs at http://0.0.0.0:" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(30)


def test_serve_refuses_a_missing_folder_in_one_line(cli_error, tmp_path):
    message = cli_error("serve", str(tmp_path / "nope"), code=2)
    assert "no such folder to serve" in message


def test_starting_the_app_does_not_load_torch(child, tree):
    code = (
        "import sys; from cifarlab.serve.app import make_app; from cifarlab.cli.main import build_parser; "
        f"make_app([{str(tree)!r}]); print('torch' in sys.modules)"
    )
    done = child.run("-c", code)
    assert done.stdout.strip() == "False", done.stderr


def test_a_run_still_training_shows_each_new_epoch_and_then_its_result(tiny_run, tmp_path):
    import shutil

    from starlette.testclient import TestClient

    from cifarlab.serve.app import make_app

    run = tmp_path / "runs" / "live"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("run.json", "test_*", "analysis"))
    lines = (run / "metrics.csv").read_text().splitlines()
    (run / "metrics.csv").write_text("\n".join(lines[:2]) + "\n")
    with TestClient(make_app([tmp_path / "runs"])) as client:
        first = client.get("/api/runs").json()[0]
        assert (first["status"], first["epochs_done"], first["epochs"]) == ("training", 1, 2)
        assert 'id="training"' in client.get("/runs/live").text
        (run / "metrics.csv").write_text("\n".join(lines[:3]) + "\n")
        assert client.get("/api/runs").json()[0]["epochs_done"] == 2
        for name in ("run.json", "test_metrics.json", "test_predictions.npz"):
            shutil.copy(tiny_run / name, run / name)
        done = client.get("/api/runs").json()[0]
        assert done["status"] == "done" and done["test_top1"] is not None
