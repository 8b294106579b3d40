"""Hostile records: JSON, TOML and YAML that someone else wrote (a config, run.json, sweep.json, a sweep file, a
``--set`` value), forged sweep state and gathered blobs, forged MLflow ids and class names with math-text syntax.
Each is refused in one line, ignored with a note, or handled; never a traceback, a hang or a lost run."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections import deque
from pathlib import Path

import numpy as np
import pytest

from cifarlab.base.errors import CifarlabError, UsageError
from cifarlab.base.files import read_json
from cifarlab.cli import sweep as sweep_command
from cifarlab.cli.main import build_parser, main
from cifarlab.config.train_config import TrainConfig, parse_overrides
from cifarlab.engine import tracking
from cifarlab.engine.mlflow_run import TRACKING_FILE, MlflowRun, mlflow_available, mlflow_client, mlflow_experiment
from cifarlab.runs.folder import RunFolder
from cifarlab.sweep import SweepOptions, SweepSpec, expand, pack_folder, parse_seeds, unpack_folder
from cifarlab.sweep import driver as sweep_driver
from cifarlab.sweep import mlflow_log as sweep_mlflow
from cifarlab.sweep import pools as sweep_pools
from cifarlab.sweep import progress as sweep_progress
from cifarlab.sweep import record as sweep_record
from cifarlab.sweep.worker import Job


def needs(available: bool, extra: str):
    """Skip without ``extra`` on a developer's machine; the test extra installs it, so with CI=true the skip fails."""

    def mark(test):
        return pytest.mark.required_in_ci(pytest.mark.skipif(not available, reason=f"{extra} not installed")(test))

    return mark


needs_tensorboard = needs(tracking.tensorboard_available(), "tensorboard")
needs_mlflow = needs(mlflow_available(), "mlflow")
HUGE_INT = "1" * 400  # a 400-digit integer: Python parses it, and every use of it is a trap
DEEP = "[" * 5000  # deeper than Python's recursion limit


# ---------------------------------------------------------------------------------------------------------
# --set values and config files
# ---------------------------------------------------------------------------------------------------------


def test_a_deeply_nested_set_value_is_refused_and_plain_text_is_kept():
    with pytest.raises(UsageError, match="nested too deeply"):
        parse_overrides([f"lr={DEEP}"])
    with pytest.raises(UsageError, match="nested more than 32 levels"):
        parse_overrides(["lr=" + "[" * 40 + "]" * 40])
    with pytest.raises(UsageError, match="400 digits"):
        parse_overrides([f"epochs={HUGE_INT}"])
    assert parse_overrides(["optimizer=sgd", "lr=0.5", "weight_averaging=ema", "name=[run"]) == {
        "optimizer": "sgd",
        "lr": 0.5,
        "weight_averaging": "ema",
        "name": "[run",
    }


def test_a_deep_set_value_on_the_sweep_command_line_is_one_line(cli_error, tmp_path):
    line = cli_error("sweep", "--name", "x", "--set", f"lr={DEEP}", "--out", str(tmp_path), "--dry-run")
    assert "nested too deeply" in line and len(line) < 300
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("[1, 2]", "holds a list, not a JSON object"),
        ('{"epochs": ' + HUGE_INT + "}", "400 digits"),
        (DEEP, "nested too deeply"),
        ('"just text"', "holds a string, not a JSON object"),
    ],
)
def test_a_config_file_of_the_wrong_shape_is_one_line(cli_error, tmp_path, text, message):
    path = tmp_path / "config.json"
    path.write_text(text)
    line = cli_error("train", "--config", str(path), "--out", str(tmp_path))
    assert str(path) in line and message in line
    with pytest.raises(UsageError, match=message):
        TrainConfig.load(path)
    with pytest.raises(UsageError, match=message):
        _ = RunFolder.open(tmp_path).config  # a run folder's config.json, read through its owner


