"""``cifarlab analyze``: every metric against an independent NumPy recomputation, figures, galleries, Grad-CAM."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cifarlab.base.errors import CifarlabError
from cifarlab.cli.main import main
from cifarlab.models.registry import MODELS, build_model
from cifarlab.results import analysis, analysis_metrics
from cifarlab.results.gradcam import centre_share, find_target_layer, grad_cam, scale_maps
from cifarlab.runs import folder as runfolder

SHIP, TRUCK, CAT, DOG = 8, 9, 3, 5


# ----------------------------------------------------------------------------------------------------------
# Independent recomputations (plain NumPy, no torchmetrics)
# ----------------------------------------------------------------------------------------------------------


def np_confusion(y: np.ndarray, pred: np.ndarray, c: int) -> np.ndarray:
    m = np.zeros((c, c), dtype=np.int64)
    np.add.at(m, (y, pred), 1)
    return m


def np_per_class(y: np.ndarray, pred: np.ndarray, c: int) -> dict[str, list]:
    """Precision, recall, F1 with NaN for 0/0, from the definitions."""
    out: dict[str, list] = {"precision": [], "recall": [], "f1": [], "support": []}
    for k in range(c):
        tp = np.sum((pred == k) & (y == k))
        fp = np.sum((pred == k) & (y != k))
        fn = np.sum((pred != k) & (y == k))
        out["precision"].append(tp / (tp + fp) if tp + fp else np.nan)
        out["recall"].append(tp / (tp + fn) if tp + fn else np.nan)
        out["f1"].append(2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else np.nan)
        out["support"].append(int(np.sum(y == k)))
    return out


def np_ece(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE, equal-width bins [k/15, (k+1)/15), the last one closed at 1."""
    probs = probs.astype(np.float64)
    conf, correct = probs.max(1), (probs.argmax(1) == y).astype(float)
    which = np.minimum(np.floor(conf * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for k in range(n_bins):
        sel = which == k
        if sel.any():
            total += abs(correct[sel].mean() - conf[sel].mean()) * sel.mean()
    return total


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def value(text: str) -> float:
    return float("nan") if text == "" else float(text)


# ----------------------------------------------------------------------------------------------------------
# A run with known mistakes (conftest's crafted_run), analysed once for this module
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def analysed(crafted_run, fake_cifar, tmp_path_factory) -> Path:
    run = crafted_run(tmp_path_factory.mktemp("analysis") / "crafted")
    analysis.analyze(run, data_dir=str(fake_cifar))
    return run


def saved(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(run / "test_predictions.npz") as f:
        return f["y_true"], f["probs"], f["index"]


# ----------------------------------------------------------------------------------------------------------
# Metrics on small known inputs
# ----------------------------------------------------------------------------------------------------------

# Four classes: class 2 occurs but is never predicted, class 3 is predicted once but never occurs.
Y = np.array([0, 0, 0, 1, 1, 2, 2])
PRED = np.array([0, 0, 1, 1, 3, 0, 1])


def probs_for(pred: np.ndarray, c: int = 4) -> np.ndarray:
    p = np.full((len(pred), c), 0.1 / (c - 1), dtype=np.float32)
    p[np.arange(len(pred)), pred] = 0.9
    return p


def test_confusion_matrix_on_known_input():
    counts = analysis_metrics.confusion_counts(probs_for(PRED), Y)
    assert counts.tolist() == [[2, 1, 0, 0], [0, 1, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0]]
    normalized = analysis_metrics.row_normalize(counts)
    assert np.allclose(normalized[0], [2 / 3, 1 / 3, 0, 0])
    assert np.isnan(normalized[3]).all()  # class 3 never occurs: its row is undefined, not zero


def test_per_class_metrics_by_hand_with_never_predicted_and_never_occurring_classes():
    rows = analysis_metrics.per_class_metrics(probs_for(PRED), Y, ["a", "b", "c", "d"])
    by = {r["class"]: r for r in rows}
    assert by["a"]["precision"] == pytest.approx(2 / 3) and by["a"]["recall"] == pytest.approx(2 / 3)
    assert by["a"]["f1"] == pytest.approx(2 / 3)
    assert by["b"]["precision"] == pytest.approx(1 / 3) and by["b"]["recall"] == pytest.approx(1 / 2)
    assert by["b"]["f1"] == pytest.approx(2 / 5)
    assert by["c"]["precision"] is None  # never predicted: 0/0
    assert by["c"]["recall"] == 0 and by["c"]["f1"] == 0 and by["c"]["support"] == 2
    assert by["d"]["recall"] is None and by["d"]["accuracy"] is None  # never occurs: 0/0
    assert by["d"]["precision"] == 0 and by["d"]["f1"] == 0 and by["d"]["support"] == 0
    assert [r["accuracy"] for r in rows[:3]] == [r["recall"] for r in rows[:3]]


def test_per_class_metrics_match_numpy_on_random_input():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 5, 300)
    y[y == 4] = 0  # class 4 never occurs
    probs = rng.dirichlet(np.ones(6), size=300).astype(np.float32)
    probs[:, 5] = 0  # class 5 never predicted
    rows = analysis_metrics.per_class_metrics(probs, y, [str(k) for k in range(6)])
    ref = np_per_class(y, probs.argmax(1), 6)
    for key in ("precision", "recall", "f1"):
        got = np.array([np.nan if r[key] is None else r[key] for r in rows])
        np.testing.assert_allclose(got, ref[key], rtol=0, atol=1e-12, equal_nan=True)
    assert [r["support"] for r in rows] == ref["support"]


def test_ece_by_hand():
    # confidences 0.9 (right), 0.6 (wrong), 0.5 (wrong), one per bin: ECE = (0.1 + 0.6 + 0.5) / 3
    probs = np.array([[0.9, 0.1, 0, 0], [0.6, 0.4, 0, 0], [0.5, 0.3, 0.2, 0]], dtype=np.float32)
    cal = analysis_metrics.calibration(probs, np.array([0, 1, 2]))
    assert cal["ece"] == pytest.approx(1.2 / 3, abs=1e-6)
    assert sum(b["count"] for b in cal["bins"]) == 3 and len(cal["bins"]) == 15


def test_ece_puts_confidence_one_in_the_fifteenth_bin():
    # A wrong answer at confidence 1.0 and a right one at 0.95 share the bin [14/15, 1]:
    # |accuracy 0.5 - confidence 0.975| * 2/2 = 0.475 (a 16th bin for 1.0 alone would give 0.525).
    probs = np.array([[1.0, 0, 0], [0.95, 0.05, 0]], dtype=np.float32)
    cal = analysis_metrics.calibration(probs, np.array([1, 0]))
    assert cal["ece"] == pytest.approx(0.475, abs=1e-6)
    assert cal["bins"][-1]["count"] == 2


def test_ece_matches_numpy_on_random_input():
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.full(10, 0.3), size=2000)
    probs[:100] = np.eye(10)[rng.integers(0, 10, 100)]  # confidence exactly 1
    y = np.where(rng.random(2000) < 0.7, probs.argmax(1), rng.integers(0, 10, 2000))
    assert analysis_metrics.calibration(probs.astype(np.float32), y)["ece"] == pytest.approx(
        np_ece(probs.astype(np.float32), y), abs=1e-6
    )


def test_confused_pairs_are_ordered_by_count_then_class_order():
    counts = np.array([[5, 3, 1], [3, 4, 0], [0, 7, 2]])
    pairs = analysis_metrics.confused_pairs(counts, ["a", "b", "c"], top=3)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("c", "b", 7), ("a", "b", 3), ("b", "a", 3)]
    assert pairs[0]["share_of_true"] == pytest.approx(7 / 9)


