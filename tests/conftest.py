"""Shared test fixtures: CIFAR-10-format data made on the fly, a slice of the real set when present, tiny runs."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarlab.data import CLASSES

torch.set_num_threads(min(2, torch.get_num_threads()))

def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slow: takes more than about 10 s (starts processes or trains for real)")


REAL_DATA = Path(os.environ.get("CIFARLAB_DATA_DIR", Path(__file__).resolve().parents[2] / "shared/data/cifar10"))


def make_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noisy images whose mean colour and a bright stripe depend on the class: learnable in a few steps."""
    n = len(labels)
    x = rng.integers(0, 80, size=(n, 3, 32, 32)).astype(np.int16)
    for c in range(10):
        sel = labels == c
        x[sel, c % 3] += 60 + 15 * c
        x[sel, :, 3 * c:3 * c + 3, :] += 100
    return np.clip(x, 0, 255).astype(np.uint8).reshape(n, 3072)


def write_fake_cifar(root: Path, per_batch: int = 200, test_size: int = 200, seed: int = 0) -> Path:
    """Write a folder in the official python-version layout (5 train batches, test batch, meta)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, n in [(f"data_batch_{k}", per_batch) for k in range(1, 6)] + [("test_batch", test_size)]:
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        batch = {"batch_label": f"fake {i}", "labels": labels.tolist(), "data": make_images(labels, rng),
                 "filenames": [f"{i}_{k}.png" for k in range(n)]}
        with open(folder / i, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CLASSES), "num_cases_per_batch": per_batch, "num_vis": 3072}, f, protocol=2)
    return root


@pytest.fixture(scope="session")
def fake_cifar(tmp_path_factory) -> Path:
    """A small generated CIFAR-10 folder: 1,000 training and 200 test images."""
    return write_fake_cifar(tmp_path_factory.mktemp("fake_cifar"))


@pytest.fixture(scope="session")
def real_cifar() -> Path:
    """The real CIFAR-10 folder (../shared/data/cifar10), or skip when it is not there."""
    if not (REAL_DATA / "cifar-10-batches-py" / "data_batch_1").is_file():
        pytest.skip(f"real CIFAR-10 not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, fake_cifar) -> Path:
    """A finished 2-epoch mycnn run on the generated data (every run file written). Do not modify it."""
    from cifarlab.analysis import analyze_after_training
    from cifarlab.config import make_config
    from cifarlab.data import load_cifar10
    from cifarlab.train import train

    config = make_config("seed", model="mycnn", epochs=2, batch_size=50, val_size=100, data_dir=str(fake_cifar),
                         out=str(tmp_path_factory.mktemp("runs")), name="tiny", device="cpu")
    run = train(config)
    analyze_after_training(run, load_cifar10(fake_cifar))  # as `cifarlab train` does after training
    return run


@pytest.fixture
def one_thread():
    """One torch thread: on a shared CPU, two OpenMP threads that spin-wait for each other stall tiny models."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

