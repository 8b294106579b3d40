"""``cifarlab predict``: classify the user's own images with a trained checkpoint.

Each image is read with Pillow (any format it knows), turned upright by its EXIF orientation, flattened onto
white if it has transparency, converted to RGB, cut to its largest centred square, resized to 32x32 with
Pillow's bilinear filter (antialiased when shrinking) and normalised with the checkpoint's training-split
mean and std, exactly as training normalised CIFAR-10. A file that cannot be read gets an error line of its
own; the others are still classified.

Image files are untrusted input, decoded in bounded memory: an image over Pillow's pixel limit
(``PIL.Image.MAX_IMAGE_PIXELS``, about 89 million) is refused before decoding; JPEGs are decoded at a reduced
scale (``draft``) and JPEG 2000 at a reduced resolution level; everything else is shrunk in its own mode
(no full-size float or RGB copies), and colours are converted on the 32x32 result. 16-bit images are scaled
by their mode's range (0..65535), float images are read as 0..1. In the plain-text output, characters that are
not printable (newlines, escape sequences) are shown escaped, so a file name cannot forge lines.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from cifarlab.errors import UsageError, escape

IMAGE_SIZE = 32
RESAMPLE = "BILINEAR"  # Pillow filter used for the resize (named here so the docs and the code agree)
BATCH = 256
STRIP_PIXELS = 1 << 20  # pixels converted at a time while shrinking (4 MB in RGBA)
DECODE_SIDE = 2 * IMAGE_SIZE  # JPEG / JPEG 2000 are decoded no smaller than this (then antialiased down)
JPEG2000_HEAD = 1 << 20  # bytes searched for a JPEG 2000 file's main header
JPEG2000_MAX_SAMPLES = 1 << 26  # samples a JPEG 2000 image may be decoded with (at 4 bytes each: 256 MB)
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # "I" (32-bit) is what Pillow gives many 16-bit files
EXIF_ORIENTATION = 0x0112
TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # EXIF orientation -> the transpose that makes the image upright


class ImageRefused(ValueError):
    """An image that is readable but not decoded, for a reason the message gives (too many pixels, none)."""


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


def image_suffixes() -> set[str]:
    """File extensions Pillow can open (lower case, with the dot), used to pick images out of a folder."""
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
        found = sorted(
            p
            for p in item.rglob("*")
            if p.is_file()
            and p.suffix.lower() in suffixes
            and not any(part.startswith(".") for part in p.relative_to(item).parts)
        )
        items.extend([(p, None) for p in found] if found else [(item, "no image files in this folder")])
    return items


def check_pixel_count(image: Image.Image) -> None:
    """Refuse an image over Pillow's decompression-bomb limit before its pixels are decoded."""
    limit = Image.MAX_IMAGE_PIXELS
    width, height = image.size
    if limit and width * height > limit:
        raise ImageRefused(
            f"image too large to decode safely ({width} x {height} pixels, over Pillow's limit of {limit:,})"
        )


def jpeg2000_levels(path: Path) -> int:
    """Resolution levels a JPEG 2000 file can drop: the decomposition levels in its main header's COD marker
    (0 when there is none to be found, so the image is decoded at full size)."""
    with open(path, "rb") as f:
        head = f.read(JPEG2000_HEAD)
    pos = head.find(b"\xff\x4f\xff\x51")  # start of codestream, then the SIZ marker
    pos = -1 if pos < 0 else pos + 2
    while 0 <= pos and pos + 10 <= len(head) and head[pos] == 0xFF:
        if head[pos + 1] == 0x52:  # COD: length, style, progression order, layers (2 bytes), MCT, levels
            return head[pos + 9]
        if head[pos + 1] in (0x90, 0x93):  # the first tile: the main header has ended
            break
        pos += 2 + int.from_bytes(head[pos + 2 : pos + 4], "big")
    return 0


