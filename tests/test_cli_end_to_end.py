"""The whole path through the CLI on data that is not CIFAR-10: a 64 px image folder and a generated CIFAR-100 in
its coarse labels, each trained with ``cifarlab train --dataset ... [--labels ...] --image-size ...``, then
evaluated, analysed with Grad-CAM, predicted on, exported, reported and compared, every command as a user types it
(``cifarlab.cli.main``), every answer checked against the dataset it came from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarlab.cli.main import main

pytestmark = pytest.mark.slow
TINY = ["--model", "mycnn", "--recipe", "seed", "--epochs", "1", "--batch-size", "32", "--device", "cpu"]


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def one_image(path: Path, size: int, colour: tuple[int, int, int]) -> Path:
    Image.new("RGB", (size + 8, size), colour).save(path)
    return path


def every_command(data: list[str], runs: Path, classes: list[str], size: int, tmp_path: Path, capsys) -> None:
    """train (2 seeds), evaluate, analyze with Grad-CAM, predict, export, report and compare, with checks."""
    where = data[data.index("--data-dir") :] if "--data-dir" in data else []  # CIFAR's folder, for later commands
    for seed in ("0", "1"):
        assert main(["train", *data, *TINY, "--seed", seed, "--out", str(runs), "--name", f"s{seed}"]) == 0
    run = runs / "s0"
    info = read(run / "run.json")
    assert info["dataset"]["classes"] == classes and info["dataset"]["image_size"] == size
    assert 0.0 <= info["test_top1"] <= info["test_top3"] <= 1.0

    capsys.readouterr()
    assert main(["evaluate", str(run), "--device", "cpu", *where]) == 0
    assert "test: top-1" in capsys.readouterr().out
    assert read(run / "test_metrics.json")["top1"] == pytest.approx(info["test_top1"], abs=1e-4)

    assert main(["analyze", str(run), *where]) == 0
    summary = read(run / "analysis" / "summary.json")
    assert summary["top1"] == pytest.approx(info["test_top1"], abs=1e-4)
    cams = list((run / "analysis").rglob("*gradcam*"))
    assert cams, sorted(p.name for p in (run / "analysis").iterdir())

    photo = one_image(tmp_path / "photo.png", 3 * size, (180, 40, 40))
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run), str(photo), "--json", "--top-k", "3"]) == 0
    (answer,) = json.loads(capsys.readouterr().out)
    assert len(answer["predictions"]) == 3 and {p["class"] for p in answer["predictions"]} <= set(classes)

    model = tmp_path / f"model-{size}.onnx"
    assert main(["export", str(run), "--out", str(model), *where]) == 0
    sidecar = read(model.with_name(model.name + ".json"))
    assert sidecar["image_size"] == size and sidecar["classes"] == classes

    assert main(["report", str(run), str(runs / "s1"), "--out", str(tmp_path / "report.html")]) == 0
    html = (tmp_path / "report.html").read_text()
    assert all(name in html for name in classes[:3]) and "s0" in html and "s1" in html
    capsys.readouterr()
    assert main(["compare", str(run), str(runs / "s1"), "--out", str(tmp_path / "comparison")]) == 0
    table = capsys.readouterr().out
    assert "±" in table  # two seeds of one setup: one mean ± std row
    assert any((tmp_path / "comparison").glob("*.csv"))


def test_a_64px_image_folder_through_every_command(make_image_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CIFARLAB_CACHE_DIR", str(tmp_path / "cache"))
    root = make_image_folder(tmp_path / "shapes", per_class=16, test_per_class=4, size=(80, 64))
    data = ["--dataset", str(root), "--image-size", "64"]
    every_command(data, tmp_path / "runs", ["circle", "square", "stripe"], 64, tmp_path, capsys)


def test_a_cifar100_in_coarse_labels_through_every_command(make_fake_cifar100, tmp_path, capsys):
    data_dir = make_fake_cifar100(tmp_path / "c100", train=400, test=100)
    meta = data_dir / "cifar-100-python" / "meta"
    assert meta.is_file()
    data = ["--dataset", "cifar100", "--labels", "coarse", "--image-size", "32", "--data-dir", str(data_dir)]
    runs = tmp_path / "runs"
    from cifarlab.data.cifar100 import read_names

    coarse = read_names(meta, "coarse")
    assert len(coarse) == 20
    every_command(data, runs, coarse, 32, tmp_path, capsys)
    labels = np.load(runs / "s0" / "test_predictions.npz")["y_true"]
    assert labels.max() < 20  # coarse labels, not fine ones
