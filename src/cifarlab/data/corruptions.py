"""The 15 CIFAR-10-C corruptions at five severities: ``corrupt(images, name, severity, seed)``.

CIFAR-10-C is Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations" (ICLR 2019). This is an independent numpy / scipy / Pillow / torch (CPU) implementation of its
generator: no ImageMagick, OpenCV or scikit-image. Images are uint8 (N, H, W, 3), channels last like CIFAR-10-C's
``.npy`` files, and come back uint8 of the same shape, truncated as the generator does (``np.uint8`` of the
clipped float, not rounded).

Where the parameters come from: the CIFAR-10 generator, ``ImageNet-C/create_c/make_cifar_c.py`` in
github.com/hendrycks/robustness (read at commit ca360085d578), checked against a second published copy of the same
script (LINs-lab/FedRC, ``create_c/make_cifar_c.py``): every list below is as written there, for 32 x 32 images.

- gaussian_noise: x + N(0, sigma), sigma [.04, .06, .08, .09, .10] on [0, 1] pixels, clipped;
- shot_noise: Poisson(x * lam) / lam, lam [500, 250, 100, 75, 50];
- impulse_noise: salt and pepper, amount [.01, .02, .03, .05, .07] (each channel value, salt or pepper at even
  odds; the generator calls skimage's ``random_noise(mode="s&p")``, whose draws this follows as of skimage 0.14+;
  the exact skimage version it ran with is not recorded);
- defocus_blur: disk (radius, anti-alias sigma) [(.3, .4), (.4, .5), (.5, .6), (1, .2), (1.5, .1)];
- glass_blur: (sigma, max_delta, iterations) [(.05,1,1), (.25,1,1), (.4,1,1), (.25,1,2), (.4,1,2)];
- motion_blur: ImageMagick's motion blur (radius, sigma) [(6,1), (6,1.5), (6,2), (8,2), (9,2.5)], angle
  U(-45, 45), reimplemented as a line kernel (the list (10,1) ... (12,3) is the Tiny ImageNet generator's);
- zoom_blur: zoom factors np.arange(1, e, 0.01), e [1.06, 1.11, 1.16, 1.21, 1.26];
- snow, frost, fog: the generator's tuples, in ``corruptions_spatial`` (SNOW, FROST, FOG: fog [(.2,3), (.5,3),
  (.75,2.5), (1,2), (1.5,1.75)]);
- brightness: V + c in HSV, c [.05, .1, .15, .2, .3], clipped;
- contrast: (x - mean) * c + mean, c [.75, .5, .4, .3, .15], the mean per image per channel;
- elastic_transform: (alpha, sigma, affine jitter) = 32 * [(0, 0, .08), (.05, .2, .07), (.08, .06, .06),
  (.1, .04, .05), (.1, .03, .03)];
- pixelate: Pillow BOX down to int(32 * c), then BOX back up, c [.95, .9, .85, .75, .65];
- jpeg_compression: Pillow JPEG at quality [80, 65, 58, 50, 40], decoded in memory.

What is not the original: frost blends a procedural ice texture (``SUBSTITUTES``), because the original blends
photographs that are not part of this package; motion blur (and the snow layer's) is a reimplementation of
ImageMagick's MotionBlurImage (half-Gaussian line kernel, edge pixels repeated, rounded to 8 bits); the affine
warp of the elastic transform interpolates exactly where OpenCV uses 1/32-pixel fixed point. Random draws are
numpy's, so no image is bit-identical to the published set; the distributions are the generator's.

Other sides than 32: spatial parameters (kernel radii and blur sigmas, glass shuffling distance, motion radius,
elastic alpha / sigma / jitter, snow flake zoom and blur, the fog map size (the next power of two at or above the
side), the frost texture) are multiplied by ``min(H, W) / 32``; pixelate's factors and zoom blur's factors are
relative already. Images must be at least 8 pixels a side.

Randomness: one ``np.random.default_rng`` seeded from (seed, the name, the severity), never the global RNG; the
same call gives the same array. Images are processed ``CHUNK`` at a time (memory), so a result depends on the
chunk size too, which is fixed.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from typing import Any, TypeGuard

import numpy as np
from PIL import Image

from cifarlab.data.corruptions_spatial import (
    clip_to_uint8,
    defocus_blur,
    elastic_transform,
    fog,
    frost,
    glass_blur,
    motion_blur,
    snow,
    zoom_blur,
)

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
# What differs in kind from the original generator, for a caller to write beside its results.
SUBSTITUTES: dict[str, str] = {"frost": "procedural ice texture (the original blends photos)"}
MIN_SIDE = 8
CHUNK = 2500  # images corrupted at a time (a few float64 copies of 2,500 CIFAR images: ~60 MB each)

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def frost_is_procedural() -> bool:
    """True: frost blends a procedural ice texture, not the original's photos (see ``SUBSTITUTES``)."""
    return "frost" in SUBSTITUTES


# /////////////// noise ///////////////

GAUSSIAN = (0.04, 0.06, 0.08, 0.09, 0.10)
SHOT = (500, 250, 100, 75, 50)
IMPULSE = (0.01, 0.02, 0.03, 0.05, 0.07)


