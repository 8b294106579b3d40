"""Behaviour of data.py, metrics.py and checkpoint.py that only slow tests (or none) checked before mutation testing.

Each test states a promise of these modules: exact split and subset sizes, the pixel geometry of the augmentations,
the batch order, metrics against counts by hand, every checkpoint field's accepted range and its refusal message,
and what a download leaves behind. All fast: small generated data, a width-8 fastcnn, no training. The last section
pins engine promises one-line mutations broke silently: the TensorBoard grid of misclassified images, bf16 off unless
a recipe asks, and the final test inside a --time-budget (tiny runs of 1 epoch, a fake clock where time matters).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import shutil
import socket
import tarfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import cifarlab.data.cifar10
from cifarlab.base.errors import CheckpointError, DataError
from cifarlab.data.batches import Batches, random_crop, random_translate, reflect_index
from cifarlab.data.cifar10 import BATCH_DIR, CLASSES, fetch, file_md5, load_cifar10
from cifarlab.data.split import balanced_subset, stratified_split
from cifarlab.models.registry import MODELS, build_model
from cifarlab.runs.checkpoint import (
    describe_mismatch,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
    unwrap,
)
from cifarlab.runs.metrics import nll, per_class_accuracy, summarize, topk_accuracy, topk_hits, write_test_results

# ---------------------------------------------------------------------------------------------------------------
# metrics: counted by hand on 7 samples of 4 classes (ranks of the true class: 1, 2, 3, 1, 2, 2, 4)
# ---------------------------------------------------------------------------------------------------------------

PROBS = torch.tensor(
    [
        [0.6, 0.2, 0.1, 0.1],  # true 0, rank 1
        [0.4, 0.3, 0.2, 0.1],  # true 1, rank 2
        [0.1, 0.2, 0.3, 0.4],  # true 1, rank 3
        [0.1, 0.1, 0.2, 0.6],  # true 3, rank 1
        [0.5, 0.1, 0.3, 0.1],  # true 2, rank 2
        [0.3, 0.4, 0.2, 0.1],  # true 0, rank 2
        [0.2, 0.3, 0.4, 0.1],  # true 3, rank 4
    ]
)
Y = torch.tensor([0, 1, 1, 3, 2, 0, 3])
TRUE_P = [0.6, 0.3, 0.2, 0.6, 0.3, 0.3, 0.1]


def test_topk_hits_and_accuracy_count_by_hand():
    assert topk_hits(PROBS, Y, 1).tolist() == [1, 0, 0, 1]
    assert topk_hits(PROBS, Y, 2).tolist() == [2, 1, 1, 1]
    assert topk_hits(PROBS, Y, 3).tolist() == [2, 2, 1, 1]
    assert topk_hits(PROBS, Y, 1).dtype == torch.int64
    assert topk_accuracy(PROBS, Y, 1) == 2 / 7
    assert topk_accuracy(PROBS, Y, 3) == 6 / 7


def test_per_class_accuracy_is_nan_for_a_class_without_samples():
    probs = torch.cat([PROBS, torch.zeros(7, 1)], dim=1)  # a fifth class that no sample has
    acc = per_class_accuracy(probs, Y)
    assert acc[:4] == [0.5, 0.0, 0.0, 0.5] and math.isnan(acc[4])


def test_nll_is_the_mean_cross_entropy_and_a_zero_probability_is_capped():
    assert nll(PROBS, Y) == pytest.approx(-np.mean(np.log(TRUE_P)), rel=1e-6)
    zero = torch.tensor([[1.0, 0.0]])
    assert nll(zero, torch.tensor([1])) == pytest.approx(-math.log(1e-12))


def test_summarize_keys_per_class_accuracy_by_the_names_it_is_given():
    s = summarize(PROBS.numpy().astype(np.float64), Y.numpy().astype(np.int32), ["a", "b", "c"])
    assert s["n"] == 7 and s["top1"] == 2 / 7 and s["top3"] == 6 / 7
    assert s["loss"] == pytest.approx(-np.mean(np.log(TRUE_P)), rel=1e-6)
    assert s["per_class_accuracy"] == {"a": 0.5, "b": 0.0, "c": 0.0}  # a 4th output without a name is left out


def test_write_test_results_writes_the_numbers_and_what_they_come_from(tmp_path):
    index = torch.arange(10, 17)
    metrics = write_test_results(tmp_path, "val", PROBS, Y, index, ["a", "b", "c", "d"], {"epoch": 3})
    assert metrics["split"] == "val" and metrics["epoch"] == 3 and metrics["top1"] == 2 / 7
    assert json.loads((tmp_path / "val_metrics.json").read_text()) == metrics
    with np.load(tmp_path / "val_predictions.npz") as saved:
        assert saved["y_true"].dtype == np.int64 and saved["y_true"].tolist() == Y.tolist()
        assert saved["probs"].dtype == np.float32 and np.array_equal(saved["probs"], PROBS.numpy())
        assert saved["index"].dtype == np.int64 and saved["index"].tolist() == index.tolist()


# ---------------------------------------------------------------------------------------------------------------
# data: reading and validating batch files
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def small_cifar(make_fake_cifar, tmp_path) -> Path:
    """A generated CIFAR-10 folder of one's own (10 images per batch) that a test may change."""
    return make_fake_cifar(tmp_path / "small", per_batch=10, test_size=10)


def write_pickle(path: Path, obj, protocol: int = 2) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def batch_with(root: Path, name: str = "data_batch_1", protocol: int = 2, **changes) -> Path:
    path = root / BATCH_DIR / name
    batch = pickle.loads(path.read_bytes(), encoding="latin1")
    batch.update(changes)
    write_pickle(path, batch, protocol)
    return path


def refusal_of(root: Path) -> str:
    with pytest.raises(DataError) as info:
        load_cifar10(root, allow_download=False)
    return str(info.value)


def test_a_batch_that_is_not_a_dict_with_data_and_labels_is_refused(small_cifar):
    path = small_cifar / BATCH_DIR / "data_batch_1"
    expected = f"{path} is not a CIFAR-10 batch (expected a dict with 'data' and 'labels')"
    for content in ([1, 2, 3], {"labels": [0]}, {"data": np.zeros((1, 3072), np.uint8)}):
        write_pickle(path, content)
        assert refusal_of(small_cifar) == expected


