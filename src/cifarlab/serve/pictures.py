"""The pictures the server shows: a run's test images (read again from its dataset, as analyze does, kept for at most
two datasets), each as a PNG (made once, kept in a bounded cache), and a Grad-CAM map laid over its image.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from typing import Any

import numpy as np

from cifarlab.serve.caches import LRU, ByteCache
from cifarlab.serve.store import RunData

THUMBNAIL_BYTES = 64 * 2**20  # PNGs of test images kept in memory, in all
DATASETS_KEPT = 2  # test sets kept in memory (CIFAR-10's is 30 MB)


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 (3, H, W) or (H, W, 3) image as PNG bytes."""
    from PIL import Image

    array = np.ascontiguousarray(image.transpose(1, 2, 0) if image.shape[0] == 3 else image)
    out = io.BytesIO()
    Image.fromarray(array.astype(np.uint8), "RGB").save(out, format="PNG")
    return out.getvalue()


def data_uri(png: bytes) -> str:
    """PNG bytes as a ``data:`` URI (the try-a-photo page shows pictures that are never stored)."""
    return "data:image/png;base64," + base64.b64encode(png).decode()


def heat_colours(values: np.ndarray) -> np.ndarray:
    """A (H, W) map in [0, 1] as (H, W, 3) colours from dark blue through green to yellow (viridis-like)."""
    stops = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=float)
    position = np.clip(values, 0, 1) * (len(stops) - 1)
    low = np.floor(position).astype(int).clip(0, len(stops) - 2)
    weight = (position - low)[..., None]
    return stops[low] * (1 - weight) + stops[low + 1] * weight


def overlay(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """A uint8 (3, H, W) image with a Grad-CAM map (H, W), scaled to its maximum, laid over it half and half."""
    peak = float(cam.max())
    scaled = cam / peak if peak > 0 else cam
    mixed = 0.5 * image.transpose(1, 2, 0).astype(float) + 0.5 * heat_colours(scaled)
    return mixed.clip(0, 255).astype(np.uint8)


def dataset_key(data: RunData) -> str:
    """Which test set a run's images come from: its dataset record (read once with the run) as canonical JSON."""
    return json.dumps(data.dataset, sort_keys=True, default=str)


class TestImages:
    """The test images of each run, read from its dataset record and checked against its saved labels."""

    def __init__(self, data_dir: str | None) -> None:
        self.data_dir = data_dir
        self.sets: LRU[tuple[Any, str | None]] = LRU(DATASETS_KEPT)
        self.pngs = ByteCache(THUMBNAIL_BYTES)
        self.lock = threading.Lock()

    def of(self, data: RunData) -> tuple[Any, str | None]:
        """(uint8 tensor of the run's test images, None) or (None, why they cannot be shown)."""
        from cifarlab.results.analysis import load_test_images

        key = dataset_key(data)
        found = self.sets.get(key)
        if found is None:
            with self.lock:  # one dataset read at a time: a first visit of many pages reads it once
                found = self.sets.get(key)
                if found is None:
                    found = load_test_images(data.entry.path, data.pred, data_dir=self.data_dir)
                    if found[0] is not None:
                        self.sets.put(key, found)
        images, reason = found
        if images is not None and (data.pred.index.max() >= len(images)):
            return None, "the run's test positions lie outside the test set found"
        return images, reason

    def png(self, data: RunData, index: int) -> bytes | None:
        """Test image ``index`` of the run as PNG bytes; None when the images cannot be shown."""
        images, _ = self.of(data)
        if images is None:
            return None
        data.row(index)
        key = (dataset_key(data), index)
        return self.pngs.get_or_make(key, lambda: png_bytes(images[index].numpy()))