def test_a_config_folder_without_its_config_is_one_line(cli_error, tmp_path):
    folder = tmp_path / "not-a-run"
    folder.mkdir()
    line = cli_error("train", "--config", str(folder), "--out", str(tmp_path))
    assert "not a run folder (no config.json)" in line


# ---------------------------------------------------------------------------------------------------------
# Run records of the wrong shape, in every command that reads them
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_runs(crafted_run, tmp_path_factory) -> tuple[Path, Path]:
    """Two finished runs (copies of the tiny run with crafted predictions), read-only for the tests below."""
    base = tmp_path_factory.mktemp("good")
    return crafted_run(base / "a", seed=0), crafted_run(base / "b", seed=1)


def forged_copy(run: Path, dest: Path, name: str, text: str) -> Path:
    """A copy of ``run`` whose ``name`` file holds ``text``."""
    shutil.copytree(run, dest)
    (dest / name).write_text(text)
    return dest


FORGED = [
    ("run.json", "[1, 2, 3]", "holds a list"),
    ("run.json", '{"test_top1": ' + HUGE_INT + "}", "400 digits"),
    ("run.json", "[" * 100 + "]" * 100, "nested more than 32 levels"),
    ("config.json", '["not", "a", "config"]', "holds a list"),
]


@pytest.mark.parametrize("name, text, message", FORGED)
def test_compare_report_and_analyze_refuse_a_forged_record_in_one_line(
    good_runs, tmp_path, cli_error, name, text, message
):
    good, _ = good_runs
    bad = forged_copy(good, tmp_path / "bad", name, text)
    for args in (
        ["compare", str(good), str(bad), "--out", str(tmp_path / "cmp")],
        ["report", str(good), str(bad), "--out", str(tmp_path / "report.html")],
        ["analyze", str(bad), "--no-images"],
    ):
        line = cli_error(*args, code=1)
        assert str(bad / name) in line and message in line, (args, line)
    assert not (tmp_path / "report.html").exists()


def test_the_run_records_reader_refuses_anything_but_an_object(tmp_path):
    for text, kind in (("[]", "a list"), ("3", "a number"), ("null", "null"), ("true", "true or false")):
        (tmp_path / "run.json").write_text(text)
        with pytest.raises(CifarlabError, match=f"holds {kind}, not a JSON object"):
            read_json(tmp_path / "run.json")


def test_a_sweep_headline_from_a_forged_run_json_fails_that_run_only(tmp_path):
    spec = SweepSpec(name="hl", models=["mycnn"], seeds=[0, 1], out=str(tmp_path))
    planned = expand(spec)
    for run, text in zip(planned, ("[1]", json.dumps({"test_top1": "high", "epochs": True})), strict=True):
        (spec.folder / run.name).mkdir(parents=True)
        (spec.folder / run.name / "run.json").write_text(text)
    sweep = sweep_driver.Sweep(spec, SweepOptions(workers=1), planned)
    first, second = (sweep.runs[r.name] for r in planned)
    assert first["state"] == "failed" and "holds a list" in first["message"]
    assert second["state"] == "done" and second["headline"]["test_top1"] is None  # a string is no number
    assert second["headline"]["epochs"] is None  # nor is true
    assert sweep_driver.finished_line(second, "").startswith("done")


# ---------------------------------------------------------------------------------------------------------
# Sweep files: nesting, YAML anchors and aliases, sizes
# ---------------------------------------------------------------------------------------------------------

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + k)}: &{chr(98 + k)} [{', '.join([f'*{chr(97 + k)}'] * 9)}]\n" for k in range(8)
)


