"""Checkpoints: one dict with everything needed to resume or evaluate, saved atomically, loaded safely.

Keys: ``model`` (state dict), ``model_name``, ``model_kwargs`` (factory arguments, optional), ``optimizer``,
``scheduler``, ``epoch`` (epochs completed), ``config`` (the TrainConfig as a dict), ``mean``/``std``
(training-split normalisation), ``classes``,
``rng`` (torch RNG states and the batch generator's state), ``best_val_top1``, ``history`` (metrics rows).
Everything is tensors, numbers, strings, lists and dicts, so ``torch.load(weights_only=True)`` can read it:
unpickling never runs code from the file.
"""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarlab.errors import CheckpointError
from cifarlab.runfiles import atomic_write, resolve_checkpoint

REQUIRED_KEYS = ("model", "model_name", "config", "mean", "std", "classes")
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
PICKLE_MAGIC = b"\x80"  # the legacy format, and plain pickles (refused by the safe loader unless plain data)


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
    if not (head.startswith(ZIP_MAGIC) or head[:1] == PICKLE_MAGIC):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (it does not start like a torch.save file)")


def _refusal_detail(exc: Exception) -> str:
    """The line of torch's message naming what was blocked (e.g. 'GLOBAL posix.system'), without its advice."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or line.startswith("Unsupported"):
            return line.rstrip(".")
    return "objects the safe loader does not accept"


def _check_fields(state: Any, path: Path) -> None:
    """Our keys, with the types the rest of cifarlab relies on, so a crafted file cannot cause a traceback later."""
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is a torch file but not a cifarlab checkpoint "
                              f"(expected keys: {', '.join(REQUIRED_KEYS)})")
    problems = []
    if not isinstance(state["model"], dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state["model"].items()):
        problems.append("'model' is not a state dict of tensors")
    if not isinstance(state["model_name"], str):
        problems.append("'model_name' is not a string")
    if not isinstance(state["config"], dict) or not all(
            isinstance(state["config"].get(k), int) for k in ("seed", "val_size")):
        problems.append("'config' is not a training config (a dict with seed and val_size)")
    elif state["config"].get("tta", 0) not in (0, 1, 2):
        problems.append("'config' has a test-time augmentation level other than 0, 1 or 2")
    if not isinstance(state.get("epoch"), int):
        problems.append("'epoch' is missing or not a whole number")
    if not isinstance(state["classes"], list) or len(state["classes"]) < 2 or not all(
            isinstance(c, str) for c in state["classes"]):
        problems.append("'classes' is not a list of class names")
    for key in ("mean", "std"):
        values = state[key]
        if not (isinstance(values, list) and len(values) == 3 and all(isinstance(v, (int, float)) for v in values)):
            problems.append(f"'{key}' is not a list of 3 numbers")
    if isinstance(state["std"], list) and any(isinstance(v, (int, float)) and v <= 0 for v in state["std"]):
        problems.append("'std' has a value that is not positive")
    if not isinstance(state.get("model_kwargs", {}), dict):
        problems.append("'model_kwargs' is not a dict")
    if problems:
        raise CheckpointError(f"{path} is not a valid cifarlab checkpoint: {'; '.join(problems)}")


def model_from_checkpoint(state: dict[str, Any]) -> nn.Module:
    """Rebuild the registered model named in the checkpoint and load its weights; eval mode, on the CPU."""
    from cifarlab.models import MODELS, build_model

    name = state["model_name"]
    if name not in MODELS:
        raise CheckpointError(f"checkpoint {state.get('path', '')} is for unknown model {name!r}")
    try:
        model = build_model(name, num_classes=len(state["classes"]), **state.get("model_kwargs", {}))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {state.get('path', '')} has arguments that model {name!r} "
                              f"does not take: {exc}") from None
    mismatch = describe_mismatch(model.state_dict(), state["model"])
    if mismatch:
        raise CheckpointError(f"checkpoint {state.get('path', '')} does not match model {name!r} "
                              f"(is it from another model?): {mismatch}")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {state.get('path', '')} does not fit model {name!r}: "
                              f"{str(exc).splitlines()[-1].strip()}") from None
    return model.eval()


def describe_mismatch(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> str:
    """Missing, unexpected and wrongly shaped weights in a few words ('' when the state dict fits)."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [k for k in expected if k in got and tuple(expected[k].shape) != tuple(got[k].shape)]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
    return ", ".join(parts)
