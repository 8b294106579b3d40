"""``cifarlab export``: ONNX (run with onnxruntime) and TorchScript files match PyTorch to 1e-4 on 100 test images.

TorchScript needs nothing beyond torch; ONNX needs the export extra. Every test here must run in CI (CI=true):
there a missing onnxruntime fails instead of skipping."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarlab.base.errors import CifarlabError
from cifarlab.cli.main import main
from cifarlab.data.cifar10 import ImageData, load_cifar10
from cifarlab.data.split import normalize
from cifarlab.models.registry import build_model
from cifarlab.runs.checkpoint import load_checkpoint, model_from_checkpoint

pytestmark = pytest.mark.required_in_ci  # the test extra installs the export extra: with CI=true a skip fails
FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}


def onnxruntime():
    """onnxruntime, or skip (a failure in CI) when the export extra is not installed."""
    for name in ("onnx", "onnxscript"):
        pytest.importorskip(name, reason="the export extra is not installed: pip install 'cifarlab[export]'")
    return pytest.importorskip(
        "onnxruntime", reason="the export extra is not installed: pip install 'cifarlab[export]'"
    )


@pytest.fixture(scope="module")
def reference(tiny_run, fake_cifar) -> tuple[np.ndarray, np.ndarray]:
    """100 test images on the [0, 1] scale, and the logits PyTorch gives them through the training pipeline."""
    data = load_cifar10(fake_cifar)
    images = data.test_images[:100]
    state = load_checkpoint(tiny_run)
    with torch.no_grad():
        logits = model_from_checkpoint(state)(
            normalize(images, torch.tensor(state["mean"]), torch.tensor(state["std"]))
        )
    return images.float().div(255).numpy(), logits.numpy()


@pytest.fixture(scope="module")
def export_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture
def exported(tiny_run, fake_cifar, export_folder) -> Callable[[str], Path]:
    """``exported(fmt)``: the tiny run exported in that format through the CLI (once per module)."""

    def get(fmt: str) -> Path:
        if fmt == "onnx":
            onnxruntime()
        path = export_folder / FORMATS[fmt]
        if not path.is_file():
            assert (
                main(["export", str(tiny_run), "--format", fmt, "--out", str(path), "--data-dir", str(fake_cifar)]) == 0
            )
        return path

    return get


def run_onnx(path: Path, images: np.ndarray) -> np.ndarray:
    session = onnxruntime().InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def run_torchscript(path: Path, images: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream, still loadable
        model = torch.jit.load(str(path))
    with torch.no_grad():
        return model(torch.from_numpy(images)).numpy()


RUNNERS = {"onnx": run_onnx, "torchscript": run_torchscript}


@pytest.mark.parametrize("fmt", RUNNERS)
def test_exported_outputs_match_pytorch_on_100_test_images(fmt, exported, reference):
    images, expected = reference
    got = RUNNERS[fmt](exported(fmt), images)
    assert got.shape == (100, 10)
    assert np.abs(got - expected).max() <= 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()


@pytest.mark.parametrize("fmt", RUNNERS)
def test_any_batch_size_works(fmt, exported, reference):
    images, expected = reference
    for n in (1, 7):
        assert np.abs(RUNNERS[fmt](exported(fmt), images[:n]) - expected[:n]).max() <= 1e-4


def test_the_onnx_graph_takes_pixels_in_0_1_and_returns_logits(exported):
    session = onnxruntime().InferenceSession(str(exported("onnx")), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("images", "tensor(float)", [3, 32, 32])
    assert (out.name, out.shape[1:]) == ("logits", [10])


@pytest.mark.parametrize("fmt", RUNNERS)
def test_the_json_beside_it_says_how_to_use_it(fmt, exported, tiny_run, fake_cifar):
    path = exported(fmt)
    info = json.loads(path.with_name(path.name + ".json").read_text())
    state = load_checkpoint(tiny_run)
    assert info["format"] == fmt and info["classes"] == state["classes"]
    assert info["normalization"] == {
        **info["normalization"],
        "mean": state["mean"],
        "std": state["std"],
        "inside_model": True,
    }
    assert info["input"]["range"].startswith("[0, 1]")
    assert info["check"]["images"] == f"the first 100 CIFAR-10 test images in {fake_cifar}"
    assert info["check"]["max_abs_logit_diff"] <= 1e-4


def test_the_format_follows_the_file_name(tiny_run, fake_cifar, tmp_path, capsys, cli_error):
    data = ["--data-dir", str(fake_cifar)]
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "m.ts"), *data]) == 0
    assert "torchscript" in capsys.readouterr().out
    err = cli_error("export", str(tiny_run), "--out", str(tmp_path / "m.bin"), *data, code=2)
    assert "give --format onnx or --format torchscript" in err
    assert not (tmp_path / "m.bin").exists()


def test_a_mismatch_is_an_error_and_nothing_is_written(tiny_run, fake_cifar, tmp_path, monkeypatch):
    import cifarlab.tools.export as export_module

    make, _ = export_module.EXPORTERS["torchscript"]
    monkeypatch.setitem(export_module.EXPORTERS, "torchscript", (make, lambda data, x: np.zeros((len(x), 10))))
    with pytest.raises(CifarlabError, match="differs from PyTorch"):
        export_module.export(tiny_run, tmp_path / "m.pt", data_dir=str(fake_cifar))
    assert list(tmp_path.iterdir()) == []


def test_missing_onnx_packages_give_the_install_command(tiny_run, fake_cifar, tmp_path, monkeypatch, cli_error):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if it were not installed
    err = cli_error("export", str(tiny_run), "--out", str(tmp_path / "m.onnx"), "--data-dir", str(fake_cifar), code=1)
    assert "pip install 'cifarlab[export]'" in err


FIVE = ["ant", "bee", "cat", "dog", "eel"]


@pytest.fixture(scope="module")
def folder_checkpoint(tiny_run, tmp_path_factory) -> Path:
    """A 64-px, 5-class mycnn checkpoint of an image folder that is not at hand (its record names a missing path)."""
    folder = tmp_path_factory.mktemp("folder_run")
    state = torch.load(tiny_run / "best.pt", weights_only=True)
    torch.manual_seed(0)
    model = build_model("mycnn", num_classes=5).train()
    with torch.no_grad():
        model(torch.rand(8, 3, 64, 64))  # running statistics of its own, so the BatchNorm layers do something
    record = {"kind": "folder", "path": str(folder / "pictures"), "classes": FIVE, "image_size": 64}
    state.update(
        model=model.state_dict(),
        classes=FIVE,
        image_size=64,
        dataset={**record, "fingerprint": "0123456789abcdef", "layout": "split", "skipped": 0},
    )
    state.pop("train_model", None)
    torch.save(state, folder / "best.pt")
    return folder / "best.pt"


@pytest.mark.parametrize("fmt", RUNNERS)
def test_a_64px_five_class_run_exports_at_its_size_and_matches_pytorch(fmt, folder_checkpoint, tmp_path):
    if fmt == "onnx":
        onnxruntime()
    out = tmp_path / FORMATS[fmt]
    assert main(["export", str(folder_checkpoint), "--out", str(out)]) == 0
    state = load_checkpoint(folder_checkpoint)
    pixels = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model_from_checkpoint(state)(
            normalize(pixels, torch.tensor(state["mean"]), torch.tensor(state["std"]))
        )
    got = RUNNERS[fmt](out, pixels.float().div(255).numpy())
    assert got.shape == (6, 5) and np.abs(got - expected.numpy()).max() <= 1e-4
    info = json.loads(out.with_name(out.name + ".json").read_text())
    assert info["classes"] == FIVE and info["image_size"] == 64
    assert info["input"]["shape"] == ["N", 3, 64, 64] and info["output"]["shape"] == ["N", 5]
    assert "resize images to 64x64 first" in info["input"]["range"]
    assert info["check"]["images"].startswith("100 random images (the image folder is not at hand")


def test_the_onnx_file_takes_64px_images_and_names_its_classes(folder_checkpoint, tmp_path):
    onnx = onnxruntime()
    out = tmp_path / "m.onnx"
    assert main(["export", str(folder_checkpoint), "--out", str(out)]) == 0
    session = onnx.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,), (result,) = session.get_inputs(), session.get_outputs()
    assert inp.shape[1:] == [3, 64, 64] and result.shape[1:] == [5]
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["cifarlab.classes"]) == FIVE and meta["cifarlab.image_size"] == "64"


def test_the_torchscript_file_carries_its_classes_and_size(folder_checkpoint, tmp_path):
    out = tmp_path / "m.pt"
    assert main(["export", str(folder_checkpoint), "--out", str(out)]) == 0
    extra = {"cifarlab.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(out), _extra_files=extra)
    meta = json.loads(extra["cifarlab.json"])
    assert json.loads(meta["cifarlab.classes"]) == FIVE and meta["cifarlab.image_size"] == "64"


def test_the_check_runs_on_the_held_out_images_the_record_reloads(folder_checkpoint, tmp_path, monkeypatch):
    import cifarlab.data.loading
    from cifarlab.tools.export import check_images

    held_out = torch.randint(0, 256, (30, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    calls = []

    def reload(record, data_dir=None, dataset=None):
        calls.append((record["kind"], data_dir, dataset))
        labels = torch.zeros(30, dtype=torch.long)
        return ImageData(held_out, labels, held_out, labels, FIVE, record=record)

    monkeypatch.setattr(cifarlab.data.loading, "reload", reload)
    state = load_checkpoint(folder_checkpoint)
    images, source = check_images(state, "cifar-folder", str(tmp_path / "moved"))
    assert calls == [("folder", "cifar-folder", str(tmp_path / "moved"))]
    assert source == f"the first 30 held-out images of {tmp_path / 'moved'}"
    assert np.array_equal(images, held_out.float().div(255).numpy())


def test_the_check_never_reads_a_cifar_folder_named_in_the_checkpoint(tiny_run, fake_cifar, tmp_path, monkeypatch):
    """A CIFAR record's path is ignored: the images come from --data-dir (here: nowhere, so random ones)."""
    from cifarlab.tools.export import check_images

    state = load_checkpoint(tiny_run)
    state["dataset"] = {"kind": "cifar10", "path": str(fake_cifar), "classes": state["classes"], "image_size": 32}
    monkeypatch.chdir(tmp_path)
    images, source = check_images(state, str(tmp_path / "nowhere"))
    assert images.shape == (100, 3, 32, 32)
    assert source == f"100 random images (CIFAR-10 not found in {tmp_path / 'nowhere'})"
    _, found = check_images(state, str(fake_cifar))
    assert found == f"the first 100 CIFAR-10 test images in {fake_cifar}"


@pytest.mark.parametrize("size, count", [(32, 100), (64, 100), (96, 44), (224, 8), (512, 8)])
def test_fewer_check_images_at_larger_sizes(size, count):
    from cifarlab.tools.export import check_count

    assert check_count(size) == count
