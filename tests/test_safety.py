"""Checkpoints are untrusted input: code inside one never runs, and every kind of bad file is a clear error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from cifarlab.base.errors import CheckpointError
from cifarlab.runs.checkpoint import load_checkpoint, model_from_checkpoint


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
        ["train", "--init-from", str(path), "--no-analysis", *data],
        ["train", "--init-from", str(run), "--recipe", "finetune", "--no-analysis", *data],
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


def recorded(tiny_run: Path, **changes) -> dict:
    """The tiny run's checkpoint with an image size and a dataset record as a run now saves them, then ``changes``
    (a value of None removes the key; keys "dataset.X" change the record)."""
    state = torch.load(tiny_run / "best.pt", weights_only=True)
    state["image_size"] = 32
    state["dataset"] = {
        "kind": "cifar10",
        "path": None,
        "classes": list(state["classes"]),
        "image_size": 32,
        "fingerprint": "0123456789abcdef",
        "test": "the official test set (test_batch)",
    }
    for key, value in changes.items():
        target, name = (state["dataset"], key[len("dataset.") :]) if key.startswith("dataset.") else (state, key)
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value
    return state


def test_a_checkpoint_without_an_image_size_or_dataset_is_a_32px_cifar10_one(tiny_run, tmp_path):
    from cifarlab.runs.checkpoint import checkpoint_image_size

    path = tmp_path / "old.pt"
    torch.save(recorded(tiny_run, image_size=None, dataset=None), path)
    state = load_checkpoint(path)
    assert checkpoint_image_size(state) == 32 and "dataset" not in state


@pytest.mark.parametrize("kind, size", [("cifar10", 32), ("cifar100", 16), ("folder", 512)])
def test_a_recorded_image_size_and_dataset_are_accepted(kind, size, tiny_run, tmp_path):
    from cifarlab.runs.checkpoint import checkpoint_image_size

    path = tmp_path / "new.pt"
    changes = {"image_size": size, "dataset.image_size": size, "dataset.kind": kind}
    if kind == "folder":
        changes |= {"dataset.path": str(tmp_path / "pictures"), "dataset.layout": "split", "dataset.skipped": 3}
    torch.save(recorded(tiny_run, **changes), path)
    state = load_checkpoint(path)
    assert checkpoint_image_size(state) == size and state["dataset"]["kind"] == kind
    assert model_from_checkpoint(state)(torch.zeros(1, 3, size, size)).shape == (1, len(state["classes"]))


def test_a_config_with_a_ten_percent_validation_share_is_accepted(tiny_run, tmp_path):
    state = recorded(tiny_run)
    state["config"]["val_size"] = None
    torch.save(state, tmp_path / "share.pt")
    assert load_checkpoint(tmp_path / "share.pt")["config"]["val_size"] is None


BAD_RECORDS = {
    "image size too small": ({"image_size": 15}, "'image_size' is not a whole number from 16 to 512"),
    "image size too large": ({"image_size": 513}, "'image_size' is not a whole number from 16 to 512"),
    "image size as text": ({"image_size": "32"}, "'image_size' is not a whole number from 16 to 512"),
    "image size True": ({"image_size": True}, "'image_size' is not a whole number from 16 to 512"),
    "dataset not a dict": ({"dataset": "cifar10"}, "'dataset' is not a dataset record (a dict)"),
    "unknown kind": ({"dataset.kind": "imagenet"}, "'dataset' kind is not one of cifar10, cifar100, folder"),
    "other classes": ({"dataset.classes": ["a", "b"]}, "'dataset' classes differ from the checkpoint's 'classes'"),
    "classes as numbers": ({"dataset.classes": [1, 2]}, "'dataset' classes differ from the checkpoint's 'classes'"),
    "another size": ({"dataset.image_size": 64}, "'dataset' image_size is not the checkpoint's (64)"),
    "a size without the top-level one": (
        {"image_size": None, "dataset.image_size": 64},
        "'dataset' image_size is not the checkpoint's (64)",
    ),
    "no size": ({"dataset.image_size": None}, "'dataset' image_size is not the checkpoint's (None)"),
    "path a number": ({"dataset.path": 7}, "'dataset' path is not a folder name"),
    "path with a newline": ({"dataset.path": "a\nb"}, "'dataset' path is not a folder name"),
    "no fingerprint": ({"dataset.fingerprint": None}, "'dataset' fingerprint is missing or not a string"),
    "fingerprint a tensor": (
        {"dataset.fingerprint": torch.zeros(2)},
        "'dataset' fingerprint is missing or not a string",
    ),
    "skipped negative": ({"dataset.skipped": -1}, "'dataset' skipped is not a whole number >= 0"),
    "val_size as text": (
        {"config": {"seed": 0, "val_size": "10%"}},
        "'config' has a val_size that is neither a whole number nor null (10%)",
    ),
}


@pytest.mark.parametrize("changes, message", BAD_RECORDS.values(), ids=BAD_RECORDS)
def test_a_bad_image_size_or_dataset_record_is_refused_in_one_line(
    changes, message, tiny_run, fake_cifar, tmp_path, cli_error
):
    path = tmp_path / "bad.pt"
    torch.save(recorded(tiny_run, **changes), path)
    with pytest.raises(CheckpointError, match="is not a valid cifarlab checkpoint") as info:
        load_checkpoint(path)
    assert message in str(info.value) and str(path) in str(info.value)
    assert message in cli_error("export", str(path), "--out", str(tmp_path / "m.pt"), code=1)
    assert not (tmp_path / "m.pt").exists()
