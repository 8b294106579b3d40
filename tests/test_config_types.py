"""Configs and flags are typed and ranged: a bad value is one line naming the field (exit code 2), before any
data is read; --resume refuses a run whose files disagree; argparse errors are one line."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import cifarlab.data.cifar10
from cifarlab.base.errors import UsageError
from cifarlab.cli.main import main
from cifarlab.config.train_config import FIELD_KINDS, MAX_SEED, TrainConfig, make_config, validate


def field_error(values: dict) -> str:
    """The message of the UsageError that these overrides of the defaults give."""
    with pytest.raises(UsageError) as info:
        validate(TrainConfig.from_dict(values))
    return str(info.value)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"epochs": "20"}, "epochs: expected a whole number, got the string '20'"),
        ({"epochs": 2.5}, "epochs: expected a whole number, got the number 2.5"),
        ({"epochs": True}, "epochs: expected a whole number, got true"),
        ({"epochs": None}, "epochs: a value is required, got null"),
        ({"epochs": 0}, "epochs: must be at least 1, got the whole number 0"),
        ({"batch_size": [64]}, "batch_size: expected a whole number, got a list [64]"),
        ({"lr": "0.1"}, "lr: expected a number, got the string '0.1'"),
        ({"lr": float("nan")}, "lr: must be a finite number"),
        ({"lr": 0}, "lr: must be positive"),
        ({"whiten": 1}, "whiten: expected true or false, got the whole number 1"),
        ({"seed": -1}, f"seed: must be between 0 and {MAX_SEED}"),
        ({"seed": 2**32}, f"seed: must be between 0 and {MAX_SEED}"),
        ({"momentum": 1.0}, "momentum: must be in [0, 1)"),
        ({"momentum": -0.1}, "momentum: must be in [0, 1)"),
        ({"weight_decay": -1e-4}, "weight_decay: must not be negative"),
        ({"crop_padding": -1}, "crop_padding: must be between 0 and 16"),
        ({"crop_padding": 100}, "crop_padding: must be between 0 and 16"),
        ({"step_size": 0}, "step_size: must be at least 1"),
        ({"gamma": 0.0}, "gamma: must be positive"),
        ({"warmup_epochs": -1}, "warmup_epochs: must not be negative"),
        ({"val_size": 0}, "val_size: must be at least 1"),
        ({"image_size": 8}, "image_size: must be between 16 and 512 pixels"),
        ({"labels": "medium"}, "labels: must be one of fine, coarse"),
        ({"limit_train": 5}, "limit_train: must be at least 10"),
        ({"optimizer": "rmsprop"}, "optimizer: must be one of adam, sgd"),
        ({"augment": "mixup"}, "augment: unknown augmentation"),
        ({"model": None}, "model: a value is required"),
        ({"model": "vgg99"}, "model: unknown model 'vgg99'"),
        ({"recipe": "nope"}, "recipe: unknown recipe 'nope'"),
        ({"name": "../elsewhere"}, "name: must be a plain folder name"),
        ({"name": ".."}, "name: must be a plain folder name"),
        ({"out": ""}, "out: must name a folder"),
        ({"model_width": 0, "model": "fastcnn"}, "model_width must be at least 1"),
        ({"tta": 3}, "tta must be 0"),
        ({"time_budget": -5.0, "model": "fastcnn", "scheduler": "onecycle"}, "--time-budget must be a positive"),
        ({"average_every": 0}, "average_every must be at least 1"),
    ],
)
def test_wrong_types_and_ranges_name_the_field(values, message):
    assert message in field_error(values)


def test_the_value_shown_is_short_even_for_huge_input():
    text = field_error({"seed": 10**5000})
    assert text.startswith("seed: must be between") and len(text) < 200
    assert "too large" in field_error({"lr": 10**400})


def test_numbers_and_nulls_where_allowed_are_accepted():
    config = TrainConfig.from_dict({"lr": 1, "warmup_epochs": 0, "limit_train": None, "seed": MAX_SEED, "name": "a b"})
    assert config.lr == 1.0 and isinstance(config.lr, float) and config.limit_train is None
    validate(config)


def test_validate_works_on_frozen_configs():
    fields = [(f.name, f.type, dataclasses.field(default=f.default)) for f in dataclasses.fields(TrainConfig)]
    frozen = dataclasses.make_dataclass("FrozenConfig", fields, frozen=True)
    validate(frozen())
    with pytest.raises(UsageError, match="epochs: must be at least 1"):
        validate(frozen(epochs=0))


# ---------------------------------------------------------------------------------------------------------
# Any JSON value in any field: a valid config, or one UsageError naming that field (Hypothesis)
# ---------------------------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


def names_field(message: str, field: str) -> bool:
    return field in message or "--" + field.replace("_", "-") in message


@settings(max_examples=400, deadline=None)
@given(field=st.sampled_from(sorted(FIELD_KINDS)), value=JSON, base=st.sampled_from(["seed", "fast"]))
def test_any_json_value_gives_a_config_or_one_line_naming_the_field(field, value, base):
    values = {**make_config(base).to_dict(), field: value}
    try:
        config = TrainConfig.from_dict(values)
        validate(config)
    except UsageError as exc:
        assert names_field(str(exc), field), str(exc)
        assert len(str(exc).splitlines()) == 1
        return
    stored = getattr(config, field)
    assert stored == value or (FIELD_KINDS[field][0] is float and stored == float(value))


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, MAX_SEED),
    epochs=st.integers(1, 10**6),
    lr=st.floats(1e-9, 1e3),
    momentum=st.floats(0, 0.999),
    padding=st.integers(0, 16),
)
def test_valid_configs_survive_a_save_and_load(tmp_path_factory, seed, epochs, lr, momentum, padding):
    config = make_config("seed", seed=seed, epochs=epochs, lr=lr, momentum=momentum, crop_padding=padding)
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    config.save(path)
    assert TrainConfig.load(path) == config


# ---------------------------------------------------------------------------------------------------------
# train --config FILE and the flags: refused before any data is read
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def no_data(monkeypatch, tmp_path) -> Path:
    """A data folder that does not exist, and a download that fails the test if anything tries one."""

    def forbidden(url, dest):
        raise AssertionError("the data was looked for before the config was checked")

    monkeypatch.setattr(cifarlab.data.cifar10, "fetch", forbidden)
    return tmp_path / "no-data"


@pytest.mark.parametrize(
    "change, field",
    [
        ({"seed": "0"}, "seed"),
        ({"epochs": 1.5}, "epochs"),
        ({"momentum": None}, "momentum"),
        ({"crop_padding": -2}, "crop_padding"),
        ({"whiten": "yes"}, "whiten"),
        ({"step_size": 0}, "step_size"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_file_and_field(change, field, no_data, tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**make_config("seed").to_dict(), **change}))
    code = main(["train", "--config", str(path), "--data-dir", str(no_data), "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"cifarlab: error: {path}: {field}: ")
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("text", ["[1, 2]", "{not json", '{"epochs": 1' + "0" * 5000 + "}", "[" * 100000])
def test_a_config_file_that_is_not_a_json_object_is_one_line(text, tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(text)
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--epochs", "0"], "argument --epochs: must be at least 1, got 0 (see cifarlab train --help)"),
        (["train", "--seed", "-1"], f"argument --seed: must be between 0 and {MAX_SEED}, got -1"),
        (["train", "--seed", str(2**32)], "argument --seed: must be between 0"),
        (["train", "--seed", "1.5"], "argument --seed: expected a whole number, got '1.5'"),
        (["train", "--lr", "nan"], "argument --lr: must be positive"),
        (["train", "--time-budget", "inf"], "argument --time-budget: must be positive"),
        (["train", "--nope"], "unrecognized arguments: --nope (see cifarlab --help)"),
        (["fly"], "argument COMMAND: invalid choice: 'fly'"),
        ([], "the following arguments are required: COMMAND (see cifarlab --help)"),
        (["export", "run"], "the following arguments are required: --out (see cifarlab export --help)"),
        (["evaluate"], "the following arguments are required: RUN_OR_CHECKPOINT"),
    ],
)
def test_bad_arguments_are_one_line_with_exit_code_2(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("cifarlab: error: ") and message in captured.err
    assert len(captured.err.splitlines()) == 1


# ---------------------------------------------------------------------------------------------------------
# --resume: config.json and last.pt must belong together, and last.pt must hold what resuming needs
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    return run


def resume_error(run: Path, fake_cifar: Path, capsys) -> tuple[int, str]:
    code = main(["train", "--resume", str(run), "--data-dir", str(fake_cifar), "--no-analysis"])
    return code, capsys.readouterr().err


def test_resume_refuses_a_config_for_another_model(run_copy, fake_cifar, capsys):
    config = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").write_text(json.dumps({**config, "model": "resnet18"}))
    code, err = resume_error(run_copy, fake_cifar, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert f"{run_copy / 'last.pt'}: holds a 'mycnn' model but config.json beside it says 'resnet18'" in err


@pytest.mark.parametrize("key", ["optimizer", "scheduler", "rng", "history", "best_val_top1", "train_seconds"])
def test_resume_refuses_a_checkpoint_without_what_resuming_needs(key, run_copy, fake_cifar, capsys):
    state = torch.load(run_copy / "last.pt", weights_only=True)
    del state[key]
    torch.save(state, run_copy / "last.pt")
    before = (run_copy / "metrics.csv").read_bytes()
    code, err = resume_error(run_copy, fake_cifar, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert f"{run_copy / 'last.pt'}: cannot resume from it: {key} missing" in err
    assert (run_copy / "metrics.csv").read_bytes() == before


def test_resume_refuses_a_config_with_wrong_types(run_copy, fake_cifar, capsys):
    config = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").write_text(json.dumps({**config, "seed": "0"}))
    code, err = resume_error(run_copy, fake_cifar, capsys)
    assert code == 2 and f"{run_copy / 'config.json'}: seed: expected a whole number" in err
