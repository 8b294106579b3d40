"""``cifarlab benchmark`` writes its JSON and Markdown tables (tiny settings on the generated data set)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cifarlab.cli.main import main
from cifarlab.tools.benchmark import THRESHOLDS, Settings, benchmark, first_reaching
from cifarlab.tools.evaluate import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures in conftest.py


def test_first_reaching_reads_the_curve_in_order():
    curve = [(10.0, 0.5), (20.0, 0.8), (30.0, 0.76), (40.0, 0.9)]
    assert first_reaching(curve, 0.75) == 20.0
    assert first_reaching(curve, 0.9) == 40.0
    assert first_reaching(curve, 0.95) is None


def table_row(markdown: str, first_cell: str) -> list[str]:
    """The cells of the Markdown table row that starts with ``first_cell``."""
    rows = [line for line in markdown.splitlines() if line.startswith(f"| {first_cell} |")]
    assert len(rows) == 1, (first_cell, markdown)
    return [cell.strip() for cell in rows[0].strip().strip("|").split("|")]


def seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.0f} s"  # every time here is under 10 minutes


def test_quick_throughput_from_the_command_line_writes_both_files(fake_cifar, tmp_path):
    out = tmp_path / "bench"
    code = main(
        [
            "benchmark",
            "--quick",
            "--throughput-only",
            "--models",
            "fastcnn",
            "--steps",
            "1",
            "--repeats",
            "1",
            "--data-dir",
            str(fake_cifar),
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    result = json.loads((out / "benchmark.json").read_text())
    assert [row["model"] for row in result["throughput"]] == ["(data only)", "fastcnn"]
    for row in result["throughput"]:
        assert row["cifarlab"] > 0 and row["reference"] > 0
        assert row["ratio"] == pytest.approx(row["cifarlab"] / row["reference"])
        assert row["cifarlab_cpu"] > 0 and row["ratio_cpu"] == pytest.approx(row["cifarlab_cpu"] / row["reference_cpu"])
    assert result["machine"]["cores"] >= 1 and result["machine"]["torch"] == torch.__version__
    assert "--quick" in result["command"] and result["settings"]["batch_size"] == 32
    text = (out / "benchmark.md").read_text()
    assert "reference pipeline (PIL + DataLoader)" in text and result["machine"]["cpu"] in text
    for row in result["throughput"]:
        assert table_row(text, row["model"]) == [
            row["model"],
            f"{row['cifarlab']:,.0f}",
            f"{row['reference']:,.0f}",
            f"{row['ratio']:.2f}x",
            f"{row['cifarlab_cpu']:,.0f}",
            f"{row['reference_cpu']:,.0f}",
            f"{row['ratio_cpu']:.2f}x",
        ]


def test_time_to_accuracy_runs_fast_budgets_and_the_seed_recipe(fake_cifar, tmp_path, engine, engine_patch):
    # a fixed probe, so that a busy machine cannot make the planner call the budget too short
    probe = engine("Probe")
    engine_patch(
        "time_probe",
        lambda config, width, *args, **kwargs: probe(
            width, step_seconds=0.5, eval_image_seconds=1e-4, save_seconds=0.01, probe_seconds=0.0
        ),
    )
    settings = Settings(models=(), budgets=(10.0,), seed_epochs=2, seed_limit_train=200)
    result = benchmark(
        tmp_path / "bench",
        settings,
        data_dir=str(fake_cifar),
        device="cpu",
        accuracy_only=True,
        overrides={"val_size": 100, "batch_size": 100},
    )
    fast, seed = result["accuracy"]
    assert fast["recipe"] == "fast" and fast["budget"] == 10.0 and 0 < fast["seconds"]
    fast_run = json.loads((Path(fast["run_dir"]) / "run.json").read_text())
    assert (fast["test_top1"], fast["seconds"]) == (fast_run["test_top1"], fast_run["seconds_used"])
    for t in THRESHOLDS:  # a budget run has one point: its time, if its test top-1 reached the threshold
        assert fast["reached"][f"{t:.2f}"] == (fast["seconds"] if fast["test_top1"] >= t else None)

    assert seed["recipe"] == "seed" and len(seed["curve"]) == 2
    times = [s for s, _ in seed["curve"]]
    assert 0 < times[0] < times[1] == seed["seconds"]
    last = evaluate(Path(seed["run_dir"]) / "last.pt", data_dir=str(fake_cifar), out=tmp_path / "last", device="cpu")
    assert seed["test_top1"] == seed["curve"][-1][1] == pytest.approx(last["top1"], abs=1e-6)  # the last epoch's
    for t in THRESHOLDS:
        assert seed["reached"][f"{t:.2f}"] == next((s for s, top1 in seed["curve"] if top1 >= t), None)

    text = (tmp_path / "bench" / "benchmark.md").read_text()
    assert "Time to accuracy" in text
    for row, title in ((fast, "fast, --time-budget 10"), (seed, "seed (2 epochs, 200 images)")):
        assert table_row(text, title) == [
            title,
            seconds(row["seconds"]),
            f"{100 * row['test_top1']:.2f}%",
            *(seconds(row["reached"][f"{t:.2f}"]) for t in THRESHOLDS),
        ]


def test_bad_benchmark_flags_are_usage_errors(cli_error, fake_cifar, tmp_path):
    flags = ["--data-dir", str(fake_cifar), "--out", str(tmp_path / "bench")]
    assert "unknown model 'nosuchnet'" in cli_error("benchmark", "--models", "nosuchnet", "--throughput-only", *flags)
    assert "abc" in cli_error("benchmark", "--budgets", "abc", *flags, one_line=False)  # argparse's own refusal
    assert not (tmp_path / "bench").exists()


def test_the_study_step_benchmark_trains_the_seed_recipe_step_it_times(benchmark_script):
    """benchmarks/study_step.py runs the seed recipe's step it times; an epoch is 704 such steps."""
    bench = benchmark_script("study_step")
    assert bench.step_ms("mycnn", bf16=True, fused=True, threads=1, steps=1) > 0
    assert bench.STEPS_PER_EPOCH == 45_000 // 64 + 1