def gaussian_noise(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise of standard deviation sigma on [0, 1] pixels, clipped."""
    x = images / 255.0
    return clip_to_uint8(x + rng.normal(scale=GAUSSIAN[severity - 1], size=x.shape))


def shot_noise(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Poisson noise: each value is Poisson(x * lam) / lam (fewer photons, more noise, as lam falls)."""
    lam = SHOT[severity - 1]
    return clip_to_uint8(rng.poisson(images / 255.0 * lam) / lam)


def impulse_noise(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper: each channel value is replaced with probability ``amount``, by 1 or 0 at even odds."""
    amount = IMPULSE[severity - 1]
    flipped = rng.random(images.shape) < amount
    salt = rng.random(images.shape) < 0.5
    return clip_to_uint8(np.where(flipped, salt.astype(np.float64), images / 255.0))


# /////////////// colour ///////////////

BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)
CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """RGB on [0, 1] (..., 3) to HSV on [0, 1] (skimage's convention: hue / 6 mod 1, hue and saturation 0 for
    greys, saturation 0 for black)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = rgb.max(axis=-1)
    delta = value - rgb.min(axis=-1)
    safe = np.where(delta > 0, delta, 1.0)
    hue = np.select(
        [b == value, g == value],  # skimage assigns red, then green, then blue: the last match wins
        [4.0 + (r - g) / safe, 2.0 + (b - r) / safe],
        (g - b) / safe,
    )
    hue = np.where(delta > 0, (hue / 6.0) % 1.0, 0.0)
    saturation = np.where(value > 0, delta / np.where(value > 0, value, 1.0), 0.0)
    return np.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """HSV on [0, 1] (..., 3) back to RGB on [0, 1]: the six sectors of the hue hexagon."""
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    sector = np.floor(hue * 6.0)
    f = hue * 6.0 - sector
    sector = sector.astype(np.intp) % 6
    p = value * (1.0 - saturation)
    q = value * (1.0 - f * saturation)
    t = value * (1.0 - (1.0 - f) * saturation)
    sectors = [sector == k for k in range(6)]
    red = np.select(sectors, [value, q, p, p, t, value])
    green = np.select(sectors, [t, value, value, q, p, p])
    blue = np.select(sectors, [p, p, t, value, value, q])
    return np.stack([red, green, blue], axis=-1)


def brightness(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """V + c in HSV, V clipped to [0, 1], back to RGB. Deterministic."""
    hsv = rgb_to_hsv(images / 255.0)
    hsv[..., 2] = np.clip(hsv[..., 2] + BRIGHTNESS[severity - 1], 0.0, 1.0)
    return clip_to_uint8(hsv_to_rgb(hsv))


def contrast(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Each channel pulled towards its own mean over the image: (x - mean) * c + mean. Deterministic."""
    x = images / 255.0
    means = x.mean(axis=(1, 2), keepdims=True)
    return clip_to_uint8((x - means) * CONTRAST[severity - 1] + means)


# /////////////// digital ///////////////

PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)
JPEG_QUALITY = (80, 65, 58, 50, 40)


def pixelate(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Pillow BOX resize to int(side * c), then BOX back to the side (Pillow per image: its fixed-point filter is
    the reference). Deterministic."""
    height, width = images.shape[1:3]
    factor = PIXELATE[severity - 1]
    small = (int(width * factor), int(height * factor))
    out = np.empty_like(images)
    for i, image in enumerate(images):
        shrunk = Image.fromarray(image).resize(small, Image.Resampling.BOX)
        out[i] = np.asarray(shrunk.resize((width, height), Image.Resampling.BOX))
    return out


def jpeg_compression(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A Pillow JPEG encode at the quality (Pillow's defaults otherwise: 4:2:0 chroma) and decode, in memory.
    Deterministic."""
    quality = JPEG_QUALITY[severity - 1]
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            out[i] = np.asarray(decoded.convert("RGB"))
    return out


REGISTRY: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "frost": frost,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}


def _is_int(value: object) -> TypeGuard[int | np.integer[Any]]:
    """A Python or numpy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check(images: object, name: object, severity: object, seed: object) -> None:
    """Raise ValueError, in one line, for anything ``corrupt`` cannot take."""
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"unknown corruption {name!r}; valid names: {', '.join(CORRUPTIONS)}")
    if not _is_int(severity) or int(severity) not in SEVERITIES:
        raise ValueError(f"severity must be one of {', '.join(map(str, SEVERITIES))}, not {severity!r}")
    if not _is_int(seed) or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"images must be a uint8 array (N, H, W, 3), not {got}")
    if min(images.shape[1:3]) < MIN_SIDE:
        raise ValueError(f"images must be at least {MIN_SIDE} pixels a side, not {images.shape[1]}x{images.shape[2]}")


def corrupt(images: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """``images`` (uint8, N x H x W x 3) with the corruption ``name`` (one of ``CORRUPTIONS``) at ``severity``
    (1..5) applied: uint8 of the same shape, the same for the same seed. A bad name, severity, seed or array
    raises ValueError."""
    _check(images, name, severity, seed)
    rng = np.random.default_rng([int(seed), zlib.crc32(name.encode()), int(severity)])
    apply = REGISTRY[name]
    out = np.empty_like(images)
    for start in range(0, len(images), CHUNK):
        out[start : start + CHUNK] = apply(images[start : start + CHUNK], int(severity), rng)
    return out
