"""Training end to end: the files of a run, their consistency, the seed recipe, the split and normalisation, the
single test evaluation, the device choice, determinism and replay."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cifarlab.base.errors import UsageError
from cifarlab.base.progress import progress
from cifarlab.cli.main import main
from cifarlab.config.train_config import RECIPE_HELP, RECIPES, make_config, parse_overrides
from cifarlab.data.cifar10 import CLASSES, load_cifar10
from cifarlab.data.split import default_val_size
from cifarlab.engine.train import train
from cifarlab.models.registry import build_model
from cifarlab.runs.checkpoint import load_checkpoint, model_from_checkpoint
from cifarlab.runs.folder import RunFolder
from cifarlab.runs.layout import METRICS_COLUMNS, read_metrics_csv
from cifarlab.tools.evaluate import evaluate

RUN_FILES = [
    "config.json",
    "split.json",
    "normalization.json",
    "metrics.csv",
    "best.pt",
    "last.pt",
    "run.json",
    "test_metrics.json",
    "test_predictions.npz",
]


def read(run: Path, name: str) -> dict:
    return json.loads((run / name).read_text())


def cli_train(config: Path, out: Path, name: str, data_dir: Path, *flags: str) -> Path:
    """``cifarlab train --config CONFIG`` on the CPU without the analysis; returns the run folder."""
    assert (
        main(
            [
                "train",
                "--config",
                str(config),
                "--out",
                str(out),
                "--name",
                name,
                "--data-dir",
                str(data_dir),
                "--device",
                "cpu",
                "--no-analysis",
                *flags,
            ]
        )
        == 0
    )
    return out / name


@pytest.mark.parametrize("name", ["mycnn", "resnet18", pytest.param("resnet18-cifar", marks=pytest.mark.slow)])
def test_a_few_steps_lower_the_loss_on_a_tiny_batch(name, engine):
    torch.manual_seed(0)
    model = build_model(name)
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 10
    optimizer = engine("make_optimizer")(model, make_config("seed", model=name))
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_a_run_writes_every_file(tiny_run):
    for name in RUN_FILES:
        assert (tiny_run / name).is_file(), name
    rows = read_metrics_csv(tiny_run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2] and list(rows[0]) == METRICS_COLUMNS
    for r in rows:
        for key in ("train_top1", "val_top1", "val_top3"):
            assert 0 <= r[key] <= 1
    summary, tested = read(tiny_run, "run.json"), read(tiny_run, "test_metrics.json")
    best = max(rows, key=lambda r: r["val_top1"])
    assert (summary["best_val_top1"], summary["best_epoch"]) == (best["val_top1"], best["epoch"])
    assert summary["train_val_gap"] == best["train_top1"] - best["val_top1"]
    assert (summary["test_top1"], summary["test_top3"]) == (tested["top1"], tested["top3"])
    assert all(0 <= summary[k] <= 1 for k in ("best_val_top1", "test_top1", "test_top3"))  # fractions
    assert summary["images_per_second"] == np.median([r["images_per_second"] for r in rows])
    assert summary["params"] == sum(p.numel() for p in build_model("mycnn").parameters())
    assert summary["macs"] > 0 and summary["train_seconds"] > 0 and summary["torch"] == torch.__version__
    split = read(tiny_run, "split.json")
    assert len(split["val"]) == 100 and not set(split["train"]) & set(split["val"])
    assert len(split["train"]) + len(split["val"]) == 1000


def test_checkpoint_holds_everything_to_resume(tiny_run):
    state = load_checkpoint(tiny_run / "last.pt")
    for key in ("model", "optimizer", "scheduler", "epoch", "config", "mean", "std", "classes", "rng", "history"):
        assert key in state
    assert state["epoch"] == 2 and state["classes"] == list(CLASSES)
    norm = read(tiny_run, "normalization.json")
    assert state["mean"] == norm["mean"] and state["std"] == norm["std"]
    model_from_checkpoint(state)  # loads into a fresh model without error


def test_split_is_stratified_and_normalisation_comes_from_the_training_split_only(tiny_run, fake_cifar):
    """README: a stratified split from the seed, normalisation from the training split only."""
    data = load_cifar10(fake_cifar, allow_download=False)
    split, norm = read(tiny_run, "split.json"), read(tiny_run, "normalization.json")
    labels = data.train_labels.numpy()
    assert np.bincount(labels[split["val"]], minlength=10).tolist() == [10] * 10
    pixels = data.train_images.numpy().astype(np.float64) / 255
    train = pixels[split["train"]]
    np.testing.assert_allclose(norm["mean"], train.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(norm["std"], train.std(axis=(0, 2, 3), ddof=1), rtol=1e-10)
    # and not the statistics of every training image, nor of training and test images together
    everything = np.concatenate([pixels, data.test_images.numpy().astype(np.float64) / 255])
    for images in (pixels, everything):
        assert np.abs(np.array(norm["mean"]) - images.mean(axis=(0, 2, 3))).max() > 1e-6
        assert np.abs(np.array(norm["std"]) - images.std(axis=(0, 2, 3), ddof=1)).max() > 1e-6


def test_test_metrics_match_the_saved_predictions(tiny_run):
    metrics = read(tiny_run, "test_metrics.json")
    saved = np.load(tiny_run / "test_predictions.npz")
    y, probs, index = saved["y_true"], saved["probs"], saved["index"]
    assert y.dtype == np.int64 and probs.dtype == np.float32 and probs.shape == (len(y), 10)
    assert np.array_equal(index, np.arange(len(y)))
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    top3 = np.argsort(-probs, axis=1)[:, :3]
    assert metrics["top1"] == (top3[:, 0] == y).mean()  # exactly: stored as count / n in float64
    assert metrics["top3"] == (top3 == y[:, None]).any(1).mean()
    assert metrics["loss"] == pytest.approx(-np.log(probs[np.arange(len(y)), y]).mean(), rel=1e-5)
    for c, name in enumerate(CLASSES):
        assert metrics["per_class_accuracy"][name] == pytest.approx((top3[y == c, 0] == c).mean(), abs=1e-6)


class SpiedData:
    """A loaded data set whose test images and labels note every read: how many epochs ``metrics.csv`` held
    then, and whether ``run.json`` (written after the test evaluation) existed yet."""

    def __init__(self, data, run: Path) -> None:
        self.data, self.run, self.reads = data, run, []

    def __getattr__(self, name: str):
        return getattr(self.data, name)

    def note(self, what: str) -> None:
        csv = self.run / "metrics.csv"
        epochs = len(read_metrics_csv(csv)) if csv.is_file() else 0
        self.reads.append((what, epochs, (self.run / "run.json").is_file()))

    @property
    def test_images(self):
        self.note("images")
        return self.data.test_images

    @property
    def test_labels(self):
        self.note("labels")
        return self.data.test_labels


@pytest.mark.parametrize("tested", ["best", "last"])
def test_the_test_set_is_scored_once_after_training_with_the_chosen_checkpoint(
    tested, small_config, fake_cifar, tmp_path
):
    """README: the test set is touched once, by the best-validation checkpoint (or `last`, per test_checkpoint)."""
    config = small_config(out=tmp_path, epochs=2, limit_train=200, batch_size=10, test_checkpoint=tested)
    data = SpiedData(load_cifar10(fake_cifar, allow_download=False), tmp_path / "run")
    run = train(config, data=data)
    rows = read_metrics_csv(run / "metrics.csv")
    before_summary = [(what, epochs) for what, epochs, summary in data.reads if not summary]
    assert [what for what, _ in before_summary].count("images") == 1  # scored once
    assert all(epochs == 2 for _, epochs in before_summary)  # and only once training was over
    metrics = read(run, "test_metrics.json")
    best_epoch = max(rows, key=lambda r: r["val_top1"])["epoch"]  # the first epoch with the highest val top-1
    assert best_epoch == 1  # 20 steps learn the generated data, so best (epoch 1) and last (epoch 2) differ
    assert metrics["checkpoint"] == f"{tested}.pt"
    assert metrics["epoch"] == (best_epoch if tested == "best" else 2)
    assert read(run, "run.json")["best_epoch"] == best_epoch
    again = evaluate(run / f"{tested}.pt", split="test", out=tmp_path / "again", device="cpu", data_dir=str(fake_cifar))
    saved, recomputed = np.load(run / "test_predictions.npz"), np.load(tmp_path / "again" / "test_predictions.npz")
    np.testing.assert_allclose(saved["probs"], recomputed["probs"], rtol=0, atol=1e-6)
    assert again["epoch"] == metrics["epoch"]


def test_the_seed_recipe_has_the_course_projects_values():
    """README: cross-entropy, Adam at 1e-3, StepLR(10, 0.1), 20 epochs, batch 64, normalisation only."""
    c = make_config("seed")
    assert (c.optimizer, c.lr, c.weight_decay, c.scheduler, c.step_size, c.gamma) == (
        "adam",
        1e-3,
        0.0,
        "step",
        10,
        0.1,
    )
    assert (c.epochs, c.batch_size, c.augment, c.label_smoothing, c.weight_averaging, c.tta) == (
        20,
        64,
        "none",
        0.0,
        "none",
        0,
    )
    assert (c.model, c.val_size, c.test_checkpoint, c.seed) == ("mycnn", None, "best", 0)  # None: 10% held out
    assert default_val_size(50_000) == 5000  # the course's 90/10 split of CIFAR-10's training set


def test_a_seed_run_steps_adam_in_batches_of_64_and_logs_each_epochs_starting_lr(small_config, fake_cifar, tmp_path):
    """Eleven epochs of the seed recipe on 128 images: StepLR decays once, after epoch 10, and ``lr`` in
    metrics.csv is the rate each epoch started with; 2 Adam steps per epoch means batches of 64. The recipe as
    written: the generated set is 1,000 images, which scaling to the dataset would adapt (test_small_data.py)."""
    config = small_config.write(
        tmp_path / "config.json", epochs=11, limit_train=128, val_size=10, batch_size=None, scale_to_data=False
    )
    run = cli_train(config, tmp_path, "seed", fake_cifar)
    assert read(run, "config.json")["batch_size"] == 64
    lrs = [r["lr"] for r in read_metrics_csv(run / "metrics.csv")]
    assert lrs == pytest.approx([1e-3] * 10 + [1e-4], rel=1e-12)
    state = load_checkpoint(run, "last.pt")
    group = state["optimizer"]["param_groups"][0]
    assert group["betas"] == (0.9, 0.999) and group["weight_decay"] == 0 and not group["amsgrad"]  # plain Adam
    assert {float(s["step"]) for s in state["optimizer"]["state"].values()} == {22.0}  # 11 epochs x 128 / 64
    assert (state["scheduler"]["step_size"], state["scheduler"]["gamma"]) == (10, 0.1)
    assert state["scheduler"]["last_epoch"] == 11 and group["lr"] == pytest.approx(1e-4)


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_the_device_is_cuda_else_mps_else_cpu(engine, monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    pick_device = engine("pick_device")
    assert pick_device("auto").type == expected
    assert pick_device("cpu").type == "cpu"  # --device overrides the choice


def test_an_unavailable_device_is_a_usage_error(engine, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for name in ("cuda", "mps"):
        with pytest.raises(UsageError, match=f"--device {name} was asked for"):
            engine("pick_device")(name)


def test_evaluate_reproduces_test_metrics_from_the_checkpoint_alone(tiny_run, fake_cifar, tmp_path):
    original = read(tiny_run, "test_metrics.json")
    again = evaluate(tiny_run / "best.pt", split="test", out=tmp_path, device="cpu", data_dir=str(fake_cifar))
    for key in ("top1", "top3", "n", "epoch"):
        assert again[key] == original[key]
    assert again["loss"] == pytest.approx(original["loss"], rel=1e-6)
    a, b = np.load(tiny_run / "test_predictions.npz"), np.load(tmp_path / "test_predictions.npz")
    assert np.allclose(a["probs"], b["probs"], atol=1e-6)


def test_evaluate_on_validation_uses_the_runs_split(tiny_run, fake_cifar, tmp_path):
    metrics = evaluate(tiny_run, split="val", out=tmp_path, device="cpu", data_dir=str(fake_cifar))
    saved = np.load(tmp_path / "val_predictions.npz")
    assert sorted(saved["index"].tolist()) == read(tiny_run, "split.json")["val"]
    best = read(tiny_run, "run.json")["best_val_top1"]
    assert metrics["top1"] == best  # the same count of the same images: exactly


def test_learns_the_generated_data(tiny_run):
    assert read(tiny_run, "run.json")["test_top1"] > 0.5  # chance is 0.1


@pytest.mark.slow
def test_same_seed_same_metrics_and_replay_from_config(fake_cifar, tmp_path, tiny_run):
    run = cli_train(tiny_run / "config.json", tmp_path, "replay", fake_cifar)
    assert not (run / "analysis").exists()  # --no-analysis
    assert RunFolder(run).config.to_dict() == {
        **RunFolder(tiny_run).config.to_dict(),
        "out": str(tmp_path),
        "name": "replay",
    }
    a, b = read_metrics_csv(tiny_run / "metrics.csv"), read_metrics_csv(run / "metrics.csv")
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top3", "lr"):
            assert ra[key] == rb[key], key
    assert read(run, "test_metrics.json")["top1"] == read(tiny_run, "test_metrics.json")["top1"]


def test_other_seed_other_split_and_a_balanced_slice_normalised_on_its_own(
    small_config, fake_cifar, tmp_path, tiny_run
):
    config = small_config.write(tmp_path / "config.json", epochs=1, seed=1, limit_train=100)
    run = cli_train(config, tmp_path, "s1", fake_cifar)
    split, other = read(run, "split.json"), read(tiny_run, "split.json")
    assert split["val"] != other["val"]
    data = load_cifar10(fake_cifar, allow_download=False)
    assert np.bincount(data.train_labels.numpy()[split["train"]], minlength=10).tolist() == [10] * 10
    assert not set(split["train"]) & set(split["val"])
    train = data.train_images.numpy()[split["train"]].astype(np.float64) / 255
    np.testing.assert_allclose(read(run, "normalization.json")["mean"], train.mean(axis=(0, 2, 3)), rtol=1e-10)


def test_recipes_lists_every_recipe(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(RECIPES)
    for line, name in zip(lines, RECIPES, strict=True):
        assert RECIPE_HELP[name] in line


def test_progress_is_a_few_plain_lines_in_a_log_and_a_bar_in_a_terminal(capsys, monkeypatch):
    """README: progress is a tqdm bar in a terminal and a few plain lines in a log file or CI."""
    assert list(progress(range(80), 80, "epoch 1/2")) == list(range(80))
    assert capsys.readouterr().out.splitlines() == [f"  epoch 1/2: {i}/80 batches" for i in (20, 40, 60)]
    monkeypatch.setattr("cifarlab.base.progress.is_terminal", lambda: True)
    assert list(progress(range(80), 80, "epoch 1/2")) == list(range(80))
    captured = capsys.readouterr()
    assert captured.out == "" and "\repoch 1/2:   0%|" in captured.err  # a bar, redrawn in place


def test_run_files_get_ordinary_permissions(tiny_run):
    umask = os.umask(0)
    os.umask(umask)
    for name in ("best.pt", "metrics.csv", "config.json"):
        assert stat.S_IMODE((tiny_run / name).stat().st_mode) == 0o666 & ~umask, name


def test_key_value_overrides_read_json_else_text():
    overrides = parse_overrides(["batch_size=64", "bf16=false", "weight_averaging=ema", "lr=1e-3"])
    assert overrides == {"batch_size": 64, "bf16": False, "weight_averaging": "ema", "lr": 0.001}
    assert make_config("fast", **overrides).batch_size == 64
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_overrides(["batch_size"])
    with pytest.raises(UsageError, match="unknown config key 'batchsize'"):
        parse_overrides(["batchsize=64"])
