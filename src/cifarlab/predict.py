"""``cifarlab predict``: classify the user's own images with a trained checkpoint.

Each image is read with Pillow (any format it knows), turned upright by its EXIF orientation, flattened onto
white if it has transparency, converted to RGB, cut to its largest centred square, resized to 32x32 with
Pillow's bilinear filter (antialiased when shrinking) and normalised with the checkpoint's training-split
mean and std, exactly as training normalised CIFAR-10. A file that cannot be read gets an error line of its
own; the others are still classified.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from cifarlab.errors import UsageError

IMAGE_SIZE = 32
RESAMPLE = "BILINEAR"  # Pillow filter used for the resize (named here so the docs and the code agree)
BATCH = 256


@dataclass
class Result:
    """One input file: its top-k (class, probability) pairs, or the reason it could not be classified."""

    file: str
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        return {"file": self.file, "predictions": [{"class": c, "probability": p} for c, p in self.top]}

    def as_line(self) -> str:
        if self.error is not None:
            return f"{self.file}: error: {self.error}"
        return f"{self.file}: " + ", ".join(f"{c} {p:.3f}" for c, p in self.top)


def image_suffixes() -> set[str]:
    """File extensions Pillow can open (lower case, with the dot), used to pick images out of a folder."""
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


def expand_inputs(inputs: Sequence[str | Path]) -> list[tuple[Path, str | None]]:
    """(path, None) for each file as given; a folder becomes its image files (by extension, recursively,
    sorted, hidden ones skipped), or (folder, message) when it holds none, so it is reported like a bad file.
    """
    suffixes = image_suffixes()
    items: list[tuple[Path, str | None]] = []
    for item in map(Path, inputs):
        if not item.is_dir():
            items.append((item, None))
            continue
        found = sorted(p for p in item.rglob("*")
                       if p.is_file() and p.suffix.lower() in suffixes
                       and not any(part.startswith(".") for part in p.relative_to(item).parts))
        items.extend([(p, None) for p in found] if found else [(item, "no image files in this folder")])
    return items


def to_rgb(image: Any) -> Any:
    """Any Pillow mode to RGB: transparency onto white, 16-bit and float greys scaled to 8 bits."""
    from PIL import Image

    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float64)
        scale = 257.0 if values.max(initial=0) > 255 else 1.0
        image = Image.fromarray(np.clip(values / scale, 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def center_square(image: Any) -> Any:
    """The largest centred square: keeps the object's proportions (CIFAR-10 images are square)."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


def load_image(path: Path) -> torch.Tensor:
    """One file -> a (3, 32, 32) uint8 tensor. Raises ValueError with a plain message for anything unreadable."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            image.load()
            image = to_rgb(image)
    except UnidentifiedImageError:
        raise ValueError("not an image (Pillow cannot read this format)") from None
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except IsADirectoryError:
        raise ValueError("is a folder") from None
    except Image.DecompressionBombError:
        raise ValueError("image too large to decode safely") from None
    except Exception as exc:  # noqa: BLE001 - decoders of untrusted files raise many types (OSError, SyntaxError, ...)
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ValueError(f"damaged or unreadable image ({reason})") from None
    if min(image.size) < 1:
        raise ValueError("image has no pixels")
    small = center_square(image).resize((IMAGE_SIZE, IMAGE_SIZE), getattr(Image.Resampling, RESAMPLE))
    return torch.from_numpy(np.asarray(small, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


@torch.no_grad()
def classify(model: torch.nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
             device: torch.device, tta: int = 0) -> torch.Tensor:
    """Softmax probabilities for uint8 (N, 3, 32, 32) images, normalised as in training, in batches.

    ``tta`` is the run's own test-time augmentation level, so predict scores an image as evaluate would."""
    from cifarlab.data import Batches
    from cifarlab.infer import infer

    logits, _ = infer(model, Batches(images, torch.zeros(len(images), dtype=torch.long), BATCH, mean, std,
                                     device=device), tta)
    return logits.softmax(1)


def predict_files(checkpoint: str | Path, inputs: Sequence[str | Path], top_k: int = 3,
                  device: str = "cpu") -> list[Result]:
    """Top-k classes for every image among ``inputs`` (files or folders), in order; unreadable ones get errors."""
    from cifarlab.checkpoint import load_checkpoint
    from cifarlab.device import pick_device
    from cifarlab.infer import inference_model

    state = load_checkpoint(checkpoint)
    classes = list(state["classes"])
    if not 1 <= top_k <= len(classes):
        raise UsageError(f"--top-k must be between 1 and {len(classes)} (got {top_k})")
    dev = pick_device(device)
    model = inference_model(state, dev)
    results, tensors, ok = [], [], []
    for item, problem in expand_inputs(inputs):
        if problem is not None:
            results.append(Result(str(item), error=problem))
            continue
        try:
            tensors.append(load_image(item))
            ok.append(len(results))
            results.append(Result(str(item)))
        except ValueError as exc:
            results.append(Result(str(item), error=str(exc)))
    if tensors:
        probs = classify(model, torch.stack(tensors), torch.tensor(state["mean"]), torch.tensor(state["std"]), dev,
                         tta=state["config"].get("tta", 0))
        values, indices = probs.topk(top_k, dim=1)
        for i, vs, js in zip(ok, values.tolist(), indices.tolist()):
            results[i].top = [(classes[j], float(v)) for v, j in zip(vs, js)]
    return results


def render(results: list[Result], as_json: bool) -> str:
    """One line per file, or a JSON list of objects (``file`` with ``predictions`` or ``error``)."""
    if as_json:
        return json.dumps([r.as_dict() for r in results], indent=2)
    return "\n".join(r.as_line() for r in results)
