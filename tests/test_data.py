"""Reading, validating, splitting, normalising and batching CIFAR-10."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarlab.base.errors import DataError
from cifarlab.data.batches import Batches, random_crop, random_flip
from cifarlab.data.cifar10 import CLASSES, load_cifar10, resolve_data_dir
from cifarlab.data.split import balanced_subset, channel_stats, stratified_split


def test_reads_generated_batches_in_official_format(fake_cifar):
    data = load_cifar10(fake_cifar, allow_download=False)
    assert data.train_images.shape == (1000, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (200, 3, 32, 32)
    assert data.train_labels.dtype == torch.int64 and set(data.train_labels.tolist()) == set(range(10))
    assert data.classes == list(CLASSES)
    # the pixel layout: 1024 red values, then green, then blue, each row-major
    with open(fake_cifar / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="latin1")["data"][0]
    assert torch.equal(data.train_images[0, 1, 2], torch.from_numpy(raw[1024 + 2 * 32 : 1024 + 3 * 32]))


def test_reads_real_cifar(real_cifar):
    data = load_cifar10(real_cifar, allow_download=False)
    assert data.train_images.shape == (50000, 3, 32, 32) and data.test_images.shape == (10000, 3, 32, 32)
    assert torch.bincount(data.train_labels).tolist() == [5000] * 10
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10
    mean, std = channel_stats(data.train_images)
    # the README of the local copy states these statistics for the full training set
    assert np.allclose(mean, [0.4914, 0.4822, 0.4465], atol=1e-4)
    assert np.allclose(std, [0.2470, 0.2435, 0.2616], atol=1e-4)


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("CIFARLAB_DATA_DIR", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    assert resolve_data_dir("elsewhere") == Path("elsewhere")
    monkeypatch.delenv("CIFARLAB_DATA_DIR")
    assert resolve_data_dir(None) == Path("data")


def copy_fake(fake_cifar: Path, tmp_path: Path) -> Path:
    shutil.copytree(fake_cifar, tmp_path / "copy")
    return tmp_path / "copy"


def test_missing_batch_file_names_it(fake_cifar, tmp_path):
    root = copy_fake(fake_cifar, tmp_path)
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing CIFAR-10 file: .*data_batch_3"):
        load_cifar10(root, allow_download=False)


def test_truncated_batch_file_names_it(fake_cifar, tmp_path):
    root = copy_fake(fake_cifar, tmp_path)
    path = root / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match="data_batch_2 is truncated or corrupt"):
        load_cifar10(root, allow_download=False)


def test_corrupt_batch_file_names_it(fake_cifar, tmp_path):
    root = copy_fake(fake_cifar, tmp_path)
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"this is not a pickle at all" * 100)
    with pytest.raises(DataError, match="test_batch is truncated or corrupt"):
        load_cifar10(root, allow_download=False)


def rewrite_batch(root: Path, name: str, **changes) -> None:
    path = root / "cifar-10-batches-py" / name
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    batch.update(changes)
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def test_wrong_shape_is_reported(fake_cifar, tmp_path):
    root = copy_fake(fake_cifar, tmp_path)
    rewrite_batch(root, "data_batch_1", data=np.zeros((200, 1024), dtype=np.uint8))
    with pytest.raises(DataError, match=r"data_batch_1: 'data' must be a uint8 array of shape \(N, 3072\)"):
        load_cifar10(root, allow_download=False)


def test_label_out_of_range_is_reported(fake_cifar, tmp_path):
    root = copy_fake(fake_cifar, tmp_path)
    rewrite_batch(root, "data_batch_4", labels=[12] + [0] * 199)
    with pytest.raises(DataError, match="data_batch_4: labels out of range"):
        load_cifar10(root, allow_download=False)


def test_absent_folder_offline_explains_how_to_fix(tmp_path, monkeypatch, capsys):
    import cifarlab.data.cifar10

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(cifarlab.data.cifar10, "fetch", offline)
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path / "nowhere")
    text = str(info.value)
    assert "nowhere" in text and "cifar-10-python.tar.gz" in text and "--data-dir" in text
    assert "Network is unreachable" in text
    assert "downloading" in capsys.readouterr().out  # said before the (possibly slow) attempt
    assert not (tmp_path / "nowhere").exists()  # no empty folder left behind
    assert len(text.splitlines()) == 1


def test_split_is_stratified_disjoint_and_reproducible():
    labels = torch.arange(2000) % 10
    train, val = stratified_split(labels, 200, seed=3)
    assert len(val) == 200 and len(train) == 1800
    assert torch.bincount(labels[val]).tolist() == [20] * 10
    assert not set(train.tolist()) & set(val.tolist())
    assert set(train.tolist()) | set(val.tolist()) == set(range(2000))
    again_train, again_val = stratified_split(labels, 200, seed=3)
    assert torch.equal(val, again_val) and torch.equal(train, again_train)
    _, other = stratified_split(labels, 200, seed=4)
    assert not torch.equal(val, other)


def test_balanced_subset():
    labels = torch.arange(1000) % 10
    subset = balanced_subset(torch.arange(1000), labels, 55, seed=0)
    assert len(subset) == 55 and len(set(subset.tolist())) == 55
    counts = torch.bincount(labels[subset], minlength=10)
    assert counts.max() - counts.min() <= 1


def test_channel_stats_match_numpy():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(20, 3, 8, 8), dtype=np.uint8)
    mean, std = channel_stats(torch.from_numpy(images))
    x = images.astype(np.float64) / 255
    assert np.allclose(mean, x.mean(axis=(0, 2, 3)))
    assert np.allclose(std, x.std(axis=(0, 2, 3), ddof=1))


def test_random_crop_is_a_shifted_window():
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    gen = torch.Generator().manual_seed(0)
    out = random_crop(images, 4, gen)
    assert out.shape == images.shape
    padded = torch.nn.functional.pad(images, (4,) * 4)
    for i in range(2):  # every output image equals some 32x32 window of its own padded image
        assert any(torch.equal(out[i], padded[i, :, dy : dy + 32, dx : dx + 32]) for dy in range(9) for dx in range(9))


def test_random_flip_flips_some_and_keeps_others():
    images = torch.rand(64, 3, 32, 32)
    out = random_flip(images, torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[i], images[i].flip(2)) for i in range(64)]
    kept = [torch.equal(out[i], images[i]) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True)) and 10 < sum(flipped) < 54


def make_batches(seed: int, augment: str = "crop-flip") -> Batches:
    images = torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(100) % 10
    return Batches(images, labels, 32, torch.zeros(3), torch.ones(3), shuffle=True, augment=augment, seed=seed)


def test_batches_are_deterministic_under_the_seed_and_cover_the_data():
    torch.manual_seed(0)
    a, b, c = make_batches(1), make_batches(1), make_batches(2)
    b.images, c.images = a.images, a.images
    first = list(a)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(first, b, strict=True))
    assert not torch.equal(first[0][0], next(iter(c))[0])
    assert [len(y) for _, y in first] == [32, 32, 32, 4]
    assert sorted(torch.cat([y for _, y in first]).tolist()) == sorted((torch.arange(100) % 10).tolist())


def test_batches_normalise_with_given_stats():
    images = torch.full((4, 3, 32, 32), 51, dtype=torch.uint8)  # 51/255 = 0.2
    batches = Batches(
        images, torch.zeros(4, dtype=torch.long), 4, torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.5, 0.5, 0.5])
    )
    x, _ = next(iter(batches))
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([0.2, 0.0, -0.2]), atol=1e-6)


def test_batches_shard_without_overlap():
    images = torch.zeros(100, 3, 32, 32, dtype=torch.uint8)
    labels = torch.arange(100)
    shards = [
        Batches(images, labels, 10, torch.zeros(3), torch.ones(3), shuffle=True, seed=5, rank=r, world_size=2)
        for r in range(2)
    ]
    seen = [torch.cat([y for _, y in s]).tolist() for s in shards]
    assert len(seen[0]) == len(seen[1]) == 50 and not set(seen[0]) & set(seen[1])