@pytest.mark.parametrize(
    "file, text, message",
    [
        ("deep.toml", "set = { lr = " + "[" * 300 + "0.1" + "]" * 300 + " }\n", "nested"),
        ("deep.yaml", "set:\n  lr: " + "[" * 300 + "0.1" + "]" * 300 + "\n", "nested"),
        ("deep.yml", "name: x\nlr: " + "[" * 5000 + "\n", "nested too deeply"),
        ("bomb.yaml", ALIAS_BOMB, "anchors (&name) are not allowed"),
        ("self.yaml", "name: x\na: &a [*a]\n", "anchors (&name) are not allowed"),
        ("alias.yaml", "name: x\nseeds: *nothing\n", "not allowed"),
        ("huge.toml", f'name = "x"\nseeds = {HUGE_INT}\n', "more than 30 digits"),
        ("list.yaml", "- name\n- x\n", "expected a table of keys"),
    ],
)
def test_a_hostile_sweep_file_is_one_line(cli_error, tmp_path, file, text, message):
    path = tmp_path / file
    path.write_text(text)
    line = cli_error("sweep", str(path), "--out", str(tmp_path), "--dry-run")
    assert str(path) in line and message in line and len(line) < 400
    assert not (tmp_path / "x").exists()


def test_a_billion_seeds_are_refused_before_any_list_is_built(cli_error, tmp_path):
    line = cli_error("sweep", "--name", "x", "--seeds", "0-1000000000", "--out", str(tmp_path), "--dry-run")
    assert "1,000,000,001 seeds" in line and "10,000 runs" in line
    with pytest.raises(UsageError, match="10,000"):
        parse_seeds("0-5000,0-5000")
    with pytest.raises(UsageError, match="expected seeds"):
        parse_seeds("1" * 5000)  # not even int() of it, which Python refuses with a traceback beyond 4,300 digits
    assert parse_seeds("0-9999") == list(range(10_000))  # the bound itself is allowed
    assert parse_seeds("3,0-4,3") == [3, 0, 1, 2, 4]


def test_a_grid_of_too_many_runs_is_refused_with_its_count(cli_error, tmp_path, capsys):
    lrs = ",".join(str(k / 1000) for k in range(1, 101))
    widths = ",".join(str(k) for k in range(8, 208))
    line = cli_error(
        "sweep", "--name", "x", "--set", f"lr={lrs}", "--set", f"width={widths}", "--out", str(tmp_path), "--dry-run"
    )
    assert "20,000 runs" in line and "100 lr x 200 model_width" in line and "10,000" in line
    path = tmp_path / "big.toml"
    path.write_text(f'name = "big"\nseeds = "0-99"\n[set]\nlr = [{lrs}]\n')
    assert main(["sweep", str(path), "--out", str(tmp_path), "--dry-run"]) == 0  # 100 x 100: at the bound
    assert capsys.readouterr().out.startswith(f"sweep big: 10000 runs -> {tmp_path / 'big'}")


# ---------------------------------------------------------------------------------------------------------
# Forged sweep.json on --resume
# ---------------------------------------------------------------------------------------------------------


def saved_sweep(tmp_path: Path, **changes) -> Path:
    """A sweep folder whose sweep.json holds a two-run grid (as cifarlab writes it), with ``changes`` applied."""
    spec = SweepSpec(name="saved", models=["mycnn"], seeds=[0, 1], out=str(tmp_path))
    folder = spec.folder
    folder.mkdir(parents=True)
    runs = [
        {"name": r.name, "point": r.point, "state": "pending", "attempts": 0, "seconds": None, "message": None}
        | {"headline": None, "config": r.config}
        for r in expand(spec)
    ]
    data = {"name": "saved", "status": "interrupted", "spec": spec.to_dict(), "options": SweepOptions().to_dict()}
    data |= {"mlflow": None, "runs": runs, "groups": [], "counts": {}}
    data.update(changes)
    (folder / "sweep.json").write_text(json.dumps(data))
    return folder


