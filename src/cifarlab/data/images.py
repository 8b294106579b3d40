"""Images from files, decoded safely and in bounded memory, and resized: the one decoder of cifarlab.

Each image is read with Pillow (the formats of :data:`IMAGE_FORMATS`, decoded by Pillow itself: never EPS,
which Pillow hands to Ghostscript, or another format that runs an external program), turned upright by its EXIF
orientation, flattened onto white if it has transparency, converted to RGB, cut to its largest centred square and
resized to S x S (the shorter side to S, centre crop) with Pillow's bilinear filter (antialiased when shrinking).
``predict`` reads the user's photos with it, and image folders are decoded with it once into one uint8 tensor.

Image files are untrusted input, decoded in bounded memory: an image over Pillow's pixel limit
(``PIL.Image.MAX_IMAGE_PIXELS``, about 89 million) is refused before decoding; JPEGs are decoded at a reduced
scale (``draft``) and JPEG 2000 at a reduced resolution level; everything else is shrunk in its own mode
(no full-size float or RGB copies), and colours are converted on the S x S result. 16-bit images are scaled
by their mode's range (0..65535), float images are read as 0..1.
"""

from __future__ import annotations

import math
import os
import stat
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from cifarlab.base.errors import DataError

IMAGE_SIZE = 32  # the default side, CIFAR's
MIN_IMAGE_SIZE = 16  # the smallest --image-size
DECODER_VERSION = 1  # part of every cache key: raise it whenever decoded pixels would change
RESAMPLE = "BILINEAR"  # Pillow filter used for the resize (named here so the docs and the code agree)
STRIP_PIXELS = 1 << 20  # pixels converted at a time while shrinking (4 MB in RGBA)
JPEG2000_HEAD = 1 << 20  # bytes searched for a JPEG 2000 file's main header
JPEG2000_MAX_SAMPLES = 1 << 26  # samples a JPEG 2000 image may be decoded with (at 4 bytes each: 256 MB)
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # "I" (32-bit) is what Pillow gives many 16-bit files
EXIF_ORIENTATION = 0x0112
# The formats cifarlab opens: raster formats Pillow decodes in-process. EPS/PS (Ghostscript), PDF, WMF and the
# GRIB/BUFR/HDF5 stubs are left out: a file must never start another program or need a plug-in.
IMAGE_FORMATS = (
    "AVIF",
    "BMP",
    "DIB",
    "CUR",
    "DDS",
    "GIF",
    "ICNS",
    "ICO",
    "JPEG",
    "JPEG2000",
    "PCX",
    "PNG",
    "PPM",
    "QOI",
    "SGI",
    "TGA",
    "TIFF",
    "WEBP",
)  # fmt: skip  (JPEG opens MPO files too)
TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # EXIF orientation -> the transpose that makes the image upright
RESIZE_CHUNK = 1024  # images resized at a time on the tensor (bounds the float copy)
MEMORY_SHARE = 0.5  # a decoded dataset may take at most this share of the machine's physical memory


def decode_side(image_size: int) -> int:
    """JPEG / JPEG 2000 are decoded no smaller than this short side (then antialiased down to ``image_size``)."""
    return 2 * image_size


class ImageRefused(ValueError):
    """An image that is readable but not decoded, for a reason the message gives (too many pixels, none)."""


def image_suffixes() -> set[str]:
    """File extensions of the accepted :data:`IMAGE_FORMATS` (lower case, with the dot), used to pick images out of a
    folder: an ``.eps`` there is "not an image by its extension", like a text file."""
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in IMAGE_FORMATS}


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


