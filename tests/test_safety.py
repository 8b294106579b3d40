"""Checkpoints are untrusted input: code inside one never runs, and every kind of bad file is a clear error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from cifarlab.checkpoint import load_checkpoint, model_from_checkpoint
from cifarlab.errors import CheckpointError


class Payload:
    """Unpickling this object runs a shell command (here: create a marker file) - the classic pickle attack."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def malicious(tiny_run, tmp_path) -> tuple[Path, Path]:
    """A real checkpoint with a payload added under an extra key: only the safe loader stands in the way."""
    marker = tmp_path / "payload-ran"
    state = torch.load(tiny_run / "best.pt", weights_only=True)
    state["notes"] = Payload(marker)
    path = tmp_path / "evil.pt"
    torch.save(state, path)
    return path, marker


def test_the_payload_is_real_when_loaded_unsafely(malicious, child):
    """Guards the tests below: without weights_only=True this file does run its command."""
    path, marker = malicious
    child.run("-c", f"import torch; torch.load({str(path)!r}, weights_only=False)")
    assert marker.exists()


def test_a_checkpoint_that_runs_code_is_refused_and_never_runs(malicious):
    path, marker = malicious
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"refused to load {path}")
    assert "system" in str(info.value)  # names what was blocked (posix.system on Linux and macOS)
    assert not marker.exists()


def test_the_cli_refuses_it_in_one_line_with_exit_code_1(malicious, fake_cifar, tmp_path, child):
    path, marker = malicious
    result = child.cli("evaluate", str(path), "--data-dir", str(fake_cifar), "--out", str(tmp_path), expect=1)
    assert result.stderr.startswith("cifarlab: error: refused to load") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not marker.exists()


def test_every_command_that_loads_a_checkpoint_refuses_it(malicious, tiny_run, fake_cifar, tmp_path, cli_error):
    from PIL import Image

    path, marker = malicious
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    run = tmp_path / "run"  # a run folder whose last.pt was swapped for the malicious file
    run.mkdir()
    (run / "config.json").write_text((tiny_run / "config.json").read_text())
    (run / "last.pt").write_bytes(path.read_bytes())
    data = ["--data-dir", str(fake_cifar)]
    for args in (
        ["predict", "--checkpoint", str(path), str(image)],
        ["export", str(path), "--out", str(tmp_path / "m.pt"), *data],
        ["evaluate", str(run), "--out", str(tmp_path / "eval"), *data],
        ["train", "--resume", str(run), "--no-analysis", *data],
    ):
        assert "refused to load" in cli_error(*args, code=1), args
    assert not marker.exists()


def other_model(tiny_run: Path, tmp_path: Path) -> Path:
    """mycnn weights labelled as a resnet18 checkpoint."""
    state = torch.load(tiny_run / "best.pt", weights_only=True)
    state["model_name"] = "resnet18"
    torch.save(state, tmp_path / "other.pt")
    return tmp_path / "other.pt"


def bare_state_dict(tiny_run: Path, tmp_path: Path) -> Path:
    """The weights alone, as many projects save them: a torch file, but not a cifarlab checkpoint."""
    torch.save(torch.load(tiny_run / "best.pt", weights_only=True)["model"], tmp_path / "weights.pt")
    return tmp_path / "weights.pt"


def truncated(tiny_run: Path, tmp_path: Path) -> Path:
    data = (tiny_run / "best.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    return tmp_path / "cut.pt"


def text_file(tiny_run: Path, tmp_path: Path) -> Path:
    (tmp_path / "notes.pt").write_text("these are my notes, not a model\n")
    return tmp_path / "notes.pt"


def image_file(tiny_run: Path, tmp_path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    return tmp_path / "photo.png"


def empty_file(tiny_run: Path, tmp_path: Path) -> Path:
    (tmp_path / "empty.pt").write_bytes(b"")
    return tmp_path / "empty.pt"


def wrong_types(tiny_run: Path, tmp_path: Path) -> Path:
    """Our keys, but values that would crash later (a crafted or damaged checkpoint)."""
    state = torch.load(tiny_run / "best.pt", weights_only=True)
    state.update(mean="0.5", classes=[1, 2, 3])
    torch.save(state, tmp_path / "odd.pt")
    return tmp_path / "odd.pt"


BAD_FILES = {
    other_model: "does not match model 'resnet18' (is it from another model?)",
    bare_state_dict: "is a torch file but not a cifarlab checkpoint",
    truncated: "is not a readable checkpoint (truncated or corrupt)",
    text_file: "is not a PyTorch checkpoint",
    image_file: "is not a PyTorch checkpoint",
    empty_file: "is empty, not a checkpoint",
    wrong_types: "is not a valid cifarlab checkpoint: 'classes' is not a list of class names; 'mean' is not a list",
}


@pytest.mark.parametrize("make, message", BAD_FILES.items(), ids=[f.__name__ for f in BAD_FILES])
def test_bad_files_give_a_clear_error(make, message, tiny_run, tmp_path):
    path = make(tiny_run, tmp_path)
    with pytest.raises(CheckpointError) as info:
        model_from_checkpoint(load_checkpoint(path))
    assert message in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("make, message", BAD_FILES.items(), ids=[f.__name__ for f in BAD_FILES])
def test_evaluate_reports_bad_files_in_one_line(make, message, tiny_run, fake_cifar, tmp_path, cli_error):
    path = make(tiny_run, tmp_path)
    assert message in cli_error(
        "evaluate", str(path), "--data-dir", str(fake_cifar), "--out", str(tmp_path / "e"), code=1
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "no/such/run"], "no such run folder or checkpoint"),
        (["predict", "--checkpoint", "no/such/run", "x.png"], "no such run folder or checkpoint"),
        (["export", "no/such/run", "--out", "m.onnx"], "no such run folder or checkpoint"),
    ],
)
def test_missing_checkpoints_are_usage_errors(args, message, cli_error):
    assert message in cli_error(*args, code=2)


def test_an_empty_run_folder_says_what_is_missing(tmp_path, cli_error):
    assert "no checkpoint (best.pt or last.pt)" in cli_error("evaluate", str(tmp_path), code=2)
