"""``cifarlab export``: a trained model as an ONNX or TorchScript file that needs neither cifarlab nor our code.

The normalisation is inside the exported graph, so the file takes plain pixels: a float32 tensor of shape
(N, 3, S, S), RGB, channels first, values in [0, 1] (uint8 pixels divided by 255), any batch size N, where S
is the image size the run trained at (32 for CIFAR). It returns logits of shape (N, number of classes); a
softmax turns them into probabilities. A JSON file written beside it (``FILE.json``) records the class names,
the image size, the input and output, the mean/std applied inside, and the check made at export: the exported
file is run (ONNX with onnxruntime) on up to 100 held-out images of the run's dataset and its logits must match
PyTorch's to within 1e-4, else nothing is kept. The class names and image size are also stored inside the file
(ONNX metadata properties; a ``cifarlab.json`` extra file in TorchScript).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cifarlab.base.errors import CifarlabError, UsageError

FORMATS = {"onnx": (".onnx",), "torchscript": (".pt", ".pts", ".ts", ".torchscript")}
TOLERANCE = 1e-4
CHECK_IMAGES = 100  # images the check runs on at 64 px and below; fewer at larger sizes (CHECK_PIXELS)
MIN_CHECK_IMAGES = 8
CHECK_PIXELS = CHECK_IMAGES * 64 * 64  # so that the check at 224 px costs about what it does at 64 px
KIND_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
INSTALL_HINT = "install the export extra: pip install 'cifarlab[export]' (onnx, onnxscript, onnxruntime)"


class Normalized(nn.Module):
    """The trained model behind its training normalisation: takes [0, 1] RGB images, returns logits."""

    mean: torch.Tensor  # registered buffers, declared for the type checker
    std: torch.Tensor

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


def pick_format(fmt: str | None, out: Path) -> str:
    """--format, or the one the --out suffix names (.onnx; .pt/.ts for TorchScript)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
        return fmt
    for name, suffixes in FORMATS.items():
        if out.suffix.lower() in suffixes:
            return name
    raise UsageError(f"cannot tell the format from {out.name!r}: give --format onnx or --format torchscript")


