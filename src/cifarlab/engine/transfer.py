"""Starting a run from a trained model (``--init-from``): which checkpoint, whether it fits, and its weights.

The init checkpoint is read like every checkpoint (``torch.load(weights_only=True)``, checked field by field and
against its model built on the ``meta`` device) before anything is built from it. The new run must build the same
registered model with the same arguments; :func:`model_fields` reads them from the checkpoint, so a run that names
neither model nor width gets the init's. Every weight is copied except the classification head when the classes
differ (by count or by name): that head keeps its fresh initialisation. The normalisation is not copied: it is
computed from the new training split like any run's. The run records where it started (:func:`init_record`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarlab.base.errors import UsageError
from cifarlab.config.fast import config_fields, model_kwargs
from cifarlab.models.registry import head_name
from cifarlab.runs.checkpoint import load_checkpoint


def load_init(path: str | Path) -> dict[str, Any]:
    """The checked checkpoint a run starts from: a file as given, or the one a run folder was tested with
    (best.pt, or last.pt for recipes that test the end of the schedule)."""
    state = load_checkpoint(path, "best.pt")
    tested_last = state["config"].get("test_checkpoint") == "last"
    if Path(path).is_dir() and tested_last and Path(state["path"]).name != "last.pt":
        state = load_checkpoint(path, "last.pt")
    return state


def model_fields(state: dict[str, Any]) -> dict[str, Any]:
    """The config fields that rebuild the init's model: its name and its arguments (width, fast switches)."""
    return {"model": state["model_name"], **config_fields(state["model_name"], state.get("model_kwargs", {}))}


def check_model(state: dict[str, Any], model: str) -> None:
    """Refuse a run of another registered model than the init checkpoint's."""
    if model != state["model_name"]:
        raise UsageError(
            f"--init-from {state['path']} holds a {state['model_name']!r} model; this run builds {model!r}"
        )


def check_fits(config: Any, state: dict[str, Any]) -> None:
    """Refuse, in one line naming the difference, a run whose model is not the init checkpoint's."""
    path, name, kwargs = state["path"], state["model_name"], state.get("model_kwargs", {})
    check_model(state, config.model)
    wanted = model_kwargs(config)
    keys = sorted(set(wanted) | set(kwargs))
    differ = [
        f"{k} {kwargs.get(k, 'default')} there, {wanted.get(k, 'default')} here"
        for k in keys
        if wanted.get(k) != kwargs.get(k)
    ]
    if differ:
        raise UsageError(f"--init-from {path} holds {name!r} with other arguments: {'; '.join(differ)}")


def apply_init(model: nn.Module, state: dict[str, Any], classes: list[str]) -> bool:
    """Copy the init's weights into ``model`` (freshly built for ``classes``); True when its head was kept."""
    head = head_name(model)
    keep_head = list(state["classes"]) == list(classes)
    weights = state["model"]
    if not keep_head:
        weights = {k: v for k, v in weights.items() if not k.startswith(f"{head}.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    left = [k for k in missing if not k.startswith(f"{head}.")]
    if left or unexpected:  # load_checkpoint matched the weights with the model already: this cannot happen
        raise UsageError(f"--init-from {state['path']}: weights do not fit the model ({(left + unexpected)[:3]})")
    return keep_head


def weights_sha256(weights: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict: each weight's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for key in sorted(weights):
        t = weights[key].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def init_record(state: dict[str, Any], head_kept: bool) -> dict[str, Any]:
    """What the run started from, for its checkpoints and run.json."""
    source = state.get("dataset", {})
    return {
        "path": str(Path(state["path"]).resolve()),
        "sha256": weights_sha256(state["model"]),
        "model": state["model_name"],
        "epoch": state["epoch"],
        "classes": len(state["classes"]),
        "dataset": source.get("path") or source.get("kind", "cifar10"),
        "head": "kept" if head_kept else "new",
    }


def with_init_model(overrides: dict[str, Any]) -> dict[str, Any]:
    """Config overrides with the init checkpoint's model and arguments filled in where they name none (a given
    ``model`` or ``model_width`` is kept: :func:`check_fits` refuses it if it differs)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if "init_from" not in given:
        return given
    state = load_init(given["init_from"])
    if "model" in given:
        check_model(state, given["model"])
    return {**model_fields(state), **given}
