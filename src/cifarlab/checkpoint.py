"""Checkpoints: one dict with everything needed to resume or evaluate, saved atomically, loaded safely.

Keys: ``model`` (state dict), ``model_name``, ``model_kwargs`` (factory arguments, optional), ``optimizer``, ``scheduler``, ``epoch`` (epochs completed),
``config`` (the TrainConfig as a dict), ``mean``/``std`` (training-split normalisation), ``classes``,
``rng`` (torch RNG states and the batch generator's state), ``best_val_top1``, ``history`` (metrics rows).
Everything is tensors, numbers, strings, lists and dicts, so ``torch.load(weights_only=True)`` can read it:
unpickling never runs code from the file.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarlab.errors import CheckpointError
from cifarlab.runfiles import atomic_write, resolve_checkpoint

REQUIRED_KEYS = ("model", "model_name", "config", "mean", "std", "classes")


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
    """Load a checkpoint with ``weights_only=True`` and check it is one of ours; clear errors otherwise."""
    path = resolve_checkpoint(run_or_file, name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refused to load {path}: it holds objects that are not plain weights (possibly code), "
            f"and checkpoints are only loaded with weights_only=True ({str(exc).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or not a torch file): "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is a torch file but not a cifarlab checkpoint "
                              f"(expected keys: {', '.join(REQUIRED_KEYS)})")
    state["path"] = str(path)
    return state


def model_from_checkpoint(state: dict[str, Any]) -> nn.Module:
    """Rebuild the registered model named in the checkpoint and load its weights; eval mode, on the CPU."""
    from cifarlab.models import MODELS, build_model

    name = state["model_name"]
    if name not in MODELS:
        raise CheckpointError(f"checkpoint {state.get('path', '')} is for unknown model {name!r}")
    model = build_model(name, num_classes=len(state["classes"]), **state.get("model_kwargs", {}))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {state.get('path', '')} does not match model {name!r}: "
                              f"{str(exc).splitlines()[0]}") from None
    return model.eval()