def test_a_saved_sweep_resumes_its_grid(tmp_path, capsys):
    folder = saved_sweep(tmp_path)
    assert main(["sweep", "--resume", str(folder), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"sweep saved: 2 runs -> {folder}") and "mycnn-seed-s1" in out


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["runs"][0].pop("name"), "runs[0]: a run without a name"),
        (lambda d: d["runs"][1].update(owner="me"), "runs[1]: unknown key 'owner'"),
        (lambda d: d["runs"][0].update(attempts="3"), "attempts holds a string"),
        (lambda d: d["runs"][0].update(config=[1]), "config holds a list"),
        (lambda d: d["runs"][0].update(name="../../elsewhere"), "is not a run folder name"),
        (lambda d: d["runs"][0].update(state="hacked"), "state 'hacked' is none of"),
        (lambda d: d["runs"].append(dict(d["runs"][0])), "a second run named"),
        (lambda d: d["runs"].__setitem__(0, "x"), "runs[0]: holds a string, not a run"),
        (lambda d: d.update(runs={"a": 1}), "runs holds an object"),
        (lambda d: d.update(extra=1), "unknown key 'extra'"),
        (lambda d: d["spec"].update(seeds=["0"]), "seeds must be whole numbers"),
        (lambda d: d["spec"].update(grid={"lr": 0.1}), "every grid key must hold a list"),
        (lambda d: d["options"].update(cluster="x"), "options: unknown key 'cluster'"),
        (lambda d: d["options"].update(retries="2"), "retries must be a whole number"),
        (lambda d: d["options"].update(report="yes"), "report must be true or false"),
        (lambda d: d.update(mlflow={"uri": 1}), "mlflow: uri holds a number"),
    ],
)
def test_a_forged_sweep_json_is_one_line_on_resume(tmp_path, cli_error, edit, message):
    folder = saved_sweep(tmp_path)
    data = json.loads((folder / "sweep.json").read_text())
    edit(data)
    (folder / "sweep.json").write_text(json.dumps(data))
    code = 2 if message.startswith(("retries", "report")) else 1  # options are checked as strictly as the flags
    line = cli_error("sweep", "--resume", str(folder), "--dry-run", code=code)
    assert message in line, line


def test_a_forged_sweep_json_is_one_line_when_the_sweep_runs_again(tmp_path, fake_cifar, cli_error):
    """Not only --resume: running the same grid again (its folder holds the forged file) reads it too."""
    folder = saved_sweep(tmp_path)
    data = json.loads((folder / "sweep.json").read_text())
    data["runs"][0].pop("name")
    (folder / "sweep.json").write_text(json.dumps(data))
    args = ["sweep", "--name", "saved", "--model", "mycnn", "--seeds", "0-1", "--out", str(tmp_path)]
    line = cli_error(*args, "--data-dir", str(fake_cifar), "--no-report", code=1)
    assert "a run without a name" in line
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["logs", "sweep.json"]


# ---------------------------------------------------------------------------------------------------------
# --resume takes the MLflow URI and the Ray address from the command line only
# ---------------------------------------------------------------------------------------------------------


def resume_settings(folder: Path, *flags: str) -> tuple[SweepSpec, SweepOptions]:
    args = build_parser().parse_args(["sweep", "--resume", str(folder), *flags])
    return sweep_command.settings_from_args(args)


def test_resume_does_not_obey_the_recorded_mlflow_uri_and_ray_address(tmp_path, capsys):
    options = SweepOptions(ray="10.1.2.3:6379", mlflow="sqlite:////elsewhere/mlflow.db", gather=True, retries=5)
    folder = saved_sweep(tmp_path, options=options.to_dict())
    spec, resumed = resume_settings(folder)
    assert resumed.ray is None and resumed.mlflow is None and resumed.gather is False
    assert resumed.retries == 5  # what does not decide where data goes or whom to trust still holds
    err = capsys.readouterr().err.splitlines()
    assert any(
        line.startswith(f"cifarlab: note: {folder / 'sweep.json'} records MLflow URI")
        and "give --mlflow sqlite:////elsewhere/mlflow.db to log there again" in line
        for line in err
    ), err
    assert any("records Ray address '10.1.2.3:6379'" in line and "give --ray 10.1.2.3:6379" in line for line in err)
    # given on the command line, they are used (and the Ray-only options recorded with them come back)
    _, given = resume_settings(folder, "--ray", "127.0.0.1:1", "--mlflow", "sqlite:///here.db")
    assert given.ray == "127.0.0.1:1" and given.mlflow == "sqlite:///here.db" and given.gather is True
    assert "note" not in capsys.readouterr().err


