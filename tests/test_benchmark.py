"""``cifarlab benchmark`` writes its JSON and Markdown tables (tiny settings on the generated data set)."""

from __future__ import annotations

import json

import pytest
import torch

from cifarlab.benchmark import THRESHOLDS, Settings, benchmark, first_reaching, markdown
from cifarlab.cli import main


pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures in conftest.py


def test_first_reaching_reads_the_curve_in_order():
    curve = [(10.0, 0.5), (20.0, 0.8), (30.0, 0.76), (40.0, 0.9)]
    assert first_reaching(curve, 0.75) == 20.0
    assert first_reaching(curve, 0.9) == 40.0
    assert first_reaching(curve, 0.95) is None


def test_quick_throughput_from_the_command_line_writes_both_files(fake_cifar, tmp_path):
    out = tmp_path / "bench"
    code = main(["benchmark", "--quick", "--throughput-only", "--models", "fastcnn", "--steps", "1",
                 "--repeats", "1", "--data-dir", str(fake_cifar), "--out", str(out), "--device", "cpu"])
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
    assert "reference pipeline (PIL + DataLoader)" in text and "| fastcnn |" in text
    assert result["machine"]["cpu"] in text


def test_time_to_accuracy_runs_fast_budgets_and_the_seed_recipe(fake_cifar, tmp_path, monkeypatch):
    import cifarlab.budget
    from cifarlab.budget import Probe

    # a fixed probe, so that a busy machine cannot make the planner call the budget too short
    monkeypatch.setattr(cifarlab.budget, "time_probe", lambda config, width, *args: Probe(
        width, step_seconds=0.5, eval_image_seconds=1e-4, save_seconds=0.01, probe_seconds=0.0))
    settings = Settings(models=(), budgets=(10.0,), seed_epochs=2, seed_limit_train=200)
    result = benchmark(tmp_path / "bench", settings, data_dir=str(fake_cifar), device="cpu", accuracy_only=True,
                       overrides={"val_size": 100, "batch_size": 100})
    fast, seed = result["accuracy"]
    assert fast["recipe"] == "fast" and fast["budget"] == 10.0 and 0 < fast["seconds"]
    assert seed["recipe"] == "seed" and len(seed["curve"]) == 2
    assert set(fast["reached"]) == {f"{t:.2f}" for t in THRESHOLDS}
    for t in THRESHOLDS:
        reached = seed["reached"][f"{t:.2f}"]
        assert reached is None or reached in [s for s, _ in seed["curve"]]
    text = (tmp_path / "bench" / "benchmark.md").read_text()
    assert "Time to accuracy" in text and "fast, --time-budget 10" in text and "seed (2 epochs, 200 images)" in text
    assert text == markdown(json.loads((tmp_path / "bench" / "benchmark.json").read_text())) + "\n"


def test_bad_benchmark_flags_are_usage_errors(capsys):
    assert main(["benchmark", "--models", "nosuchnet", "--throughput-only"]) == 2
    assert "unknown model 'nosuchnet'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", "--budgets", "abc"])
    assert exc.value.code == 2
