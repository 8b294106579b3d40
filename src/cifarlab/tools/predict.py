"""``cifarlab predict``: classify the user's own images with a trained checkpoint.

Each image is read by :mod:`cifarlab.data.images` (any format Pillow knows, upright by its EXIF orientation,
transparency flattened onto white, RGB, the largest centred square resized to the checkpoint's image size with
Pillow's bilinear filter, in bounded memory) and normalised with the checkpoint's training-split mean and std,
exactly as training normalised its data. A file that cannot be read gets an error line of its own; the others
are still classified. In the plain-text output, characters that are not printable (newlines, escape sequences)
are shown escaped, so a file name cannot forge lines.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cifarlab.base.errors import UsageError, escape
from cifarlab.data.images import image_suffixes, load_image

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
        """One line of plain text: the file name and message with non-printable characters escaped."""
        if self.error is not None:
            return escape(f"{self.file}: error: {self.error}")
        return escape(f"{self.file}: " + ", ".join(f"{c} {p:.3f}" for c, p in self.top))


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
        found = sorted(
            p
            for p in item.rglob("*")
            if p.is_file()
            and p.suffix.lower() in suffixes
            and not any(part.startswith(".") for part in p.relative_to(item).parts)
        )
        items.extend([(p, None) for p in found] if found else [(item, "no image files in this folder")])
    return items


@torch.no_grad()
def classify(
    model: torch.nn.Module,
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    device: torch.device,
    tta: int = 0,
    bf16: bool = False,
) -> torch.Tensor:
    """Softmax probabilities for uint8 (N, 3, S, S) images, normalised as in training, in batches.

    ``tta`` and ``bf16`` are the run's own test-time augmentation level and precision, so predict scores an image
    as evaluate would."""
    from cifarlab.data.batches import Batches
    from cifarlab.engine.infer import infer

    logits, _ = infer(
        model, Batches(images, torch.zeros(len(images), dtype=torch.long), BATCH, mean, std, device=device), tta, bf16
    )
    return logits.softmax(1)


@dataclass
class Predictor:
    """A checkpoint loaded once to classify image files: its model, classes, image size and normalisation, and
    the run's own scoring options (TTA level, precision), so every caller scores an image as ``predict`` does."""

    model: torch.nn.Module
    classes: list[str]
    image_size: int
    mean: torch.Tensor
    std: torch.Tensor
    options: dict[str, Any]
    device: torch.device

    @classmethod
    def load(cls, checkpoint: str | Path, device: str = "cpu") -> Predictor:
        """The checkpoint (a run folder, whose best.pt is used, or a .pt file), checked and ready to classify."""
        from cifarlab.engine.device import pick_device
        from cifarlab.engine.infer import inference_model, scoring_options
        from cifarlab.runs.checkpoint import checkpoint_image_size, load_checkpoint

        state = load_checkpoint(checkpoint)  # checks image_size among the rest
        image_size = checkpoint_image_size(state)
        dev = pick_device(device)
        return cls(
            inference_model(state, dev),
            list(state["classes"]),
            image_size,
            torch.tensor(state["mean"]),
            torch.tensor(state["std"]),
            scoring_options(state["config"]),
            dev,
        )

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (N, C) for uint8 (N, 3, S, S) images at this checkpoint's size."""
        return classify(self.model, images, self.mean, self.std, self.device, **self.options)

    def predict(self, items: Sequence[tuple[Path, str | None]], top_k: int = 3) -> list[Result]:
        """Top-k classes for each (file, problem) of :func:`expand_inputs`, decoded and scored :data:`BATCH` at a
        time; a file that cannot be read gets its error."""
        if top_k < 1:
            raise UsageError(f"--top-k must be at least 1 (got {top_k})")
        k = min(top_k, len(self.classes))
        results: list[Result] = []
        for start in range(0, len(items), BATCH):
            tensors, ok = [], []
            for item, problem in items[start : start + BATCH]:
                if problem is not None:
                    results.append(Result(str(item), error=problem))
                    continue
                try:
                    tensors.append(load_image(item, self.image_size))
                    ok.append(len(results))
                    results.append(Result(str(item)))
                except ValueError as exc:
                    results.append(Result(str(item), error=str(exc)))
            if not tensors:
                continue
            values, indices = self.probabilities(torch.stack(tensors)).topk(k, dim=1)
            for i, vs, js in zip(ok, values.tolist(), indices.tolist(), strict=True):
                results[i].top = [(self.classes[j], float(v)) for v, j in zip(vs, js, strict=True)]
        return results


def predict_files(
    checkpoint: str | Path, inputs: Sequence[str | Path], top_k: int = 3, device: str = "cpu"
) -> list[Result]:
    """Top-k classes for every image among ``inputs`` (files or folders), in order; unreadable ones get errors.

    ``top_k`` is capped at the number of classes (the default 3 on a 2-class model gives both classes). Images
    are decoded, scored and let go :data:`BATCH` at a time, so a folder of any number of images takes the memory
    of one batch."""
    return Predictor.load(checkpoint, device).predict(expand_inputs(inputs), top_k)


def render(results: list[Result], as_json: bool) -> str:
    """One line per file, or a JSON list of objects (``file`` with ``predictions`` or ``error``)."""
    if as_json:
        return json.dumps([r.as_dict() for r in results], indent=2)
    return "\n".join(r.as_line() for r in results)
