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

from cifarlab.checkpoint import load_checkpoint, model_from_checkpoint
from cifarlab.cli import main
from cifarlab.data import load_cifar10, normalize
from cifarlab.errors import CifarlabError

pytestmark = pytest.mark.required_in_ci
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
    import cifarlab.export as export_module

    make, _ = export_module.EXPORTERS["torchscript"]
    monkeypatch.setitem(export_module.EXPORTERS, "torchscript", (make, lambda data, x: np.zeros((len(x), 10))))
    with pytest.raises(CifarlabError, match="differs from PyTorch"):
        export_module.export(tiny_run, tmp_path / "m.pt", data_dir=str(fake_cifar))
    assert list(tmp_path.iterdir()) == []


def test_missing_onnx_packages_give_the_install_command(tiny_run, fake_cifar, tmp_path, monkeypatch, cli_error):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if it were not installed
    err = cli_error("export", str(tiny_run), "--out", str(tmp_path / "m.onnx"), "--data-dir", str(fake_cifar), code=1)
    assert "pip install 'cifarlab[export]'" in err
