"""Shared fixtures and the rules every test runs under.

Isolation, for every test (autouse): no network (socket connections and name lookups outside this machine fail,
and child processes get an unreachable proxy), no ``$CIFARLAB_DATA_DIR`` (only ``real_cifar`` may know where the
real data lies), and a fresh, empty working folder that must still be empty afterwards (so a command that forgets
``--out`` or ``--data-dir`` fails its test instead of writing into the repository).

Data and runs: ``fake_cifar`` (a generated CIFAR-10-format folder), ``real_cifar`` (the real set, or skip),
``small_config`` (the one small training config), ``tiny_run`` (a finished 2-epoch run, made through the CLI with
``--no-analysis``), ``crafted_run`` (a copy of it with known mistakes). Shared fixtures are read-only: ``fake_cifar``
and ``tiny_run`` are fingerprinted and checked when the session ends.

Helpers: ``child`` (every subprocess: one thread, unbuffered, Ctrl-C restored), ``cli_error`` (a refusal is one
line, ``cifarlab: error: ...``, with the right exit code), ``engine`` (the one place tests reach engine internals).

Markers: ``slow`` (over ~10 s), ``subprocess`` (set automatically on tests that start processes), and
``required_in_ci`` (documents a test whose needs, a browser or an extra, may be missing on a developer's machine).

CI (``CI=true``): no test may skip, by any route. Every skip, of a test or of a whole file at collection, is
turned into a failure with its reason, marked ``required_in_ci`` or not (docs/testing.md, "CI").
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import ipaddress
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Before torch loads OpenMP: idle threads sleep instead of spinning, so tests stay fast beside other CPU-bound jobs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402

from cifarlab.data.cifar10 import CLASSES  # noqa: E402

# One thread: on a shared 2-core machine, two OpenMP threads that wait for each other stall small models.
torch.set_num_threads(1)

# Property tests: reproducible draws, no example database written to disk, no deadline on a busy machine.
hypothesis_settings.register_profile("cifarlab", database=None, deadline=None, derandomize=True, max_examples=60)
hypothesis_settings.load_profile("cifarlab")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "cifar10"  # the real set beside a clone, as on this project's machines
DATA_ENV = "CIFARLAB_DATA_DIR"
CACHE_ENV = "CIFARLAB_CACHE_DIR"  # where decoded image folders are cached: a fresh folder for every test
UNREACHABLE_PROXY = "http://127.0.0.1:9"  # the discard port: any download through it fails at once

# Where the engine's internals live, for the few tests that must reach or replace one (``engine``, ``engine_patch``).
ENGINE_MODULES = (
    "cifarlab.engine.train",
    "cifarlab.engine.build",
    "cifarlab.engine.budget",
    "cifarlab.engine.device",
    "cifarlab.engine.optim",
    "cifarlab.engine.infer",
)


# ----------------------------------------------------------------------------------------------------------
# Markers and CI
# ----------------------------------------------------------------------------------------------------------


def in_ci() -> bool:
    """True when the CI environment variable says so (GitHub Actions, GitLab and .ci/run set CI=true)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that starts a child process (it uses the ``child`` fixture) as ``subprocess``."""
    for item in items:
        if "child" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.subprocess)


def ci_skip_message(what: str, longrepr: Any) -> str:
    """The failure that replaces a skip in CI: what skipped, and the skip's own reason."""
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return (
        f"{what} must run in CI (CI=true: no test may skip; install the test extra and the data, "
        f"see docs/testing.md), but it skipped: {reason}"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """In CI, any skip of a test (a skipif marker, ``pytest.skip`` in a fixture or the test) is a failure."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci() and not hasattr(report, "wasxfail"):  # an expected failure is not a skip
        report.outcome = "failed"
        report.longrepr = ci_skip_message(f"test {item.nodeid}", report.longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    """In CI, a file skipped while collected (a module-level ``importorskip``) is a failure: otherwise its tests
    vanish before the test-level hook above ever sees them."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci():
        report.outcome = "failed"
        report.longrepr = ci_skip_message(f"collecting {collector.nodeid}", report.longrepr)


# ----------------------------------------------------------------------------------------------------------
# Isolation
# ----------------------------------------------------------------------------------------------------------


def is_local(host: Any) -> bool:
    """True for this machine: loopback names and addresses (and non-IP families such as Unix sockets)."""
    if host is None or not isinstance(host, (str, bytes)):
        return True
    host = host.decode() if isinstance(host, bytes) else host
    if host in ("", "localhost") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def network_blocked(*_args: Any) -> OSError:
    return OSError("network access is blocked in the tests (tests must never download anything)")


@pytest.fixture(scope="session", autouse=True)
def offline_and_clean_environment(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """For the whole session: no network, no $CIFARLAB_DATA_DIR, and a scratch working folder.

    Yields the value $CIFARLAB_DATA_DIR had, for ``real_cifar`` alone."""
    data_env = os.environ.get(DATA_ENV)
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def connect(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not is_local(address[0]):
            raise network_blocked()
        return real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not is_local(address[0]):
            raise network_blocked()
        return real_connect_ex(sock, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_local(host):
            raise socket.gaierror(socket.EAI_NONAME, "name lookups are blocked in the tests")
        return real_getaddrinfo(host, *args, **kwargs)

    home = tmp_path_factory.mktemp("session-cwd")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", connect)
        mp.setattr(socket.socket, "connect_ex", connect_ex)
        mp.setattr(socket, "getaddrinfo", getaddrinfo)
        mp.delenv(DATA_ENV, raising=False)
        mp.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("session-cache")))  # never ~/.cache
        for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):  # for child processes too
            mp.setenv(name, UNREACHABLE_PROXY)
        mp.chdir(home)
        yield data_env
    leftovers = sorted(p.name for p in home.iterdir())
    assert not leftovers, f"session fixtures wrote into the working folder instead of a given --out: {leftovers}"


# Outside cifarlab, the attributes tests replace (a first import may rewrap others, e.g. torch._dynamo).
WATCHED_ATTRIBUTES = (
    "torch.nn.functional.cross_entropy",
    "torch.cuda.is_available",
    "torch.backends.mps.is_available",
    "torch.load",
    "torch.save",
    "socket.getaddrinfo",
    "socket.socket.connect",
    "tempfile.mkstemp",
    "os.replace",
    "time.perf_counter",
    "time.monotonic",
    "subprocess.run",
)


# Set by pytest itself (the current test) and by torch on a first import (its cache folder), not by a test.
LIBRARY_ENV_PREFIXES = ("PYTEST_CURRENT_TEST", "TORCHINDUCTOR_")


def module_state() -> dict[str, Any]:
    """What a test might change process-wide: every attribute of every loaded cifarlab module (and the keys of
    its dicts, such as the MODELS registry), the attributes in WATCHED_ATTRIBUTES, and the environment."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(LIBRARY_ENV_PREFIXES)}
    state: dict[str, Any] = {"os.environ": environ}
    for name in [n for n in sys.modules if n == "cifarlab" or n.startswith("cifarlab.")]:
        for attr, value in vars(sys.modules[name]).items():
            state[f"{name}.{attr}"] = tuple(value) if isinstance(value, dict) else id(value)
    for path in WATCHED_ATTRIBUTES:
        module, *rest = path.split(".")
        value: Any = sys.modules.get(module)
        for part in rest:
            value = getattr(value, part, None)
        state[path] = id(value)
    return state


@pytest.fixture
def no_patch_left_in_place() -> Any:
    """After each test (and its monkeypatch undone), the watched modules and the environment are as before.
    Set up first and torn down last through ``isolated_test``, which asks for it before ``monkeypatch``."""
    before = module_state()
    yield
    after = module_state()
    changed = sorted(k for k in before if k in after and before[k] != after[k])
    if "os.environ" in changed:
        env_a, env_b = before["os.environ"], after["os.environ"]
        changed += [f"${k}" for k in sorted(env_a.keys() | env_b.keys()) if env_a.get(k) != env_b.get(k)]
    assert not changed, f"the test left process-wide changes in place: {changed[:10]}"


@pytest.fixture(autouse=True)
def isolated_test(
    no_patch_left_in_place: None, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """Each test starts in an empty working folder without $CIFARLAB_DATA_DIR, with an empty cache folder of its
    own ($CIFARLAB_CACHE_DIR), and must leave the working folder empty."""
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("cache")))  # decoded images: fresh, never ~/.cache
    cwd = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(cwd)
    yield
    leftovers = sorted(p.name for p in cwd.iterdir())
    assert not leftovers, f"the test wrote into the working folder (a missing --out or --data-dir?): {leftovers}"


def fingerprint(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def read_only_fixture(folder: Path) -> Any:
    """Yield ``folder``, then check that no test changed, added or removed a file in it."""
    before = fingerprint(folder)
    yield folder
    after = fingerprint(folder)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a test modified the shared fixture {folder}: {changed}"


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------


def make_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noisy images whose mean colour and a bright stripe depend on the class: learnable in a few steps."""
    n = len(labels)
    x = rng.integers(0, 80, size=(n, 3, 32, 32)).astype(np.int16)
    for c in range(10):
        sel = labels == c
        x[sel, c % 3] += 60 + 15 * c
        x[sel, :, 3 * c : 3 * c + 3, :] += 100
    return np.clip(x, 0, 255).astype(np.uint8).reshape(n, 3072)


def write_fake_cifar(root: Path, per_batch: int = 200, test_size: int = 200, seed: int = 0) -> Path:
    """Write a folder in the official python-version layout (5 train batches, test batch, meta)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, n in [(f"data_batch_{k}", per_batch) for k in range(1, 6)] + [("test_batch", test_size)]:
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        batch = {
            "batch_label": f"fake {i}",
            "labels": labels.tolist(),
            "data": make_images(labels, rng),
            "filenames": [f"{i}_{k}.png" for k in range(n)],
        }
        with open(folder / i, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CLASSES), "num_cases_per_batch": per_batch, "num_vis": 3072}, f, protocol=2)
    return root


@pytest.fixture(scope="session")
def fake_cifar(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A small generated CIFAR-10 folder: 1,000 training and 200 test images. Read-only."""
    yield from read_only_fixture(write_fake_cifar(tmp_path_factory.mktemp("fake_cifar")))


@pytest.fixture(scope="session")
def make_fake_cifar() -> Callable[..., Path]:
    """``make_fake_cifar(root, per_batch=200, test_size=200, seed=0)``: a generated CIFAR-10 folder of one's own."""
    return write_fake_cifar


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark_script(name: str) -> Any:
    """A script of benchmarks/ as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def benchmark_script() -> Callable[[str], Any]:
    """``benchmark_script("airbench_cpu")``: a script of benchmarks/ loaded as a module."""
    return load_benchmark_script


@pytest.fixture(scope="session")
def real_cifar(offline_and_clean_environment: str | None) -> Path:
    """The real CIFAR-10 folder, or skip (a failure in CI): $CIFARLAB_DATA_DIR as the session found it, else
    ../shared/data/cifar10. The only fixture that knows where real data lies; every test runs without
    $CIFARLAB_DATA_DIR."""
    for root in (offline_and_clean_environment, SHARED_DATA):
        if root and (Path(root) / "cifar-10-batches-py" / "data_batch_1").is_file():
            return Path(root)
    pytest.skip(f"real CIFAR-10 not found (${DATA_ENV} unset or empty, and nothing at {SHARED_DATA})")


# ----------------------------------------------------------------------------------------------------------
# Configs and runs
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmallConfig:
    """The one small training config of the suite: mycnn, 2 epochs, batch 50, 100 validation images, CPU, fp32."""

    data_dir: Path
    defaults: tuple[tuple[str, Any], ...] = (
        ("model", "mycnn"),
        ("epochs", 2),
        ("batch_size", 50),
        ("val_size", 100),
        ("device", "cpu"),
        ("bf16", False),  # fp32: the suite compares scores across batch shapes exactly (bf16: tests/test_precision.py)
    )

    def values(self, **values: Any) -> dict[str, Any]:
        return {**dict(self.defaults), "data_dir": str(self.data_dir), **values}

    def __call__(self, *, out: Path, recipe: str = "seed", **values: Any) -> Any:
        """A TrainConfig writing its run into ``out`` (``name`` defaults to "run")."""
        from cifarlab.config.train_config import make_config

        return make_config(recipe, **self.values(out=str(out), **{"name": "run", **values}))

    def write(self, path: Path, recipe: str = "seed", **values: Any) -> Path:
        """The config as a ``config.json`` for ``cifarlab train --config`` (no name: each replay picks one)."""
        config = self(out=path.parent, recipe=recipe, **values).to_dict()
        config["name"] = None
        path.write_text(json.dumps(config))
        return path


@pytest.fixture(scope="session")
def small_config(fake_cifar: Path) -> SmallConfig:
    """``small_config(out=DIR, **overrides)``: a TrainConfig; ``small_config.write(PATH, **overrides)``: its file."""
    return SmallConfig(fake_cifar)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, small_config: SmallConfig) -> Any:
    """A finished 2-epoch mycnn run on the generated data (every run file, no analysis), made with
    ``cifarlab train --config ... --no-analysis``. Read-only: copy it to change anything."""
    from cifarlab.cli.main import main

    work = tmp_path_factory.mktemp("tiny")
    config = small_config.write(work / "config.json")
    out = work / "runs"
    assert (
        main(
            [
                "train",
                "--config",
                str(config),
                "--out",
                str(out),
                "--name",
                "tiny",
                "--no-analysis",
                "--data-dir",
                str(small_config.data_dir),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    yield from read_only_fixture(out / "tiny")


def craft_predictions(y: np.ndarray, seed: int, wrong_share: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Predictions with cat -> dog as the main confusion, truck never predicted, some one-hot rows.

    Returns (probs, keep): ``keep`` drops every ship image, so ship never occurs."""
    cat, dog, ship, truck = (CLASSES.index(c) for c in ("cat", "dog", "ship", "truck"))
    rng = np.random.default_rng(seed)
    pred = y.copy()
    wrong = rng.random(len(y)) < wrong_share
    pred[wrong] = (y[wrong] + rng.integers(1, 10, wrong.sum())) % 10
    cats = np.flatnonzero(y == cat)
    pred[cats[: len(cats) // 2]] = dog
    trucks = pred == truck
    pred[trucks] = rng.integers(0, truck, trucks.sum())
    probs = 0.5 * rng.dirichlet(np.ones(10), size=len(y))
    probs[np.arange(len(y)), pred] += 0.5 + rng.uniform(0, 2, len(y))
    probs /= probs.sum(1, keepdims=True)
    onehot = rng.random(len(y)) < 0.1
    probs[onehot] = np.eye(10)[pred[onehot]]
    return probs.astype(np.float32), y != ship


def make_crafted_run(
    tiny_run: Path, dest: Path, seed: int = 0, config: dict | None = None, info: dict | None = None
) -> Path:
    """A copy of the tiny run with crafted test predictions (and optionally edited config/run.json)."""
    shutil.copytree(tiny_run, dest, ignore=shutil.ignore_patterns("last.pt", "analysis", "report.*"))
    with np.load(dest / "test_predictions.npz") as f:
        y, index = f["y_true"], f["index"]
    probs, keep = craft_predictions(y, seed)
    np.savez_compressed(dest / "test_predictions.npz", y_true=y[keep], probs=probs[keep], index=index[keep])
    for name, changes in (("config.json", config), ("run.json", info)):
        data = json.loads((dest / name).read_text())
        data.update({"name": dest.name, **(changes or {})})
        (dest / name).write_text(json.dumps(data))
    return dest


@pytest.fixture(scope="session")
def crafted_run(tiny_run: Path) -> Callable[..., Path]:
    """``crafted_run(dest, seed=0, config=None, info=None)``: a copy of ``tiny_run`` at ``dest`` whose test
    predictions have known mistakes (cat -> dog the main confusion, truck never predicted, no ship images)."""
    return lambda dest, **kwargs: make_crafted_run(tiny_run, dest, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------


def default_sigint() -> None:
    """A child started from a shell that ignores SIGINT would inherit that; restore Python's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Child:
    """Every child process of the suite: ``sys.executable`` with one thread, unbuffered output, Ctrl-C restored,
    and the session's environment (no $CIFARLAB_DATA_DIR, downloads through an unreachable proxy)."""

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}

    def run(
        self,
        *args: str,
        cwd: Path | None = None,
        timeout: float = 600,
        expect: int | None = 0,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """``python ARGS`` to the end; with ``expect`` set, its exit code must be that (the output is shown if not)."""
        result = subprocess.run(
            [sys.executable, *args],
            capture_output=True,
            text=True,
            cwd=cwd,
            timeout=timeout,
            env=env or self.env(),
            preexec_fn=default_sigint,
        )
        if expect is not None:
            assert result.returncode == expect, (
                f"exit code {result.returncode}, expected {expect}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def cli(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess:
        """``python -m cifarlab ARGS``."""
        return self.run("-m", "cifarlab", *args, **kwargs)

    def start(self, *args: str, log: Path, cwd: Path | None = None) -> subprocess.Popen:
        """``python ARGS`` in the background, stdout and stderr into ``log``."""
        with open(log, "w") as out:
            return subprocess.Popen(
                [sys.executable, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=self.env(),
                preexec_fn=default_sigint,
            )


@pytest.fixture(scope="session")
def child() -> Child:
    """The subprocess helper (tests using it are marked ``subprocess``)."""
    return Child()


@pytest.fixture
def cli_error(capsys: pytest.CaptureFixture) -> Callable[..., str]:
    """``cli_error(*args, code=2)``: run ``cifarlab ARGS`` in this process; it must refuse with exit code
    ``code`` and one line ``cifarlab: error: ...`` on stderr, no traceback. Returns that line."""
    from cifarlab.cli.main import main

    def refuse(*args: str, code: int = 2, one_line: bool = True) -> str:
        capsys.readouterr()
        try:
            got = main(list(args))
        except SystemExit as exc:  # argparse refuses before main's own handler
            got = exc.code
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        assert got == code, f"exit code {got}, expected {code}: {err}"
        lines = err.strip().splitlines()
        if one_line:
            assert len(lines) == 1 and lines[0].startswith("cifarlab: error: "), err
        return lines[-1]

    return refuse


def engine_module(name: str) -> Any:
    """The engine module that defines ``name``."""
    for module_name in ENGINE_MODULES:
        module = importlib.import_module(module_name)
        if hasattr(module, name):
            return module
    raise AssertionError(f"{name} is in none of {ENGINE_MODULES}: update conftest.ENGINE_MODULES")


@pytest.fixture(scope="session")
def engine() -> Callable[[str], Any]:
    """``engine(name)``: an internal of the training engine (``pick_device``, ``make_optimizer``, ``Probe``...).
    The suite reaches engine internals only through here; when they move, only ``ENGINE_MODULES`` changes."""
    return lambda name: getattr(engine_module(name), name)


@pytest.fixture
def engine_patch(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, Any], None]:
    """``engine_patch(name, value)``: replace an engine internal where it is defined, for this test only."""
    return lambda name, value: monkeypatch.setattr(engine_module(name), name, value)


def torch_threads(count: int) -> Any:
    """Torch at ``count`` threads for one test; the count before it is set back afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread() -> Any:
    """One torch thread for this test (the suite already runs with one; kept for tests that ask for it)."""
    yield from torch_threads(1)


@pytest.fixture
def two_threads() -> Any:
    """Two torch threads for this test (what the planner's thread choice starts from on a 2-core CPU)."""
    yield from torch_threads(2)


# ----------------------------------------------------------------------------------------------------------
# Image folders and CIFAR-100
# ----------------------------------------------------------------------------------------------------------

IMAGENETTE = REPO.parent / "shared" / "data" / "imagenette2-96"  # the real image folder beside a clone
FOLDER_COLOURS = ((220, 40, 40), (40, 200, 60), (50, 60, 230), (230, 210, 40), (200, 60, 200), (40, 210, 210))


def write_image_folder(
    root: Path,
    classes: tuple[str, ...] = ("circle", "square", "stripe"),
    per_class: int = 8,
    test_per_class: int | None = 3,
    held_out: str = "test",
    size: tuple[int, int] = (40, 30),
    seed: int = 0,
) -> Path:
    """A folder of PNG images whose colour and a bright band depend on the class (learnable in a few steps):
    ``root/train/<class>/`` and ``root/<held_out>/<class>/`` with ``test_per_class`` images, or ``root/<class>/``
    alone when that is None. Class c has colour FOLDER_COLOURS[c] plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    splits = [("", per_class)] if test_per_class is None else [("train", per_class), (held_out, test_per_class)]
    for split, count in splits:
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 40, (size[1], size[0], 3)) + np.array(FOLDER_COLOURS[c % 6]) * 0.8
                pixels[:, 4 * c : 4 * c + 4] = 255
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{name}-{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def make_image_folder() -> Callable[..., Path]:
    """``make_image_folder(root, classes=..., per_class=8, test_per_class=3, held_out="test", size=(40, 30))``:
    a generated image folder of one's own (``test_per_class=None``: the ``root/<class>/`` layout)."""
    return write_image_folder


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A generated image folder: train/ (8 images per class) and test/ (3), classes circle, square, stripe,
    40x30 PNGs. Read-only (which also checks that reading it never writes into it)."""
    yield from read_only_fixture(write_image_folder(tmp_path_factory.mktemp("image_folder")))


@pytest.fixture(scope="session")
def imagenette_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small copy of the real Imagenette (96x96 JPEG): 5 train/ and 2 val/ images of each of its first 3
    classes, or skip (a failure in CI) when ../shared/data/imagenette2-96 is absent."""
    if not (IMAGENETTE / "train").is_dir():
        pytest.skip(f"Imagenette not found at {IMAGENETTE}")
    root = tmp_path_factory.mktemp("imagenette")
    for split, count in (("train", 5), ("val", 2)):
        for folder in sorted((IMAGENETTE / split).iterdir())[:3]:
            (root / split / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:count]:
                shutil.copy(image, root / split / folder.name / image.name)
    return root


def write_fake_cifar100(root: Path, train: int = 200, test: int = 100, seed: int = 0, byte_keys: bool = False) -> Path:
    """A folder in CIFAR-100's official python-version layout: ``cifar-100-python/`` with train, test and meta
    (fine label f belongs to coarse class f // 5; ``byte_keys``: keys and names as bytes, as Python 2 wrote them).
    Images are generated as for CIFAR-10, from the coarse label modulo 10."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)

    def key(text: str) -> str | bytes:
        return text.encode() if byte_keys else text

    for name, n in (("train", train), ("test", test)):
        fine = np.arange(n) % 100
        rng.shuffle(fine)
        batch = {
            key("filenames"): [key(f"{name}_{k}.png") for k in range(n)],
            key("batch_label"): key(f"{name} batch 1 of 1"),
            key("fine_labels"): fine.tolist(),
            key("coarse_labels"): (fine // 5).tolist(),
            key("data"): make_images((fine // 5) % 10, rng),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    meta = {
        key("fine_label_names"): [key(f"fine{k:02d}") for k in range(100)],
        key("coarse_label_names"): [key(f"coarse{k:02d}") for k in range(20)],
    }
    with open(folder / "meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return root


@pytest.fixture(scope="session")
def fake_cifar100(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A small generated CIFAR-100 folder: 200 training and 100 test images. Read-only."""
    yield from read_only_fixture(write_fake_cifar100(tmp_path_factory.mktemp("fake_cifar100")))


@pytest.fixture(scope="session")
def make_fake_cifar100() -> Callable[..., Path]:
    """``make_fake_cifar100(root, train=200, test=100, seed=0, byte_keys=False)``: a CIFAR-100 folder of one's own."""
    return write_fake_cifar100