@pytest.mark.parametrize(
    "data, got",
    [
        ([[0] * 3072] * 10, "list None"),
        (np.zeros((10, 3072), np.int16), "int16 (10, 3072)"),
        (np.zeros((10, 3072, 1), np.uint8), "uint8 (10, 3072, 1)"),
        (np.zeros((10, 3073), np.uint8), "uint8 (10, 3073)"),
    ],
    ids=["list", "int16", "3-d", "3073 columns"],
)
def test_data_that_is_not_uint8_rows_of_3072_is_refused_with_what_it_is(data, got, small_cifar):
    path = batch_with(small_cifar, data=data)
    assert refusal_of(small_cifar) == f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {got}"


@pytest.mark.parametrize(
    "labels",
    [[0, 1, "2"] + [0] * 7, np.zeros(10, dtype=np.float32), (0,) * 10],
    ids=["a string", "floats", "a tuple"],
)
def test_labels_must_be_integers(labels, small_cifar):
    path = batch_with(small_cifar, labels=labels)
    assert refusal_of(small_cifar) == f"{path}: 'labels' must be a list of integers"


@pytest.mark.parametrize("dtype", [np.int64, np.uint8])
def test_integer_arrays_are_accepted_as_labels(dtype, small_cifar):
    labels = np.arange(10, dtype=dtype)
    batch_with(small_cifar, "test_batch", labels=labels)
    assert load_cifar10(small_cifar, allow_download=False).test_labels.tolist() == list(range(10))


def test_a_label_too_large_for_int64_is_out_of_range(small_cifar):
    path = batch_with(small_cifar, labels=[2**70] + [0] * 9)
    assert refusal_of(small_cifar) == f"{path}: 'labels' must be a list of integers in 0-9"


@pytest.mark.parametrize(
    "labels, count", [([0] * 9, 9), (np.zeros((10, 1), np.int64), 10)], ids=["one short", "a column"]
)
def test_labels_must_be_one_per_image(labels, count, small_cifar):
    path = batch_with(small_cifar, labels=labels)
    assert refusal_of(small_cifar) == f"{path}: 10 images but {count} labels"


@pytest.mark.parametrize("bad, low, high", [(-1, -1, 8), (10, 0, 10)])
def test_labels_outside_0_to_9_are_refused_with_the_range_found(bad, low, high, small_cifar):
    path = batch_with(small_cifar, labels=[bad] + list(range(9)))
    assert refusal_of(small_cifar) == f"{path}: labels out of range 0-9 (min {low}, max {high})"


def test_an_empty_batch_is_read_as_no_images(small_cifar):
    # protocol 4: protocol 2 writes an empty array's bytes through the builtin bytes(), which is refused
    batch_with(small_cifar, "test_batch", protocol=4, data=np.zeros((0, 3072), np.uint8), labels=[])
    data = load_cifar10(small_cifar, allow_download=False)
    assert data.test_images.shape == (0, 3, 32, 32) and data.test_labels.shape == (0,)


def test_class_names_come_from_batches_meta_else_the_standard_ones(small_cifar):
    meta = small_cifar / BATCH_DIR / "batches.meta"
    names = [b"caf\xe9"] + [f"c{i}".encode() for i in range(1, 10)]
    write_pickle(meta, {"label_names": names}, protocol=4)
    assert load_cifar10(small_cifar, allow_download=False).classes == ["café"] + [f"c{i}" for i in range(1, 10)]
    meta.unlink()
    assert load_cifar10(small_cifar, allow_download=False).classes == list(CLASSES)


NOT_META = "{path} is not a CIFAR-10 batches.meta (expected a dict with a list 'label_names')"


@pytest.mark.parametrize(
    "meta, message",
    [
        ([list(CLASSES)], NOT_META),
        ({"label_names": "airplane"}, NOT_META),
        ({"label_names": [1] * 10}, NOT_META),
        ({"label_names": list(CLASSES[:9])}, "{path}: expected 10 label names, found 9"),
    ],
    ids=["a list", "a string", "numbers", "nine names"],
)
def test_a_bad_batches_meta_is_refused(meta, message, small_cifar):
    path = small_cifar / BATCH_DIR / "batches.meta"
    write_pickle(path, meta)
    assert refusal_of(small_cifar) == message.format(path=path)


def test_a_file_where_the_batch_folder_should_be_is_refused(tmp_path):
    (tmp_path / BATCH_DIR).write_text("not a folder")
    message = f"{tmp_path / BATCH_DIR} is not a folder (it should hold the CIFAR-10 batch files)"
    assert refusal_of(tmp_path) == message
    with pytest.raises(DataError, match="is not a folder"):
        load_cifar10(tmp_path)  # downloads allowed: still refused, nothing fetched


def test_an_absent_folder_without_downloads_says_where_it_looked(tmp_path):
    message = f"CIFAR-10 not found: no {BATCH_DIR}/ folder in {(tmp_path / 'nowhere').resolve()}"
    assert refusal_of(tmp_path / "nowhere") == message


def test_an_incomplete_folder_is_replaced_naming_the_first_missing_file(small_cifar, tmp_path, monkeypatch, capsys):
    serve(monkeypatch, archive_of(small_cifar / BATCH_DIR, tmp_path / "a.tar.gz"))
    root = tmp_path / "root"
    (root / BATCH_DIR).mkdir(parents=True)
    shutil.copy(small_cifar / BATCH_DIR / "data_batch_1", root / BATCH_DIR)
    assert len(load_cifar10(root).train_labels) == 50
    expected = f"{root / BATCH_DIR} is incomplete (no data_batch_2; an interrupted download?): replacing it"
    assert expected in capsys.readouterr().out


def test_a_complete_folder_is_read_without_downloading(fake_cifar, monkeypatch):
    def no_fetch(url, dest):
        raise AssertionError("a complete folder must not be downloaded again")

    monkeypatch.setattr(cifarlab.data.cifar10, "fetch", no_fetch)
    assert len(load_cifar10(fake_cifar).train_labels) == 1000


