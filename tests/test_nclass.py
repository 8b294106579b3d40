"""Analysis, report and compare for any dataset: 100 classes at 64 pixels, class names from the run's dataset
record, per-class tables worst first, heatmaps of the most confused classes, galleries and Grad-CAM at the run's
image size, and compare refusing to average runs of different data."""

from __future__ import annotations

import csv
import html
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cifarlab.base.errors import DataError
from cifarlab.data.cifar10 import CLASSES, ImageData
from cifarlab.results import analysis, analysis_metrics, plots
from cifarlab.results.compare import build_comparison, comparison_markdown
from cifarlab.results.compare_groups import group_key
from cifarlab.results.gradcam import find_target_layer, grad_cam
from cifarlab.results.report import report
from cifarlab.runs import folder as runfolder

N_CLASSES, PER_CLASS, SIZE = 100, 5, 64
CONFUSED = (7, 3)  # true class 7 is mostly predicted as class 3
LONG_NAME = "a_class_name_much_longer_than_any_axis_or_caption_can_hold"


def class_list() -> list[str]:
    return [LONG_NAME if k == 50 else f"species_{k:03d}" for k in range(N_CLASSES)]


def folder_record(root: Path, fingerprint: str = "0123456789abcdef", image_size: int = SIZE) -> dict[str, Any]:
    """A dataset record as train.py saves it for an image folder with its own test/ folder."""
    return {
        "kind": "folder",
        "path": str(root / "pictures"),
        "classes": class_list(),
        "image_size": image_size,
        "fingerprint": fingerprint,
        "test": f"{root / 'pictures' / 'test'} (the given held-out folder)",
        "layout": "train/test",
        "skipped": 2,
    }


