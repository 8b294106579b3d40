"""Legal data that used to lose a run: everything a run's checkpoint will be checked for is checked before the
first epoch (datasets.validate_dataset), and what can be made safe is: top-3 of 2 classes, a dataset folder whose
path is not UTF-8, CIFAR meta files with unprintable class names, a channel constant over the training split."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifarlab.base.errors import DataError
from cifarlab.cli.main import main
from cifarlab.data.cifar10 import ImageData, load_cifar10
from cifarlab.data.loading import load_dataset, validate_dataset
from cifarlab.data.split import FLAT_STD, channel_stats, flat_channels
from cifarlab.engine.train import train
from cifarlab.runs.checkpoint import load_checkpoint
from cifarlab.runs.metrics import summarize, topk_accuracy

QUICK = ["--recipe", "seed", "--epochs", "1", "--image-size", "16", "--device", "cpu"]


def train_folder(root: Path, out: Path, *flags: str) -> int:
    """``cifarlab train --dataset ROOT`` for one quick epoch at 16 px into ``out``, named "run"."""
    return main(["train", "--dataset", str(root), *QUICK, "--out", str(out), "--name", "run", *flags])


def read(path: Path) -> dict:
    return json.loads(path.read_text())


# --- top-k of fewer classes than k ------------------------------------------------------------------------------


def test_top3_of_two_classes_counts_every_sample():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    y = torch.tensor([0, 1, 1, 0])
    assert topk_accuracy(probs, y, 1) == 0.5
    assert topk_accuracy(probs, y, 2) == topk_accuracy(probs, y, 3) == 1.0  # k is capped at the class count
    metrics = summarize(probs, y, ["a", "b"])
    assert metrics["top1"] == 0.5 and metrics["top3"] == 1.0


def test_a_two_class_folder_trains_tests_evaluates_analyzes_reports_and_compares(make_image_folder, tmp_path, capsys):
    root = make_image_folder(tmp_path / "two", classes=("cat", "dog"), per_class=12, test_per_class=4)
    assert train_folder(root, tmp_path / "runs") == 0  # was: a traceback at the first validation (top-3 of 2)
    assert "2 classes: top-3 accuracy counts every image" in capsys.readouterr().out
    run = tmp_path / "runs" / "run"
    assert read(run / "test_metrics.json")["top3"] == 1.0 and read(run / "run.json")["test_top3"] == 1.0
    assert read(run / "analysis" / "summary.json")["top3"] == 1.0  # the analysis that train runs
    assert main(["evaluate", str(run), "--split", "val", "--device", "cpu"]) == 0
    assert read(run / "val_metrics.json")["top3"] == 1.0
    assert main(["report", str(run)]) == 0 and "100.0" in (run / "report.md").read_text()
    assert main(["compare", str(run), "--out", str(tmp_path / "comparison")]) == 0
    capsys.readouterr()  # predict's default --top-k 3 on 2 classes: both classes, never a refusal
    assert main(["predict", "--checkpoint", str(run), str(root / "test" / "cat"), "--json"]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert len(answers) == 4 and all(sorted(p["class"] for p in a["predictions"]) == ["cat", "dog"] for a in answers)


# --- dataset folder paths that the run's records cannot hold ----------------------------------------------------


@pytest.mark.parametrize("name", [b"bad\xff", b"new\nline"], ids=["not-utf8", "newline"])
def test_a_folder_whose_path_is_not_printable_text_is_refused_before_anything_is_decoded(
    name, make_image_folder, tmp_path, monkeypatch, cli_error
):
    parent = os.fsdecode(os.fsencode(str(tmp_path)) + b"/" + name)  # surrogate escapes, as os.listdir gives them
    root = make_image_folder(Path(parent), classes=("a", "b", "c"), per_class=4, test_per_class=2)
    cache = tmp_path / "cache"
    monkeypatch.setenv("CIFARLAB_CACHE_DIR", str(cache))
    line = cli_error("train", "--dataset", str(root), *QUICK, "--out", str(tmp_path / "runs"), code=1)
    assert "the dataset folder's path is not printable UTF-8 text" in line and "rename the folder" in line
    assert not (tmp_path / "runs").exists() and not cache.exists()  # no run folder, nothing decoded or cached


def test_cifar_in_a_data_folder_that_is_not_utf8_trains_and_evaluates(make_fake_cifar, tmp_path, capsys):
    data_dir = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/data\xff"))
    make_fake_cifar(data_dir, per_batch=40, test_size=40)
    args = ["train", "--data-dir", str(data_dir), "--model", "mycnn", "--epochs", "1", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "runs"), "--name", "run", "--no-analysis"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "runs" / "run"), "--data-dir", str(data_dir), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "data\\udcff" in printed and "\udcff" not in printed  # the folder is named, escaped, on one line


# --- class names of CIFAR meta files ----------------------------------------------------------------------------


def rewrite_names(path: Path, key: str, index: int, name: str | bytes) -> None:
    """Replace one class name in an official meta file (a pickled dict)."""
    meta = pickle.loads(path.read_bytes())
    meta[key][index] = name
    path.write_bytes(pickle.dumps(meta, protocol=2))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bad\x1bname", r"class name 'bad\\\\x1bname' is empty, longer than 100 characters or not printable"),
        (b"nel\x85", r"class name 'nel\\\\x85' is empty"),  # bytes read as latin-1: a C1 control character
        ("", "class name '' is empty"),
        ("x" * 101, "longer than 100 characters"),
        ("coarse00", "two classes are named 'coarse00'"),
    ],
    ids=["escape", "latin1-control", "empty", "long", "twice"],
)
def test_cifar100_meta_with_a_class_name_a_checkpoint_refuses_is_refused_at_load(
    name, message, make_fake_cifar100, tmp_path
):
    root = make_fake_cifar100(tmp_path / "c100")
    meta = root / "cifar-100-python" / "meta"
    rewrite_names(meta, "coarse_label_names", 3, name)
    with pytest.raises(DataError, match=rf"^{re.escape(str(meta))}: .*{message}"):
        load_dataset("cifar100", root, labels="coarse", allow_download=False)
    assert len(load_dataset("cifar100", root, labels="fine", allow_download=False).classes) == 100  # fine names ok


def test_cifar100_with_a_control_character_in_a_class_name_trains_nothing(make_fake_cifar100, tmp_path, cli_error):
    root = make_fake_cifar100(tmp_path / "c100")
    rewrite_names(root / "cifar-100-python" / "meta", "coarse_label_names", 0, "bell\x07")
    args = ["train", "--dataset", "cifar100", "--labels", "coarse", "--data-dir", str(root), *QUICK]
    line = cli_error(*args, "--out", str(tmp_path / "runs"), code=1)
    assert r"meta: class name 'bell\\x07'" in line and not (tmp_path / "runs").exists()


def test_cifar10_batches_meta_with_a_control_character_is_refused(make_fake_cifar, tmp_path):
    root = make_fake_cifar(tmp_path / "c10", per_batch=10, test_size=10)
    meta = root / "cifar-10-batches-py" / "batches.meta"
    names = ["airplane", "auto\rmobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    meta.write_bytes(pickle.dumps({"label_names": names}, protocol=2))
    with pytest.raises(DataError, match=r"batches.meta: class name 'auto\\\\rmobile' is empty"):
        load_cifar10(root, allow_download=False)


# --- a channel constant over the training split -------------------------------------------------------------------


def test_a_constant_channel_is_centred_not_divided_by_zero():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(20, 3, 8, 8), dtype=np.uint8)
    images[:, 2] = 0
    mean, std = channel_stats(torch.from_numpy(images))
    x = images.astype(np.float64) / 255
    assert np.allclose(std[:2], x[:, :2].std(axis=(0, 2, 3), ddof=1)) and mean[2] == 0.0 and std[2] == FLAT_STD
    assert flat_channels(std) == ["blue"]
    images[:, 1] = 100
    images[0, 1, 0, 0] = 101  # nearly constant: one pixel one grey level off, std far under one grey level
    assert flat_channels(channel_stats(torch.from_numpy(images))[1]) == ["green", "blue"]


def test_a_folder_without_blue_trains_and_says_so(make_image_folder, tmp_path, capsys):
    root = make_image_folder(tmp_path / "noblue", per_class=10, test_per_class=3)
    for png in sorted(root.rglob("*.png")):
        pixels = np.array(Image.open(png))
        pixels[..., 2] = 0
        Image.fromarray(pixels).save(png)
    assert train_folder(root, tmp_path / "runs", "--no-analysis") == 0  # was: NaN at batch 1, "try a lower --lr"
    assert "blue: constant over the training split" in capsys.readouterr().out
    run = tmp_path / "runs" / "run"
    normalization = read(run / "normalization.json")
    assert normalization["mean"][2] == 0.0 and normalization["std"][2] == FLAT_STD
    assert load_checkpoint(run, "best.pt")["std"][2] == FLAT_STD
    assert np.isfinite(read(run / "test_metrics.json")["loss"])


# --- the one check before training --------------------------------------------------------------------------------


def api_data(classes: list[str], size: int = 16, channels: int = 3, **record: object) -> ImageData:
    """ImageData as a caller of the API might build it: 10 images per class, its record as a folder's."""
    labels = torch.arange(len(classes)).repeat_interleave(10)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (len(labels), channels, size, size), dtype=torch.uint8, generator=gen)
    base = {"kind": "folder", "path": "/data/api", "classes": classes, "image_size": size, "fingerprint": "0" * 16}
    return ImageData(images, labels, images[:4], labels[:4], classes, record={**base, **record})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (api_data(["a", "b\x1bc"]), "'classes' has a name that is empty, longer than 100 characters or not printable"),
        (api_data(["a", "a"]), "'classes' names a class twice"),
        (api_data([f"c{k}" for k in range(1001)], size=16), "'classes' has 1001 names"),
        (api_data(["a", "b"], image_size=32), "'dataset' image_size is not the checkpoint's (32)"),
        (api_data(["a", "b"], kind="imagenet"), "'dataset' kind is not one of cifar10, cifar100, folder"),
        (api_data(["a", "b"], fingerprint=None), "'dataset' fingerprint is missing"),
        (api_data(["a", "b"], layout="x\ny"), "'dataset' layout is not a string"),
        (api_data(["a", "b"], channels=1), "the training images are not 3 x 16 x 16"),
    ],
    ids=["unprintable-name", "twice", "too-many", "size", "kind", "fingerprint", "layout", "grey"],
)
def test_data_a_checkpoint_would_refuse_is_refused_before_the_run_folder_exists(data, message, small_config, tmp_path):
    config = small_config(out=tmp_path / "runs", epochs=1, val_size=None, batch_size=10)
    with pytest.raises(DataError, match="^/data/api: ") as refused:
        train(config, data=data)
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_validate_dataset_refuses_normalisation_a_checkpoint_refuses():
    data = api_data(["a", "b"])
    validate_dataset(data, [0.5] * 3, [0.2] * 3, verbose=False)  # valid: nothing raised
    with pytest.raises(DataError, match="'mean' is not a list of 3 finite numbers"):
        validate_dataset(data, [0.5, float("nan"), 0.5], [0.2] * 3)
