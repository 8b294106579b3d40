"""Choosing the data: image folders (layouts, class names, bad folders, decoding, cache), CIFAR-100, CIFAR at any
image size, and reloading a run's data by its record."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cifarlab.data.cifar10
from cifarlab.base.errors import DataError, UsageError
from cifarlab.data import cifar100, folder_cache, folders, images
from cifarlab.data.loading import load_dataset, reload, run_record

# --- image folders: layouts ------------------------------------------------------------------------------------


def test_train_and_test_folders_are_read_in_class_order(image_folder):
    data = load_dataset(str(image_folder), image_size=32)
    assert data.classes == ["circle", "square", "stripe"] and data.kind == "folder"
    assert data.train_images.shape == (24, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (9, 3, 32, 32)
    assert data.train_labels.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    assert data.test_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    red, green = data.train_images[0].float().mean(dim=(1, 2)), data.train_images[8].float().mean(dim=(1, 2))
    assert red[0] > red[1] + 80 and green[1] > green[0] + 80  # each class keeps its colour
    record = data.record
    assert record["layout"] == "train/test" and record["path"] == str(image_folder.resolve())
    assert record["image_size"] == 32 and record["skipped"] == 0 and "test_files" not in record
    assert re.fullmatch(r"[0-9a-f]{16}", record["fingerprint"]) and "test/" in record["test"]
    assert run_record(data) == record


def test_a_folder_defaults_to_64_pixels(image_folder):
    assert load_dataset(str(image_folder)).image_size == 64


def test_val_is_the_held_out_folder_when_there_is_no_test(make_image_folder, tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=4, test_per_class=2, held_out="val")
    data = load_dataset(str(root), image_size=16)
    assert data.record["layout"] == "train/val" and len(data.test_labels) == 6 and len(data.train_labels) == 12


def test_test_is_preferred_over_val(make_image_folder, tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=4, test_per_class=2)
    shutil.copytree(root / "test", root / "val")
    (root / "val" / "extra").mkdir()  # would be refused if val/ were read
    assert load_dataset(str(root), image_size=16).record["layout"] == "train/test"


def test_a_folder_of_classes_gets_a_fixed_stratified_test_split(make_image_folder, tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("a", "b", "c"), per_class=12, test_per_class=None)
    for extra in range(8):  # class a: 20 images, b: 12, c: 12 minus 10 = 2
        shutil.copy(root / "a" / "a-000.png", root / "a" / f"z{extra}.png")
    for name in sorted((root / "c").iterdir())[:10]:
        name.unlink()
    data = load_dataset(str(root), image_size=16)
    assert data.record["layout"] == "split"
    assert torch.bincount(data.test_labels).tolist() == [2, 1, 1]  # 10% of each class, at least 1
    assert torch.bincount(data.train_labels).tolist() == [18, 11, 1]
    files = data.record["test_files"]
    assert len(files) == 4 and all(f.split("/")[0] in ("a", "b", "c") for f in files)
    again = load_dataset(str(root), image_size=16)  # from the cache
    assert again.record["test_files"] == files and torch.equal(again.test_images, data.test_images)
    shutil.rmtree(os.environ["CIFARLAB_CACHE_DIR"])
    assert load_dataset(str(root), image_size=16).record["test_files"] == files  # decoded again: the same split
    held = [f for f in files if f.startswith("a/")]
    assert len(held) == 2 and held != ["a/a-000.png", "a/a-001.png"]  # drawn, not the first names


def test_a_class_of_one_image_cannot_be_split(make_image_folder, tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=3, test_per_class=None)
    for name in sorted((root / "square").iterdir())[1:]:
        name.unlink()
    with pytest.raises(DataError, match=r"square: only 1 image; each class needs at least 2"):
        load_dataset(str(root))


def test_train_without_a_held_out_folder_is_explained(make_image_folder, tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=2)
    shutil.rmtree(root / "test")
    with pytest.raises(DataError, match=r"has train/<class>/ folders but no test/ or val/ beside it"):
        load_dataset(str(root))


# --- image folders: bad folders ----------------------------------------------------------------------------------


def test_an_empty_class_folder_is_refused(make_image_folder, tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=2, test_per_class=1)
    (root / "train" / "empty").mkdir()
    (root / "test" / "empty").mkdir()
    (root / "train" / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError) as info:
        load_dataset(str(root))
    assert (
        str(info.value) == f"{root / 'train' / 'empty'}: no image files (every class folder needs at least one image)"
    )


@pytest.mark.parametrize("layout", ["split", "train/test"])
def test_one_class_is_refused(make_image_folder, tmp_path, layout):
    root = make_image_folder(
        tmp_path / "d", classes=("only",), per_class=3, test_per_class=None if layout == "split" else 1
    )
    with pytest.raises(DataError, match=r"found 1 class folder \(only\); a dataset needs at least 2"):
        load_dataset(str(root))


def test_test_classes_that_differ_from_train_are_refused(make_image_folder, tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=2, test_per_class=1)
    (root / "test" / "stripe").rename(root / "test" / "stripes")
    with pytest.raises(DataError) as info:
        load_dataset(str(root))
    assert str(info.value) == (
        f"{root / 'test'}: its classes differ from train/'s (only in train/: stripe; only in test/: stripes)"
    )


def test_a_missing_folder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match=r"is neither cifar10, cifar100 nor a folder of images"):
        load_dataset(str(tmp_path / "nowhere"))


# --- image folders: class names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, text",
    [
        ("classes.txt", "Round thing\nBox\nLines\n"),
        ("classes.txt", "stripe Lines\ncircle Round thing\n\nsquare Box\n"),
        ("classes.json", json.dumps({"circle": "Round thing", "square": "Box", "stripe": "Lines"})),
    ],
    ids=["txt in folder order", "txt folder name", "json"],
)
def test_readable_class_names(make_image_folder, tmp_path, name, text):
    root = make_image_folder(tmp_path / "d", per_class=2, test_per_class=1)
    (root / name).write_text(text)
    data = load_dataset(str(root), image_size=16)
    assert data.classes == ["Round thing", "Box", "Lines"] and data.record["classes"] == data.classes
    assert data.train_labels.tolist() == [0, 0, 1, 1, 2, 2]  # labels stay in sorted folder order


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("classes.txt", "A\nB\n", r"classes.txt: 2 names for 3 class folders"),
        ("classes.json", '{"circle": "A", "squares": "B"}', r"'squares' is not one of the class folders"),
        ("classes.json", "[1, 2]", r"expected an object"),
        ("classes.txt", "A\nA\nB\n", r"two classes are named 'A'"),
        ("classes.json", '{"circle": "a\\nb"}', r"class name 'a\\\\nb' is empty, longer than 100 characters or not"),
    ],
)
def test_bad_class_name_files_are_refused(make_image_folder, tmp_path, name, text, message):
    root = make_image_folder(tmp_path / "d", per_class=2, test_per_class=1)
    (root / name).write_text(text)
    with pytest.raises(DataError, match=message) as info:
        load_dataset(str(root), image_size=16)
    assert "\n" not in str(info.value)


# --- image folders: files --------------------------------------------------------------------------------------


def test_unreadable_files_are_skipped_and_counted_or_refused_with_strict(make_image_folder, tmp_path, capsys):
    root = make_image_folder(tmp_path / "d", per_class=3, test_per_class=2)
    (root / "train" / "circle" / "broken.jpg").write_bytes(b"not a jpeg at all")
    good = (root / "train" / "square" / "square-000.png").read_bytes()
    (root / "test" / "square" / "cut.png").write_bytes(good[: len(good) // 2])
    data = load_dataset(str(root), image_size=16)
    out = capsys.readouterr().out
    assert data.record["skipped"] == 2 and len(data.train_labels) == 9 and len(data.test_labels) == 6
    assert "skipped 2 of 17 image files that cannot be read (--strict refuses them)" in out
    assert "train/circle/broken.jpg: not an image" in out and "test/square/cut.png: damaged or unreadable" in out
    with pytest.raises(DataError, match=r"2 image files cannot be read \(refused with --strict\): train/circle/broken"):
        load_dataset(str(root), image_size=16, strict=True)  # refused from the cache's list too


def test_a_class_whose_images_are_all_unreadable_is_refused(make_image_folder, tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=2, test_per_class=1)
    for path in (root / "test" / "circle").iterdir():
        path.write_bytes(b"junk")
    with pytest.raises(DataError, match=r"class 'circle' has no readable test images left"):
        load_dataset(str(root), image_size=16)


def test_hidden_names_and_other_files_are_ignored(make_image_folder, tmp_path, capsys):
    root = make_image_folder(tmp_path / "d", per_class=2, test_per_class=1)
    before = load_dataset(str(root), image_size=16).record["fingerprint"]
    (root / "train" / "circle" / ".hidden.png").write_bytes(b"junk")
    (root / "train" / ".cifarlab-tmp").mkdir()
    (root / "train" / ".cifarlab-tmp" / "x.png").write_bytes(b"junk")
    (root / "train" / "circle" / "notes.txt").write_text("hello")
    (root / "README.md").write_text("about this folder")
    capsys.readouterr()
    data = load_dataset(str(root), image_size=16)
    out = capsys.readouterr().out
    assert data.record["skipped"] == 0 and data.record["fingerprint"] == before and len(data.train_labels) == 6
    assert "ignored 1 files that are not images by their extension: train/circle/notes.txt" in out


def test_grey_palette_and_transparent_images_become_rgb(make_image_folder, tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("x", "y"), per_class=1, test_per_class=1)
    Image.new("L", (30, 20), 77).save(root / "train" / "x" / "grey.png")
    palette = Image.new("P", (20, 20), 3)
    palette.putpalette([0, 0, 0] * 3 + [0, 0, 255] + [0, 0, 0] * 252)
    palette.save(root / "train" / "x" / "palette.gif")
    Image.new("RGBA", (25, 25), (10, 20, 30, 0)).save(root / "train" / "y" / "clear.png")
    data = load_dataset(str(root), image_size=16)
    means = {tuple(int(v) for v in img.float().mean(dim=(1, 2)).round()) for img in data.train_images}
    assert {(77, 77, 77), (0, 0, 255), (255, 255, 255)} <= means and data.train_images.shape[1] == 3


def test_real_imagenette_jpegs_at_their_own_size_are_their_pixels(imagenette_slice):
    data = load_dataset(str(imagenette_slice), image_size=96)
    assert data.record["layout"] == "train/val" and data.train_images.shape == (15, 3, 96, 96)
    assert len(data.classes) == 3 and data.classes[0] == "n01440764"
    first = sorted((imagenette_slice / "train" / "n01440764").iterdir())[0]
    with Image.open(first) as image:
        expected = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(data.train_images[0], expected)  # 96 -> 96: no resampling
    small = load_dataset(str(imagenette_slice), image_size=32)
    assert small.test_images.shape == (6, 3, 32, 32)


# --- image folders: decoding and cache -------------------------------------------------------------------------


def test_the_second_load_reads_the_cache_without_decoding(image_folder, monkeypatch, tmp_path):
    first = load_dataset(str(image_folder), image_size=24)
    cached = sorted(p.name for p in (Path(os.environ["CIFARLAB_CACHE_DIR"]) / "images").iterdir())
    assert len(cached) == 2 and {Path(n).suffix for n in cached} == {".npy", ".json"}

    def no_decoding(*args):
        raise AssertionError("decoded although the cache holds these images")

    monkeypatch.setattr(folders, "decode_file", no_decoding)
    again = load_dataset(str(image_folder), image_size=24)
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(first, name), getattr(again, name)), name
    assert again.record == first.record
    with pytest.raises(AssertionError, match="decoded although"):
        load_dataset(str(image_folder), image_size=20)  # another size is another cache entry


def test_a_changed_file_is_decoded_again(make_image_folder, tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=2, test_per_class=1)
    before = load_dataset(str(root), image_size=16)
    Image.new("RGB", (50, 50), (1, 2, 3)).save(root / "train" / "circle" / "circle-000.png")
    after = load_dataset(str(root), image_size=16)
    assert torch.equal(
        after.train_images[0], torch.tensor([1, 2, 3], dtype=torch.uint8)[:, None, None].expand(3, 16, 16)
    )
    assert not torch.equal(before.train_images[0], after.train_images[0])


@pytest.mark.parametrize("damage", ["truncated array", "array of another shape", "bad json", "json of other files"])
def test_a_damaged_cache_is_rebuilt(image_folder, capsys, damage):
    first = load_dataset(str(image_folder), image_size=16)
    folder = Path(os.environ["CIFARLAB_CACHE_DIR"]) / "images"
    array, meta = sorted(folder.glob("*.npy"))[0], sorted(folder.glob("*.json"))[0]
    if damage == "truncated array":
        array.write_bytes(array.read_bytes()[:1000])
    elif damage == "array of another shape":
        np.save(array, np.zeros((3, 3, 16, 16), np.uint8))
    elif damage == "bad json":
        meta.write_text("{not json")
    else:
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "files": 5}))
    capsys.readouterr()
    again = load_dataset(str(image_folder), image_size=16)
    assert "are damaged" in capsys.readouterr().out
    assert torch.equal(again.train_images, first.train_images) and torch.equal(again.test_images, first.test_images)
    images_now, _ = folder_cache.read_cache(array.stem, 33, 16)  # rewritten whole
    assert torch.equal(torch.from_numpy(images_now), torch.cat([first.train_images, first.test_images]))


def test_an_unwritable_cache_folder_is_a_warning(image_folder, monkeypatch, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("CIFARLAB_CACHE_DIR", str(blocker))
    data = load_dataset(str(image_folder), image_size=16)
    out = capsys.readouterr().out
    assert len(data.train_labels) == 24
    assert "cifarlab: warning: could not cache the decoded images" in out and "decodes them again" in out


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CIFARLAB_CACHE_DIR", str(tmp_path / "c"))
    assert folder_cache.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("CIFARLAB_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert folder_cache.cache_dir() == tmp_path / "xdg" / "cifarlab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert folder_cache.cache_dir() == tmp_path / "home" / ".cache" / "cifarlab"


def test_decoding_in_worker_processes_gives_the_same_images(image_folder, monkeypatch):
    paths = sorted((image_folder / "train").rglob("*.png")) + [image_folder / "missing.png"]
    alone, alone_failed = folders.decode_files(paths, 16, "decoding")
    monkeypatch.setattr(folders, "POOL_MIN", 1)
    monkeypatch.setattr(folders, "usable_cores", lambda: 2)
    pooled, pooled_failed = folders.decode_files(paths, 16, "decoding")
    assert np.array_equal(alone, pooled) and alone.shape == (24, 3, 16, 16)
    assert alone_failed == pooled_failed == [(24, "no such file")]


def test_a_set_that_would_not_fit_in_memory_is_refused(image_folder, monkeypatch):
    monkeypatch.setattr(images, "physical_memory", lambda: 2 * 33 * 3 * 40 * 40 + 5)  # half: 33 images at 40 px
    with pytest.raises(DataError) as info:
        load_dataset(str(image_folder), image_size=41)
    message = str(info.value)
    assert message.endswith("of memory; use --image-size 40 or less") and "33 images at 41 x 41" in message
    assert load_dataset(str(image_folder), image_size=40).image_size == 40
    monkeypatch.setattr(images, "physical_memory", lambda: 1000)
    with pytest.raises(DataError, match="use fewer images"):
        load_dataset(str(image_folder), image_size=16)


# --- CIFAR-100 ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("byte_keys", [False, True])
def test_cifar100_fine_and_coarse_labels(make_fake_cifar100, tmp_path, byte_keys):
    root = make_fake_cifar100(tmp_path, byte_keys=byte_keys)
    fine = load_dataset("cifar100", root, allow_download=False)
    coarse = load_dataset("cifar100", root, labels="coarse", allow_download=False)
    assert fine.train_images.shape == (200, 3, 32, 32) and fine.test_images.shape == (100, 3, 32, 32)
    assert len(fine.classes) == 100 and fine.classes[7] == "fine07" and len(coarse.classes) == 20
    assert set(fine.train_labels.tolist()) == set(range(100)) and coarse.train_labels.max() == 19
    assert torch.equal(coarse.train_labels, fine.train_labels // 5)  # as the generated files pair them
    assert torch.equal(coarse.train_images, fine.train_images)
    assert fine.record["kind"] == "cifar100" and fine.record["labels"] == "fine" and coarse.record["labels"] == "coarse"
    assert fine.record["path"] is None and fine.record["fingerprint"] == coarse.record["fingerprint"]
    with open(root / "cifar-100-python" / "train", "rb") as f:
        raw = pickle.load(f, encoding="latin1" if not byte_keys else "bytes")
    data = raw["data" if not byte_keys else b"data"]
    assert torch.equal(fine.train_images[3, 2, 5], torch.from_numpy(data[3][2048 + 5 * 32 : 2048 + 6 * 32]))


def rewrite(path: Path, **changes) -> None:
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    batch.update(changes)
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


@pytest.mark.parametrize(
    "name, change, message",
    [
        (
            "train",
            {"data": np.zeros((200, 1024), np.uint8)},
            r"train: 'data' must be a uint8 array of shape \(N, 3072\)",
        ),
        ("test", {"fine_labels": [100] * 100}, r"test: fine_labels out of range 0-99"),
        ("train", {"fine_labels": [0] * 3}, r"train: 200 images but 3 fine_labels"),
        ("meta", {"fine_label_names": ["a"] * 99}, r"meta: expected 100 fine label names, found 99"),
        ("test", None, r"missing CIFAR-100 file: .*test"),
        ("train", b"junk", r"train is truncated or corrupt"),
    ],
)
def test_cifar100_bad_files_are_refused(make_fake_cifar100, tmp_path, name, change, message):
    root = make_fake_cifar100(tmp_path)
    path = root / "cifar-100-python" / name
    if change is None:
        path.unlink()
    elif isinstance(change, bytes):
        path.write_bytes(change)
    else:
        rewrite(path, **change)
    with pytest.raises(DataError, match=message) as info:
        load_dataset("cifar100", root, allow_download=False)
    assert "\n" not in str(info.value)


def test_cifar100_refuses_a_pickle_that_would_run_code(make_fake_cifar100, tmp_path):
    root = make_fake_cifar100(tmp_path)
    (root / "cifar-100-python" / "meta").write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")
    with pytest.raises(DataError, match=r"meta: refused global os.system"):
        load_dataset("cifar100", root, allow_download=False)


def serve(monkeypatch, archive: Path, md5: str | None = None) -> list[str]:
    """Downloads copy ``archive``; its checksum is trusted unless ``md5`` says otherwise. Returns the URLs asked."""
    urls: list[str] = []

    def fake_fetch(url: str, dest: Path) -> None:
        urls.append(url)
        shutil.copyfile(archive, dest)

    monkeypatch.setattr(cifarlab.data.cifar10, "fetch", fake_fetch)
    monkeypatch.setattr(cifar100, "CIFAR100_MD5", md5 or hashlib.md5(archive.read_bytes()).hexdigest())
    return urls


def cifar100_archive(make_fake_cifar100, tmp_path: Path) -> Path:
    source = make_fake_cifar100(tmp_path / "source")
    with tarfile.open(tmp_path / "c100.tar.gz", "w:gz") as tar:
        tar.add(source / "cifar-100-python", arcname="cifar-100-python")
    return tmp_path / "c100.tar.gz"


def test_cifar100_is_downloaded_checked_and_installed(make_fake_cifar100, tmp_path, monkeypatch, capsys):
    urls = serve(monkeypatch, cifar100_archive(make_fake_cifar100, tmp_path))
    data = load_dataset("cifar100", tmp_path / "root", labels="coarse")
    assert urls == ["https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"] and len(data.classes) == 20
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["cifar-100-python"]
    assert "CIFAR-100 not found" in capsys.readouterr().out
    assert len(load_dataset("cifar100", tmp_path / "root", allow_download=False).train_labels) == 200


def test_cifar100_download_checksum_mismatch_installs_nothing(make_fake_cifar100, tmp_path, monkeypatch):
    serve(monkeypatch, cifar100_archive(make_fake_cifar100, tmp_path), md5="0" * 32)
    with pytest.raises(DataError, match=r"cifar-100-python.tar.gz: checksum mismatch .* nothing was installed"):
        load_dataset("cifar100", tmp_path / "root")
    assert not (tmp_path / "root").exists()


def test_cifar100_archive_without_meta_is_refused(make_fake_cifar100, tmp_path, monkeypatch):
    source = make_fake_cifar100(tmp_path / "source")
    (source / "cifar-100-python" / "meta").unlink()
    with tarfile.open(tmp_path / "c100.tar.gz", "w:gz") as tar:
        tar.add(source / "cifar-100-python", arcname="cifar-100-python")
    serve(monkeypatch, tmp_path / "c100.tar.gz")
    with pytest.raises(DataError, match=r"the archive has no cifar-100-python/meta"):
        load_dataset("cifar100", tmp_path / "root")


def test_cifar100_absent_without_downloads_says_where_it_looked(tmp_path):
    with pytest.raises(DataError, match=r"CIFAR-100 not found: no cifar-100-python/ folder in"):
        load_dataset("cifar100", tmp_path, allow_download=False)


# --- image size and arguments ----------------------------------------------------------------------------------


def test_cifar_is_resized_to_the_asked_size(fake_cifar):
    data = load_dataset("cifar10", fake_cifar, image_size=48, allow_download=False)
    plain = load_dataset("cifar10", fake_cifar, allow_download=False)
    assert data.train_images.shape == (1000, 3, 48, 48) and data.test_images.shape == (200, 3, 48, 48)
    assert data.record["image_size"] == 48 and plain.record["image_size"] == 32
    assert data.record["fingerprint"] == plain.record["fingerprint"]
    assert torch.equal(data.train_labels, plain.train_labels)
    difference = data.train_images.float().mean(dim=(2, 3)) - plain.train_images.float().mean(dim=(2, 3))
    assert difference.abs().max() < 2  # the colours survive the resize
    flat = torch.full((2, 3, 32, 32), 90, dtype=torch.uint8)
    assert torch.equal(images.resize_images(flat, 16), torch.full((2, 3, 16, 16), 90, dtype=torch.uint8))


@pytest.mark.parametrize(
    "dataset, kwargs, message",
    [
        ("cifar10", {"image_size": 8}, r"image_size: must be from 16 to 512 \(got 8\)"),
        ("cifar10", {"labels": "coarse"}, r"labels: 'coarse' applies to --dataset cifar100 only"),
        ("cifar100", {"labels": "medium"}, r"labels: must be 'fine' or 'coarse'"),
    ],
)
def test_bad_arguments_are_usage_errors(dataset, kwargs, message, tmp_path):
    with pytest.raises(UsageError, match=message):
        load_dataset(dataset, tmp_path, allow_download=False, **kwargs)


# --- reload ------------------------------------------------------------------------------------------------------


def test_reload_reads_the_same_folder_and_split(make_image_folder, tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=10, test_per_class=None)
    data = load_dataset(str(root), image_size=16)
    again = reload(run_record(data))  # no test_files needed: the split follows from the file list
    assert torch.equal(again.test_images, data.test_images) and again.record == data.record
    copy = shutil.copytree(root, tmp_path / "copy")  # other place, other times, same files
    moved = reload(run_record(data), dataset=str(copy))
    assert torch.equal(moved.train_images, data.train_images)


def test_reload_refuses_a_folder_whose_files_differ(make_image_folder, tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=3, test_per_class=1)
    record = run_record(load_dataset(str(root), image_size=16))
    shutil.copy(root / "train" / "circle" / "circle-000.png", root / "train" / "circle" / "new.png")
    with pytest.raises(DataError) as info:
        reload(record)
    assert str(info.value).startswith(f"{root.resolve()}: the images found are not the ones this run was trained on")
    assert f"the run's {record['fingerprint']})" in str(info.value)


def test_reload_says_when_the_folder_is_gone(make_image_folder, tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=2, test_per_class=1)
    record = run_record(load_dataset(str(root), image_size=16))
    shutil.rmtree(root)
    with pytest.raises(DataError, match=r"the run's image folder is not there \(moved\? give its place with --dataset"):
        reload(record)


def test_reload_of_cifar_uses_the_data_dir_size_and_labels(fake_cifar, make_fake_cifar100, tmp_path):
    record = run_record(load_dataset("cifar10", fake_cifar, image_size=40, allow_download=False))
    assert reload(record, fake_cifar).train_images.shape == (1000, 3, 40, 40)
    with pytest.raises(DataError, match=r"this run was trained on cifar10, not on cifar100"):
        reload(record, fake_cifar, dataset="cifar100")
    root = make_fake_cifar100(tmp_path)
    coarse = run_record(load_dataset("cifar100", root, labels="coarse", allow_download=False))
    assert len(reload(coarse, root).classes) == 20
    rewrite(root / "cifar-100-python" / "test", filenames=[f"another_name_{k}.png" for k in range(100)])
    with pytest.raises(DataError, match=r"file list differs"):
        reload(coarse, root)
