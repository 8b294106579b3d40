"""The Python API (docs/python-api.md, cifarlab.api): its notebook cells run as written on generated data, importing
it loads no torch, a RunFolder reads a run lazily and shows one line, and run.json's format_version migration."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cifarlab import api as lab
from cifarlab.base.errors import CifarlabError
from cifarlab.runs.folder import FORMAT_VERSION, RunFolder, migrate

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def cells() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


@pytest.mark.slow
def test_the_documented_notebook_runs_as_written(fake_cifar, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, *rest = cells()
    assert 'DATA, OUT = "data", "runs"' in first
    namespace: dict = {}
    exec(first.replace('"data"', repr(str(fake_cifar))), namespace)  # noqa: S102 - the documentation's own code
    for cell in rest:
        exec(cell, namespace)  # noqa: S102
    run, other = namespace["run"], namespace["other"]
    assert isinstance(run, RunFolder) and run.finished and len(run.metrics) == 2
    assert run.info["format_version"] == FORMAT_VERSION
    assert re.fullmatch(
        r"RunFolder\('runs/cnn'\) cnn: mycnn, recipe seed, seed 0, 2 epochs; test top-1 \d+\.\d\d%, top-3 \d+\.\d\d%",
        repr(run),
    )
    assert namespace["summary"]["top1"] == pytest.approx(run.info["test_top1"], abs=1e-4)
    assert Path(namespace["page"]).is_file() and (tmp_path / "runs" / "comparison" / "comparison.md").is_file()
    assert other.config.seed == 1 and namespace["again"].classes == run.classes
    answers = lab.predict(run, [tmp_path / "runs" / "cnn" / "config.json"])
    assert answers[0][1].startswith("not an image")  # an unreadable file is its own answer, not an exception


def test_the_api_module_loads_no_torch_until_training():
    code = "import sys; from cifarlab import api; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout.split()
    assert out == ["False"]
    assert all(getattr(lab, name).__doc__ for name in lab.__all__)
    assert set(lab.__all__) == {
        "RunFolder",
        "TrainConfig",
        "analyze",
        "compare",
        "load_run",
        "predict",
        "recipe",
        "report",
        "train",
    }


def test_import_cifarlab_is_the_index_of_the_api_and_loads_neither_torch_nor_the_api():
    code = (
        "import sys, cifarlab; before = ('torch' in sys.modules, 'cifarlab.api' in sys.modules); "
        "f = cifarlab.train; print(*before, 'cifarlab.api' in sys.modules, 'torch' in sys.modules, "
        "sorted(set(cifarlab.API) - set(dir(cifarlab))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout.split()
    assert out == ["False", "False", "True", "False", "[]"]  # the API loads when asked for; torch only to train
    import cifarlab

    assert set(cifarlab.API) == set(lab.__all__)
    assert all(getattr(cifarlab, name) is getattr(lab, name) for name in cifarlab.API)
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        cifarlab.trian  # noqa: B018 - a typo is an AttributeError, not a silent import


def test_a_run_from_before_format_version_is_read_as_a_cifar10_fp32_run():
    old = migrate({"model": "mycnn", "test_top1": 0.8}, "run.json")
    assert old["format_version"] == FORMAT_VERSION and old["precision"] == "fp32" and old["init"] is None
    assert old["dataset"]["kind"] == "cifar10" and old["test_top1"] == 0.8
    assert migrate({"format_version": 1, "precision": "bf16"}, "run.json")["precision"] == "bf16"
    with pytest.raises(CifarlabError, match="written by a newer cifarlab"):
        migrate({"format_version": FORMAT_VERSION + 1}, "run.json")
    with pytest.raises(CifarlabError, match="format_version must be a whole number"):
        migrate({"format_version": "1"}, "run.json")


def test_a_run_folder_reads_lazily_and_says_when_it_is_not_one(tiny_run, tmp_path):
    folder = lab.load_run(tiny_run)
    assert folder.info["test_top1"] == json.loads((tiny_run / "run.json").read_text())["test_top1"]
    assert folder.config.model == "mycnn" and folder.predictions.probs.shape[1] == 10
    assert "<" not in folder._repr_html_().replace("<code>", "").replace("</code>", "")
    with pytest.raises(CifarlabError, match="not a run folder"):
        lab.load_run(tmp_path)
