"""The command line: clear one-line errors with exit codes, never a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cifarlab.cli.main import OneLineParser, build_parser, main


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--model", "vgg99"], "unknown model 'vgg99'"),
        (["train", "--recipe", "nope"], "unknown recipe 'nope'"),
        (["train", "--epochs", "0"], "--epochs: must be at least 1"),
        (["train", "--batch-size", "0"], "--batch-size: must be at least 1"),
        (["train", "--lr", "-1"], "--lr: must be positive"),
        (["train", "--device", "tpu9"], "unknown device"),
        (["evaluate", "no/such/run"], "no such run folder or checkpoint"),
        (["train", "--resume", "no/such/run"], "cannot resume"),
        (["train", "--config", "no/such/config.json"], "config file not found"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(args, message, capsys, fake_cifar, tmp_path):
    with pytest.raises(SystemExit) as info:
        code = main(args + ["--data-dir", str(fake_cifar), "--out", str(tmp_path)])
        raise SystemExit(code)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_data_is_a_short_clear_error(tmp_path, child):
    env = {"PATH": "/usr/bin:/bin", "CIFARLAB_DATA_DIR": str(tmp_path / "nothing-here"), "HOME": str(tmp_path)}
    # an unroutable proxy makes the download fail at once, as offline
    env.update({"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"})
    result = child.cli(
        "train", "--epochs", "1", "--out", str(tmp_path / "runs"), "--device", "cpu", env=env, expect=None
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "nothing-here" in result.stderr and "--data-dir" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 4


def test_corrupt_data_is_a_short_clear_error(tmp_path, fake_cifar, child):
    root = tmp_path / "data"
    shutil.copytree(fake_cifar, root)
    (root / "cifar-10-batches-py" / "data_batch_5").write_bytes(b"\x80\x02garbage")
    result = child.cli(
        "train",
        "--epochs",
        "1",
        "--data-dir",
        str(root),
        "--out",
        str(tmp_path / "runs"),
        "--device",
        "cpu",
        expect=None,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "data_batch_5 is truncated or corrupt" in result.stderr


def test_an_existing_run_is_never_overwritten(tiny_run, fake_cifar, capsys, tmp_path):
    shutil.copytree(tiny_run, tmp_path / "tiny")
    code = main(["train", "--data-dir", str(fake_cifar), "--out", str(tmp_path), "--name", "tiny"])
    assert code == 2 and "already exists" in capsys.readouterr().err


def test_models_lists_every_model(capsys):
    from cifarlab.models.registry import MODELS

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in MODELS:
        assert name in out


HELP_ORDER = [
    "train",
    "evaluate",
    "study",
    "analyze",
    "robustness",
    "compare",
    "report",
    "predict",
    "export",
    "sweep",
    "serve",
    "benchmark",
    "models",
    "recipes",
]


def test_help_lists_every_command_in_order(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("    ") and not line.startswith("     ")]
    assert listed == HELP_ORDER


@pytest.mark.parametrize("command", HELP_ORDER)
def test_each_command_has_help_and_one_line_errors(command, capsys):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert isinstance(sub.choices[command], OneLineParser)
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: cifarlab {command}")


def test_console_script_and_module_agree(child):
    result = child.cli("--help")
    assert result.returncode == 0 and "train" in result.stdout and "study" in result.stdout


@pytest.mark.subprocess
def test_the_installed_cifarlab_script_runs_and_refuses_in_one_line():
    """The ``cifarlab`` console script that pip installs (pyproject's [project.scripts]), not ``python -m``."""
    script = Path(sys.executable).with_name("cifarlab")
    assert script.is_file(), f"no console script beside {sys.executable}: install the package (pip install -e .)"
    ok = subprocess.run([str(script), "models"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "fastcnn" in ok.stdout and "resnet18" in ok.stdout
    bad = subprocess.run([str(script), "train", "--epochs", "zero"], capture_output=True, text=True, timeout=120)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and lines[0].startswith("cifarlab: error:"), bad.stderr


def test_evaluate_command_prints_metrics(tiny_run, fake_cifar, tmp_path, capsys):
    assert (
        main(["evaluate", str(tiny_run), "--out", str(tmp_path), "--device", "cpu", "--data-dir", str(fake_cifar)]) == 0
    )
    out = capsys.readouterr().out
    assert "test: top-1" in out and (tmp_path / "test_metrics.json").is_file()
    assert f"data {fake_cifar.resolve()}" in out  # says which data folder was read


@pytest.mark.subprocess
def test_a_reader_that_stops_early_ends_the_command_quietly():
    """`cifarlab models | head -1`: a closed pipe stops the command with 141 (128 + SIGPIPE), no traceback."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cifarlab", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert proc.stdout is not None
    proc.stdout.close()  # the reader goes away before the table is written
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and b"Traceback" not in err and err == b""
