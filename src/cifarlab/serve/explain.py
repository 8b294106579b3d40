"""What the server computes with a run's model, on demand: Grad-CAM of a test image (cached in memory and under
``$CIFARLAB_CACHE_DIR/serve``), and the answer for an uploaded photo, which is ``cifarlab predict --json``'s.

Models are kept for at most two checkpoints; one computation runs at a time, so fifty requests cannot hold fifty
copies of a model's activations.
"""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cifarlab.base.errors import CifarlabError, escape
from cifarlab.base.files import read_json
from cifarlab.runs.layout import TEST_METRICS_JSON
from cifarlab.serve.caches import LRU, ByteCache, disk_get_or_make, disk_key
from cifarlab.serve.pictures import overlay, png_bytes
from cifarlab.serve.roots import NotServed, inside
from cifarlab.serve.store import RunData

MODELS_KEPT = 2
CAM_BYTES = 16 * 2**20
UPLOAD_NAME = 255  # characters of an uploaded file's name kept (it is only ever shown, escaped)
CHECKPOINTS = ("best.pt", "last.pt")


@dataclass
class Loaded:
    """A run's checkpoint ready to classify (predict's Predictor) with the layer Grad-CAM looks at."""

    predictor: Any  # tools.predict.Predictor
    layer: Any  # results.gradcam.TargetLayer


@dataclass
class UploadAnswer:
    """An uploaded photo's answer: predict's JSON object, the S x S picture the model received, its Grad-CAM."""

    result: dict[str, Any]
    received_png: bytes | None = None
    gradcam_png: bytes | None = None
    image_size: int = 0


def test_checkpoint(data: RunData) -> str:
    """The checkpoint the test predictions came from (test_metrics.json says which: best.pt or last.pt)."""
    path = data.entry.path / TEST_METRICS_JSON
    name = read_json(path).get("checkpoint", "best.pt") if path.is_file() else "best.pt"
    if name not in CHECKPOINTS:
        raise CifarlabError(
            f"{TEST_METRICS_JSON} names the checkpoint {escape(str(name))[:60]!r}, not best.pt or last.pt"
        )
    return str(name)


class Explainer:
    """Loads models and computes Grad-CAM and upload answers, one at a time."""

    def __init__(self) -> None:
        self.models: LRU[Loaded] = LRU(MODELS_KEPT)
        self.cams = ByteCache(CAM_BYTES)
        self.compute = threading.Lock()

    def loaded(self, data: RunData, name: str) -> Loaded:
        """The run's checkpoint ``name``, loaded once per change of the file."""
        from cifarlab.results.gradcam import find_target_layer
        from cifarlab.tools.predict import Predictor

        path = data.entry.path / name
        if not path.is_file():
            path = data.entry.path / "last.pt"  # as `cifarlab predict --checkpoint RUN` does
        if not path.is_file() or not inside(path, data.entry.root):
            raise NotServed(f"run {escape(data.id)!r} has no checkpoint to use")
        info = path.stat()

        def load() -> Loaded:
            predictor = Predictor.load(path)
            return Loaded(predictor, find_target_layer(predictor.model, predictor.image_size))

        return self.models.get_or_make((str(path), info.st_size, info.st_mtime_ns), load)

    def cam(self, loaded: Loaded, image: Any, target: int) -> np.ndarray:
        """The Grad-CAM map (S, S) of a uint8 (3, S, S) image for class ``target``."""
        import torch

        from cifarlab.data.split import normalize
        from cifarlab.results.gradcam import grad_cam

        p = loaded.predictor
        x = normalize(image.unsqueeze(0), p.mean, p.std).to(p.device)
        with self.compute:
            return grad_cam(p.model, x, torch.tensor([target]), loaded.layer)[0]

    def test_gradcam(self, data: RunData, images: Any, index: int, target: int) -> bytes:
        """Test image ``index`` with the Grad-CAM map of class ``target`` laid over it, as PNG (cached)."""
        data.row(index)
        if not 0 <= target < len(data.classes):
            raise NotServed(f"run {escape(data.id)!r} has no class {target}")
        name = test_checkpoint(data)
        checkpoint = data.entry.path / name
        info = checkpoint.stat() if checkpoint.is_file() else None
        key = disk_key(str(data.entry.path), name, info and (info.st_size, info.st_mtime_ns), index, target)

        def make() -> bytes:
            loaded = self.loaded(data, name)
            image = images[index]
            if loaded.predictor.image_size != image.shape[-1]:
                raise CifarlabError("the checkpoint was trained at another image size than the test images")
            return png_bytes(overlay(image.numpy(), self.cam(loaded, image, target)))

        return self.cams.get_or_make(key, lambda: disk_get_or_make(key, make))

    def upload(self, data: RunData, filename: str, content: bytes, top_k: int = 3) -> UploadAnswer:
        """Classify an uploaded file exactly as ``cifarlab predict --checkpoint RUN --json FILE`` does."""
        from cifarlab.data.images import load_image

        loaded = self.loaded(data, "best.pt")
        name = filename[:UPLOAD_NAME] or "upload"
        with tempfile.TemporaryDirectory(prefix="cifarlab-upload-") as tmp:
            path = Path(tmp) / "upload"
            path.write_bytes(content)
            with self.compute:
                result = loaded.predictor.predict([(path, None)], top_k)[0]
            result.file = name
            answer = UploadAnswer(result.as_dict(), image_size=loaded.predictor.image_size)
            if result.error is not None:
                return answer
            image = load_image(path, loaded.predictor.image_size)
        answer.received_png = png_bytes(image.numpy())
        top = loaded.predictor.classes.index(result.top[0][0])
        answer.gradcam_png = png_bytes(overlay(image.numpy(), self.cam(loaded, image, top)))
        return answer