# ----------------------------------------------------------------------------------------------------------
# The analysis folder of a run, checked against the saved predictions
# ----------------------------------------------------------------------------------------------------------


def test_cli_train_writes_the_analysis_unless_told_not_to(small_config, fake_cifar, tmp_path):
    """README: the analysis is written at the end of every `cifarlab train`, unless `--no-analysis`."""
    config = small_config.write(tmp_path / "config.json", epochs=1, limit_train=100)
    common = [
        "train",
        "--config",
        str(config),
        "--out",
        str(tmp_path),
        "--data-dir",
        str(fake_cifar),
        "--device",
        "cpu",
    ]
    assert main([*common, "--name", "with"]) == 0
    assert main([*common, "--name", "without", "--no-analysis"]) == 0
    summary = json.loads((tmp_path / "with" / "analysis" / "summary.json").read_text())
    metrics = json.loads((tmp_path / "with" / "test_metrics.json").read_text())
    assert summary["top1"] == pytest.approx(metrics["top1"], abs=1e-12)
    assert (tmp_path / "with" / "analysis" / "confusion_matrix.csv").is_file()
    assert (tmp_path / "without" / "test_metrics.json").is_file() and not (tmp_path / "without" / "analysis").exists()


def test_confusion_csv_matches_recomputation(analysed):
    y, probs, _ = saved(analysed)
    rows = read_csv(analysed / "analysis" / "confusion_matrix.csv")
    classes = [r["true \\ predicted"] for r in rows]
    got = np.array([[int(r[c]) for c in classes] for r in rows])
    np.testing.assert_array_equal(got, np_confusion(y, probs.argmax(1), 10))
    assert got[SHIP].sum() == 0 and got[:, TRUCK].sum() == 0
    norm = read_csv(analysed / "analysis" / "confusion_matrix_normalized.csv")
    got_norm = np.array([[value(r[c]) for c in classes] for r in norm])
    ref = np_confusion(y, probs.argmax(1), 10)
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(got_norm, ref / ref.sum(1, keepdims=True), atol=1e-6, equal_nan=True)