# ---------------------------------------------------------------------------------------------------------------
# data: downloads
# ---------------------------------------------------------------------------------------------------------------


def archive_of(folder: Path, path: Path, leave_out: str | None = None) -> Path:
    """A tar.gz laid out like the official one, optionally without one of its files."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=BATCH_DIR, filter=lambda m: None if leave_out and m.name.endswith(leave_out) else m)
    return path


def serve(monkeypatch, archive: Path) -> list[Path]:
    """Downloads copy ``archive`` (whose checksum is trusted); returns where each download was written."""
    dests: list[Path] = []

    def fake_fetch(url: str, dest: Path) -> None:
        dests.append(dest)
        shutil.copyfile(archive, dest)

    monkeypatch.setattr(cifarlab.data.cifar10, "fetch", fake_fetch)
    monkeypatch.setattr(cifarlab.data.cifar10, "CIFAR_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    return dests


def test_fetch_streams_a_url_into_a_file(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(3 << 20))
    fetch(source.as_uri(), tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes()


def test_file_md5_matches_hashlib_over_several_blocks(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(os.urandom((2 << 20) + 5))
    assert file_md5(path) == hashlib.md5(path.read_bytes()).hexdigest()


def test_a_download_is_written_in_a_temporary_folder_inside_the_data_folder(small_cifar, tmp_path, monkeypatch):
    dests = serve(monkeypatch, archive_of(small_cifar / BATCH_DIR, tmp_path / "a.tar.gz"))
    root = tmp_path / "a" / "b" / "root"  # parents are made too
    assert len(load_cifar10(root).train_labels) == 50
    [dest] = dests
    assert dest.name == "cifar-10-python.tar.gz" and dest.parent.parent == root
    assert dest.parent.name.startswith(cifarlab.data.cifar10.DOWNLOAD_PREFIX) and not dest.parent.exists()
    assert sorted(p.name for p in root.iterdir()) == [BATCH_DIR]


def test_a_download_says_how_to_use_a_copy_one_already_has(small_cifar, tmp_path, monkeypatch, capsys):
    serve(monkeypatch, archive_of(small_cifar / BATCH_DIR, tmp_path / "a.tar.gz"))
    load_cifar10(tmp_path / "root")
    out = capsys.readouterr().out
    assert "downloading" in out
    assert "To use a copy you already have, give --data-dir DIR or set CIFARLAB_DATA_DIR=DIR." in out


def test_a_dangling_link_in_place_of_the_folder_is_replaced(small_cifar, tmp_path, monkeypatch):
    serve(monkeypatch, archive_of(small_cifar / BATCH_DIR, tmp_path / "a.tar.gz"))
    root = tmp_path / "root"
    root.mkdir()
    (root / BATCH_DIR).symlink_to(tmp_path / "gone")
    assert len(load_cifar10(root).test_labels) == 10
    assert (root / BATCH_DIR).is_dir() and not (root / BATCH_DIR).is_symlink()


def test_a_download_that_is_not_a_tar_gz_is_refused(tmp_path, monkeypatch):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"<html>not found</html>" * 50)
    serve(monkeypatch, junk)
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path / "root")
    assert (
        str(info.value)
        == f"{cifarlab.data.cifar10.CIFAR_URL}: the download is not a readable tar.gz archive (not a gzip file)"
    )
    assert not (tmp_path / "root").exists()


def test_a_python_without_safe_extraction_refuses_to_extract(small_cifar, tmp_path, monkeypatch):
    serve(monkeypatch, archive_of(small_cifar / BATCH_DIR, tmp_path / "a.tar.gz"))
    monkeypatch.delattr(tarfile, "data_filter")
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path / "root")
    assert str(info.value) == (
        "extracting the CIFAR-10 archive safely needs Python 3.10.12, 3.11.4 or newer (tarfile's extraction "
        "filters); extract cifar-10-python.tar.gz yourself and give --data-dir"
    )
    assert not (tmp_path / "root").exists()


def test_an_archive_without_a_batch_file_is_refused(small_cifar, tmp_path, monkeypatch):
    serve(monkeypatch, archive_of(small_cifar / BATCH_DIR, tmp_path / "a.tar.gz", leave_out="data_batch_5"))
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path / "root")
    assert str(info.value) == f"{cifarlab.data.cifar10.CIFAR_URL}: the archive has no {BATCH_DIR}/data_batch_5"


def test_a_failed_download_keeps_a_data_folder_that_existed_before(tmp_path, monkeypatch):
    def offline(url, dest):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(cifarlab.data.cifar10, "fetch", offline)
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DataError) as info:
        load_cifar10(root)
    assert root.is_dir() and list(root.iterdir()) == []
    text = str(info.value)
    assert text.startswith(f"CIFAR-10 not found in {root.resolve()} (looked for {root.resolve() / BATCH_DIR})")
    assert text.endswith(
        "failed: OSError: Network is unreachable. Fix: point cifarlab at a folder that holds cifar-10-batches-py/ "
        "with --data-dir DIR or CIFARLAB_DATA_DIR=DIR, or download and extract cifar-10-python.tar.gz into it."
    )


def test_a_checksum_mismatch_says_nothing_was_installed(small_cifar, tmp_path, monkeypatch):
    serve(monkeypatch, archive_of(small_cifar / BATCH_DIR, tmp_path / "a.tar.gz"))
    monkeypatch.setattr(cifarlab.data.cifar10, "CIFAR_MD5", "0" * 32)
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path / "root")
    assert str(info.value).endswith(
        "expected 00000000000000000000000000000000): the download is damaged or not the official archive; "
        "nothing was installed"
    )


# ---------------------------------------------------------------------------------------------------------------
# data: split, subset, augmentation, batches
# ---------------------------------------------------------------------------------------------------------------


def test_a_class_with_no_more_images_than_it_gives_to_validation_is_refused():
    labels = torch.arange(300) % 10  # 30 images per class, and 30 per class asked for validation
    with pytest.raises(DataError, match="class 0 has only 30 images; cannot hold out 30 for validation"):
        stratified_split(labels, 300, seed=0)
    train, val = stratified_split(torch.arange(310) % 10, 300, seed=0)  # one more each: one left to train on
    assert len(val) == 300 and len(train) == 10


def test_balanced_subset_spreads_the_remainder_over_the_first_classes_and_follows_the_seed():
    labels = torch.arange(2000) % 10
    subset = balanced_subset(torch.arange(2000), labels, 55, seed=0)
    assert torch.bincount(labels[subset], minlength=10).tolist() == [6] * 5 + [5] * 5
    assert torch.equal(subset, balanced_subset(torch.arange(2000), labels, 55, seed=0))
    assert not torch.equal(subset, balanced_subset(torch.arange(2000), labels, 55, seed=1))
    picked = balanced_subset(torch.arange(1000, 2000), labels, 20, seed=0)  # only from the indices given
    assert len(picked) == 20 and picked.min() >= 1000


def test_channel_stats_are_exact_in_float64_even_without_bright_pixels():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 10, size=(30, 3, 8, 8), dtype=np.uint8)  # no value reaches 255
    mean, std = cifarlab.data.split.channel_stats(torch.from_numpy(images))
    x = images.astype(np.float64) / 255
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3), ddof=1), rtol=1e-12)


def position_images(n: int) -> torch.Tensor:
    """n identical one-channel images whose pixel (y, x) holds 1 + 32*y + x (so 0 means padding)."""
    return (1 + torch.arange(32 * 32, dtype=torch.float32)).view(1, 1, 32, 32).repeat(n, 1, 1, 1)


def test_random_crop_draws_every_offset_from_0_to_twice_the_padding():
    out = random_crop(position_images(400), 4, torch.Generator().manual_seed(0))
    centre = out[:, 0, 4, 4].long() - 1  # always inside the image: the original pixel (dy, dx)
    dy, dx = centre // 32, centre % 32
    assert set(dy.tolist()) == set(range(9)) and set(dx.tolist()) == set(range(9))
    for i in range(0, 400, 37):  # and the whole image is that window of the padded image
        padded = torch.nn.functional.pad(position_images(1)[0], (4,) * 4)
        assert torch.equal(out[i], padded[:, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32])


def test_reflect_index_mirrors_at_both_edges_without_repeating_them():
    got = reflect_index(torch.arange(-3, 36), 32).tolist()
    assert got == [3, 2, 1] + list(range(32)) + [30, 29, 28, 27]


def test_random_translate_shifts_up_to_the_limit_and_fills_by_reflection():
    images = position_images(300).repeat(1, 3, 1, 1)
    out = random_translate(images, 3, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.is_contiguous(memory_format=torch.channels_last)
    centre = out[:, 0, 16, 16].long() - 1
    dy, dx = centre // 32 - 16, centre % 32 - 16
    assert set(dy.tolist()) == set(range(-3, 4)) and set(dx.tolist()) == set(range(-3, 4))
    torch.manual_seed(1)  # the global generator plays no part
    assert torch.equal(out, random_translate(images, 3, torch.Generator().manual_seed(0)))
    padded = np.pad(images[0, 0].numpy(), 3, mode="reflect")
    for i in range(0, 300, 29):
        y, x = 3 + int(dy[i]), 3 + int(dx[i])
        assert np.array_equal(out[i, 0].numpy(), padded[y : y + 32, x : x + 32])


def numbered_images(n: int) -> torch.Tensor:
    """Image i is filled with the value i (uint8), so a normalised batch with mean 0, std 1/255 gives i back."""
    return torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).repeat(1, 3, 32, 32)


def identity_batches(images: torch.Tensor, batch_size: int, **kwargs) -> Batches:
    labels = torch.arange(len(images))
    return Batches(images, labels, batch_size, torch.zeros(3), torch.full((3,), 1 / 255), **kwargs)


def test_batches_without_shuffle_come_in_order_and_their_count_is_the_ceiling():
    batches = identity_batches(numbered_images(10), 4)
    got = list(batches)
    assert [y.tolist() for _, y in got] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] and len(batches) == 3
    assert all(torch.allclose(x[:, 0, 5, 5], y.float(), atol=1e-4) for x, y in got)
    images = torch.zeros(97, 3, 32, 32, dtype=torch.uint8)
    assert [len(identity_batches(images[:n], 32)) for n in (96, 97)] == [3, 4]
    assert [len(identity_batches(images[:n], 16, world_size=2)) for n in (96, 97)] == [3, 3]


def test_shuffled_batches_are_a_new_permutation_each_epoch():
    batches = identity_batches(numbered_images(50), 50, shuffle=True, seed=0)
    first, second = (next(iter(batches))[1].tolist() for _ in range(2))
    assert sorted(first) == list(range(50)) and first != list(range(50)) and first != second


def test_shards_of_an_odd_count_are_equal_and_disjoint():
    images = torch.zeros(101, 3, 32, 32, dtype=torch.uint8)
    shards = [identity_batches(images, 8, shuffle=True, seed=5, rank=r, world_size=2) for r in range(2)]
    seen = [torch.cat([y for _, y in s]).tolist() for s in shards]
    assert len(seen[0]) == len(seen[1]) == 50 and not set(seen[0]) & set(seen[1])
    assert len(shards[0]) == 7


def test_crop_flip_pads_by_4_by_default():
    images = torch.full((200, 3, 32, 32), 255, dtype=torch.uint8)
    batches = identity_batches(images, 200, augment="crop-flip", seed=0)
    x, _ = next(iter(batches))
    blank_rows = (x[:, 0] == 0).all(dim=2).sum(dim=1)  # padding rows in each image: |dy - padding|
    blank_cols = (x[:, 0] == 0).all(dim=1).sum(dim=1)
    assert blank_rows.max() == 4 and blank_cols.max() == 4 and blank_rows.min() == 0


def test_altflip_flips_each_image_in_exactly_one_of_two_epochs():
    images = (torch.arange(32, dtype=torch.uint8) * 7).view(1, 1, 1, 32).repeat(40, 3, 32, 1)  # not symmetric
    batches = identity_batches(images, 40, augment="translate-altflip", crop_padding=0, seed=0)
    plain = images.float()
    flipped = []
    for _ in range(4):
        x, _ = next(iter(batches))
        assert all(torch.allclose(x[i], plain[i]) or torch.allclose(x[i], plain[i].flip(2)) for i in range(40))
        flipped.append([torch.allclose(x[i], plain[i].flip(2)) for i in range(40)])
    assert 0 < sum(flipped[0]) < 40 and all(a != b for a, b in zip(flipped[0], flipped[1], strict=True))
    assert flipped[2] == flipped[0] and flipped[3] == flipped[1]
    assert batches.epoch == 4


@pytest.mark.parametrize("augment", ["translate-altflip", "crop-flip"])
def test_augmented_batches_depend_on_the_seed_alone(augment):
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    epochs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # the global generator plays no part
        batches = identity_batches(images, 40, shuffle=True, augment=augment, seed=7)
        epochs.append([next(iter(batches))[0] for _ in range(2)])
    assert all(torch.equal(a, b) for a, b in zip(*epochs, strict=True))


def test_augmentation_keeps_every_tensor_on_the_images_device():
    """The meta device stands in for a GPU: a tensor left on the CPU would fail to combine with it."""
    images = torch.zeros(6, 3, 32, 32, dtype=torch.uint8)
    for augment in ("crop-flip", "translate-altflip"):
        batches = identity_batches(images, 4, shuffle=True, augment=augment, device="meta")
        assert batches.mean.device.type == batches.std.device.type == "meta"  # normalised where the images are
        for x, y in batches:
            assert x.device.type == y.device.type == "meta" and x.shape[1:] == (3, 32, 32)


# ---------------------------------------------------------------------------------------------------------------
# checkpoints: every field's accepted range and refusal message
# ---------------------------------------------------------------------------------------------------------------


def fastcnn_state(num_classes: int = 10, width: int = 8) -> dict:
    """A valid, untrained fastcnn checkpoint (only its checks are tested)."""
    torch.manual_seed(0)
    model = build_model("fastcnn", num_classes=num_classes, width=width)
    return {
        "model": model.state_dict(),
        "model_name": "fastcnn",
        "model_kwargs": {"width": width},
        "config": {"seed": 0, "val_size": 100, "tta": 0},
        "epoch": 3,
        "best_val_top1": 0.5,
        "mean": [0.49, 0.48, 0.45],
        "std": [0.25, 0.24, 0.26],
        "classes": [f"class{i}" for i in range(num_classes)],
    }


def saved(state, path: Path) -> Path:
    save_checkpoint(state, path)
    return path


def refused(state, tmp_path: Path) -> str:
    path = saved(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def with_config(**values):
    return lambda s: s["config"].update(values)


def setting(key, value):
    return lambda s: s.__setitem__(key, value)


def without(key):
    return lambda s: s.pop(key)


def weight(name, make):
    return lambda s: s["model"].__setitem__(name, make(s["model"][name]))


def quantized(value: float) -> torch.Tensor:
    """A quantized scalar: torch deprecates making them, but a file may still hold one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.quantize_per_tensor(torch.tensor(value), 1.0, 0, torch.qint8)


