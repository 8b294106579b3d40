"""``cifarlab robustness RUN``: corrupted test images scored as the run's test scored them, robustness.json / CSV /
figures, the CIFAR-10-C files (and hostile ones), its argument errors, and its place in report, compare and sweep."""

from __future__ import annotations

import csv
import hashlib
import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifarlab.cli.main import main
from cifarlab.data.cifar10 import load_cifar10
from cifarlab.data.corruptions import SEVERITIES, corrupt
from cifarlab.results.report import report
from cifarlab.results.report_reading import robustness_reading
from cifarlab.results.report_runs import RunView
from cifarlab.runs.checkpoint import load_checkpoint

FEW = ["gaussian_noise", "fog", "contrast", "pixelate"]  # in CIFAR-10-C's order
FILES = ["robustness.json", "robustness.csv", "robustness_heatmap.png", "robustness_gallery.png"]


def fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def robustness_cli(run: Path, fake_cifar: Path, *extra: str) -> dict:
    assert main(["robustness", str(run), "--data-dir", str(fake_cifar), "--device", "cpu", *extra]) == 0
    return json.loads((run / "robustness" / "robustness.json").read_text())


@pytest.fixture(scope="module")
def robust(tiny_run, fake_cifar, tmp_path_factory) -> tuple[Path, dict, dict[str, str]]:
    """A copy of the tiny run after ``robustness --corruptions FEW`` (all severities, all 200 test images), its
    record, and the copy's files before. Read-only: tests that write into it copy it first."""
    run = Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("robust") / "tiny"))
    before = fingerprint(run)
    return run, robustness_cli(run, fake_cifar, "--corruptions", ",".join(FEW)), before


def test_record_schema_ranges_and_files(robust):
    run, record, before = robust
    assert list(record["corruptions"]) == FEW  # in CIFAR-10-C's order
    for row in record["corruptions"].values():
        assert len(row) == 5 and all(isinstance(v, float) and 0 <= v <= 1 for v in row)
    assert record["source"] == "regenerated" and record["seed"] == 0 and record["images"] == 200
    assert record["severities"] == [1, 2, 3, 4, 5] and record["limit"] is None
    assert record["checkpoint"] == "best.pt" and record["substitutes"] == {}  # frost, the one substitute, not run
    every = [v for row in record["corruptions"].values() for v in row]
    assert record["mean_corruption_top1"] == pytest.approx(np.mean(every), abs=1e-12)
    columns = np.array(list(record["corruptions"].values())).mean(axis=0)
    assert record["per_severity"] == pytest.approx(list(columns), abs=1e-12)
    assert record["seconds"] > 0 and sorted(record["files"]) == sorted(FILES)
    for name in ("robustness_heatmap.png", "robustness_gallery.png"):
        with Image.open(run / "robustness" / name) as im:
            im.verify()
            assert im.format == "PNG"
    after = fingerprint(run)
    assert {k: v for k, v in after.items() if not k.startswith("robustness/")} == before  # nothing else written
    assert sorted(k for k in after if k.startswith("robustness/")) == sorted(f"robustness/{f}" for f in FILES)


def test_clean_top1_is_the_runs_test_top1_exactly(robust):
    run, record, _ = robust
    test_metrics = json.loads((run / "test_metrics.json").read_text())
    assert record["clean_top1"] == test_metrics["top1"] == json.loads((run / "run.json").read_text())["test_top1"]
    assert record["test_top1"] == test_metrics["top1"]