def test_resume_notes_an_mlflow_run_recorded_without_the_option(tmp_path, capsys):
    record = {"uri": "sqlite:////x/mlflow.db", "run_id": "0" * 32, "experiment": "saved"}
    folder = saved_sweep(tmp_path, mlflow=record)
    _, resumed = resume_settings(folder)
    assert resumed.mlflow is None
    assert "records MLflow URI 'sqlite:////x/mlflow.db'; not used" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# --ray-gather: a blob is unpacked as the run it was asked for, or refused
# ---------------------------------------------------------------------------------------------------------


def tar_blob(*members: tuple[str, str, bytes | str]) -> bytes:
    """A gzipped tar of (name, kind, content) members: kind 'file', 'dir', 'fifo' or 'symlink' (content: its
    target), written member by member as a forger would."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, kind, content in members:
            info = tarfile.TarInfo(name)
            if kind in ("dir", "fifo"):
                info.type = tarfile.DIRTYPE if kind == "dir" else tarfile.FIFOTYPE
                tar.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, str(content)
                tar.addfile(info)
            else:
                data = content if isinstance(content, bytes) else content.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def sweep_folder(tmp_path) -> Path:
    """A sweep folder holding two runs, ``mine`` (partial) and ``other`` (finished)."""
    folder = tmp_path / "sweep"
    for name, text in (("mine", "partial"), ("other", "finished")):
        (folder / name).mkdir(parents=True)
        (folder / name / "run.json").write_text(json.dumps({"state": text}))
    return folder


def untouched(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "members, message",
    [
        ([("other", "dir", b""), ("other/run.json", "file", "{}")], "does not hold that run's folder"),
        ([("mine", "dir", b""), ("other/run.json", "file", "{}")], "outside that run's folder"),
        ([("mine", "dir", b""), ("/tmp/evil", "file", "x")], "outside that run's folder"),
        ([("mine", "dir", b""), ("mine/../other/run.json", "file", "{}")], "outside that run's folder"),
        ([("mine", "dir", b""), ("mine/link", "symlink", "../other/run.json")], "not a plain file"),
        ([("mine", "dir", b""), ("mine/dev", "fifo", b"")], "not a plain file"),
        ([], "does not hold that run's folder"),
    ],
)
def test_a_forged_gathered_blob_is_refused_and_replaces_nothing(sweep_folder, members, message):
    blob = tar_blob(*members)
    before = untouched(sweep_folder)
    with pytest.raises(CifarlabError, match=message):
        unpack_folder(blob, sweep_folder, "mine")
    assert untouched(sweep_folder) == before
    assert sorted(p.name for p in sweep_folder.iterdir()) == ["mine", "other"]  # no staging folder left
    assert not Path("/tmp/evil").exists()


def test_a_gathered_blob_replaces_only_the_run_it_was_asked_for(sweep_folder, tmp_path):
    node = tmp_path / "node" / "mine"
    node.mkdir(parents=True)
    (node / "run.json").write_text('{"state": "done on the node"}')
    (node / "tensorboard").mkdir()
    (node / "tensorboard" / "events").write_bytes(b"\x00\x01")
    unpack_folder(pack_folder(node), sweep_folder, "mine")
    assert untouched(sweep_folder) == {
        "mine/run.json": '{"state": "done on the node"}',
        "mine/tensorboard/events": "\x00\x01",
        "other/run.json": '{"state": "finished"}',
    }
    with pytest.raises(CifarlabError, match="outside that run's folder|does not hold"):
        unpack_folder(pack_folder(node), sweep_folder, "other")  # a blob of 'mine' is never unpacked as 'other'
    with pytest.raises(CifarlabError, match="cannot be unpacked"):
        unpack_folder(b"not a tar at all", sweep_folder, "mine")
    with pytest.raises(CifarlabError, match="not a run folder name"):
        unpack_folder(pack_folder(node), sweep_folder, "..")


def test_the_driver_fails_a_run_whose_blob_is_forged_and_the_sweep_goes_on(tmp_path, capsys):
    spec = SweepSpec(name="gather", models=["mycnn"], seeds=[0, 1], out=str(tmp_path))
    planned = expand(spec)
    sweep = sweep_driver.Sweep(spec, SweepOptions(workers=1, ray="local", gather=True), planned)
    (sweep.folder / sweep_record.LOG_DIR).mkdir(parents=True)
    mine, other = (r.name for r in planned)
    (sweep.folder / other).mkdir()
    (sweep.folder / other / "run.json").write_text("{}")
    blob = tar_blob((other, "dir", b""), (f"{other}/run.json", "file", '{"forged": true}'))
    for run in sweep.runs.values():
        run.update(state="running", attempts=1)
    result = {"name": mine, "state": "done", "blob": blob, "seconds": "fast", "headline": {"test_top1": 0.9}}
    sweep_driver.handle_result(sweep, result, deque(), sweep_progress.Progress(2, 0, "gather"), [])
    assert sweep.runs[mine]["state"] == "failed" and "does not hold that run's folder" in sweep.runs[mine]["message"]
    assert (sweep.folder / other / "run.json").read_text() == "{}"
    assert "FAILED" in capsys.readouterr().out


def test_the_pools_name_a_result_by_the_run_they_were_given(tmp_path, monkeypatch):
    """A worker's result that names another run is recorded for the run the worker was handed."""
    monkeypatch.setattr(sweep_pools, "execute_run", lambda job, cancel, on_start: {"name": "other", "state": "done"})
    pool = sweep_pools.LocalPool(1)
    try:
        pool.submit(Job(name="mine", config={}, sweep_dir=str(tmp_path), threads=1))
        results = []
        while not results:
            results = pool.results(5)
    finally:
        pool.close()
    assert results == [{"name": "mine", "state": "done"}]