def jpeg2000_drop(image: Image.Image, path: Path) -> int:
    """Resolution levels to drop when decoding a JPEG 2000 image (each halves it), keeping the short side at least
    DECODE_SIDE, within what the file offers; 0 for other formats. The JPEG 2000 decoder holds 4 bytes per
    sample, so an image still too large at the lowest resolution it offers is refused."""
    if image.format != "JPEG2000":
        return 0
    wanted = max(0, (min(image.size) // DECODE_SIDE).bit_length() - 1)
    drop = min(wanted, jpeg2000_levels(path))
    width, height = ((n + (1 << drop) - 1) >> drop for n in image.size)
    if width * height * len(image.getbands()) > JPEG2000_MAX_SAMPLES:
        raise ImageRefused(
            f"JPEG 2000 image too large to decode safely ({image.width} x {image.height} pixels "
            f"and only {drop} resolution levels to drop)"
        )
    return drop


def decode_reduced(image: ImageFile.ImageFile, jpeg2000_drop: int) -> None:
    """Decode at a reduced scale where the format allows it (JPEG: DCT scaling to a short side of at least
    DECODE_SIDE; JPEG 2000: ``jpeg2000_drop`` resolution levels fewer); other formats decode at full size."""
    image.draft(None, (DECODE_SIDE, DECODE_SIDE))  # a no-op for formats other than JPEG (and MPO)
    if jpeg2000_drop:  # the JPEG 2000 plugin's resolution setting shadows Image.reduce
        image.reduce = jpeg2000_drop  # type: ignore[assignment,method-assign]
    image.load()


def resizable(image: Image.Image) -> Image.Image:
    """A mode Pillow resamples by averaging: palette and 1-bit images as colours, transparency kept as alpha."""
    if image.mode == "P" or image.mode == "PA":
        return image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    if image.mode in ("L", "RGB") and "transparency" in image.info:
        return image.convert("RGBA")
    if image.mode == "1":
        return image.convert("L")
    return image


def upright_size(size: tuple[int, int], method: Image.Transpose | None) -> tuple[int, int]:
    """Width and height after the EXIF transpose."""
    swaps = (
        Image.Transpose.ROTATE_90,
        Image.Transpose.ROTATE_270,
        Image.Transpose.TRANSPOSE,
        Image.Transpose.TRANSVERSE,
    )
    return (size[1], size[0]) if method in swaps else size


def stored_box(
    box: tuple[int, int, int, int], size: tuple[int, int], method: Image.Transpose | None
) -> tuple[int, int, int, int]:
    """A box given in the upright frame, in the stored (pre-transpose) frame of an image of ``size``."""
    w, h = size
    left, top, right, bottom = box
    T = Image.Transpose
    return {
        None: (left, top, right, bottom),
        T.FLIP_LEFT_RIGHT: (w - right, top, w - left, bottom),
        T.FLIP_TOP_BOTTOM: (left, h - bottom, right, h - top),
        T.ROTATE_180: (w - right, h - bottom, w - left, h - top),
        T.TRANSPOSE: (top, left, bottom, right),
        T.ROTATE_90: (w - bottom, left, w - top, right),
        T.ROTATE_270: (top, h - right, bottom, h - left),
        T.TRANSVERSE: (w - bottom, h - right, w - top, h - left),
    }[method]


def center_box(size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The largest centred square: keeps the object's proportions (CIFAR-10 images are square)."""
    w, h = size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return left, top, left + side, top + side


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: transparency onto white, 16-bit greys by 0..65535, float greys by 0..1."""
    if image.mode in SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.rint(np.clip(values, 0, 65535) * (255 / 65535)).astype(np.uint8))
    elif image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        image = Image.fromarray(np.rint(np.clip(values, 0, 1) * 255).astype(np.uint8))
    image = resizable(image)
    if image.mode in ("La", "RGBa"):
        image = image.convert(image.mode[:-1] + "A")
    if image.mode in ("RGBA", "LA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def resize_square(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """``image.crop(box).resize((32, 32))`` with the same result, made in strips of rows so that no full-size
    copy or conversion of the image exists: each strip is cut, made resizable and shrunk across, then the
    32-column result is shrunk down (Pillow's resize also works across first, then down)."""
    resample = getattr(Image.Resampling, RESAMPLE)
    left, top, right, bottom = box
    step = max(1, STRIP_PIXELS // (right - left))
    columns = None
    for y in range(top, bottom, step):
        strip = resizable(image.crop((left, y, right, min(y + step, bottom))))
        strip = strip.resize((IMAGE_SIZE, strip.height), resample)
        if columns is None:
            columns = Image.new(strip.mode, (IMAGE_SIZE, bottom - top))
        columns.paste(strip, (0, y - top))
    assert columns is not None  # the box has at least one row
    return columns.resize((IMAGE_SIZE, IMAGE_SIZE), resample)


def shrink(image: Image.Image) -> Image.Image:
    """The upright centred square of a decoded image as 32x32 RGB: resampled in strips in the image's own mode,
    then turned upright by its EXIF orientation and converted to RGB, both on the small result."""
    orientation = image.getexif().get(EXIF_ORIENTATION)
    method = TRANSPOSES.get(orientation) if isinstance(orientation, int) else None
    small = resize_square(image, stored_box(center_box(upright_size(image.size, method)), image.size, method))
    if method is not None:
        small = small.transpose(method)
    return to_rgb(small)


def open_image(path: Path) -> ImageFile.ImageFile:
    """Open a file (headers only) and refuse it if it has more pixels than Pillow's limit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, with the image's size
        image = Image.open(path)
    try:
        check_pixel_count(image)
    except ImageRefused:
        image.close()
        raise
    return image


def read_image(path: Path) -> Image.Image:
    """Open, check the pixel count, decode (reduced where possible) and shrink one file to 32x32 RGB."""
    with open_image(path) as image:
        decode_reduced(image, jpeg2000_drop(image, path))
        check_pixel_count(image)
        if min(image.size) < 1:
            raise ImageRefused("image has no pixels")
        return shrink(image)


def load_image(path: Path) -> torch.Tensor:
    """One file -> a (3, 32, 32) uint8 tensor. Raises ValueError with a plain message for anything unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # decoders warn about what they skip in a damaged file; the line says it
            small = read_image(path)
    except ImageRefused:
        raise
    except UnidentifiedImageError:
        raise ValueError("not an image (Pillow cannot read this format)") from None
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except IsADirectoryError:
        raise ValueError("is a folder") from None
    except Image.DecompressionBombError:
        raise ValueError(
            f"image too large to decode safely (over Pillow's limit of {Image.MAX_IMAGE_PIXELS:,} pixels)"
        ) from None
    except MemoryError:
        raise ValueError("image too large to decode in the memory available") from None
    except Exception as exc:  # noqa: BLE001 - decoders of untrusted files raise many types (OSError, SyntaxError, ...)
        reason = getattr(exc, "strerror", None) or str(exc).strip() or type(exc).__name__
        raise ValueError(f"damaged or unreadable image ({reason.splitlines()[0]})") from None
    return torch.from_numpy(np.asarray(small, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


@torch.no_grad()
def classify(
    model: torch.nn.Module,
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    device: torch.device,
    tta: int = 0,
) -> torch.Tensor:
    """Softmax probabilities for uint8 (N, 3, 32, 32) images, normalised as in training, in batches.

    ``tta`` is the run's own test-time augmentation level, so predict scores an image as evaluate would."""
    from cifarlab.data import Batches
    from cifarlab.infer import infer

    logits, _ = infer(
        model, Batches(images, torch.zeros(len(images), dtype=torch.long), BATCH, mean, std, device=device), tta
    )
    return logits.softmax(1)


def predict_files(
    checkpoint: str | Path, inputs: Sequence[str | Path], top_k: int = 3, device: str = "cpu"
) -> list[Result]:
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
        probs = classify(
            model,
            torch.stack(tensors),
            torch.tensor(state["mean"]),
            torch.tensor(state["std"]),
            dev,
            tta=state["config"].get("tta", 0),
        )
        values, indices = probs.topk(top_k, dim=1)
        for i, vs, js in zip(ok, values.tolist(), indices.tolist(), strict=True):
            results[i].top = [(classes[j], float(v)) for v, j in zip(vs, js, strict=True)]
    return results


def render(results: list[Result], as_json: bool) -> str:
    """One line per file, or a JSON list of objects (``file`` with ``predictions`` or ``error``)."""
    if as_json:
        return json.dumps([r.as_dict() for r in results], indent=2)
    return "\n".join(r.as_line() for r in results)