def test_csv_holds_the_json(robust):
    run, record, _ = robust
    with open(run / "robustness" / "robustness.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0] == {"corruption": "clean", "severity": "0", "top1": repr(record["clean_top1"])}
    table = {(r["corruption"], int(r["severity"])): float(r["top1"]) for r in rows[1:]}
    assert table == {(n, s): v for n, row in record["corruptions"].items() for s, v in enumerate(row, 1)}


def score_arrays(run: Path, images: np.ndarray, labels: np.ndarray, engine) -> float:
    """Top-1 of the run's best.pt on uint8 NHWC images, scored directly (its test's batch size and TTA level)."""
    from cifarlab.data.batches import Batches

    state = load_checkpoint(run, "best.pt")
    model = engine("inference_model")(state, torch.device("cpu"))
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    y = torch.as_tensor(labels, dtype=torch.int64)
    batches = Batches(x, y, state["config"]["eval_batch_size"], torch.tensor(state["mean"]), torch.tensor(state["std"]))
    logits, _ = engine("infer")(model, batches, tta=state["config"].get("tta", 0))
    return int((logits.softmax(1).argmax(1) == y).sum()) / len(y)


def test_regenerated_accuracies_are_those_of_the_corrupted_arrays(robust, fake_cifar, engine):
    """200 images are one chunk, drawn with the seed itself: the record's numbers are those of corrupt()'s output."""
    run, record, _ = robust
    data = load_cifar10(fake_cifar, allow_download=False)
    images, labels = data.test_images.permute(0, 2, 3, 1).numpy(), data.test_labels.numpy()
    for name, severity in (("gaussian_noise", 5), ("fog", 3)):
        expected = score_arrays(run, corrupt(images, name, severity, 0), labels, engine)
        assert record["corruptions"][name][severity - 1] == expected


def test_the_same_command_gives_the_same_numbers_and_a_subset_leaves_nulls(robust, fake_cifar, tmp_path):
    run = Path(shutil.copytree(robust[0], tmp_path / "tiny"))
    args = ("--corruptions", "noise,frost", "--severities", "1,3-4", "--limit", "60", "--seed", "3")
    first = robustness_cli(run, fake_cifar, *args)
    second = robustness_cli(run, fake_cifar, *args)
    assert first["corruptions"] == second["corruptions"] and first["clean_top1"] == second["clean_top1"]
    assert list(first["corruptions"]) == ["gaussian_noise", "shot_noise", "impulse_noise", "frost"]
    assert all(
        row[1] is None and row[4] is None and None not in (row[0], row[2], row[3])
        for row in first["corruptions"].values()
    )
    assert first["per_severity"][1] is None and first["severities"] == [1, 3, 4]
    assert first["images"] == first["limit"] == 60 and first["seed"] == 3
    assert "frost" in first["substitutes"]  # the procedural texture is said, in the output
    other_seed = robustness_cli(run, fake_cifar, *args[:-1], "4")
    assert other_seed["corruptions"] != first["corruptions"]


# ---------------------------------------------------------------------------------------------------------
# CIFAR-10-C files
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def c_files(fake_cifar, tmp_path_factory) -> Path:
    """CIFAR-10-C's layout for the fake test set: fog.npy and contrast.npy (5 blocks, corrupt() with seed 7) and
    labels.npy."""
    folder = tmp_path_factory.mktemp("cifar10c")
    data = load_cifar10(fake_cifar, allow_download=False)
    images, labels = data.test_images.permute(0, 2, 3, 1).numpy(), data.test_labels.numpy()
    for name in ("fog", "contrast"):
        np.save(folder / f"{name}.npy", np.concatenate([corrupt(images, name, s, 7) for s in SEVERITIES]))
    np.save(folder / "labels.npy", np.tile(labels, 5).astype(np.uint8))
    return folder


def test_cifar10c_files_are_scored_as_they_are(robust, c_files, fake_cifar, tmp_path, engine):
    run = Path(shutil.copytree(robust[0], tmp_path / "tiny"))
    record = robustness_cli(run, fake_cifar, "--cifar10c", str(c_files), "--corruptions", "fog,contrast")
    assert record["source"] == "cifar10c-files" and record["seed"] is None and record["substitutes"] == {}
    labels = np.load(c_files / "labels.npy")[:200]
    for name in ("fog", "contrast"):
        blocks = np.load(c_files / f"{name}.npy").reshape(5, 200, 32, 32, 3)
        assert record["corruptions"][name] == [score_arrays(run, b, labels, engine) for b in blocks]
    assert record["clean_top1"] == json.loads((run / "test_metrics.json").read_text())["top1"]


def hostile(c_files: Path, folder: Path, name: str, array: np.ndarray | bytes | None, **save) -> Path:
    shutil.copytree(c_files, folder)
    if isinstance(array, bytes):
        (folder / name).write_bytes(array)
    elif array is None:
        (folder / name).unlink()
    else:
        np.save(folder / name, array, **save)
    return folder


@pytest.mark.parametrize(
    "name, array, save, message",
    [
        ("fog.npy", np.array([{"a": 1}, "x"] * 3, dtype=object), {"allow_pickle": True}, "holds Python objects"),
        ("labels.npy", np.array([1, None], dtype=object), {"allow_pickle": True}, "holds Python objects"),
        ("fog.npy", np.zeros((999, 32, 32, 3), np.uint8), {}, "shape (999, 32, 32, 3), expected (1000, 32, 32, 3)"),
        ("fog.npy", np.zeros((1000, 32, 32), np.uint8), {}, "shape (1000, 32, 32)"),
        ("fog.npy", np.zeros((1000, 32, 32, 3), np.float32), {}, "dtype float32, expected uint8"),
        ("labels.npy", np.zeros(1000, np.int64), {}, "labels do not match the test set's"),
        ("labels.npy", np.zeros(999, np.int64), {}, "shape (999,)"),
        ("labels.npy", np.zeros(1000, np.float64), {}, "expected whole-number labels"),
        ("fog.npy", None, {}, "fog.npy: no such file"),
        ("labels.npy", None, {}, "labels.npy: no such file"),
        ("fog.npy", b"\x80\x02 not an array", {}, "not a .npy file"),
        ("fog.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': '|u1'", {}, "not a readable .npy array"),
    ],
)
def test_bad_cifar10c_files_are_one_line(robust, c_files, fake_cifar, tmp_path, cli_error, name, array, save, message):
    folder = hostile(c_files, tmp_path / "c", name, array, **save)
    before = fingerprint(robust[0])
    line = cli_error(
        "robustness", str(robust[0]), "--cifar10c", str(folder), "--corruptions", "fog,contrast",
        "--data-dir", str(fake_cifar), code=1,
    )  # fmt: skip
    assert message in line, line
    assert fingerprint(robust[0]) == before  # refused before anything is written


def test_cifar10c_refusals(robust, c_files, fake_cifar, tmp_path, cli_error):
    data = ["--data-dir", str(fake_cifar)]
    assert "snow.npy: no such file" in cli_error(
        "robustness", str(robust[0]), "--cifar10c", str(c_files), "--corruptions", "snow", *data, code=1
    )
    assert "no such folder" in cli_error(
        "robustness", str(robust[0]), "--cifar10c", str(tmp_path / "nope"), *data, code=1
    )
    other = Path(shutil.copytree(robust[0], tmp_path / "c100", ignore=shutil.ignore_patterns("robustness")))
    info = json.loads((other / "run.json").read_text())
    info["dataset"] = {**info["dataset"], "image_size": 64}
    (other / "run.json").write_text(json.dumps(info))
    assert "CIFAR-10's test images at 32 px" in cli_error("robustness", str(other), "--cifar10c", str(c_files), *data)
    assert not (other / "robustness").exists()  # a refusal leaves nothing behind


# ---------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--corruptions", "gaussian_noise,nope"], "unknown corruption 'nope'"),
        (["--severities", "0-3"], "from 1 to 5"),
        (["--severities", "6"], "from 1 to 5"),
        (["--severities", "3-1"], "low to high"),
        (["--severities", "one"], "expected 1-5, 1,3,5 or 2-4"),
        (["--limit", "0"], "--limit: must be at least 1"),
        (["--limit", "-5"], "--limit: must be at least 1"),
        (["--seed", "-1"], "--seed: must be between 0"),
    ],
)
def test_bad_arguments_exit_2(robust, cli_error, extra, message):
    assert message in cli_error("robustness", str(robust[0]), *extra)


