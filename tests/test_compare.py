"""``cifarlab compare``: seeds grouped as mean ± std, the table, CSV files, figures and clear errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarlab.cli.main import main
from cifarlab.config.train_config import TrainConfig
from cifarlab.results.compare import build_comparison
from cifarlab.results.compare_groups import group_key


def accuracy(run: Path) -> float:
    with np.load(run / "test_predictions.npz") as f:
        return float(np.mean(f["probs"].argmax(1) == f["y_true"]))


@pytest.fixture(scope="module")
def runs(crafted_run, tmp_path_factory) -> dict[str, Path]:
    """Three seeds of one mycnn setup, a resnet18 run that is always right, and a mycnn run with another lr."""
    root = tmp_path_factory.mktemp("compare")
    made = {}
    for seed, seconds, val in [(0, 10.0, 0.5), (1, 20.0, 0.6), (2, 30.0, 0.7)]:
        made[f"a{seed}"] = crafted_run(
            root / f"mycnn-s{seed}",
            seed=seed,
            config={"seed": seed},
            info={"seed": seed, "train_seconds": seconds, "best_val_top1": val},
        )
    b = crafted_run(
        root / "resnet",
        seed=5,
        config={"model": "resnet18"},
        info={"model": "resnet18", "params": 11_181_642, "train_seconds": 99.0},
    )
    with np.load(b / "test_predictions.npz") as f:
        y, index = f["y_true"], f["index"]
    np.savez_compressed(b / "test_predictions.npz", y_true=y, probs=np.eye(10, dtype=np.float32)[y], index=index)
    made["b"] = b
    made["c"] = crafted_run(root / "mycnn-lr", seed=9, config={"lr": 0.01})
    return made


def test_group_key_ignores_only_seed_name_and_out():
    base = {"model": "mycnn", "seed": 0, "name": "a", "out": "runs", "lr": 0.001}
    assert group_key(base) == group_key({**base, "seed": 3, "name": "b", "out": "elsewhere"})
    assert group_key(base) != group_key({**base, "lr": 0.01})


def test_a_run_made_before_a_config_field_existed_groups_with_runs_that_have_it_at_its_default():
    now = {**TrainConfig(model="mycnn", seed=1).to_dict(), "name": "s1"}
    before = {k: v for k, v in {**now, "seed": 0}.items() if k not in ("muon_lr", "timed", "compile_mode")}
    assert group_key(before) == group_key(now)  # a 5-seed sweep resumed across a release stays one group
    assert group_key(before) != group_key({**now, "timed": True})  # not at its default: a different setup


def test_seeds_are_grouped_as_mean_and_std(runs):
    comp = build_comparison([runs["a0"], runs["b"], runs["a1"], runs["c"], runs["a2"]])
    assert [g.n for g in comp.groups] == [3, 1, 1]
    group = comp.groups[0]
    assert group.seeds == [0, 1, 2] and group.label == "mycnn lr=0.001"  # lr tells it from the lr=0.01 run
    assert group.stats["train_seconds"] == pytest.approx((20.0, 10.0))
    assert group.stats["best_val_top1"] == pytest.approx((0.6, 0.1))
    accs = [accuracy(runs[k]) for k in ("a0", "a1", "a2")]
    assert group.stats["test_top1"] == pytest.approx((np.mean(accs), np.std(accs, ddof=1)), abs=1e-6)
    assert comp.groups[1].stats["test_top1"] == (pytest.approx(1.0), None)
    assert [g.label for g in comp.groups[1:]] == ["resnet", "mycnn-lr"]


def test_table_shows_mean_std_and_n(runs):
    comp = build_comparison([runs["a0"], runs["a1"], runs["a2"], runs["b"]])
    lines = comp.table.splitlines()
    assert lines[0].startswith("| run(s) | model | n | seeds | parameters | MACs/image | train time (s) |")
    for title in ("images/s", "best val top-1", "test top-1", "test top-3", "ECE", "train-val gap"):
        assert title in lines[0]
    mycnn, resnet = lines[2], lines[3]
    assert "| mycnn | mycnn | 3 | 0,1,2 |" in mycnn and "| 20 ± 10 |" in mycnn and "60.00 ± 10.00%" in mycnn
    assert "±" not in resnet and "| 99 |" in resnet and "100.00%" in resnet


def test_disagreement_names_the_class_one_model_never_predicts(runs):
    comp = build_comparison([runs["a0"], runs["b"]])
    top = comp.disagreements[0]
    assert top["class"] == "truck" and top["spread"] == pytest.approx(1.0)
    assert top["prediction_disagreement"] == pytest.approx(1.0)


def test_cli_compare_prints_markdown_and_writes_csv_and_figures(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = [str(runs[k]) for k in ("a0", "a1", "a2", "b")]
    assert main(["compare", *args, "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "| run(s) | model | n |" in stdout and "±" in stdout and "disagree most" in stdout
    with open(out / "comparison.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["n"] for r in rows] == ["3", "1"] and rows[0]["seeds"] == "0 1 2"
    assert float(rows[0]["train_seconds_mean"]) == 20.0 and float(rows[0]["train_seconds_std"]) == 10.0
    assert rows[1]["test_top1_std"] == ""
    with open(out / "runs.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4
    assert json.loads((out / "comparison.json").read_text())["grouped_ignoring"] == ["seed", "name", "out"]
    for name in ("learning_curves.png", "per_class_accuracy.png"):
        with Image.open(out / name) as im:
            im.verify()
            assert im.format == "PNG"
    assert (out / "comparison.md").read_text().startswith("| run(s) |")
    assert (out / "disagreements.csv").read_text().startswith("class,spread,")


def test_cli_compare_errors_are_one_line_exit_2(runs, tmp_path, cli_error):
    (tmp_path / "unfinished").mkdir()
    out = ["--out", str(tmp_path / "cmp")]
    assert "not a finished cifarlab run" in cli_error("compare", str(tmp_path / "unfinished"), *out)
    assert "given twice" in cli_error("compare", str(runs["a0"]), str(runs["a0"]), *out)
    assert "no such run folder" in cli_error("compare", str(tmp_path / "nope"), *out)
    assert not (tmp_path / "cmp").exists()
