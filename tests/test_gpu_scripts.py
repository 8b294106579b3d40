"""The GPU side-by-side benchmark's CPU-testable parts: the data airbench reads, written from cifarlab's reader,
and the time and accuracy read back from the table airbench prints."""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

import pytest
import torch

from cifarlab.data import load_cifar10

airbench = pytest.importorskip("airbench")  # the test extra installs it (pyproject.toml)
pytestmark = pytest.mark.required_in_ci

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "airbench_anchor.py"


@pytest.fixture(scope="module")
def anchor():
    spec = importlib.util.spec_from_file_location("airbench_anchor", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