def bn_counter(state: dict) -> str:
    return next(k for k in state["model"] if k.endswith("num_batches_tracked"))


ACCEPTED = {
    "epoch 0": setting("epoch", 0),
    "epoch 2**31": setting("epoch", 2**31),
    "the lowest seed": with_config(seed=-(2**63)),
    "the highest seed": with_config(seed=2**64 - 1),
    "no validation": with_config(val_size=0),
    "all training images for validation": with_config(val_size=50_000),
    "a validation share of 10%": with_config(val_size=None),
    "validation of a folder larger than CIFAR-10": with_config(val_size=2**31),
    "no tta": lambda s: s["config"].pop("tta"),
    "tta 1": with_config(tta=1),
    "tta 2": with_config(tta=2),
    "a data folder": with_config(data_dir="data"),
    "no data folder": with_config(data_dir=None),
    "no best accuracy": without("best_val_top1"),
    "a best accuracy of 1": setting("best_val_top1", 1),
    "a 100-character class name": lambda s: s["classes"].__setitem__(0, "x" * 100),
}


@pytest.mark.parametrize("edit", ACCEPTED.values(), ids=ACCEPTED)
def test_values_at_the_edge_of_each_range_are_accepted(edit, tmp_path):
    state = fastcnn_state()
    edit(state)
    loaded = load_checkpoint(saved(state, tmp_path / "ok.pt"))
    assert loaded["path"] == str(tmp_path / "ok.pt")