def jpeg2000_drop(image: Image.Image, path: Path, image_size: int = IMAGE_SIZE) -> int:
    """Resolution levels to drop when decoding a JPEG 2000 image (each halves it), keeping the short side at least
    twice ``image_size``, within what the file offers; 0 for other formats. The JPEG 2000 decoder holds 4 bytes per
    sample, so an image still too large at the lowest resolution it offers is refused."""
    if image.format != "JPEG2000":
        return 0
    wanted = max(0, (min(image.size) // decode_side(image_size)).bit_length() - 1)
    drop = min(wanted, jpeg2000_levels(path))
    width, height = ((n + (1 << drop) - 1) >> drop for n in image.size)
    if width * height * len(image.getbands()) > JPEG2000_MAX_SAMPLES:
        raise ImageRefused(
            f"JPEG 2000 image too large to decode safely ({image.width} x {image.height} pixels "
            f"and only {drop} resolution levels to drop)"
        )
    return drop


def decode_reduced(image: ImageFile.ImageFile, jpeg2000_drop: int, image_size: int = IMAGE_SIZE) -> None:
    """Decode at a reduced scale where the format allows it (JPEG: DCT scaling to a short side of at least
    twice ``image_size``; JPEG 2000: ``jpeg2000_drop`` resolution levels fewer); other formats decode at full size."""
    side = decode_side(image_size)
    image.draft(None, (side, side))  # a no-op for formats other than JPEG (and MPO)
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


def resize_square(image: Image.Image, box: tuple[int, int, int, int], image_size: int = IMAGE_SIZE) -> Image.Image:
    """``image.crop(box).resize((S, S))`` with the same result, made in strips of rows so that no full-size
    copy or conversion of the image exists: each strip is cut, made resizable and resized across, then the
    S-column result is resized down (Pillow's resize also works across first, then down)."""
    resample = getattr(Image.Resampling, RESAMPLE)
    left, top, right, bottom = box
    step = max(1, STRIP_PIXELS // (right - left))
    columns = None
    for y in range(top, bottom, step):
        strip = resizable(image.crop((left, y, right, min(y + step, bottom))))
        strip = strip.resize((image_size, strip.height), resample)
        if columns is None:
            columns = Image.new(strip.mode, (image_size, bottom - top))
        columns.paste(strip, (0, y - top))
    assert columns is not None  # the box has at least one row
    return columns.resize((image_size, image_size), resample)


def shrink(image: Image.Image, image_size: int = IMAGE_SIZE) -> Image.Image:
    """The upright centred square of a decoded image as S x S RGB (S = ``image_size``): resampled in strips in the
    image's own mode, then turned upright by its EXIF orientation and converted to RGB, both on the small result."""
    orientation = image.getexif().get(EXIF_ORIENTATION)
    method = TRANSPOSES.get(orientation) if isinstance(orientation, int) else None
    box = stored_box(center_box(upright_size(image.size, method)), image.size, method)
    small = resize_square(image, box, image_size)
    if method is not None:
        small = small.transpose(method)
    return to_rgb(small)


def open_image(path: Path) -> ImageFile.ImageFile:
    """Open a regular file (headers only) as one of :data:`IMAGE_FORMATS`, whatever its extension, and refuse it if it
    has more pixels than Pillow's limit. A FIFO or device is refused before it is opened (opening a FIFO waits for
    a writer forever)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None  # a missing file or dangling link: Image.open says which
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise ImageRefused("not a regular file (a FIFO, socket or device)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, with the image's size
        Image.init()  # every plug-in registered (a no-op after the first call): the allow-list names them all
        image = Image.open(path, formats=IMAGE_FORMATS)
    try:
        check_pixel_count(image)
    except ImageRefused:
        image.close()
        raise
    return image


def read_image(path: Path, image_size: int = IMAGE_SIZE) -> Image.Image:
    """Open, check the pixel count, decode (reduced where possible) and resize one file to S x S RGB."""
    with open_image(path) as image:
        decode_reduced(image, jpeg2000_drop(image, path, image_size), image_size)
        check_pixel_count(image)
        if min(image.size) < 1:
            raise ImageRefused("image has no pixels")
        return shrink(image, image_size)


def decode_file(path: Path, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """One file -> a (3, S, S) uint8 array. Raises ValueError with a plain message for anything unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # decoders warn about what they skip in a damaged file; the line says it
            small = read_image(path, image_size)
    except ImageRefused:
        raise
    except UnidentifiedImageError:
        raise ValueError(
            "not an image in an accepted format (PNG, JPEG, BMP, GIF, TIFF, WebP...; never EPS or PDF)"
        ) from None
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
    return np.ascontiguousarray(np.asarray(small, dtype=np.uint8).transpose(2, 0, 1))


def load_image(path: Path, image_size: int = IMAGE_SIZE) -> torch.Tensor:
    """One file -> a (3, S, S) uint8 tensor. Raises ValueError with a plain message for anything unreadable."""
    return torch.from_numpy(decode_file(path, image_size))


def resize_images(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) images resized to (N, 3, S, S): bilinear, antialiased when shrinking, in chunks so the
    float copy stays small. Square images only (as CIFAR's); the same tensor when the size already matches."""
    if images.shape[-1] == image_size and images.shape[-2] == image_size:
        return images
    out = torch.empty((len(images), images.shape[1], image_size, image_size), dtype=torch.uint8)
    for start in range(0, len(images), RESIZE_CHUNK):
        chunk = images[start : start + RESIZE_CHUNK].float()
        resized = torch.nn.functional.interpolate(
            chunk, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
        )
        out[start : start + RESIZE_CHUNK] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def physical_memory() -> int | None:
    """The machine's physical memory in bytes, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits(count: int, image_size: int, what: str) -> None:
    """Refuse ``count`` images of S x S that would take over half the physical memory, naming the size that fits."""
    memory = physical_memory()
    need = count * 3 * image_size * image_size
    if not memory or count <= 0 or need <= MEMORY_SHARE * memory:
        return
    fits = math.isqrt(int(MEMORY_SHARE * memory) // (3 * count))
    advice = f"use --image-size {fits} or less" if fits >= MIN_IMAGE_SIZE else "use fewer images"
    raise DataError(
        f"{what}: {count:,} images at {image_size} x {image_size} would take {need / 2**30:.1f} GiB, over half of "
        f"this machine's {memory / 2**30:.1f} GiB of memory; {advice}"
    )