def test_per_class_csv_matches_recomputation(analysed):
    y, probs, _ = saved(analysed)
    rows = read_csv(analysed / "analysis" / "per_class.csv")
    assert list(rows[0]) == ["class", "precision", "recall", "f1", "support", "accuracy"]
    ref = np_per_class(y, probs.argmax(1), 10)
    for key in ("precision", "recall", "f1"):
        np.testing.assert_allclose([value(r[key]) for r in rows], ref[key], atol=1e-6, equal_nan=True)
    np.testing.assert_allclose([value(r["accuracy"]) for r in rows], ref["recall"], atol=1e-6, equal_nan=True)
    assert [int(r["support"]) for r in rows] == ref["support"]
    assert rows[SHIP]["recall"] == "" and rows[TRUCK]["precision"] == ""


def test_macro_averages_skip_undefined_values(analysed):
    """README: a 0/0 value is left empty, never written as 0; the macro averages leave it out."""
    y, probs, _ = saved(analysed)
    ref = np_per_class(y, probs.argmax(1), 10)
    summary = json.loads((analysed / "analysis" / "summary.json").read_text())
    for key in ("precision", "recall", "f1"):
        assert summary[f"macro_{key}"] == pytest.approx(np.nanmean(ref[key]), abs=1e-9), key
    for key, cls in (("precision", TRUCK), ("recall", SHIP)):  # truck is never predicted, ship never occurs
        assert np.isnan(ref[key][cls])
        assert summary[f"macro_{key}"] > np.nan_to_num(ref[key]).mean() + 1e-6  # counting 0/0 as 0 gives less
    assert analysis_metrics.nanmean([0.5, None, 1.0]) == 0.75 and analysis_metrics.nanmean([None, None]) is None


def test_calibration_json_matches_recomputation(analysed):
    y, probs, _ = saved(analysed)
    cal = json.loads((analysed / "analysis" / "calibration.json").read_text())
    assert cal["n_bins"] == 15
    assert cal["ece"] == pytest.approx(np_ece(probs, y), abs=1e-6)
    assert sum(b["count"] for b in cal["bins"]) == len(y)


def test_confused_pairs_csv(analysed):
    y, probs, _ = saved(analysed)
    rows = read_csv(analysed / "analysis" / "confused_pairs.csv")
    ref = np_confusion(y, probs.argmax(1), 10)
    np.fill_diagonal(ref, 0)
    assert 0 < len(rows) <= 10
    assert (rows[0]["true"], rows[0]["predicted"]) == ("cat", "dog")
    assert [int(r["count"]) for r in rows] == sorted(ref.ravel(), reverse=True)[: len(rows)]


