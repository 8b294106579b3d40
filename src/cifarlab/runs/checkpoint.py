"""Checkpoints: one dict with everything needed to resume or evaluate, saved atomically, loaded safely.

Keys: ``model`` (state dict), ``model_name``, ``model_kwargs`` (factory arguments, optional), ``optimizer``,
``scheduler``, ``epoch`` (epochs completed), ``config`` (the TrainConfig as a dict), ``mean``/``std``
(training-split normalisation), ``classes``, ``image_size`` (pixels per side the model was trained at;
absent means 32, CIFAR-10's), ``dataset`` (the run's dataset record, see :class:`cifarlab.data.cifar10.ImageData`;
optional), ``rng`` (torch RNG states and the batch generator's state), ``best_val_top1``, ``history`` (metrics
rows).
Everything is tensors, numbers, strings, lists and dicts, so ``torch.load(weights_only=True)`` can read it:
unpickling never runs code from the file.

A file is checked before anything it describes is allocated: it must be torch.save's zip format whose records
unpack to no more bytes than the file holds; then every field is checked, the model is built on the ``meta``
device (no memory) from its registered name and declared arguments, and every weight's name, shape and kind is
compared with it. Only a checkpoint that passes all of this is turned into a real model.
"""

from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarlab.base.errors import CheckpointError
from cifarlab.base.files import atomic_write
from cifarlab.data.checks import (
    DEFAULT_IMAGE_SIZE,
    classes_problems,
    dataset_problems,
    image_size_problems,
    is_finite_number,
    is_int_in,
    normalisation_problems,
)
from cifarlab.models.registry import MODELS, build_model, head_name, kwargs_problems, shorten
from cifarlab.runs.layout import resolve_checkpoint

REQUIRED_KEYS = ("model", "model_name", "config", "mean", "std", "classes")
WEIGHT_KEYS = ("model", "train_model")  # state dicts of the model's architecture (train_model: optional)
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
PICKLE_MAGIC = b"\x80"  # the legacy format, and plain pickles: refused (their sizes cannot be checked first)
EXAMPLES = 3  # mismatched weight names shown per kind of difference


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel or torch.compile wrappers (no 'module.' prefixes)."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Serialise to memory first, then write atomically: a crash mid-save leaves the previous file intact."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(Path(path), lambda f: f.write(buf.getbuffer()))


def load_checkpoint(run_or_file: str | Path, name: str = "best.pt") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check it is one of ours; clear errors otherwise.

    The file is treated as untrusted input: whatever is wrong with it becomes a :class:`CheckpointError`.
    """
    path = resolve_checkpoint(run_or_file, name)
    _check_file_kind(path)
    _check_archive(path)
    try:
        with warnings.catch_warnings():  # torch warns about unusual pickle protocols; the error below says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refused to load {path}: it holds Python objects other than tensors and plain data "
            f"({_refusal_detail(exc)}), which could run code when unpickled. cifarlab only loads checkpoints "
            "with torch.load(weights_only=True); use checkpoints written by cifarlab from a source you trust"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a hostile or broken file may fail anywhere inside torch.load
        detail = str(exc).splitlines()[0].split(". ")[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt): {detail}") from None
    _check_fields(state, path)
    _check_weights(state, path)
    state["path"] = str(path)
    return state


def _check_file_kind(path: Path) -> None:
    """Tell an empty or non-torch file (text, image, NumPy) apart from a damaged checkpoint, by its first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not head:
        raise CheckpointError(f"{path} is empty, not a checkpoint")
    if head[:1] == PICKLE_MAGIC:
        raise CheckpointError(
            f"refused to load {path}: it is a plain pickle or a legacy (pre-1.6) torch file; "
            "cifarlab loads only torch.save's zip format, whose sizes can be checked first"
        )
    if not head.startswith(ZIP_MAGIC):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (it does not start like a torch.save file)")


