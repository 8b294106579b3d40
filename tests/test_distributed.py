"""Two processes on the CPU (gloo) against one, through ``torchrun -m cifarlab train``, and the sharding itself.

What is compared, and how exactly:
- With a model that has no BatchNorm and no dropout, DDP with 2 x 25 images must follow exactly the same path
  as one process with 50: same global batches, gradients averaged, metrics reduced. Everything is compared to
  float32 round-off: validation and training loss to 1e-4 (relative), top-1 to one validation image, weights to
  1e-4.
- With ``mycnn`` (BatchNorm and dropout) the path differs by design (each rank normalises by its own 25 images
  and draws its own dropout masks), so the runs are not compared with each other. What must hold exactly is the
  run's own bookkeeping: its checkpoints, scored again in one process, give the validation top-1 it logged.
- The shards: every rank gets as many batches, no image twice, and global batch k (the ranks' batches k together)
  is the single process's batch k.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cifarlab.data.batches import Batches
from cifarlab.data.split import normalize
from cifarlab.runs.checkpoint import load_checkpoint
from cifarlab.runs.layout import read_metrics_csv
from cifarlab.tools.evaluate import evaluate

HELPER = '''
import sys
from torch import nn
from cifarlab.models.registry import register


@register("tiny-nobn")
def tiny_nobn(num_classes: int = 10) -> nn.Module:
    """Two strided convolutions and a linear head: no BatchNorm, no dropout, so batch splitting is exact."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))


from cifarlab.cli.main import main