@pytest.mark.parametrize("num_classes", [2, 1000])
def test_two_to_a_thousand_classes_are_accepted(num_classes, tmp_path):
    model = model_from_checkpoint(load_checkpoint(saved(fastcnn_state(num_classes), tmp_path / "ok.pt")))
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, num_classes)


def test_a_checkpoint_without_model_arguments_builds_the_default_model(tmp_path):
    state = fastcnn_state(width=64)
    del state["model_kwargs"]
    model = model_from_checkpoint(load_checkpoint(saved(state, tmp_path / "ok.pt")))
    assert not model.training and model.head.in_features == 256


NOT_VALID = "is not a valid cifarlab checkpoint: "
REFUSED = {
    "epoch past 2**31": (setting("epoch", 2**31 + 1), "'epoch' is missing or not a whole number >= 0"),
    "no epoch": (without("epoch"), "'epoch' is missing or not a whole number >= 0"),
    "seed below the range": (with_config(seed=-(2**63) - 1), "'config' has a seed or val_size out of range"),
    "seed above the range": (with_config(seed=2**64), "'config' has a seed or val_size out of range"),
    "negative val_size": (with_config(val_size=-1), "'config' has a seed or val_size out of range"),
    "val_size past 2**31": (with_config(val_size=2**31 + 1), "'config' has a seed or val_size out of range"),
    "config not a dict": (
        setting("config", "seed=0"),
        "'config' is not a training config (a dict with seed and val_size)",
    ),
    "config without val_size": (
        setting("config", {"seed": 0}),
        "'config' is not a training config (a dict with seed and val_size)",
    ),
    "tta 3": (with_config(tta=3), "'config' has a test-time augmentation level other than 0, 1 or 2"),
    "tta True": (with_config(tta=True), "'config' has a test-time augmentation level other than 0, 1 or 2"),
    "model_name a number": (setting("model_name", 7), "'model_name' is not a string"),
    "best accuracy True": (setting("best_val_top1", True), "'best_val_top1' is not a finite number"),
    "best accuracy as text": (setting("best_val_top1", "0.5"), "'best_val_top1' is not a finite number"),
    "weights as lists": (setting("model", {"w": [1.0]}), "'model' is not a state dict of tensors"),
    "a weight named by a number": (setting("model", {1: torch.zeros(1)}), "'model' is not a state dict of tensors"),
    "train_model as text": (setting("train_model", "x"), "'train_model' is not a state dict of tensors"),
    "classes as numbers": (setting("classes", [1, 2, 3]), "'classes' is not a list of class names"),
    "classes as one string": (setting("classes", "ab"), "'classes' is not a list of class names"),
    "an empty class name": (
        lambda s: s["classes"].__setitem__(1, ""),
        "'classes' has a name that is empty, longer than 100 characters or not printable ('')",
    ),
    "a 101-character class name": (
        lambda s: s["classes"].__setitem__(1, "y" * 101),
        f"'classes' has a name that is empty, longer than 100 characters or not printable ('{'y' * 36}...)",
    ),
    "mean as text": (setting("mean", "0.5"), "'mean' is not a list of 3 finite numbers"),
    "a negative std": (setting("std", [0.2, -0.1, 0.2]), "'std' has a value that is not positive"),
    "model arguments named by numbers": (
        setting("model_kwargs", {1: 8}),
        "'model_kwargs' is not a dict of named arguments",
    ),
    "model arguments as a list": (setting("model_kwargs", [8]), "'model_kwargs' is not a dict of named arguments"),
    "data_dir a number": (with_config(data_dir=7), "'config' has a data_dir that is not a folder name"),
    "a class named twice": (lambda s: s["classes"].__setitem__(1, "class0"), "'classes' names a class twice"),
    "a long name after one of 100 characters": (
        lambda s: s.update(classes=["x" * 100, "z" * 101] + s["classes"][2:]),
        f"'classes' has a name that is empty, longer than 100 characters or not printable ('{'z' * 36}...)",
    ),
}