def _check_archive(path: Path) -> None:
    """The zip's records must unpack to no more bytes than the file holds (torch.save stores them uncompressed),
    so a small file cannot make torch.load allocate a large one."""
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(record.file_size for record in archive.infolist())
        size = path.stat().st_size
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt): {detail}") from None
    if unpacked > size:
        raise CheckpointError(
            f"{path} is not a valid checkpoint: its records unpack to {unpacked:,} bytes, more "
            f"than the file's {size:,} (torch.save never compresses them)"
        )


def _refusal_detail(exc: Exception) -> str:
    """The line of torch's message naming what was blocked (e.g. 'GLOBAL posix.system'), without its advice."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or line.startswith("Unsupported"):
            return line.rstrip(".")
    return "objects the safe loader does not accept"


def _check_fields(state: Any, path: Path) -> None:
    """Our keys, with the types and ranges the rest of cifarlab relies on, so a crafted file cannot cause a
    traceback, a large allocation or misleading output later."""
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise CheckpointError(
            f"{path} is a torch file but not a cifarlab checkpoint (expected keys: {', '.join(REQUIRED_KEYS)})"
        )
    problems = []
    for key in WEIGHT_KEYS:
        if key in state and not _is_state_dict(state[key]):
            problems.append(f"{key!r} is not a state dict of tensors")
    if not isinstance(state["model_name"], str):
        problems.append("'model_name' is not a string")
    problems += _config_problems(state["config"])
    if not is_int_in(state.get("epoch"), 0, 2**31):
        problems.append("'epoch' is missing or not a whole number >= 0")
    if "best_val_top1" in state and not is_finite_number(state["best_val_top1"]):
        problems.append("'best_val_top1' is not a finite number")
    class_problems = classes_problems(state["classes"])
    problems += class_problems
    if "image_size" in state:
        problems += image_size_problems(state["image_size"])
    if "dataset" in state:  # compared with the checkpoint's classes only when those are valid (one fault, one line)
        classes = None if class_problems else state["classes"]
        problems += dataset_problems(state["dataset"], classes, state.get("image_size"))
    problems += normalisation_problems(state["mean"], state["std"])
    kwargs = state.get("model_kwargs", {})
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        problems.append("'model_kwargs' is not a dict of named arguments")
    if problems:
        raise CheckpointError(f"{path} is not a valid cifarlab checkpoint: {'; '.join(problems)}")


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def checkpoint_image_size(state: dict[str, Any]) -> int:
    """Pixels per side of the images a checked checkpoint's model was trained on (32 for older checkpoints)."""
    return int(state.get("image_size", DEFAULT_IMAGE_SIZE))


def _config_problems(config: Any) -> list[str]:
    """The config fields that loading a checkpoint relies on (split seed and size, TTA level, data folder);
    a val_size of None means 10% of the training images."""
    if not isinstance(config, dict) or not isinstance(config.get("seed"), int) or "val_size" not in config:
        return ["'config' is not a training config (a dict with seed and val_size)"]
    val_size = config["val_size"]
    if not (val_size is None or isinstance(val_size, int)):
        return ["'config' has a val_size that is neither a whole number nor null (10%)"]
    if not (is_int_in(config["seed"], -(2**63), 2**64 - 1) and (val_size is None or is_int_in(val_size, 0, 2**31))):
        return ["'config' has a seed or val_size out of range"]
    problems = []
    if config.get("tta", 0) not in (0, 1, 2) or isinstance(config.get("tta"), bool):
        problems.append("'config' has a test-time augmentation level other than 0, 1 or 2")
    if not isinstance(config.get("data_dir"), (str, type(None))):
        problems.append("'config' has a data_dir that is not a folder name")
    return problems