def test_a_folder_that_is_not_a_finished_run_exits_2(robust, tmp_path, cli_error, fake_cifar):
    unfinished = Path(shutil.copytree(robust[0], tmp_path / "unfinished", ignore=shutil.ignore_patterns("robustness")))
    (unfinished / "run.json").unlink()
    data = ["--data-dir", str(fake_cifar)]
    assert "not a finished run" in cli_error("robustness", str(unfinished), *data)
    assert "no such run folder" in cli_error("robustness", str(tmp_path / "nope"), *data)
    (tmp_path / "empty").mkdir()
    assert "not a run folder" in cli_error("robustness", str(tmp_path / "empty"), *data)
    assert not (unfinished / "robustness").exists()


def test_missing_test_images_are_one_line(robust, tmp_path, cli_error):
    line = cli_error("robustness", str(robust[0]), "--data-dir", str(tmp_path / "no-data"), code=1)
    assert "test images not available" in line


# ---------------------------------------------------------------------------------------------------------
# Report, compare, sweep
# ---------------------------------------------------------------------------------------------------------


def test_report_has_a_robustness_section_only_for_runs_with_one(robust, tiny_run, fake_cifar, tmp_path):
    run = Path(shutil.copytree(robust[0], tmp_path / "tiny"))
    page = report([run], data_dir=str(fake_cifar)).read_text()
    sections = re.findall(r'<section id="([^"]+)">', page)
    assert sections[-2:] == ["robustness", "reading"]
    part = html.unescape(page[page.index('<section id="robustness">') : page.index('<section id="reading">')])
    assert "on clean images" in part and "worst corruptions" in part and "data:image/png;base64," in part
    md = (run / "report.md").read_text()
    assert "## Robustness" in md and "robustness/robustness_heatmap.png" in md
    plain = Path(shutil.copytree(tiny_run, tmp_path / "plain"))
    assert 'id="robustness"' not in report([plain], data_dir=str(fake_cifar)).read_text()
    assert "## Robustness" not in (plain / "report.md").read_text()


def view(record: dict) -> RunView:
    return RunView(Path("run"), {"dataset": {"kind": "cifar10", "image_size": 32}}, {}, {}, [], [], record)