def test_figures_are_valid_pngs(analysed):
    out = analysed / "analysis"
    summary = json.loads((out / "summary.json").read_text())
    expected = {
        "confusion_matrix.png",
        "confusion_matrix_normalized.png",
        "learning_curves.png",
        "reliability_diagram.png",
        "misclassified.png",
        "top_losses.png",
        "gradcam.png",
    }
    assert expected <= set(summary["figures"]) and summary["skipped"] == []
    for name in expected:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(out / name) as im:
            im.load()
            assert im.width > 300 and im.height > 300
            assert len(np.unique(np.asarray(im.convert("L")))) > 10  # not a blank canvas


def test_summary_has_the_headline_numbers(analysed):
    y, probs, _ = saved(analysed)
    s = json.loads((analysed / "analysis" / "summary.json").read_text())
    assert s["top1"] == pytest.approx(np.mean(probs.argmax(1) == y), abs=1e-6)
    assert s["most_confused"]["true"] == "cat" and s["most_confused"]["predicted"] == "dog"
    assert s["misclassified"] == int(np.sum(probs.argmax(1) != y))
    assert s["gradcam"]["layer"] == "block3.1.0" and s["gradcam"]["map_size"] == [8, 8]


def test_gallery_choice_is_reproducible_and_only_wrong(analysed):
    pred = runfolder.load_predictions(analysed)
    first = analysis.sample_misclassified(pred, 24, seed=0)
    assert np.array_equal(first, analysis.sample_misclassified(pred, 24, seed=0))
    assert not np.array_equal(first, analysis.sample_misclassified(pred, 24, seed=1))
    assert (pred.y_pred[first] != pred.y_true[first]).all() and len(first) == 24
    losses = analysis.top_losses(pred, 16)
    p_true = pred.probs[losses, pred.y_true[losses]]
    assert (np.diff(p_true) >= 0).all()  # most confidently wrong first
    wrong = pred.y_pred != pred.y_true
    assert p_true.max() <= np.sort(pred.probs[wrong, pred.y_true[wrong]])[15]


def test_gradcam_maps_of_the_run_have_input_size_and_are_not_constant(analysed):
    with np.load(analysed / "analysis" / "gradcam_maps.npz") as f:
        maps_pred, maps_true = f["maps_predicted"], f["maps_true"]
    assert maps_pred.shape == maps_true.shape == (8, 32, 32)
    assert (maps_true.std(axis=(1, 2)) > 0).all()
    assert (maps_pred >= 0).all()


def test_analysis_without_test_images_still_writes_the_numbers(crafted_run, make_fake_cifar, tmp_path, fake_cifar):
    other = make_fake_cifar(tmp_path / "other", seed=5)  # same layout, other labels
    run = crafted_run(tmp_path / "run")
    analysis.analyze(run, data_dir=str(fake_cifar))
    assert (run / "analysis" / "misclassified.png").is_file()
    summary = analysis.analyze(run, data_dir=str(other))  # the old gallery must not survive as if current
    assert summary["gradcam"] is None and "their file list differs" in summary["skipped"][0]
    assert (run / "analysis" / "per_class.csv").is_file()
    assert not (run / "analysis" / "misclassified.png").exists()


