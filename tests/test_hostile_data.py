"""Data files are untrusted: hostile pickles are refused without running, the data folder is never taken from a
run or checkpoint, and a download is checked, extracted safely and installed only when complete."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import cifarlab.data.cifar10
from cifarlab.base.errors import DataError
from cifarlab.cli.main import build_parser, main
from cifarlab.cli.train import resume_config
from cifarlab.data.cifar10 import BATCH_DIR, load_cifar10
from cifarlab.data.safe_pickle import load_restricted


class WritesMarker:
    """Unpickling this calls os.system, which creates the marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def hostile_copy(fake_cifar: Path, root: Path, marker: Path, name: str = "data_batch_1") -> Path:
    """A copy of the generated data set whose ``name`` file runs code when unpickled naively."""
    shutil.copytree(fake_cifar, root)
    with open(root / BATCH_DIR / name, "wb") as f:
        pickle.dump({"data": WritesMarker(marker), "labels": [0]}, f, protocol=2)
    return root


def test_the_payload_is_real_when_loaded_naively(fake_cifar, tmp_path):
    marker = tmp_path / "marker"
    root = hostile_copy(fake_cifar, tmp_path / "data", marker)
    with open(root / BATCH_DIR / "data_batch_1", "rb") as f:
        pickle.load(f)  # what a plain reader would do
    assert marker.exists()


@pytest.mark.parametrize("name", ["data_batch_1", "test_batch", "batches.meta"])
def test_a_hostile_batch_is_refused_in_one_line_and_never_runs(name, fake_cifar, tmp_path):
    marker = tmp_path / "marker"
    root = hostile_copy(fake_cifar, tmp_path / "data", marker, name)
    with pytest.raises(DataError) as info:
        load_cifar10(root, allow_download=False)
    text = str(info.value)
    assert str(root / BATCH_DIR / name) in text and "refused global posix.system" in text
    assert len(text.splitlines()) == 1
    assert not marker.exists()


def test_the_cli_refuses_hostile_data_with_exit_code_1(tiny_run, fake_cifar, tmp_path, capsys):
    marker = tmp_path / "marker"
    root = hostile_copy(fake_cifar, tmp_path / "data", marker, "test_batch")
    assert main(["evaluate", str(tiny_run), "--data-dir", str(root), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cifarlab: error: ") and "test_batch" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload, refused",
    [
        (np.array([1, "a"], dtype=object), "object dtype"),
        (np.ma.masked_array([1, 2], mask=[0, 1]), "refused global numpy.ma.core"),
        (torch.zeros(3), "refused global torch"),
        (io.BytesIO(b"x"), "refused global _io"),
    ],
)
def test_only_plain_arrays_and_data_can_be_built(payload, refused, tmp_path):
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({"data": payload, "labels": []}, protocol=2))
    with pytest.raises(DataError, match=refused):
        load_restricted(path)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_arrays_written_by_python_3_load(protocol, tmp_path):
    batch = {"data": np.arange(12, dtype=np.uint8).reshape(2, 6), "labels": [1, 2], "name": "x", "raw": b"\x00\xff"}
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    loaded = load_restricted(path)
    assert loaded["labels"] == [1, 2] and loaded["name"] == "x" and loaded["raw"] == b"\x00\xff"
    assert np.array_equal(loaded["data"], batch["data"]) and loaded["data"].dtype == np.uint8


@pytest.mark.parametrize("encoding, key", [("latin1", "data"), ("bytes", b"data")])
def test_the_official_files_load_in_both_encodings(encoding, key, real_cifar):
    batch = load_restricted(real_cifar / BATCH_DIR / "test_batch", encoding=encoding)
    assert batch[key].shape == (10000, 3072) and batch[key].dtype == np.uint8
    meta = load_restricted(real_cifar / BATCH_DIR / "batches.meta", encoding=encoding)
    assert len(meta["label_names" if encoding == "latin1" else b"label_names"]) == 10


# ---------------------------------------------------------------------------------------------------------
# The data folder comes from --data-dir, $CIFARLAB_DATA_DIR or ./data, never from a run or a checkpoint
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def lured_run(tiny_run, fake_cifar, tmp_path) -> tuple[Path, Path]:
    """A copy of tiny_run whose config.json and checkpoints record a data folder holding a hostile pickle."""
    marker = tmp_path / "marker"
    bait = hostile_copy(fake_cifar, tmp_path / "bait", marker, "test_batch")
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data_dir": str(bait)}))
    for name in ("best.pt", "last.pt"):
        state = torch.load(run / name, weights_only=True)
        state["config"]["data_dir"] = str(bait)
        torch.save(state, run / name)
    return run, marker


