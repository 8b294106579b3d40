"""benchmarks/cpu_frontier.py: the best airbench variant that fits each budget, the margin, and a rerun that
skips what is done (the runs themselves are faked here; tests/test_gpu_scripts.py runs airbench's side for real)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest


@pytest.fixture()
def frontier(benchmark_script):
    return benchmark_script("cpu_frontier")


AIRBENCH = {
    "32,64,128:2": {"top1": 79.5, "seconds": 113.0},
    "16,32,64:6": {"top1": 83.7, "seconds": 121.0},
    "32,64,128:4": {"top1": 87.1, "seconds": 175.0},
    "32,64,128:6": {"top1": 88.9, "seconds": 235.0},
}


def test_the_best_variant_that_fits_is_the_most_accurate_within_the_budget(frontier):
    assert frontier.best_fitting(AIRBENCH, 150)[0] == "16,32,64:6"  # 32,64,128:4 is better but takes 175 s
    assert frontier.best_fitting(AIRBENCH, 240)[0] == "32,64,128:6"
    assert frontier.best_fitting(AIRBENCH, 100) is None


def test_the_table_gives_mean_std_margin_and_verdict_per_budget(frontier):
    cifarlab = {"150:0": 86.0, "150:1": 85.0, "150:2": 84.0, "240:0": 89.5, "240:1": 89.7}
    results = {"airbench": AIRBENCH, "cifarlab": {k: {"top1": v, "seconds": 140.0} for k, v in cifarlab.items()}}
    rows = frontier.table(results, [150, 240, 600])
    assert len(rows) == 4  # header, rule, and the two budgets that have runs
    assert rows[2].startswith("| 150 s | 85.00 +- 1.00 (3) |") and "16,32,64:6: 83.70%" in rows[2]
    assert rows[2].endswith("| +1.30 | met |")
    assert "32,64,128:6: 88.90% in 235 s" in rows[3] and rows[3].endswith("| +0.70 | missed |")


def fake_train(calls: list[list[str]]):
    """subprocess.run for `cifarlab train`: writes the run folder a finished budget run leaves."""

    def run(command, **kwargs):
        calls.append(command)
        out, name, budget = (command[command.index(flag) + 1] for flag in ("--out", "--name", "--time-budget"))
        folder = Path(out) / name
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"model_width": 16, "epochs": 6}))
        top1 = 0.8 + int(budget) / 10_000
        (folder / "run.json").write_text(json.dumps({"test_top1": top1, "seconds_used": int(budget) - 9.0}))
        return subprocess.CompletedProcess(command, 0)

    return run


def test_a_rerun_skips_finished_runs_and_retrains_a_cut_off_one(frontier, tmp_path, monkeypatch, capsys):
    airbench_calls: list[str] = []

    def fake_airbench(variant, data_dir, work):
        airbench_calls.append(variant)
        return AIRBENCH[variant]

    train_calls: list[list[str]] = []
    monkeypatch.setattr(frontier, "run_airbench", fake_airbench)
    monkeypatch.setattr(frontier.subprocess, "run", fake_train(train_calls))
    out = tmp_path / "frontier"
    (out / "fast-240-s1").mkdir(parents=True)  # a run cut off before its end: no run.json
    (out / "fast-240-s1" / "last.pt").write_bytes(b"partial")
    argv = ["--data-dir", "DATA", "--budgets", "150,240", "--seeds", "0,1", "--out", str(out)]
    argv += ["--variant", "16,32,64:6", "--variant", "32,64,128:6"]
    assert frontier.main(argv) == 0
    assert airbench_calls == ["16,32,64:6", "32,64,128:6"]
    names = [c[c.index("--name") + 1] for c in train_calls]
    assert names == ["fast-150-s0", "fast-150-s1", "fast-240-s0", "fast-240-s1"]
    assert not (out / "fast-240-s1" / "last.pt").exists()  # trained again from scratch
    printed = capsys.readouterr().out
    assert "fast-240-s1: cut off before its end last time" in printed
    assert "| 150 s | 81.50 +- 0.00 (2) | 141-141 s | 16,32,64:6: 83.70% in 121 s | -2.20 | missed |" in printed
    recorded = json.loads((out / "frontier.json").read_text())
    assert recorded["cifarlab"]["240:1"] == {"top1": pytest.approx(82.4), "seconds": 231.0, "width": 16, "epochs": 6}

    assert frontier.main(argv) == 0  # the same command again: nothing runs, the same table
    assert len(airbench_calls) == 2 and len(train_calls) == 4
    row = "| 240 s | 82.40 +- 0.00 (2) | 231-231 s | 32,64,128:6: 88.90% in 235 s | -6.50 | missed |"
    assert row in capsys.readouterr().out