@pytest.mark.parametrize("edit, message", REFUSED.values(), ids=REFUSED)
def test_each_field_out_of_range_is_named(edit, message, tmp_path):
    state = fastcnn_state()
    edit(state)
    assert f"{NOT_VALID}{message}" in refused(state, tmp_path)


def test_every_problem_is_listed_in_one_line(tmp_path):
    state = fastcnn_state()
    state.update(mean="0.5", classes=[1, 2, 3])
    path = tmp_path / "bad.pt"
    assert refused(state, tmp_path) == (
        f"{path} {NOT_VALID}'classes' is not a list of class names; 'mean' is not a list of 3 finite numbers"
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: fastcnn_state()["model"],
        lambda: [1, 2],
        lambda: {k: v for k, v in fastcnn_state().items() if k != "std"},
    ],
    ids=["a bare state dict", "a list", "no std"],
)
def test_a_torch_file_without_our_keys_is_not_a_cifarlab_checkpoint(make, tmp_path):
    assert refused(make(), tmp_path) == (
        f"{tmp_path / 'bad.pt'} is a torch file but not a cifarlab checkpoint "
        "(expected keys: model, model_name, config, mean, std, classes)"
    )


def test_an_unknown_model_lists_the_known_ones(tmp_path):
    state = fastcnn_state()
    state["model_name"] = "vgg99"
    known = ", ".join(sorted(MODELS))
    assert refused(state, tmp_path) == f"{tmp_path / 'bad.pt'} is for unknown model 'vgg99' (known: {known})"


def test_arguments_the_model_does_not_accept_are_all_listed(tmp_path):
    state = fastcnn_state()
    state["model_kwargs"].update(width="8", dirac=2)
    assert refused(state, tmp_path) == (
        f"{tmp_path / 'bad.pt'} has arguments that model 'fastcnn' does not accept: "
        "width must be a whole number from 1 to 1024 (got '8'); dirac must be true or false (got 2)"
    )


@pytest.mark.parametrize(
    "error, shown", [(ValueError("no such combination\nsecond line"), "no such combination"), (ValueError(), "")]
)
def test_a_model_its_factory_refuses_to_build_is_refused(error, shown, tmp_path, monkeypatch):
    def factory(**kwargs):
        raise error

    monkeypatch.setitem(MODELS, "picky", factory)
    state = fastcnn_state()
    state.update(model_name="picky", model_kwargs={})
    assert refused(state, tmp_path) == (
        f"{tmp_path / 'bad.pt'} describes a model 'picky' that cannot be built: ValueError: {shown}"
    )


WEIGHTS = {
    "an extra weight": (
        lambda s: s["model"].__setitem__("extra.weight", torch.zeros(2)),
        "1 unexpected (e.g. 'extra.weight')",
    ),
    "a missing and an extra weight": (
        lambda s: s["model"].__setitem__("extra.weight", s["model"].pop("stem.bias")),
        "1 missing (e.g. 'stem.bias'), 1 unexpected (e.g. 'extra.weight')",
    ),
    "two missing weights": (
        lambda s: [s["model"].pop(k) for k in ("stem.weight", "stem.bias")],
        "2 missing (e.g. 'stem.weight', 'stem.bias')",
    ),
    "no head": (lambda s: s["model"].pop("head.weight"), "1 missing (e.g. 'head.weight')"),
    "a flat head": (weight("head.weight", lambda t: torch.zeros(7)), "1 wrong shape (e.g. 'head.weight')"),
    "stride-0 float64 weights": (
        weight("stem.bias", lambda t: torch.zeros(1, dtype=torch.float64).expand(t.shape)),
        "weight 'stem.bias' claims more values than the file stores",
    ),
    "a quantized counter": (
        lambda s: s["model"].__setitem__(bn_counter(s), quantized(1.0)),
        "is not a plain dense tensor",
    ),
    "a weight of another shape": (weight("stem.bias", lambda t: torch.zeros(25)), "1 wrong shape (e.g. 'stem.bias')"),
    "a bool counter": (lambda s: s["model"].__setitem__(bn_counter(s), torch.tensor(True)), "1 wrong type"),
    "a complex counter": (lambda s: s["model"].__setitem__(bn_counter(s), torch.tensor(1j)), "1 wrong type"),
    "complex weights": (weight("stem.bias", lambda t: t.to(torch.complex64)), "1 wrong type (e.g. 'stem.bias')"),
    "sparse weights": (weight("head.weight", lambda t: t.to_sparse()), "weight 'head.weight' is not a plain dense"),
}