# ---------------------------------------------------------------------------------------------------------
# Tracking: forged MLflow run ids, math-text class names in TensorBoard figures
# ---------------------------------------------------------------------------------------------------------

MATH_NAMES = ["$\\frac{a}{b}$", "$x^$", "cost $5", "a_b^c", "$$", "\\alpha", "plain", "$\\sqrt{}", "}{", "$"]


def write_test_files(run: Path, classes: list[str]) -> None:
    """A run's test predictions (3 of 10 images wrong) and test_metrics.json, with these class names."""
    n = len(classes)
    y_true = np.arange(10) % n
    y_pred = y_true.copy()
    y_pred[[1, 4, 7]] = (y_true[[1, 4, 7]] + 1) % n
    probs = np.full((10, n), 0.01, dtype=np.float32)
    probs[np.arange(10), y_pred] = 0.9
    np.savez(run / "test_predictions.npz", y_true=y_true, probs=probs, index=np.arange(10))
    metrics = {"top1": 0.7, "top3": 1.0, "loss": 0.5, "epoch": 2, "per_class_accuracy": dict.fromkeys(classes, 0.7)}
    (run / "test_metrics.json").write_text(json.dumps(metrics))


@needs_tensorboard
def test_a_tensorboard_log_of_a_run_whose_class_names_hold_dollars_works(tmp_path, monkeypatch, capsys):
    import matplotlib.mathtext
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cifarlab.data.cifar10 import ImageData

    def no_math(*args, **kwargs):
        raise AssertionError("a name was parsed as math text")

    monkeypatch.setattr(matplotlib.mathtext.MathTextParser, "parse", no_math)
    run = tmp_path / "run $x^$"
    run.mkdir()
    write_test_files(run, MATH_NAMES)
    images = torch.zeros(10, 3, 32, 32, dtype=torch.uint8)
    labels = torch.arange(10)
    data = ImageData(images, labels, images, labels, list(MATH_NAMES))
    tracker = tracking.Tracker(run, {"model": "mycnn", "seed": 0}, tensorboard=True, mlflow_uri=None)
    tracker.finish(run, data)
    tracker.close()
    assert "warning" not in capsys.readouterr().out  # both figures drawn, nothing switched off
    acc = EventAccumulator(str(run / tracking.TB_DIR), size_guidance={"images": 0})
    acc.Reload()
    assert set(acc.Tags()["images"]) == {"confusion_matrix", "misclassified"}