@pytest.fixture
def reads(monkeypatch) -> list[Path]:
    """Every file the data module unpickles, in order."""
    seen: list[Path] = []

    def spy(path, *args, **kwargs):
        seen.append(Path(path))
        return load_restricted(path, *args, **kwargs)

    monkeypatch.setattr(cifarlab.data.cifar10, "load_restricted", spy)
    return seen


@pytest.fixture
def nowhere(monkeypatch, tmp_path) -> Path:
    """No $CIFARLAB_DATA_DIR, an empty working folder and no network: the default ./data does not exist."""
    monkeypatch.delenv("CIFARLAB_DATA_DIR", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    def offline(url, dest):
        raise OSError("offline in tests")

    monkeypatch.setattr(cifarlab.data.cifar10, "fetch", offline)
    return cwd


def test_evaluate_reads_the_given_folder_not_the_recorded_one(lured_run, fake_cifar, reads, tmp_path, capsys):
    run, marker = lured_run
    assert main(["evaluate", str(run), "--data-dir", str(fake_cifar), "--out", str(tmp_path / "out")]) == 0
    assert f"data {fake_cifar.resolve()}" in capsys.readouterr().out
    assert reads and all(p.parent == fake_cifar / BATCH_DIR for p in reads)
    assert json.loads((tmp_path / "out" / "test_metrics.json").read_text())["data_dir"] == str(fake_cifar.resolve())
    assert not marker.exists()


def test_evaluate_uses_the_environment_variable(lured_run, fake_cifar, reads, tmp_path, monkeypatch):
    run, marker = lured_run
    monkeypatch.setenv("CIFARLAB_DATA_DIR", str(fake_cifar))
    assert main(["evaluate", str(run), "--out", str(tmp_path / "out")]) == 0
    assert reads and all(p.parent == fake_cifar / BATCH_DIR for p in reads)
    assert not marker.exists()


def test_evaluate_without_a_data_folder_never_reads_the_recorded_one(lured_run, nowhere, reads, tmp_path, capsys):
    run, marker = lured_run
    assert main(["evaluate", str(run), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert str(nowhere / "data") in err and "bait" not in err and len(err.strip().splitlines()) == 1
    assert reads == [] and not marker.exists()


def test_analyze_and_export_never_read_the_recorded_folder(lured_run, nowhere, reads, tmp_path, capsys):
    from cifarlab.results.analysis import analyze
    from cifarlab.runs.checkpoint import load_checkpoint
    from cifarlab.tools.export import check_images

    run, marker = lured_run
    summary = analyze(run)
    assert any(str(nowhere / "data") in note for note in summary["skipped"])
    _, source = check_images(load_checkpoint(run), None)
    assert "random images" in source and str(nowhere / "data") in source
    assert reads == [] and not marker.exists()


def test_analyze_says_which_folder_it_read(lured_run, fake_cifar, reads, capsys):
    from cifarlab.results.analysis import load_test_images
    from cifarlab.runs.folder import load_predictions

    run, marker = lured_run
    images, reason = load_test_images(run, load_predictions(run), data_dir=str(fake_cifar))
    assert images is not None and reason is None
    assert f"test images from {fake_cifar.resolve()}" in capsys.readouterr().out
    assert reads and all(p.parent == fake_cifar / BATCH_DIR for p in reads)
    assert not marker.exists()


def test_resume_takes_the_data_folder_from_the_command_line_only(lured_run, nowhere, capsys):
    run, _ = lured_run
    config = resume_config(build_parser().parse_args(["train", "--resume", str(run)]))
    assert config.data_dir is None  # so train resolves $CIFARLAB_DATA_DIR, else ./data
    assert f"data folder: {nowhere / 'data'}" in capsys.readouterr().out
    config = resume_config(build_parser().parse_args(["train", "--resume", str(run), "--data-dir", "elsewhere"]))
    assert config.data_dir == "elsewhere"


# ---------------------------------------------------------------------------------------------------------
# Downloads: checksum, safe extraction into a temporary folder, atomic install, partial folders replaced
# ---------------------------------------------------------------------------------------------------------


def build_archive(fake_cifar: Path, path: Path, extra: list[tarfile.TarInfo] | None = None) -> Path:
    """A tar.gz laid out like the official one (cifar-10-batches-py/...), plus any ``extra`` members."""
    with tarfile.open(path, "w:gz") as tar:
        for member in extra or []:
            data = b"escaped" if member.isfile() else None
            if data is not None:
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
        tar.add(fake_cifar / BATCH_DIR, arcname=BATCH_DIR)
    return path


def serve(monkeypatch, archive: Path, trust: bool = True) -> list[str]:
    """Make cifarlab's download copy ``archive`` (and, with ``trust``, accept its checksum); returns the URLs."""
    fetched: list[str] = []

    def fake_fetch(url: str, dest: Path) -> None:
        fetched.append(url)
        shutil.copyfile(archive, dest)

    monkeypatch.setattr(cifarlab.data.cifar10, "fetch", fake_fetch)
    if trust:
        monkeypatch.setattr(cifarlab.data.cifar10, "CIFAR_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    return fetched


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name != BATCH_DIR) if root.exists() else []


def test_a_download_is_verified_extracted_and_installed(fake_cifar, tmp_path, monkeypatch):
    fetched = serve(monkeypatch, build_archive(fake_cifar, tmp_path / "a.tar.gz"))
    data = load_cifar10(tmp_path / "root")
    assert fetched == [cifarlab.data.cifar10.CIFAR_URL]
    assert data.train_images.shape == (1000, 3, 32, 32) and data.root == tmp_path / "root"
    assert leftovers(tmp_path / "root") == []  # neither the archive nor the temporary folder stays


def test_a_download_with_the_wrong_bytes_is_refused(fake_cifar, tmp_path, monkeypatch):
    serve(monkeypatch, build_archive(fake_cifar, tmp_path / "a.tar.gz"), trust=False)
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path / "root")
    text = str(info.value)
    assert "checksum mismatch" in text and cifarlab.data.cifar10.CIFAR_MD5 in text and len(text.splitlines()) == 1
    assert not (tmp_path / "root").exists()  # nothing installed, no empty folder


@pytest.mark.parametrize(
    "member", ["../escape.txt", "../../escape.txt", "../../../escape.txt", f"{BATCH_DIR}/../../../escape.txt"]
)
def test_members_that_climb_out_are_refused_and_nothing_lands_outside(member, fake_cifar, tmp_path, monkeypatch):
    root = tmp_path / "a" / "b" / "root"
    serve(monkeypatch, build_archive(fake_cifar, tmp_path / "evil.tar.gz", [tarfile.TarInfo(member)]))
    with pytest.raises(DataError, match="refused the archive"):
        load_cifar10(root)
    assert not [p for p in tmp_path.rglob("escape.txt")]
    assert not (root / BATCH_DIR).exists() and leftovers(root) == []


def test_absolute_members_and_links_out_write_nothing_outside(fake_cifar, tmp_path, monkeypatch):
    target = tmp_path / "outside" / "abs.txt"
    link = tarfile.TarInfo(f"{BATCH_DIR}/link")
    link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path / "outside")
    serve(monkeypatch, build_archive(fake_cifar, tmp_path / "evil.tar.gz", [tarfile.TarInfo(str(target))]))
    load_cifar10(tmp_path / "root")  # the leading / is stripped: the member lands inside the temporary folder
    assert not target.exists() and leftovers(tmp_path / "root") == []
    shutil.rmtree(tmp_path / "root")
    serve(monkeypatch, build_archive(fake_cifar, tmp_path / "link.tar.gz", [link]))
    with pytest.raises(DataError, match="refused the archive"):
        load_cifar10(tmp_path / "root")
    assert not (tmp_path / "outside").exists()


def test_a_partial_folder_from_an_earlier_failure_is_replaced(fake_cifar, tmp_path, monkeypatch, capsys):
    root = tmp_path / "root"
    (root / BATCH_DIR).mkdir(parents=True)
    shutil.copy(fake_cifar / BATCH_DIR / "data_batch_1", root / BATCH_DIR)  # extraction stopped early
    stale = root / (cifarlab.data.cifar10.DOWNLOAD_PREFIX + "killed")  # a download killed before its cleanup
    stale.mkdir()
    (stale / "cifar-10-python.tar.gz").write_bytes(b"half an archive")
    with pytest.raises(DataError, match="missing CIFAR-10 file: .*data_batch_2"):
        load_cifar10(root, allow_download=False)  # no download allowed: the missing file is named
    serve(monkeypatch, build_archive(fake_cifar, tmp_path / "a.tar.gz"))
    data = load_cifar10(root)
    assert "incomplete" in capsys.readouterr().out
    assert len(data.train_labels) == 1000 and leftovers(root) == []


def test_an_interrupted_download_installs_nothing_and_the_next_one_works(fake_cifar, tmp_path, monkeypatch):
    archive = build_archive(fake_cifar, tmp_path / "a.tar.gz")

    def cut_off(url: str, dest: Path) -> None:
        dest.write_bytes(archive.read_bytes()[:1000])
        raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(cifarlab.data.cifar10, "fetch", cut_off)
    with pytest.raises(DataError, match="connection reset"):
        load_cifar10(tmp_path / "root")
    assert not (tmp_path / "root").exists()
    serve(monkeypatch, archive)
    assert len(load_cifar10(tmp_path / "root").test_labels) == 200