@pytest.mark.parametrize("edit, message", WEIGHTS.values(), ids=WEIGHTS)
def test_weights_that_do_not_fit_the_model_are_described(edit, message, tmp_path):
    state = fastcnn_state()
    edit(state)
    assert message in refused(state, tmp_path)


def test_describe_mismatch_is_empty_when_the_weights_fit():
    weights = fastcnn_state()["model"]
    assert describe_mismatch(weights, dict(weights)) == ""


class Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_holding_code_is_refused_before_it_runs(tmp_path):
    state = fastcnn_state()
    state["notes"] = Payload(tmp_path / "ran")
    message = refused(state, tmp_path)
    assert message.startswith(f"refused to load {tmp_path / 'bad.pt'}: it holds Python objects other than tensors")
    assert "GLOBAL posix.system" in message or "GLOBAL nt.system" in message
    assert message.endswith(
        "which could run code when unpickled. cifarlab only loads checkpoints with torch.load(weights_only=True); "
        "use checkpoints written by cifarlab from a source you trust"
    )
    assert not (tmp_path / "ran").exists()


def test_a_run_folder_means_its_best_checkpoint_unless_another_is_named(tmp_path):
    best, last = fastcnn_state(), fastcnn_state()
    last["epoch"] = 4
    save_checkpoint(best, tmp_path / "best.pt")
    save_checkpoint(last, tmp_path / "last.pt")
    assert load_checkpoint(tmp_path)["epoch"] == 3
    assert load_checkpoint(tmp_path, "last.pt")["path"] == str(tmp_path / "last.pt")