@needs_mlflow
@pytest.mark.parametrize(
    "record, reason",
    [
        ({"mlflow_run_id": "../../etc/passwd"}, "is not an MLflow run id"),
        ({"mlflow_run_id": "f" * 32}, "cannot be found in this store"),
        ({"mlflow_run_id": ["x"]}, "is not an MLflow run id"),
        ({"mlflow_run_id": "another"}, "belongs to another run"),
    ],
)
def test_a_forged_mlflow_run_id_gives_a_fresh_run_with_a_note(tmp_path, capsys, record, reason):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_dir = tmp_path / "sweep" / "mine"
    run_dir.mkdir(parents=True)
    client = mlflow_client(uri)
    if record["mlflow_run_id"] == "another":  # a real run of the same store, but not this one
        other = client.create_run(mlflow_experiment(client, uri, "sweep"), run_name="other")
        record = {"mlflow_run_id": other.info.run_id}
    (run_dir / TRACKING_FILE).write_text(json.dumps({"mlflow_uri": uri, **record}))
    mlflow_run = MlflowRun(uri, run_dir, {"model": "mycnn", "seed": 0})
    out = capsys.readouterr().out
    assert "cifarlab: note: " in out and reason in out and "logging to a fresh MLflow run" in out
    assert mlflow_run.run_id != record["mlflow_run_id"]
    assert MlflowClient(tracking_uri=uri).get_run(mlflow_run.run_id).info.run_name == "mine"
    saved = json.loads((run_dir / TRACKING_FILE).read_text())
    assert saved == {"mlflow_uri": uri, "mlflow_run_id": mlflow_run.run_id}
    again = MlflowRun(uri, run_dir, {"model": "mycnn", "seed": 0})  # its own id reopens it, quietly
    assert again.run_id == mlflow_run.run_id and "note" not in capsys.readouterr().out


@needs_mlflow
def test_a_tracking_json_that_is_not_a_record_gives_a_fresh_run_with_a_note(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / TRACKING_FILE).write_text("[" * 3000)
    mlflow_run = MlflowRun(uri, run_dir, {"model": "mycnn"})
    assert "nested too deeply; logging to a fresh MLflow run" in capsys.readouterr().out
    assert json.loads((run_dir / TRACKING_FILE).read_text())["mlflow_run_id"] == mlflow_run.run_id


@needs_mlflow
def test_a_sweep_json_with_a_forged_mlflow_run_id_gets_a_fresh_parent_run(tmp_path, capsys):
    uri = sweep_mlflow.absolute_mlflow_uri(f"sqlite:///{tmp_path}/mlflow.db")
    spec = SweepSpec(name="tracked", models=["mycnn"], seeds=[0], out=str(tmp_path))
    folder = spec.folder
    folder.mkdir()
    record = {"uri": uri, "run_id": "0" * 32, "experiment": "tracked"}
    (folder / "sweep.json").write_text(json.dumps({"name": "tracked", "mlflow": record, "runs": []}))
    sweep = sweep_driver.Sweep(spec, SweepOptions(workers=1, mlflow=uri), expand(spec))
    env = sweep_mlflow.start_mlflow(sweep)
    assert "which cannot be found in this store" in capsys.readouterr().err
    assert env["CIFARLAB_MLFLOW_PARENT_RUN"] == sweep.mlflow["run_id"] != "0" * 32
    reopened = sweep_driver.Sweep(spec, SweepOptions(workers=1, mlflow=uri), expand(spec))
    reopened.mlflow = dict(sweep.mlflow)
    assert sweep_mlflow.start_mlflow(reopened)["CIFARLAB_MLFLOW_PARENT_RUN"] == sweep.mlflow["run_id"]
    assert "note" not in capsys.readouterr().err