def hundred_class_predictions(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y_true, probs, index of 500 test images: about 20% wrong, class 7 -> 3 the main confusion, and the
    classes from 95 on always wrong (so the worst classes are known)."""
    rng = np.random.default_rng(seed)
    y = np.arange(N_CLASSES * PER_CLASS) % N_CLASSES
    pred = y.copy()
    wrong = (rng.random(len(y)) < 0.2) | (y >= 95)
    pred[wrong] = (y[wrong] + rng.integers(1, N_CLASSES, wrong.sum())) % N_CLASSES
    sevens = np.flatnonzero(y == CONFUSED[0])
    pred[sevens[:4]] = CONFUSED[1]
    probs = 0.3 * rng.dirichlet(np.ones(N_CLASSES), size=len(y))
    probs[np.arange(len(y)), pred] += 0.7
    probs /= probs.sum(1, keepdims=True)
    return y, probs.astype(np.float32), np.arange(len(y))


def class_pictures(y: np.ndarray, seed: int = 0) -> torch.Tensor:
    """(N, 3, 64, 64) uint8 pictures whose colour depends on the class."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, size=(len(y), 3, SIZE, SIZE)).astype(np.int16)
    x += (np.asarray(y) * 2)[:, None, None, None].astype(np.int16)
    return torch.from_numpy(np.clip(x, 0, 255).astype(np.uint8))


def image_data(root: Path, y: np.ndarray) -> ImageData:
    """The images of the 100-class run, as datasets.reload would give them."""
    return ImageData(
        train_images=torch.zeros((N_CLASSES, 3, SIZE, SIZE), dtype=torch.uint8),
        train_labels=torch.arange(N_CLASSES),
        test_images=class_pictures(y),
        test_labels=torch.as_tensor(y),
        classes=class_list(),
        root=root / "pictures",
        record=folder_record(root),
    )


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def make_hundred_class_run(
    crafted_run: Callable[..., Path],
    dest: Path,
    fingerprint: str = "0123456789abcdef",
    seed: int = 0,
    config: dict | None = None,
) -> Path:
    """A copy of the tiny run turned into a 100-class run at 64 px on an image folder: its predictions, its
    dataset record in run.json and its config. Its checkpoint is still the tiny run's 10-class one."""
    record = folder_record(dest.parent, fingerprint)
    run = crafted_run(
        dest,
        config={"dataset": record["path"], "image_size": SIZE, **(config or {})},
        info={"dataset": record},
    )
    y, probs, index = hundred_class_predictions(seed)
    np.savez_compressed(run / "test_predictions.npz", y_true=y, probs=probs, index=index)
    return run


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class Spy:
    """Wraps a plots function and keeps the arguments of every call."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function, self.calls = function, []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(args)
        return self.function(*args, **kwargs)


@pytest.fixture(scope="module")
def hundred(crafted_run, tmp_path_factory) -> dict[str, Any]:
    """The 100-class run analysed once with its images (given as data, as right after training), the arguments
    the heatmaps and galleries were drawn with, and its report."""
    root = tmp_path_factory.mktemp("hundred")
    run = make_hundred_class_run(crafted_run, root / "pets")
    y = hundred_class_predictions()[0]
    heatmaps, grids = Spy(plots.confusion_heatmap), Spy(plots.image_grid)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "confusion_heatmap", heatmaps)
        mp.setattr(plots, "image_grid", grids)
        summary = analysis.analyze(run, data=image_data(root, y))
    html_path = report([run], root / "report.html")
    return {"run": run, "summary": summary, "heatmaps": heatmaps.calls, "grids": grids.calls, "html": html_path}


# ----------------------------------------------------------------------------------------------------------
# Analysis
# ----------------------------------------------------------------------------------------------------------


def test_class_names_come_from_the_runs_dataset_record(hundred):
    run = hundred["run"]
    assert runfolder.load_predictions(run).classes == class_list()  # not test_metrics.json's ten CIFAR names
    assert hundred["summary"]["classes"] == class_list()
    assert [r["class"] for r in read_csv(run / "analysis" / "per_class.csv")] == class_list()


def test_class_names_fall_back_to_the_metrics_then_cifar10_then_numbers(crafted_run, tmp_path):
    run = crafted_run(tmp_path / "old")  # the tiny run's run.json: no record here unless train wrote one
    edit_json(run / "run.json", lambda d: d.pop("dataset", None))
    edit_json(run / "test_metrics.json", lambda d: d.update(per_class_accuracy={f"c{k}": 0.5 for k in range(10)}))
    assert runfolder.class_names(run, 10) == [f"c{k}" for k in range(10)]
    (run / "test_metrics.json").unlink()
    assert runfolder.class_names(run, 10) == list(CLASSES)  # a run from before dataset records: CIFAR-10
    assert runfolder.class_names(run, 3) == ["class 0", "class 1", "class 2"]
    edit_json(run / "run.json", lambda d: d.update(dataset={"kind": "folder", "classes": ["x", "y"]}))
    assert runfolder.class_names(run, 10) == [f"class {k}" for k in range(10)]  # a record: never CIFAR's names


def test_full_confusion_matrix_is_in_the_csv(hundred):
    y, probs, _ = hundred_class_predictions()
    rows = read_csv(hundred["run"] / "analysis" / "confusion_matrix.csv")
    assert len(rows) == N_CLASSES and [r["true \\ predicted"] for r in rows] == class_list()
    got = np.array([[int(r[c]) for c in class_list()] for r in rows])
    expected = np.zeros((N_CLASSES, N_CLASSES), dtype=np.int64)
    np.add.at(expected, (y, probs.argmax(1)), 1)
    np.testing.assert_array_equal(got, expected)


def test_heatmaps_show_the_20_most_confused_classes_and_say_so(hundred):
    y, probs, _ = hundred_class_predictions()
    counts = np.zeros((N_CLASSES, N_CLASSES), dtype=np.int64)
    np.add.at(counts, (y, probs.argmax(1)), 1)
    off = counts - np.diag(np.diag(counts))
    errors = off.sum(0) + off.sum(1)
    names = class_list()
    shown = hundred["summary"]["heatmap_classes"]
    assert len(shown) == 20 and shown == [n for n in names if n in shown]  # label order
    assert {names[c] for c in CONFUSED} <= set(shown)
    threshold = min(errors[names.index(n)] for n in shown)
    assert all(errors[k] <= threshold for k in range(N_CLASSES) if names[k] not in shown)
    assert len(hundred["heatmaps"]) == 2
    for matrix, classes, path, _normalized, title in hundred["heatmaps"]:
        assert matrix.shape == (20, 20) and list(classes) == shown
        assert "the 20 most confused of 100 classes" in title
        with Image.open(path) as im:
            assert im.width < 2000 and im.height < 2000
    keep = [names.index(n) for n in shown]
    np.testing.assert_array_equal(hundred["heatmaps"][0][0], counts[np.ix_(keep, keep)])
    share = hundred["heatmaps"][1][0]  # shares of the whole true class, not of the 20 shown columns
    np.testing.assert_allclose(share, (counts / counts.sum(1, keepdims=True))[np.ix_(keep, keep)])


def test_most_confused_classes_rule():
    counts = np.diag([5, 5, 5, 5])
    counts[0, 3] = 2  # class 0 and 3 share two mistakes; class 1 has one; class 2 none
    counts[1, 2] = 1
    assert analysis_metrics.most_confused_classes(counts, limit=2).tolist() == [0, 3]
    assert analysis_metrics.most_confused_classes(counts, limit=3).tolist() == [0, 1, 3]  # 1 and 2 tie: earlier label
    assert analysis_metrics.most_confused_classes(counts, limit=4).tolist() == [0, 1, 2, 3]


def test_per_class_table_sorted_by_accuracy_worst_first(hundred):
    out = hundred["run"] / "analysis"
    ranked = read_csv(out / "per_class_by_accuracy.csv")
    by_label = {r["class"]: r for r in read_csv(out / "per_class.csv")}
    accuracies = [float(r["accuracy"]) for r in ranked]
    assert len(ranked) == N_CLASSES and accuracies == sorted(accuracies)
    assert all(by_label[r["class"]] == r for r in ranked)  # the same rows, reordered
    worst = hundred["summary"]["worst_classes"]
    assert [w["class"] for w in worst] == [r["class"] for r in ranked[:5]]
    assert [r["class"] for r in ranked[:5]] == [f"species_{k:03d}" for k in range(95, 100)]  # accuracy 0, label order


def test_by_accuracy_puts_undefined_last_and_keeps_label_order_for_ties():
    rows = [{"class": c, "accuracy": a} for c, a in [("a", 0.5), ("b", None), ("c", 0.2), ("d", 0.5)]]
    assert [r["class"] for r in analysis_metrics.by_accuracy(rows)] == ["c", "a", "d", "b"]


def test_galleries_show_the_images_at_the_runs_size(hundred):
    grids = hundred["grids"]
    assert [Path(call[3]).name for call in grids] == ["misclassified.png", "top_losses.png"]
    for images, captions, _colors, path, _title in grids:
        assert images.shape[1:] == (3, SIZE, SIZE) and images.dtype == np.uint8
        assert all(len(line) < 50 for text in captions for line in text.splitlines())  # long names shortened
        with Image.open(path) as im:
            assert 300 < im.width < 2000 and 300 < im.height < 2000
    assert {"misclassified.png", "top_losses.png"} <= set(hundred["summary"]["figures"])


def test_gradcam_of_a_checkpoint_that_does_not_fit_is_skipped_with_the_reason(hundred):
    summary = hundred["summary"]
    assert summary["gradcam"] is None
    assert any("10 classes, the predictions 100" in note for note in summary["skipped"])


def test_images_are_read_again_from_the_runs_dataset_record(hundred, monkeypatch, tmp_path):
    import cifarlab.data.loading

    run = hundred["run"]
    y = hundred_class_predictions()[0]
    calls = []

    def reload(record, data_dir=None, dataset=None):
        calls.append((record, data_dir, dataset))
        return image_data(run.parent, y)

    monkeypatch.setattr(cifarlab.data.loading, "reload", reload)
    pred = runfolder.load_predictions(run)
    images, reason = analysis.load_test_images(run, pred, data_dir=str(tmp_path / "cifar"), dataset="moved")
    assert reason is None and images.shape[-1] == SIZE
    record, data_dir, dataset = calls[0]
    assert record == folder_record(run.parent) and dataset == "moved"
    assert data_dir == (tmp_path / "cifar").resolve()  # the CIFAR folder from the command line, never the run

    def refuse(record, data_dir=None, dataset=None):
        raise DataError("the images found are not the ones this run was trained on (their file list differs)")

    monkeypatch.setattr(cifarlab.data.loading, "reload", refuse)
    images, reason = analysis.load_test_images(run, pred)
    assert images is None and "file list differs" in reason and "--dataset" in reason


def test_cli_analyze_takes_a_moved_image_folder(hundred, monkeypatch, tmp_path, capsys):
    import shutil

    import cifarlab.data.loading
    from cifarlab.cli.main import main

    run = Path(shutil.copytree(hundred["run"], tmp_path / "pets"))
    y = hundred_class_predictions()[0]
    asked = []

    def reload(record, data_dir=None, dataset=None):
        asked.append(dataset)
        return image_data(hundred["run"].parent, y)

    monkeypatch.setattr(cifarlab.data.loading, "reload", reload)
    assert main(["analyze", str(run), "--dataset", str(tmp_path / "moved")]) == 0
    assert asked == [str(tmp_path / "moved")] and (run / "analysis" / "misclassified.png").is_file()
    assert f"test images from {hundred['run'].parent / 'pictures'}" in capsys.readouterr().out


def test_gradcam_works_at_64_pixels():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, N_CLASSES),
    ).eval()
    layer = find_target_layer(model, SIZE)
    assert (layer.name, layer.height, layer.width) == ("3", 32, 32)
    maps = grad_cam(model, torch.randn(3, 3, SIZE, SIZE), torch.tensor([0, 50, 99]), layer)
    assert maps.shape == (3, SIZE, SIZE)


def test_gradcam_target_layer_refuses_a_model_that_does_not_run_at_that_size():
    from cifarlab.base.errors import CifarlabError

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 32 * 32, 10))
    assert find_target_layer(model, 32).name == "0"
    with pytest.raises(CifarlabError, match="does not run on 64x64 images"):
        find_target_layer(model, 64)


@pytest.mark.parametrize("size", [16, 512])
def test_gallery_figure_size_does_not_depend_on_image_size(tmp_path, size):
    images = np.random.default_rng(0).integers(0, 255, (7, 3, size, size), dtype=np.uint8)
    path = plots.image_grid(images, ["x"] * 7, ["k"] * 7, tmp_path / "g.png", "title")
    with Image.open(path) as im:
        assert (im.width, im.height) == (1200, 540)  # 6 columns of 2 in, 2 rows of 2.45 in + title


# ----------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------


def test_report_shows_the_dataset_of_the_run(hundred):
    page = html.unescape(hundred["html"].read_text())
    record = folder_record(hundred["run"].parent)
    setup = page[page.index('<section id="setup">') : page.index('<section id="results">')]
    for text in ("image folder", record["path"], "<td>64</td>", "<td>100</td>", record["test"], "<td>2</td>"):
        assert text in setup, text
    md = hundred["html"].with_suffix(".md").read_text()
    assert "## Data" in md and "64 px, 100 classes" in md and "(the given held-out folder)" in md


def test_report_per_class_tables_are_worst_first(hundred):
    ranked = [r["class"] for r in read_csv(hundred["run"] / "analysis" / "per_class_by_accuracy.csv")]
    page = html.unescape(hundred["html"].read_text())
    section = page[page.index('<section id="per-class">') : page.index('<section id="confused-pairs">')]
    assert "<h2>Per-class metrics, worst class first</h2>" in section
    cells = re.findall(r"<tr><td>([^<]*)</td>", section)
    assert cells == ranked
    md = hundred["html"].with_suffix(".md").read_text()
    table = md[md.index("## Per-class accuracy, worst class first") :].split("\n\n")[1].splitlines()
    assert [ln.split(" | ")[0].removeprefix("| ") for ln in table[2:]] == [
        analysis_markdown(name) for name in ranked[:20]
    ]
    assert "The 20 worst of 100 classes" in md
    assert "the 20 most confused of 100 classes" in page  # the confusion figures' captions


def analysis_markdown(name: str) -> str:
    from cifarlab.results.compare import markdown_text

    return markdown_text(name)


# ----------------------------------------------------------------------------------------------------------
# Compare
# ----------------------------------------------------------------------------------------------------------


def test_compare_refuses_to_average_runs_of_different_data(crafted_run, tmp_path, cli_error):
    a = make_hundred_class_run(crafted_run, tmp_path / "a", fingerprint="aaaaaaaaaaaaaaaa", config={"seed": 0})
    b = make_hundred_class_run(crafted_run, tmp_path / "b", fingerprint="bbbbbbbbbbbbbbbb", config={"seed": 1}, seed=1)
    line = cli_error("compare", str(a), str(b), "--out", str(tmp_path / "cmp"))
    assert "trained on different data" in line and "fingerprint aaaaaaaaaaaaaaaa vs bbbbbbbbbbbbbbbb" in line
    assert not (tmp_path / "cmp").exists()


def test_compare_shows_runs_of_other_image_sizes_side_by_side(crafted_run, tmp_path):
    a = make_hundred_class_run(crafted_run, tmp_path / "a")
    b = make_hundred_class_run(crafted_run, tmp_path / "b", config={"image_size": 32}, seed=1)
    edit_json(b / "run.json", lambda d: d["dataset"].update(image_size=32))
    comp = build_comparison([a, b])
    assert [g.n for g in comp.groups] == [1, 1]
    text = comparison_markdown(comp)
    assert "trained on different data" in text and "64 px, 100 classes" in text and "32 px, 100 classes" in text
    assert all("prediction_disagreement" not in row for row in comp.disagreements)  # other images, same indices


def test_seeds_of_one_folder_are_one_group(crafted_run, tmp_path):
    runs = [make_hundred_class_run(crafted_run, tmp_path / f"s{k}", config={"seed": k}, seed=k) for k in range(2)]
    comp = build_comparison(runs)
    assert [g.n for g in comp.groups] == [2] and "different data" not in comparison_markdown(comp)


def test_an_old_cifar10_run_groups_with_a_new_one(crafted_run, tmp_path):
    old = crafted_run(tmp_path / "old", config={"seed": 0})
    edit_json(old / "run.json", lambda d: d.pop("dataset", None))
    edit_json(old / "config.json", lambda d: [d.pop(k, None) for k in ("dataset", "labels", "image_size", "strict")])
    new = crafted_run(tmp_path / "new", seed=1, config={"seed": 1})
    record = {
        "kind": "cifar10",
        "path": None,
        "classes": list(CLASSES),
        "image_size": 32,
        "fingerprint": "0123456789abcdef",
        "test": "the official test set (test_batch)",
    }
    edit_json(new / "run.json", lambda d: d.update(dataset=record))
    comp = build_comparison([old, new])
    assert [g.n for g in comp.groups] == [2]
    assert group_key({"model": "mycnn"}) == group_key({"model": "mycnn", "dataset": "cifar10", "image_size": None})
    assert group_key({"model": "mycnn", "image_size": None}, {"image_size": 32}) == group_key(
        {"model": "mycnn", "image_size": 32}
    )