def test_the_reading_follows_fixed_rules():
    names = ["gaussian_noise", "shot_noise", "fog", "contrast"] + [f"c{k}" for k in range(11)]
    table = {n: [0.8] * 5 for n in names}
    table.update(gaussian_noise=[0.3] * 5, shot_noise=[0.4] * 5, fog=[0.5, 0.5, 0.5, 0.5, 0.6])
    record = {"clean_top1": 0.856, "mean_corruption_top1": 0.612, "corruptions": table, "images": 10000, "limit": None}
    first, second = robustness_reading(view(record))
    assert first == (
        "Accuracy falls from 85.6% on clean images to 61.2% on average under corruption (-24.4 points, a large "
        "drop); it suffers most from gaussian noise (30.0%), shot noise (40.0%) and fog (52.0%)."
    )
    assert "all 10,000 test images under regenerated corruptions" in second and "WideResNet-28-10" in second
    small = robustness_reading(view({**record, "mean_corruption_top1": 0.83, "limit": 50, "images": 50}))
    assert "(-2.6 points, a small drop)" in small[0] and "first 50 test images only" in small[1]
    assert "WideResNet" not in small[1]
    assert robustness_reading(view({"clean_top1": "x"})) == []
    same = robustness_reading(view({**record, "mean_corruption_top1": 0.9, "corruptions": {"fog": [0.9] * 5}}))
    assert same[0] == "Accuracy under corruption (90.0% on average) is no lower than on clean images (85.6%)."


def test_compare_shows_the_mean_corruption_top1(robust, tiny_run, tmp_path, capsys):
    run, record, _ = robust
    assert main(["compare", str(run), "--out", str(tmp_path / "a")]) == 0
    header, _, row = capsys.readouterr().out.splitlines()[:3]
    assert header.endswith("| mean corruption top-1 |") and row.endswith(
        f"| {100 * record['mean_corruption_top1']:.2f}% |"
    )
    with open(tmp_path / "a" / "runs.csv", newline="") as f:
        assert float(next(csv.DictReader(f))["mean_corruption_top1"]) == record["mean_corruption_top1"]
    assert main(["compare", str(tiny_run), "--out", str(tmp_path / "b")]) == 0
    assert "corruption" not in capsys.readouterr().out  # no run has one: no column in the table
    with open(tmp_path / "b" / "comparison.csv", newline="") as f:
        assert next(csv.DictReader(f))["mean_corruption_top1_mean"] == ""  # the CSV keeps its columns


def test_sweep_flags(tmp_path, fake_cifar, cli_error, capsys):
    base = ["sweep", "--name", "s", "--out", str(tmp_path), "--data-dir", str(fake_cifar), "--dry-run"]
    assert main([*base, "--robustness", "--robustness-limit", "20"]) == 0
    assert "--robustness-limit applies with --robustness only" in cli_error(*base, "--robustness-limit", "20")
    assert "must be at least 1" in cli_error(*base, "--robustness", "--robustness-limit", "0")


@pytest.mark.subprocess
def test_a_sweep_worker_runs_robustness_after_training(robust, fake_cifar, tmp_path):
    from cifarlab.sweep import worker

    run = Path(shutil.copytree(robust[0], tmp_path / "run", ignore=shutil.ignore_patterns("robustness")))
    config = {**json.loads((run / "config.json").read_text()), "data_dir": str(fake_cifar)}
    job = worker.Job("run", config, str(tmp_path), 1, robustness=True, robustness_limit=20)
    log = tmp_path / "run.log"
    data = ["--data-dir", str(fake_cifar)]
    assert worker.robustness_step(job, run, log, None, None, None, data) is None, log.read_text()
    record = json.loads((run / "robustness" / "robustness.json").read_text())
    assert record["images"] == 20 and len(record["corruptions"]) == 15


def test_tta_scores_at_another_level_than_the_runs(tiny_run, fake_cifar, tmp_path, engine):
    """--tta 1 scores clean and corrupted images with the mirror too: clean top-1 is that of the images scored so."""
    from cifarlab.data.batches import Batches

    run = Path(shutil.copytree(tiny_run, tmp_path / "tiny"))
    record = robustness_cli(run, fake_cifar, "--corruptions", "contrast", "--severities", "5", "--tta", "1")
    assert record["tta"] == 1 and record["tta_of_run"] is False
    state = load_checkpoint(run, "best.pt")
    data = load_cifar10(fake_cifar, allow_download=False)
    model = engine("inference_model")(state, torch.device("cpu"))
    batches = Batches(data.test_images, data.test_labels, 1000, torch.tensor(state["mean"]), torch.tensor(state["std"]))
    logits, _ = engine("infer")(model, batches, tta=1)
    assert record["clean_top1"] == int((logits.argmax(1) == data.test_labels).sum()) / len(data.test_labels)
