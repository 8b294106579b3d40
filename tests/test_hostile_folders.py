"""Dataset folders, the decode cache and ``predict`` against hostile or unlucky files: FIFOs and devices, a killed
decoding worker, formats that run external programs (EPS), symbolic links out of the dataset, two folders that
agree on names, sizes and times but not on pixels, a planted cache header claiming a terabyte, temporary files a
killed writer left, ``predict`` over many images in bounded batches, and file names that are not UTF-8."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarlab.base.errors import DataError
from cifarlab.data import folder_cache, folders, images
from cifarlab.data.folder_cache import CACHE_SUBDIR
from cifarlab.data.folders import load_folder, scan_folder
from cifarlab.tools import predict
from cifarlab.tools.predict import predict_files

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh, empty decode cache for this test."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("CIFARLAB_CACHE_DIR", str(folder))
    return folder / CACHE_SUBDIR


@pytest.fixture
def folder(make_image_folder, tmp_path) -> Path:
    """A writable 3-class folder (train/ 8 per class, test/ 3 per class) of this test's own."""
    return make_image_folder(tmp_path / "data")


def count_images(root: Path) -> int:
    return sum(1 for p in root.rglob("*.png"))


# --- files that are not regular files -------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_fifo_in_a_class_folder_is_left_out_and_counted_never_opened(folder, cache, capsys):
    real = count_images(folder)
    os.mkfifo(folder / "train" / "circle" / "pipe.png")  # opening it for reading would wait for a writer forever
    data = load_folder(folder)
    assert len(data.train_images) + len(data.test_images) == real
    assert "ignored 1 FIFOs, sockets or devices (never opened): train/circle/pipe.png" in capsys.readouterr().out


@pytest.mark.timeout(60)
def test_predict_on_a_fifo_is_an_error_line_not_a_hang(tiny_run, tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    (result,) = predict_files(tiny_run, [tmp_path / "pipe.png"])
    assert result.error == "not a regular file (a FIFO, socket or device)"


def kill_this_worker(job):
    """Replaces the decoder in the worker processes: dies as the OOM killer makes a process die."""
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.timeout(120)
def test_a_killed_decoding_worker_stops_the_load_with_one_line_not_a_hang(folder, cache, monkeypatch, cli_error):
    monkeypatch.setattr(folders, "workers_for", lambda count: 2)  # a pool even for this small folder
    monkeypatch.setattr(folders, "decode_chunk", kill_this_worker)  # forked workers inherit the patch
    with pytest.raises(DataError, match="a process decoding images died"):
        load_folder(folder)
    assert not cache.exists() or not list(cache.glob("*.npy"))  # nothing half-decoded was cached
    line = cli_error("train", "--dataset", str(folder), "--epochs", "1", "--out", str(folder.parent / "r"), code=1)
    assert "a process decoding images died" in line


# --- formats that run external programs ----------------------------------------------------------------------


def test_eps_is_never_handed_to_ghostscript_in_a_dataset_or_in_predict(folder, cache, tiny_run, monkeypatch, capsys):
    import subprocess

    def no_program(*args, **kwargs):
        raise AssertionError(f"an external program was started: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_program)
    (folder / "train" / "circle" / "drawing.eps").write_bytes(EPS)
    (folder / "train" / "square" / "drawing.png").write_bytes(EPS)  # EPS under an image's name
    assert ".eps" not in images.image_suffixes() and "EPS" not in images.IMAGE_FORMATS
    data = load_folder(folder)
    out = capsys.readouterr().out
    assert "ignored 1 files that are not images by their extension: train/circle/drawing.eps" in out
    assert "skipped 1 of" in out and "train/square/drawing.png: not an image in an accepted format" in out
    assert len(data.train_images) == 3 * 8
    (folder / "photo.eps").write_bytes(EPS)
    (result,) = predict_files(tiny_run, [folder / "photo.eps"])
    assert result.error is not None and result.error.startswith("not an image in an accepted format")


# --- symbolic links out of the dataset ---------------------------------------------------------------------------


def test_links_out_of_the_dataset_are_not_followed_and_are_counted(folder, cache, tmp_path, capsys):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.new("RGB", (40, 30), (1, 2, 3)).save(outside / "secret.png")
    (outside / "more").mkdir()
    Image.new("RGB", (40, 30), (4, 5, 6)).save(outside / "more" / "secret2.png")
    (folder / "train" / "circle" / "link.png").symlink_to(outside / "secret.png")
    (folder / "train" / "square" / "sub").symlink_to(outside / "more")
    (folder / "train" / "stripe" / "inside.png").symlink_to(folder / "train" / "stripe" / "stripe-000.png")
    scan = scan_folder(folder)
    assert sorted(scan.left_out.outside) == ["train/circle/link.png", "train/square/sub"]
    assert "train/stripe/inside.png" in [e.rel for e in scan.entries]  # a link inside the dataset is an image
    data = load_folder(folder)
    assert len(data.train_images) == 3 * 8 + 1
    assert "ignored 2 symbolic links out of the dataset folder (not followed)" in capsys.readouterr().out


def test_a_class_folder_that_links_out_of_the_dataset_is_refused_as_empty(folder, cache, tmp_path):
    (tmp_path / "other").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "other" / "x.png")
    (folder / "train" / "zeta").symlink_to(tmp_path / "other")
    (folder / "test" / "zeta").symlink_to(tmp_path / "other")
    with pytest.raises(DataError, match="zeta: no image files"):
        scan_folder(folder)


# --- the cache -----------------------------------------------------------------------------------------------------


def write_bmp_folder(root: Path, colour: tuple[int, int, int], mtime_ns: int) -> Path:
    """2 classes x (4 train + 2 test) 16x16 BMPs of one colour (BMP: the size never depends on the pixels), all
    with the same modification time."""
    for split, count in (("train", 4), ("test", 2)):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                path = root / split / name / f"{i}.bmp"
                Image.new("RGB", (16, 16), colour).save(path)
                os.utime(path, ns=(mtime_ns, mtime_ns))
    return root


def test_two_folders_with_the_same_names_sizes_and_times_but_other_pixels_never_share_a_cache_entry(tmp_path, cache):
    mtime = 1_700_000_000 * 10**9
    red = write_bmp_folder(tmp_path / "x" / "data", (200, 0, 0), mtime)
    blue = write_bmp_folder(tmp_path / "y" / "data", (0, 0, 200), mtime)
    first, second = load_folder(red, image_size=16), load_folder(blue, image_size=16)
    assert int(first.train_images[:, 0].float().mean()) == 200 and int(first.train_images[:, 2].max()) == 0
    assert int(second.train_images[:, 2].float().mean()) == 200 and int(second.train_images[:, 0].max()) == 0
    assert len(list(cache.glob("*.npy"))) == 2


def test_a_cache_header_that_claims_a_terabyte_is_refused_unread_and_rebuilt(folder, cache, capsys):
    expected = load_folder(folder, image_size=16)
    (entry,) = cache.glob("*.npy")
    with open(entry, "wb") as f:  # a valid .npy header for 2**40 bytes of uint8, and almost no data
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (2**20, 3, 512, 682)})
        f.write(b"\0" * 64)
    capsys.readouterr()
    again = load_folder(folder, image_size=16)
    out = capsys.readouterr().out
    assert "are damaged (array of uint8 (1048576, 3, 512, 682), expected uint8" in out and "decoding again" in out
    assert bool((again.train_images == expected.train_images).all())