def test_files_that_are_not_checkpoints_are_told_apart(tmp_path):
    data = saved(fastcnn_state(), tmp_path / "good.pt").read_bytes()
    cases = {
        "empty.pt": (b"", "{path} is empty, not a checkpoint"),
        "notes.pt": (b"my notes\n", "{path} is not a PyTorch checkpoint (it does not start like a torch.save file)"),
        "cut.pt": (
            data[: len(data) // 2],
            "{path} is not a readable checkpoint (truncated or corrupt): File is not a zip file",
        ),
        "old.pt": (
            pickle.dumps({"a": 1}, protocol=2),
            "refused to load {path}: it is a plain pickle or a legacy (pre-1.6) torch file; cifarlab loads only "
            "torch.save's zip format, whose sizes can be checked first",
        ),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        assert str(info.value) == message.format(path=path), name


def test_a_zip_that_torch_cannot_read_shows_the_first_sentence_of_its_error(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", b"a zip, but not from torch.save")
    try:
        torch.load(path, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever torch raises is what the message quotes
        first = str(exc).splitlines()[0].split(". ")[0] if str(exc) else type(exc).__name__
    else:
        pytest.fail("torch loaded a zip without a checkpoint")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"{path} is not a readable checkpoint (truncated or corrupt): {first}"


def test_an_unreadable_file_is_named_with_the_reason(tmp_path):
    path = tmp_path / "s.pt"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(path))  # a socket file: it exists, but open() fails
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
    finally:
        server.close()
    assert str(info.value) == f"cannot read {path}: No such device or address"


def test_model_from_checkpoint_names_the_file_when_the_weights_were_changed_after_loading(tmp_path):
    state = load_checkpoint(saved(fastcnn_state(), tmp_path / "ok.pt"))
    state["model"]["extra"] = state["model"].pop("head.weight")
    with pytest.raises(CheckpointError) as info:
        model_from_checkpoint(state)
    message = str(info.value)
    assert message.startswith(f"checkpoint {tmp_path / 'ok.pt'} does not fit model 'fastcnn': ")
    assert message.endswith('Unexpected key(s) in state_dict: "extra".')  # torch's last line


def test_unwrap_finds_the_model_inside_ddp_and_compile_wrappers():
    model = nn.Linear(2, 2)

    class Wrapper(nn.Module):
        def __init__(self, **inner: nn.Module) -> None:
            super().__init__()
            for name, module in inner.items():
                setattr(self, name, module)

    compiled = Wrapper(_orig_mod=model)
    assert unwrap(model) is model
    assert unwrap(Wrapper(module=model)) is model
    assert unwrap(compiled) is model
    assert unwrap(Wrapper(module=compiled)) is model


def test_save_checkpoint_replaces_the_file_whole(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint({"a": torch.ones(3)}, path)
    save_checkpoint({"b": torch.zeros(2)}, path)
    assert torch.load(path, weights_only=True).keys() == {"b"}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


# ---------------------------------------------------------------------------------------------------------------
# engine promises that one-line mutations broke without a failing test: the misclassified grid, bf16 off by default,
# the final test on the time-budget clock (small runs on generated data, a fake clock where time matters)
# ---------------------------------------------------------------------------------------------------------------

RED, GREEN = (255, 0, 0), (0, 255, 0)


def test_the_misclassified_grid_shows_the_misclassified_test_images_and_no_others(tmp_path):
    """Correctly classified test images are pure green, misclassified ones pure red: the drawn grid holds red
    pixels and not one green one."""
    from cifarlab.engine.tracking import Tracker

    y_true = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    y_pred = np.array([0, 1, 2, 3, 4, 9, 9, 1])  # the last 3 are wrong
    probs = np.full((8, 10), 0.01, dtype=np.float32)
    probs[np.arange(8), y_pred] = 0.91
    index = np.arange(8) + 2  # official test-set positions: 2..9
    np.savez(tmp_path / "test_predictions.npz", y_true=y_true, probs=probs, index=index)
    per_class = {c: 1.0 for c in CLASSES}
    (tmp_path / "test_metrics.json").write_text(
        json.dumps({"top1": 5 / 8, "epoch": 1, "per_class_accuracy": per_class})
    )
    images = torch.zeros(10, 3, 32, 32, dtype=torch.uint8)
    for position, wrong in zip(index, y_pred != y_true, strict=True):
        images[position] = torch.tensor(RED if wrong else GREEN, dtype=torch.uint8).view(3, 1, 1)
    labels = torch.tensor([9, 9, *y_true.tolist()])
    data = cifarlab.data.cifar10.ImageData(images, labels, images, labels, list(CLASSES))

    tracker = Tracker(tmp_path, {"model": "mycnn", "seed": 0}, tensorboard=False, mlflow_uri=None)
    grid = tracker.figures(tmp_path, data)["misclassified"].astype(int)
    tracker.close()

    def pixels(colour: tuple[int, int, int]) -> int:
        return int((np.abs(grid - np.array(colour)).max(axis=-1) < 30).sum())

    assert pixels(RED) > 3 * 20 * 20  # the 3 misclassified images, drawn at least 20x20 each
    assert pixels(GREEN) == 0  # and no correctly classified one


def test_the_seed_recipe_trains_in_bf16_on_a_bf16_cpu_and_in_fp32_with_the_fp32_flag(
    small_config, engine_patch, tmp_path
):
    """The seed recipe asks for bf16 (fp32 63 -> bf16 42 min for the study); ``--fp32``
    and a config written before bf16 existed train in fp32, and run.json says which precision ran."""
    from cifarlab.cli.main import build_parser
    from cifarlab.cli.train import overrides_from
    from cifarlab.config.train_config import TrainConfig
    from cifarlab.engine.train import train

    engine_patch("cpu_has_fast_bf16", lambda: True)  # as on this project's CPUs, whatever runs the test
    config = small_config(out=tmp_path, epochs=1, limit_train=100, bf16=None)  # None: the recipe's own precision
    assert config.bf16 is True
    assert json.loads((train(config) / "run.json").read_text())["precision"] == "bf16"
    old = {k: v for k, v in config.to_dict().items() if k != "bf16"}  # a config.json without the key
    assert TrainConfig.from_dict(old).bf16 is False
    flags = overrides_from(build_parser().parse_args(["train", "--fp32"]))
    assert flags == {"bf16": False}
    fp32 = small_config(out=tmp_path, epochs=1, limit_train=100, name="fp32", **flags)
    assert json.loads((train(fp32) / "run.json").read_text())["precision"] == "fp32"


def test_adam_runs_fused_on_the_cpu(small_config, engine, tmp_path):
    """Adam's update is one fused kernel per step on CPU and CUDA (ResNet-18's seed step: 101 -> 84 ms, bf16)."""
    from cifarlab.models.registry import build_model

    optimizer = engine("make_optimizer")(build_model("mycnn"), small_config(out=tmp_path))
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["fused"] is True


class FakeClock:
    """A clock that moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def slow_final_test(monkeypatch: pytest.MonkeyPatch, clock: Any, seconds: float) -> list[float]:
    """The final test takes ``seconds`` on ``clock``; returns the list of clock readings at its start."""
    import cifarlab.engine.train as train_module

    real, started = train_module.evaluate_checkpoint, []

    def evaluate(*args: Any, **kwargs: Any) -> Any:
        started.append(clock.now)
        clock.now += seconds
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate_checkpoint", evaluate)
    return started


@pytest.mark.parametrize("timed", [False, True])
def test_the_final_test_counts_in_the_seconds_used(small_config, tmp_path, monkeypatch, timed):
    """Only the final test takes time on the fake clock: seconds_used is exactly its time, for an untimed run and
    for a timed one (whose clock stops for validation and checkpoints, never for the test)."""
    from cifarlab.engine.train import train

    clock = FakeClock()
    started = slow_final_test(monkeypatch, clock, 7.0)
    config = small_config(out=tmp_path, epochs=1, limit_train=100, test_checkpoint="last", timed=timed)
    info = json.loads((train(config, clock=clock) / "run.json").read_text())
    assert started == [0.0] and info["seconds_used"] == pytest.approx(7.0)


def test_a_time_budget_run_ends_inside_its_budget_with_a_final_test_that_takes_its_planned_time(
    fake_cifar, tmp_path, monkeypatch
):
    """Probes replaced by fixed costs; the clock moves 0.5 s per reading and the final test takes the time the
    planner reserved for its pass: the run uses the budget and ends inside it, the test included."""
    import cifarlab.engine.budget as budget_module
    from cifarlab.config.train_config import make_config
    from cifarlab.engine.budget import Probe
    from cifarlab.engine.infer import tta_views
    from cifarlab.engine.train import train

    probe = Probe(8, step_seconds=0.5, eval_image_seconds=0.005, save_seconds=0.01, probe_seconds=0.0)
    monkeypatch.setattr(budget_module, "time_probe", lambda *args, **kwargs: probe)

    class TickingClock(FakeClock):
        def __call__(self) -> float:
            self.now += 0.5
            return self.now

    clock, budget, n_test = TickingClock(), 40.0, 200
    test_pass = n_test * tta_views(1) * probe.eval_image_seconds  # 2 s of a 40 s budget (TTA 1 fits in it)
    started = slow_final_test(monkeypatch, clock, test_pass)
    values = dict(batch_size=100, val_size=100, data_dir=str(fake_cifar), out=str(tmp_path), device="cpu", tta=1)
    config = make_config("fast", **values, name="budget", time_budget=budget, model_width=8)
    info = json.loads((train(config, clock=clock) / "run.json").read_text())
    assert info["budget_plan"]["reserved_seconds"]["test"] >= test_pass
    assert info["seconds_used"] >= started[0] + test_pass  # the test's time is counted...
    assert 0.8 * budget <= info["seconds_used"] <= budget  # ...inside the budget, which was used
