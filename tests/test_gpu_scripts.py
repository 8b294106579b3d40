"""The GPU side-by-side benchmark's CPU-testable parts: the data airbench reads, written from cifarlab's reader,
and the time and accuracy read back from the table airbench prints."""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
from pathlib import Path

import airbench  # the test extra installs it (pyproject.toml): a plain import, so a missing one fails, never skips
import pytest
import torch

from cifarlab.data.cifar10 import load_cifar10

pytestmark = pytest.mark.required_in_ci

CPU_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "airbench_cpu.py"


@pytest.fixture(scope="module")
def anchor(benchmark_script):
    return benchmark_script("airbench_anchor")


@pytest.fixture(scope="module")
def airbench_cpu(benchmark_script):
    return benchmark_script("airbench_cpu")


def test_airbench_reads_the_data_written_from_cifarlabs_reader(anchor, fake_cifar, tmp_path):
    data = load_cifar10(fake_cifar)
    anchor.write_airbench_data(data, tmp_path / "cifar10")
    for train, images, labels in (
        (True, data.train_images, data.train_labels),
        (False, data.test_images, data.test_labels),
    ):
        loader = airbench.CifarLoader(str(tmp_path / "cifar10"), train=train, batch_size=100, gpu="cpu")
        assert loader.classes == list(data.classes)
        assert torch.equal(loader.labels, labels.to(torch.int64))
        assert loader.images.shape == images.shape  # airbench turns NHWC back into NCHW
        assert torch.equal(loader.images, images.half() / 255)  # the very pixels cifarlab trains on


def test_the_time_and_accuracy_are_read_from_airbenchs_own_table(anchor):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # a run's table as airbench's train() prints it
        airbench.utils.print_columns(airbench.utils.logging_columns_list, is_head=True)
        for epoch in range(3):
            values = dict(run=0 if epoch == 0 else None, epoch=epoch, train_loss=0.5, train_acc=0.9, val_acc=0.93)
            airbench.utils.print_training_details({**values, "total_time_seconds": 1.1 * (epoch + 1)}, False)
        final = dict(epoch="eval", train_loss=0.4, train_acc=0.95, val_acc=0.9376, tta_val_acc=0.9412)
        airbench.utils.print_training_details({**final, "total_time_seconds": 3.8312}, True)
    assert anchor.final_row(printed.getvalue()) == (0.9412, 3.8312)
    with pytest.raises(ValueError, match="no 'eval' row"):
        anchor.final_row(printed.getvalue().replace("eval", "3"))


def test_airbench_builds_its_network_in_fp32_on_the_cpu_at_the_widths_asked(airbench_cpu):
    net = airbench_cpu.cpu_net_factory(airbench, (8, 16, 24))()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [24, 8, 8, 16, 16, 24, 24]  # whitening 2x3x2x2, then two per block
    assert {(p.dtype, p.device.type) for p in net.parameters()} == {(torch.float32, "cpu")}
    assert net.half()[0].weight.dtype == torch.float16  # the no-op shims are gone after the build


def test_airbench_trains_on_the_cpu_with_its_own_code_and_clock(airbench_cpu, make_fake_cifar, tmp_path, monkeypatch):
    data = load_cifar10(make_fake_cifar(tmp_path / "fake", per_batch=500))  # 2,500 images: 2 batches of 1,024
    airbench_cpu.write_airbench_data(data, tmp_path / "work" / "cifar10")
    monkeypatch.chdir(tmp_path / "work")
    event = torch.cuda.Event
    accuracy, seconds = airbench_cpu.train_variant(airbench, (8, 16, 16), 2.0, run=0)
    assert 0.0 <= accuracy <= 1.0
    assert 0.0 < seconds < 600.0  # the host clock, not CUDA events (which would have failed without a GPU)
    assert torch.cuda.Event is event and airbench.utils.CifarLoader is airbench.CifarLoader  # shims undone
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError):  # outside the shims airbench's loader reads onto GPU 0 again
            airbench.utils.CifarLoader("cifar10", train=False, batch_size=100)


def test_the_cpu_runner_prints_a_result_per_run_and_a_summary_per_variant(make_fake_cifar, benchmark_script, tmp_path):
    root = make_fake_cifar(tmp_path / "fake", per_batch=500)
    command = [sys.executable, str(CPU_SCRIPT), "--data-dir", str(root), "--work", str(tmp_path / "work")]
    done = subprocess.run(
        [*command, "--variant", "8,16,16:1", "--variant", "8,8,8:0.5", "--runs", "2", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(" run ")[0] for line in lines if line.startswith("RESULT")] == [
        "RESULT airbench94 8,16,16:1",
        "RESULT airbench94 8,16,16:1",
        "RESULT airbench94 8,8,8:0.5",
        "RESULT airbench94 8,8,8:0.5",
    ]
    assert [line.split(":")[0] for line in lines if line.startswith("SUMMARY")] == [
        "SUMMARY airbench94 8,16,16",
        "SUMMARY airbench94 8,8,8",
    ]
    assert "1 threads" in lines[-1]
    frontier = benchmark_script("cpu_frontier").RESULT.findall(done.stdout)  # the frontier reads these very lines
    assert [variant for variant, _, _ in frontier] == ["8,16,16:1", "8,16,16:1", "8,8,8:0.5", "8,8,8:0.5"]
    assert all(0.0 <= float(top1) <= 100.0 and float(seconds) > 0.0 for _, top1, seconds in frontier)
    bad = subprocess.run([*command, "--variant", "8,16:4"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "expected WIDTHS:EPOCHS" in bad.stderr


@pytest.mark.parametrize("shape", [(24, 96, 96), (32, 64, 128)])
def test_shape_cost_times_two_networks_with_the_same_convolutions(benchmark_script, shape):
    """benchmarks/shape_cost.py compares like with like: at each shape, fastcnn and airbench94's network hold the
    same convolutions (the same weight shapes, in order), so a speed gap is the layers around them or the loop."""
    shape_cost = benchmark_script("shape_cost")
    convs = [
        [tuple(m.weight.shape) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
        for net in (shape_cost.fastcnn_at(shape), shape_cost.airbench_at(shape))
    ]
    assert convs[0] == convs[1] and len(convs[0]) == 7  # the 2x2 stem and two convs per group
    assert convs[0][2][0] == shape[0] and convs[0][4][0] == shape[1] and convs[0][6][0] == shape[2]
    assert shape_cost.parse_shape("32,64,128") == (32, 64, 128)
    for bad in ("32,64", "32,0,128"):
        with pytest.raises(argparse.ArgumentTypeError, match="three positive widths"):
            shape_cost.parse_shape(bad)