def test_a_cache_array_shorter_than_its_header_is_rebuilt(folder, cache, capsys):
    expected = load_folder(folder, image_size=16)
    (entry,) = cache.glob("*.npy")
    entry.write_bytes(entry.read_bytes()[:-100])
    capsys.readouterr()
    assert bool((load_folder(folder, image_size=16).test_images == expected.test_images).all())
    assert "the file is shorter than its header says" in capsys.readouterr().out


def test_temporary_files_a_killed_writer_left_are_removed_at_the_next_load(folder, cache):
    cache.mkdir(parents=True)
    stale, fresh = cache / ".0123.npy.abcd.tmp", cache / ".4567.npy.efgh.tmp"
    stale.write_bytes(b"half an array")
    fresh.write_bytes(b"a writer still at work")
    old = time.time() - 2 * folder_cache.STALE_TEMP_SECONDS
    os.utime(stale, (old, old))
    load_folder(folder, image_size=16)
    assert not stale.exists() and fresh.exists()
    assert sorted(p.suffix for p in cache.iterdir() if not p.name.startswith(".")) == [".json", ".npy"]


# --- predict over many images -------------------------------------------------------------------------------


def test_predict_scores_a_folder_a_batch_at_a_time_with_the_same_answers(tiny_run, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for i in range(11):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / f"{i:02d}.png")
    (tmp_path / "05.png").write_bytes(b"not an image")
    whole = predict_files(tiny_run, [tmp_path])
    sizes: list[int] = []
    real = predict.classify

    def counted(model, batch, *args, **kwargs):
        sizes.append(len(batch))
        return real(model, batch, *args, **kwargs)

    monkeypatch.setattr(predict, "BATCH", 4)
    monkeypatch.setattr(predict, "classify", counted)
    batched = predict_files(tiny_run, [tmp_path])
    assert sizes == [4, 3, 3]  # 11 files in batches of 4, the unreadable one in the second
    for b, w in zip(batched, whole, strict=True):
        assert (b.file, b.error, [c for c, _ in b.top]) == (w.file, w.error, [c for c, _ in w.top])
        assert [p for _, p in b.top] == pytest.approx([p for _, p in w.top], abs=1e-5)
    assert batched[5].error is not None and all(r.top for k, r in enumerate(batched) if k != 5)


# --- file names that are not UTF-8 ---------------------------------------------------------------------------


def test_file_names_that_are_not_utf8_load_and_are_shown_escaped(folder, cache, capsys):
    circle = os.fsencode(folder / "train" / "circle")
    Image.new("RGB", (40, 30), (9, 9, 9)).save(os.fsdecode(circle + b"/ok\xff.png"))
    Path(os.fsdecode(circle + b"/bad\xfe.png")).write_bytes(b"broken")
    data = load_folder(folder)
    assert len(data.train_images) == 3 * 8 + 1
    out = capsys.readouterr().out
    assert "skipped 1 of" in out and "bad\\udcfe.png" in out
    out.encode("utf-8")  # the log line itself is valid text