def _check_weights(state: dict[str, Any], path: Path) -> None:
    """Compare the file's weights with the model its name and arguments describe, built on the meta device (no
    memory), before any real model is made: registered name, declared arguments, head size, names, shapes, kinds."""
    name, kwargs = state["model_name"], state.get("model_kwargs", {})
    if name not in MODELS:
        raise CheckpointError(f"{path} is for unknown model {shorten(name)} (known: {', '.join(sorted(MODELS))})")
    problems = kwargs_problems(name, kwargs, len(state["classes"]))
    if problems:
        raise CheckpointError(f"{path} has arguments that model {name!r} does not accept: {'; '.join(problems)}")
    try:
        with torch.device("meta"):
            skeleton = build_model(name, num_classes=len(state["classes"]), **kwargs)
    except Exception as exc:  # noqa: BLE001 - a factory may reject a combination its declared ranges allow
        raise CheckpointError(
            f"{path} describes a model {name!r} that cannot be built: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    expected = skeleton.state_dict()
    for key in WEIGHT_KEYS:
        if key not in state:
            continue
        head = _head_size(skeleton, state[key])
        if head is not None and head != len(state["classes"]):
            raise CheckpointError(
                f"{path} is not a valid cifarlab checkpoint: 'classes' has "
                f"{len(state['classes'])} names but the model's head has {head} outputs"
            )
        mismatch = describe_mismatch(expected, state[key])
        if mismatch:
            raise CheckpointError(f"{path} does not match model {name!r} (is it from another model?): {mismatch}")
        problem = _storage_problem(state[key])
        if problem:
            raise CheckpointError(f"{path} is not a valid cifarlab checkpoint: {key!r} {problem}")


def _head_size(skeleton: nn.Module, weights: dict[str, torch.Tensor]) -> int | None:
    """Outputs of the file's head: the weight of the model's last linear layer (None if the file lacks it)."""
    try:
        weight = weights.get(f"{head_name(skeleton)}.weight")
    except ValueError:  # a model without a linear layer
        weight = None
    return int(weight.shape[0]) if weight is not None and weight.dim() == 2 else None


def _storage_problem(weights: dict[str, torch.Tensor]) -> str:
    """Weights must be plain dense CPU tensors held in full by the file (no stride-0 views claiming more elements
    than are stored) with finite values ('' when they are)."""
    for key, t in weights.items():
        if t.layout != torch.strided or t.is_quantized or t.device.type != "cpu":
            return f"weight {shorten(key)} is not a plain dense tensor"
        if t.numel() * t.element_size() > t.untyped_storage().nbytes():
            return f"weight {shorten(key)} claims more values than the file stores"
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return f"weight {shorten(key)} holds NaN or infinite values"
    return ""


def model_from_checkpoint(state: dict[str, Any]) -> nn.Module:
    """Build the registered model named in a checkpoint that :func:`load_checkpoint` has checked, and load its
    weights; eval mode, on the CPU."""
    name = state["model_name"]
    model = build_model(name, num_classes=len(state["classes"]), **state.get("model_kwargs", {}))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {state.get('path', '')} does not fit model {name!r}: {str(exc).splitlines()[-1].strip()}"
        ) from None
    return model.eval()


def describe_mismatch(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> str:
    """Missing, unexpected, wrongly shaped and wrongly typed weights, with the first few names ('' when they fit)."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [k for k in expected if k in got and tuple(expected[k].shape) != tuple(got[k].shape)]
    kinds = [k for k in expected if k in got and _kind(expected[k]) != _kind(got[k])]
    parts = []
    for label, keys in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", shapes),
        ("wrong type", kinds),
    ):
        if keys:
            parts.append(f"{len(keys)} {label} (e.g. {', '.join(shorten(k) for k in keys[:EXAMPLES])})")
    return ", ".join(parts)


def _kind(t: torch.Tensor) -> str:
    """Floating point, integer or other: a checkpoint may store another precision, not another kind of number."""
    if t.is_floating_point():
        return "float"
    return "other" if t.is_complex() or t.dtype == torch.bool else "int"
