"""``cifarlab export``: a trained model as an ONNX or TorchScript file that needs neither cifarlab nor our code.

The normalisation is inside the exported graph, so the file takes plain pixels: a float32 tensor of shape
(N, 3, 32, 32), RGB, channels first, values in [0, 1] (uint8 pixels divided by 255), any batch size N. It
returns logits of shape (N, 10); a softmax turns them into probabilities. A JSON file written beside it
(``FILE.json``) records the class names, the input and output, the mean/std applied inside, and the check
made at export: the exported file is run (ONNX with onnxruntime) on 100 images and its logits must match
PyTorch's to within 1e-4, else nothing is kept.
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

from cifarlab.errors import CifarlabError, UsageError

FORMATS = {"onnx": (".onnx",), "torchscript": (".pt", ".pts", ".ts", ".torchscript")}
TOLERANCE = 1e-4
CHECK_IMAGES = 100
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


def onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """Export with torch.onnx (the torch.export-based exporter), a dynamic batch axis, weights inside the file."""
    try:
        import onnx  # noqa: F401 - checked here so a missing package gets the install hint
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
    return program.model_proto.SerializeToString()


def torchscript_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """Trace to TorchScript (deprecated upstream in favour of torch.export, but still widely loaded)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, buf)
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


EXPORTERS: dict[str, tuple[Callable[[nn.Module, torch.Tensor], bytes], Callable[[bytes, np.ndarray], np.ndarray]]] = {
    "onnx": (onnx_bytes, run_onnx),
    "torchscript": (torchscript_bytes, run_torchscript),
}


def check_images(state: dict[str, Any], data_dir: str | None) -> tuple[np.ndarray, str]:
    """100 CIFAR-10 test images on the [0, 1] scale, or random ones when the data set is not at hand."""
    from cifarlab.data import load_cifar10, resolve_data_dir
    from cifarlab.errors import DataError

    root = resolve_data_dir(data_dir).resolve()  # never the checkpoint's recorded folder: it may come from anyone
    try:
        data = load_cifar10(root, allow_download=False)
        images = data.test_images[:CHECK_IMAGES]
        source = f"the first {len(images)} CIFAR-10 test images in {root}"
    except DataError:
        images = torch.randint(
            0, 256, (CHECK_IMAGES, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
        )
        source = f"{CHECK_IMAGES} random images (CIFAR-10 not found in {root})"
    return images.float().div(255).numpy(), source


def export(
    run_or_checkpoint: str | Path, out: str | Path, fmt: str | None = None, data_dir: str | None = None
) -> dict[str, Any]:
    """Write the exported model and ``out.json``; returns what was written into the JSON."""
    from cifarlab.checkpoint import load_checkpoint, model_from_checkpoint
    from cifarlab.runfiles import atomic_write

    out = Path(out)
    fmt = pick_format(fmt, out)
    state = load_checkpoint(run_or_checkpoint)
    model = Normalized(model_from_checkpoint(state), state["mean"], state["std"]).eval()
    make, run = EXPORTERS[fmt]
    images, source = check_images(state, data_dir)
    data = make(model, torch.from_numpy(images[:2]))
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    diff = float(np.abs(run(data, images) - expected).max())
    if not diff <= TOLERANCE:
        raise CifarlabError(
            f"the exported {fmt} model differs from PyTorch by {diff:.2e} (> {TOLERANCE:g}) on "
            f"{source}; nothing was written"
        )
    info = describe(state, fmt, out, source, diff)
    if out.parent != Path(""):
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CifarlabError(f"cannot create folder {out.parent}: {exc.strerror or exc}") from None
    atomic_write(out, lambda f: f.write(data))
    atomic_write(sidecar(out), lambda f: f.write(json.dumps(info, indent=2) + "\n"), binary=False)
    return info


def sidecar(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def describe(state: dict[str, Any], fmt: str, out: Path, source: str, diff: float) -> dict[str, Any]:
    """Everything a user of the exported file needs, without cifarlab."""
    return {
        "file": out.name,
        "format": fmt,
        "checkpoint": os.path.abspath(state["path"]),
        "model": state["model_name"],
        "epoch": state["epoch"],
        "classes": list(state["classes"]),
        "input": {
            "name": "images",
            "shape": ["N", 3, 32, 32],
            "dtype": "float32",
            "layout": "NCHW, RGB",
            "range": "[0, 1]: uint8 pixels divided by 255; resize images to 32x32 first",
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