def onnx_bytes(model: nn.Module, example: torch.Tensor, metadata: dict[str, str]) -> bytes:
    """Export with torch.onnx (the torch.export-based exporter), a dynamic batch axis, weights and ``metadata``
    (as metadata properties) inside the file."""
    try:
        import onnx  # deferred: an optional extra; checked here so a missing package gets the install hint
        import onnxscript  # noqa: F401
    except ImportError:
        raise CifarlabError(f"ONNX export needs the onnx and onnxscript packages; {INSTALL_HINT}") from None
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                None,
                input_names=["images"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                external_data=False,
            )
    except Exception as exc:  # noqa: BLE001 - the exporter fails in many ways; say so in one line
        raise CifarlabError(f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    if program is None:  # only the legacy (TorchScript-based) exporter returns nothing
        raise CifarlabError("ONNX export failed: the exporter returned no program")
    proto = program.model_proto
    onnx.helper.set_model_props(proto, metadata)
    return proto.SerializeToString()


def torchscript_bytes(model: nn.Module, example: torch.Tensor, metadata: dict[str, str]) -> bytes:
    """Trace to TorchScript (deprecated upstream in favour of torch.export, but still widely loaded), with
    ``metadata`` as the extra file cifarlab.json."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, buf, _extra_files={"cifarlab.json": json.dumps(metadata)})
    return buf.getvalue()


def run_onnx(data: bytes, images: np.ndarray) -> np.ndarray:
    try:
        import onnxruntime as ort
    except ImportError:
        raise CifarlabError(f"checking the ONNX file needs onnxruntime; {INSTALL_HINT}") from None
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": images})[0]


def run_torchscript(data: bytes, images: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
        with torch.no_grad():
            return loaded(torch.from_numpy(images)).numpy()


Exporter = Callable[[nn.Module, torch.Tensor, dict[str, str]], bytes]
EXPORTERS: dict[str, tuple[Exporter, Callable[[bytes, np.ndarray], np.ndarray]]] = {
    "onnx": (onnx_bytes, run_onnx),
    "torchscript": (torchscript_bytes, run_torchscript),
}


def check_count(image_size: int) -> int:
    """How many images the check runs on: 100 up to 64 px, fewer (at least MIN_CHECK_IMAGES) above."""
    return max(MIN_CHECK_IMAGES, min(CHECK_IMAGES, CHECK_PIXELS // (image_size * image_size)))


def check_images(state: dict[str, Any], data_dir: str | None, dataset: str | None = None) -> tuple[np.ndarray, str]:
    """Held-out images of the run's dataset on the [0, 1] scale, or random ones of the run's size when the data
    set is not at hand. CIFAR comes from ``data_dir`` (never a folder the checkpoint names: it may come from
    anyone); an image folder from ``dataset``, else the recorded path, and only if its file list is the one the
    run trained on."""
    from cifarlab.base.errors import DataError
    from cifarlab.data.cifar10 import resolve_data_dir
    from cifarlab.data.loading import reload
    from cifarlab.runs.checkpoint import checkpoint_image_size

    size = checkpoint_image_size(state)
    record = state.get("dataset") or {"kind": "cifar10", "image_size": size}  # older checkpoints: CIFAR-10
    count = check_count(size)
    where = held_out_source(record, data_dir, dataset)
    try:
        images = reload(record, data_dir, dataset).test_images[:count]
        if len(images) < 2 or tuple(images.shape[1:]) != (3, size, size):
            raise DataError(f"{where} gave no held-out images of {size}x{size}")
        source = f"the first {len(images)} {where}"
    except DataError as exc:
        images = torch.randint(
            0, 256, (count, 3, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
        )
        kind = record.get("kind", "cifar10")
        if kind in KIND_NAMES:
            root = resolve_data_dir(data_dir).resolve()
            source = f"{count} random images ({KIND_NAMES[kind]} not found in {root})"
        else:
            source = f"{count} random images (the image folder is not at hand: {str(exc).splitlines()[0]})"
    return images.float().div(255).numpy(), source


def held_out_source(record: dict[str, Any], data_dir: str | None, dataset: str | None) -> str:
    """What the check images are, for the JSON and the message: e.g. 'CIFAR-10 test images in /data'."""
    from cifarlab.data.cifar10 import resolve_data_dir

    kind = record.get("kind", "cifar10")
    if kind in KIND_NAMES:
        return f"{KIND_NAMES[kind]} test images in {resolve_data_dir(data_dir).resolve()}"
    return f"held-out images of {dataset or record.get('path')}"


def export(
    run_or_checkpoint: str | Path,
    out: str | Path,
    fmt: str | None = None,
    data_dir: str | None = None,
    dataset: str | None = None,
) -> dict[str, Any]:
    """Write the exported model and ``out.json``; returns what was written into the JSON. ``data_dir`` is the
    CIFAR folder, ``dataset`` an image folder that has moved since training (the check images come from them)."""
    from cifarlab.base.files import atomic_write
    from cifarlab.runs.checkpoint import load_checkpoint, model_from_checkpoint

    out = Path(out)
    fmt = pick_format(fmt, out)
    state = load_checkpoint(run_or_checkpoint)
    model = Normalized(model_from_checkpoint(state), state["mean"], state["std"]).eval()
    make, run = EXPORTERS[fmt]
    images, source = check_images(state, data_dir, dataset)
    data = make(model, torch.from_numpy(images[:2]), embedded_metadata(state))
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    diff = float(np.abs(run(data, images) - expected).max())
    if not diff <= TOLERANCE:
        raise CifarlabError(
            f"the exported {fmt} model differs from PyTorch by {diff:.2e} (> {TOLERANCE:g}) on "
            f"{source}; nothing was written"
        )
    info = export_record(state, fmt, out, source, diff)
    if out.parent != Path(""):
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CifarlabError(f"cannot create folder {out.parent}: {exc.strerror or exc}") from None
    atomic_write(out, lambda f: f.write(data))
    atomic_write(sidecar(out), lambda f: f.write(json.dumps(info, indent=2) + "\n"), binary=False)
    return info


def crop_advice(state: dict[str, Any]) -> str:
    """How training images were brought to size, when they were not already that size (image folders)."""
    if state.get("dataset", {}).get("kind") != "folder":
        return ""
    return " (as in training: shorter side to that size, then the centre square)"


def sidecar(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def embedded_metadata(state: dict[str, Any]) -> dict[str, str]:
    """What the exported file carries about itself (strings only, as ONNX metadata properties must be)."""
    from cifarlab.runs.checkpoint import checkpoint_image_size

    size = checkpoint_image_size(state)
    return {
        "cifarlab.classes": json.dumps(list(state["classes"])),
        "cifarlab.image_size": str(size),
        "cifarlab.input": f"float32 N x 3 x {size} x {size}, RGB, values in [0, 1]; normalisation inside",
        "cifarlab.model": state["model_name"],
    }


def export_record(state: dict[str, Any], fmt: str, out: Path, source: str, diff: float) -> dict[str, Any]:
    """Everything a user of the exported file needs, without cifarlab."""
    from cifarlab.runs.checkpoint import checkpoint_image_size

    size = checkpoint_image_size(state)
    return {
        "file": out.name,
        "format": fmt,
        "checkpoint": os.path.abspath(state["path"]),
        "model": state["model_name"],
        "epoch": state["epoch"],
        "classes": list(state["classes"]),
        "image_size": size,
        "input": {
            "name": "images",
            "shape": ["N", 3, size, size],
            "dtype": "float32",
            "layout": "NCHW, RGB",
            "range": f"[0, 1]: uint8 pixels divided by 255; resize images to {size}x{size} first{crop_advice(state)}",
        },
        "output": {
            "name": "logits",
            "shape": ["N", len(state["classes"])],
            "meaning": "unnormalised class scores; apply softmax for probabilities",
        },
        "normalization": {
            "mean": state["mean"],
            "std": state["std"],
            "inside_model": True,
            "formula": "(images - mean) / std, per channel, applied by the exported model",
        },
        "check": {
            "images": source,
            "max_abs_logit_diff": diff,
            "tolerance": TOLERANCE,
            "runtime": "onnxruntime (CPU)" if fmt == "onnx" else "torch.jit.load",
        },
    }