sys.exit(main(sys.argv[1:]))
'''


def torchrun(child, *args: str, cwd: Path, expect: int | None = 0) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 ...`` (standalone: a free local port, so runs never collide)."""
    return child.run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args, cwd=cwd, expect=expect)


FLAGS = ("--device", "cpu", "--no-analysis")


@pytest.mark.slow
def test_two_processes_follow_one_process_with_the_same_global_batch(tmp_path, small_config, fake_cifar, child):
    helper = tmp_path / "helper.py"
    helper.write_text(HELPER)
    config = small_config.write(tmp_path / "config.json", lr=0.01)
    config_data = json.loads(config.read_text())
    config_data["model"] = "tiny-nobn"  # registered by the helper in every process
    config.write_text(json.dumps(config_data))
    common = ["train", "--config", str(config), "--out", str(tmp_path / "runs"), "--data-dir", str(fake_cifar), *FLAGS]
    child.run(str(helper), *common, "--name", "one", cwd=tmp_path)
    torchrun(child, str(helper), *common, "--name", "two", cwd=tmp_path)

    one, two = (read_metrics_csv(tmp_path / "runs" / n / "metrics.csv") for n in ("one", "two"))
    assert len(one) == len(two) == 2
    for a, b in zip(one, two, strict=True):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert abs(b["val_top1"] - a["val_top1"]) <= 1 / 100  # one image of 100
    assert one[-1]["val_top1"] > one[0]["val_top1"]  # it did learn, so the comparison means something
    w1 = torch.load(tmp_path / "runs/one/last.pt", weights_only=True)["model"]
    w2 = torch.load(tmp_path / "runs/two/last.pt", weights_only=True)["model"]
    assert w1.keys() == w2.keys()
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, tiny_run, fake_cifar, child) -> tuple[Path, subprocess.CompletedProcess]:
    """tiny_run's exact config (mycnn), replayed by ``torchrun --nproc_per_node=2 -m cifarlab train``."""
    work = tmp_path_factory.mktemp("ddp")
    result = torchrun(
        child,
        "-m",
        "cifarlab",
        "train",
        "--config",
        str(tiny_run / "config.json"),
        "--out",
        str(work / "runs"),
        "--name",
        "ddp",
        "--data-dir",
        str(fake_cifar),
        *FLAGS,
        cwd=work,
    )
    return work / "runs" / "ddp", result


@pytest.mark.slow
def test_a_mycnn_ddp_run_logs_exactly_what_its_checkpoints_score(ddp_run, tiny_run, fake_cifar, tmp_path):
    """best.pt and last.pt, scored again on the validation split in one process, give exactly the validation
    top-1 the two processes logged for their epochs (sums over shards, reduced, nothing lost or counted twice)."""
    run, result = ddp_run
    assert "x 2 processes" in result.stdout
    rows = read_metrics_csv(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert json.loads((run / "split.json").read_text()) == json.loads((tiny_run / "split.json").read_text())
    best = json.loads((run / "run.json").read_text())
    for name, logged in (("best.pt", best["best_val_top1"]), ("last.pt", rows[-1]["val_top1"])):
        again = evaluate(run / name, split="val", out=tmp_path / name, device="cpu", data_dir=str(fake_cifar))
        assert again["n"] == 100 and again["top1"] == logged, name
    assert best["best_val_top1"] == max(r["val_top1"] for r in rows)


@pytest.mark.slow
def test_only_rank_0_writes_files_and_prints(ddp_run):
    run, result = ddp_run
    assert [p.name for p in run.parent.iterdir()] == ["ddp"]  # one run folder, not one per process
    for name in ("config.json", "split.json", "metrics.csv", "best.pt", "last.pt", "run.json", "test_metrics.json"):
        assert (run / name).is_file(), name
    epoch_lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2  # one line per epoch, from rank 0 only
    assert result.stdout.count("test (") == 1


@pytest.mark.slow
def test_a_ddp_checkpoint_loads_and_scores_in_one_process(ddp_run, fake_cifar, tmp_path):
    run, _ = ddp_run
    state = load_checkpoint(run)
    assert not any(k.startswith("module.") for k in state["model"])
    written = json.loads((run / "test_metrics.json").read_text())
    again = evaluate(run, out=tmp_path, device="cpu", data_dir=str(fake_cifar))
    assert again["n"] == written["n"] and again["top1"] == written["top1"]
    assert again["loss"] == pytest.approx(written["loss"], rel=1e-5)


@pytest.mark.slow
def test_the_batch_size_must_divide_by_the_number_of_processes(small_config, fake_cifar, tmp_path, child):
    config = small_config.write(tmp_path / "config.json", batch_size=51)
    result = torchrun(
        child,
        "-m",
        "cifarlab",
        "train",
        "--config",
        str(config),
        "--out",
        str(tmp_path / "runs"),
        "--data-dir",
        str(fake_cifar),
        *FLAGS,
        cwd=tmp_path,
        expect=None,
    )
    assert result.returncode != 0
    assert "cifarlab: error: --batch-size 51 must divide by the 2 processes" in result.stdout + result.stderr
    assert not (tmp_path / "runs").exists()


def shard_batches(n: int, world: int, per_rank: int, seed: int, epochs: int = 2) -> tuple[list, list]:
    """Labels (each image's own index) of every batch: of one process with the global batch, and of each rank."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])

    def epochs_of(batches: Batches) -> list[list[list[int]]]:
        out = []
        for _ in range(epochs):
            epoch = []
            for x, y in batches:
                assert torch.equal(x, normalize(images[y], mean, std))  # each image with its own label
                epoch.append(y.tolist())
            assert len(epoch) == len(batches)
            out.append(epoch)
        return out

    single = epochs_of(Batches(images, torch.arange(n), world * per_rank, mean, std, shuffle=True, seed=seed))
    ranks = [
        epochs_of(
            Batches(images, torch.arange(n), per_rank, mean, std, shuffle=True, seed=seed, rank=r, world_size=world)
        )
        for r in range(world)
    ]
    return single, ranks


@given(n=st.integers(1, 200), world=st.integers(1, 4), per_rank=st.integers(1, 30), seed=st.integers(0, 1000))
def test_shards_are_disjoint_and_global_batch_k_is_the_single_process_batch_k(n, world, per_rank, seed):
    single, ranks = shard_batches(n, world, per_rank, seed)
    for epoch in range(2):
        counts = {len(r[epoch]) for r in ranks}
        assert len(counts) == 1  # as many steps on every rank: DDP's collectives stay in step
        seen = [i for r in ranks for batch in r[epoch] for i in batch]
        assert len(seen) == len(set(seen)) == n - n % world  # no image twice; the remainder below `world` waits
        kept = [i for batch in single[epoch] for i in batch][: n - n % world]  # the single process's order
        assert set(seen) == set(kept)
        for k in range(counts.pop()):
            together = sorted(i for r in ranks for i in r[epoch][k])
            if (k + 1) * world * per_rank <= len(kept):  # every full global batch
                assert together == sorted(single[epoch][k])
            else:  # the last one: the single process's last batch less the remainder
                assert together == sorted(kept[k * world * per_rank :])


@pytest.mark.parametrize("world", [2, 3, 4])
def test_when_the_split_divides_by_the_processes_every_image_is_seen_once_per_epoch(world):
    single, ranks = shard_batches(n=120, world=world, per_rank=7, seed=3)
    for epoch in range(2):
        seen = sorted(i for r in ranks for batch in r[epoch] for i in batch)
        assert seen == list(range(120))
    assert single[0] != single[1]  # reshuffled each epoch