# ----------------------------------------------------------------------------------------------------------
# Grad-CAM for every registered model
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gradcam_works_for_every_registered_model(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    layer = find_target_layer(model)
    assert layer.height >= 4 and layer.width >= 4
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        targets = model(x).argmax(1)
    maps = grad_cam(model, x, targets, layer)
    assert maps.shape == (3, 32, 32)
    assert maps.std(axis=(1, 2)).max() > 0
    assert all(p.grad is None for p in model.parameters())


class ColourEvidence(nn.Module):
    """A model whose evidence for class k is the amount of colour k (red, green, blue): a stride-2 convolution
    passes each colour through at 16x16, then ReLU, global average pooling and an identity head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 2, stride=2, bias=False)
        self.head = nn.Linear(3, 3, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            for k in range(3):
                self.conv.weight[k, k] = 0.25  # the mean of each 2x2 patch of colour k
            self.head.weight.copy_(torch.eye(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


QUADRANTS = {"top-left": (0, 0), "top-right": (0, 16), "bottom-left": (16, 0), "bottom-right": (16, 16)}


def quadrant_shares(maps: np.ndarray) -> list[dict[str, float]]:
    return [{q: m[r : r + 16, c : c + 16].sum() / m.sum() for q, (r, c) in QUADRANTS.items()} for m in maps]


def test_gradcam_puts_the_evidence_where_the_class_is():
    """Red in one quadrant, green in another: the red class's map lies on the red square, the green one's on
    the green square (so maps are neither transposed nor flipped, and follow the target class)."""
    pairs = [
        ("top-left", "bottom-right"),
        ("top-right", "bottom-left"),
        ("bottom-left", "top-right"),
        ("bottom-right", "top-left"),
    ]
    images = torch.zeros(len(pairs), 3, 32, 32)
    for i, (red, green) in enumerate(pairs):
        for colour, quadrant in ((0, red), (1, green)):
            r, c = QUADRANTS[quadrant]
            images[i, colour, r + 4 : r + 12, c + 4 : c + 12] = 1.0
    model = ColourEvidence().eval()
    layer = find_target_layer(model)
    assert (layer.name, layer.height, layer.width) == ("conv", 16, 16)
    for colour in (0, 1):
        maps = grad_cam(model, images, torch.full((len(pairs),), colour), layer)
        assert maps.shape == (len(pairs), 32, 32)
        for shares, pair in zip(quadrant_shares(maps), pairs, strict=True):
            assert shares[pair[colour]] > 0.99, (colour, pair, shares)
    centred = torch.zeros(1, 3, 32, 32)
    centred[0, 0, 12:20, 12:20] = 1.0
    assert centre_share(grad_cam(model, centred, torch.tensor([0]), layer))[0] > 0.99


def test_target_layer_choice():
    assert find_target_layer(build_model("resnet18")).name == "layer2.1.conv2"  # layer3/4 are 2x2 and 1x1
    assert find_target_layer(build_model("resnet18-cifar")).name == "layer4.1.conv2"
    tail = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 10, 1), nn.Flatten())
    assert find_target_layer(tail).name == "0"  # the 1x1 convolution is skipped
    with pytest.raises(CifarlabError, match="no convolution"):
        find_target_layer(nn.Sequential(nn.Flatten(), nn.Linear(3072, 10)))


def test_scale_and_centre_share():
    maps = np.zeros((3, 32, 32))
    maps[0, 8:24, 8:24] = 2.0  # all evidence in the centre
    maps[1] = 1.0  # evenly spread
    shares = centre_share(maps)
    assert shares[0] == pytest.approx(1.0) and shares[1] == pytest.approx(0.25) and np.isnan(shares[2])
    scaled = scale_maps(maps)
    assert scaled[0].max() == 1.0 and (scaled[2] == 0).all()


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


def test_cli_analyze_numbers_only(crafted_run, fake_cifar, tmp_path, capsys):
    run = crafted_run(tmp_path / "cli")
    assert main(["analyze", str(run), "--no-images", "--data-dir", str(fake_cifar)]) == 0
    out = capsys.readouterr().out
    assert "most confused cat -> dog" in out and "skipped galleries" in out
    assert (run / "analysis" / "confusion_matrix.png").is_file()


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p / "missing", "no such run folder"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no test_predictions.npz"),
    ],
)
def test_cli_analyze_bad_run_is_one_line_exit_2(tmp_path, cli_error, fake_cifar, setup, message):
    assert message in cli_error("analyze", str(setup(tmp_path)), "--data-dir", str(fake_cifar), code=2)


@pytest.mark.parametrize("error", [ImportError("No module named 'captum'"), CifarlabError("unreadable predictions")])
def test_a_failed_analysis_after_training_is_reported_not_raised(monkeypatch, tmp_path, capsys, error):
    def broken(run_dir, data=None, **kwargs):
        raise error

    monkeypatch.setattr(analysis, "analyze", broken)
    analysis.analyze_after_training(tmp_path, data=None)  # must not raise: the run itself is finished and saved
    out = capsys.readouterr()
    text = out.out + out.err
    assert "analysis not written" in text and type(error).__name__ in text and f"cifarlab analyze {tmp_path}" in text
