"""The spatial CIFAR-10-C corruptions: the four blurs, the three weather effects (snow, frost, fog) and the
elastic transform, each vectorised over the batch (numpy, scipy.ndimage and torch's CPU convolutions).

Every function here takes uint8 images (N, H, W, 3), a severity 1..5 and a numpy Generator, and returns uint8
images of the same shape; :func:`cifarlab.data.corruptions.corrupt` is the entry point (validation, seeding,
chunking) and its module docstring says where every parameter comes from. Spatial sizes (kernel radii, blur
sigmas, shift distances, snow flake zoom, fog map size, the frost texture) are the generator's 32-pixel values
times ``scale = min(H, W) / 32``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage, signal

CIFAR_SIDE = 32  # the side the generator's parameters were chosen for
FROST_TEXTURE_SEED = 20190506  # the procedural frost "photos" are the same for every call (the original's are files)
FROST_TEXTURES = 5  # the generator picks one of its first five frost photos (np.random.randint(5))
FROST_SHEET = 6  # a frost texture is this many image sides across (the photos, shrunk to 0.2, are ~6x CIFAR's side)


def clip_to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats to uint8 as the generator does: clip, times 255, then truncate (``np.uint8``), not round."""
    return (np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)


def scale_of(images: np.ndarray) -> float:
    """How much larger than CIFAR's 32 pixels the images are (spatial parameters are multiplied by it)."""
    return min(images.shape[1], images.shape[2]) / CIFAR_SIDE


def _to_torch(x: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) numpy to a contiguous float32 (N, C, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(0, 3, 1, 2).contiguous()


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) tensor back to (N, H, W, C) numpy."""
    return t.permute(0, 2, 3, 1).contiguous().numpy()


def _correlate(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Each channel of (N, H, W, C) correlated with one 2-D kernel, the border reflected without repeating the
    edge (``np.pad``'s "reflect": OpenCV's BORDER_REFLECT_101, the default border of ``cv2.filter2D``)."""
    kh, kw = kernel.shape
    pads = ((0, 0), (kh // 2, kh - 1 - kh // 2), (kw // 2, kw - 1 - kw // 2), (0, 0))
    padded = _to_torch(np.pad(x, pads, mode="reflect"))
    channels = x.shape[3]
    weight = torch.from_numpy(kernel.astype(np.float32)).expand(channels, 1, kh, kw).contiguous()
    with torch.no_grad():
        return _to_numpy(F.conv2d(padded, weight, groups=channels))


def _gaussian(x: np.ndarray, sigma: float, mode: str = "nearest") -> np.ndarray:
    """skimage's ``gaussian(x, sigma, multichannel=True)``: the two spatial axes only, truncated at 4 sigma,
    border "nearest" (skimage's default)."""
    return ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode=mode, truncate=4.0)


# /////////////// blurs ///////////////

# (disk radius, sigma of the Gaussian that anti-aliases the disk)
DEFOCUS = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))


def disk_kernel(radius: float, alias_sigma: float, half_alias: int = 1) -> np.ndarray:
    """The generator's defocus kernel: a normalised disk (x^2 + y^2 <= r^2 on the integer grid) smoothed by a
    (2 * half_alias + 1)-tap Gaussian (``cv2.GaussianBlur(disk, (3, 3), alias_sigma)`` at 32 pixels), trimmed to
    where it is non-zero."""
    reach = math.ceil(radius) + half_alias
    grid = np.arange(-reach, reach + 1)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    disk = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    disk /= disk.sum()
    taps = np.arange(-half_alias, half_alias + 1)
    gauss = np.exp(-(taps**2) / (2.0 * alias_sigma**2))
    gauss /= gauss.sum()
    # signal.convolve2d keeps every weight (ndimage.convolve drops those under machine epsilon)
    smooth = signal.convolve2d(disk, np.outer(gauss, gauss), mode="same")
    rows, cols = np.nonzero(smooth)
    return smooth[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def defocus_blur(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Convolution with an anti-aliased disk (the border reflected as OpenCV's default). Deterministic."""
    radius, alias = DEFOCUS[severity - 1]
    scale = scale_of(images)
    kernel = disk_kernel(radius * scale, alias * scale, max(1, round(scale)))
    return clip_to_uint8(_correlate(images / 255.0, kernel))


# (sigma, max_delta, iterations)
GLASS = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))


def _shuffle_pass(x: np.ndarray, delta: int, rng: np.random.Generator) -> None:
    """One pass of the generator's local pixel shuffling, in place, every image at once: the pixels are visited
    from the bottom-right to the top-left (``range(side - delta, delta, -1)`` on both axes) and each takes the
    value of a random neighbour (dx, dy drawn from [-delta, delta), numpy's exclusive upper bound).

    The generator writes ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on numpy views, which copies the neighbour
    into (h, w) and leaves the neighbour as it was (not a swap); that is what CIFAR-10-C's images show, so it is
    what is done here."""
    n, height, width = x.shape[:3]
    everyone = np.arange(n)
    cols = range(width - delta, delta, -1)
    for row in range(height - delta, delta, -1):
        shifts = rng.integers(-delta, delta, size=(len(cols), 2, n))
        for k, col in enumerate(cols):
            dx, dy = shifts[k]
            x[:, row, col] = x[everyone, row + dy, col + dx]


def glass_blur(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur, truncated to uint8, local pixel shuffling, and a second Gaussian blur."""
    sigma, delta, iterations = GLASS[severity - 1]
    scale = scale_of(images)
    sigma, delta = sigma * scale, max(1, round(delta * scale))
    x = (_gaussian(images / 255.0, sigma) * 255).astype(np.uint8)
    for _ in range(iterations):
        _shuffle_pass(x, delta, rng)
    return clip_to_uint8(_gaussian(x / 255.0, sigma))


# (radius, sigma) of ImageMagick's motion blur. These are make_cifar_c.py's values; the list
# [(10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)] is the Tiny ImageNet (64 px) generator's. Not confirmed: which
# ImageMagick release made CIFAR-10-C (kernel and offsets here are MagickCore's MotionBlurImage in 6.8+ and 7;
# edge virtual pixels, its default, are assumed).
MOTION = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))


def motion_taps(radius: float, sigma: float, angles: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ImageMagick's MotionBlurImage kernel, reimplemented: 2 * ceil(radius) + 1 taps along a line at ``angle``
    degrees, weighted by a one-sided Gaussian exp(-i^2 / (2 sigma^2)) (normalised), tap i at the pixel offset
    (ceil(i cos a - 0.5), ceil(i sin a - 0.5)). Returns the weights (K,) and the x and y offsets (N, K)."""
    taps = np.arange(2 * math.ceil(radius) + 1)
    weights = np.exp(-(taps.astype(np.float64) ** 2) / (2.0 * max(sigma, 1e-12) ** 2))
    weights /= weights.sum()
    radians = np.deg2rad(np.asarray(angles, dtype=np.float64))[:, None]
    dx = np.ceil(taps * np.cos(radians) - 0.5).astype(np.intp)
    dy = np.ceil(taps * np.sin(radians) - 0.5).astype(np.intp)
    return weights, dx, dy


def _motion_blur(x: np.ndarray, radius: float, sigma: float, angles: np.ndarray) -> np.ndarray:
    """(N, H, W, C) blurred along each image's own angle; pixels beyond the border repeat the edge (ImageMagick's
    default virtual pixels). Float in, float out, on x's scale."""
    weights, dx, dy = motion_taps(radius, sigma, angles)
    reach = len(weights) - 1
    padded = np.pad(x.astype(np.float32), ((0, 0), (reach, reach), (reach, reach), (0, 0)), mode="edge")
    n, height, width = x.shape[:3]
    which = np.arange(n)[:, None, None]
    rows = np.arange(height)[None, :, None] + reach
    cols = np.arange(width)[None, None, :] + reach
    out = np.zeros(x.shape, dtype=np.float32)
    for k, weight in enumerate(weights):
        out += np.float32(weight) * padded[which, rows + dy[:, k, None, None], cols + dx[:, k, None, None]]
    return out


def motion_blur(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A line blur at a random angle in [-45, 45] degrees per image; rounded to 8 bits, as ImageMagick writes
    its PNG."""
    radius, sigma = MOTION[severity - 1]
    scale = scale_of(images)
    angles = rng.uniform(-45, 45, size=len(images))
    blurred = _motion_blur(images, radius * scale, sigma * scale, angles)
    return np.clip(np.floor(blurred + 0.5), 0, 255).astype(np.uint8)


def zoom_factors(severity: int) -> np.ndarray:
    """The generator's zoom factors, made with np.arange exactly as it does: floating point puts the end value in
    the first list (1.00 ... 1.06, seven factors), the others have 12, 16, 21 and 26."""
    ends = (1.06, 1.11, 1.16, 1.21, 1.26)
    return np.arange(1, ends[severity - 1], 0.01)


def clipped_zoom(t: torch.Tensor, factor: float) -> torch.Tensor:
    """The generator's ``clipped_zoom`` for a batch (N, C, H, W): the centre ceil(side / factor) crop, zoomed by
    ``factor`` with linear interpolation (scipy.ndimage.zoom, order 1, is align_corners=True), centre-cropped back.
    ``factor`` must be at least 1."""
    height, width = t.shape[2], t.shape[3]
    crop_h, crop_w = math.ceil(height / factor), math.ceil(width / factor)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    crop = t[:, :, top : top + crop_h, left : left + crop_w]
    size = (int(round(crop_h * factor)), int(round(crop_w * factor)))
    zoomed = F.interpolate(crop, size=size, mode="bilinear", align_corners=True)
    trim_h, trim_w = (size[0] - height) // 2, (size[1] - width) // 2
    return zoomed[:, :, trim_h : trim_h + height, trim_w : trim_w + width]


def zoom_blur(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """The mean of the image and its zooms by each factor (relative sizes: the same at every side). Deterministic."""
    factors = zoom_factors(severity)
    t = _to_torch(images / 255.0)
    with torch.no_grad():
        total = torch.zeros_like(t)
        for factor in factors:
            total += clipped_zoom(t, float(factor))
        mean = (t + total) / (len(factors) + 1)
    return clip_to_uint8(_to_numpy(mean))


# /////////////// weather ///////////////

# (mean, std of the flake noise, its zoom, threshold, motion radius, motion sigma, weight kept of the image)
SNOW = (
    (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
    (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
    (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
    (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
    (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
)


def _snow_layer(n: int, height: int, width: int, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Flakes (N, H, W, 1) on [0, 1]: thresholded zoomed noise, truncated to 8 bits, motion-blurred at a random
    angle in [-135, -45] degrees and rounded to 8 bits (ImageMagick's PNG)."""
    loc, std, zoom, threshold, radius, sigma, _ = SNOW[severity - 1]
    scale = min(height, width) / CIFAR_SIDE
    noise = rng.normal(loc=loc, scale=std, size=(n, 1, height, width))
    with torch.no_grad():  # below 32 px the zoom is held at 1 (the generator's clipped_zoom cannot shrink)
        layer = _to_numpy(clipped_zoom(torch.from_numpy(noise.astype(np.float32)), max(1.0, zoom * scale)))
    layer[layer < threshold] = 0
    layer = (np.clip(layer, 0, 1) * 255).astype(np.uint8)
    angles = rng.uniform(-135, -45, size=n)
    blurred = _motion_blur(layer, radius * scale, sigma * scale, angles)
    return np.clip(np.floor(blurred + 0.5), 0, 255) / 255.0


def snow(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """The image brightened towards its own grey level, plus the flake layer and the layer turned 180 degrees."""
    keep = SNOW[severity - 1][6]
    x = images.astype(np.float32) / 255.0
    layer = _snow_layer(len(images), images.shape[1], images.shape[2], severity, rng)
    grey = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # cv2.COLOR_RGB2GRAY
    x = keep * x + (1 - keep) * np.maximum(x, grey[..., None] * 1.5 + 0.5)
    return clip_to_uint8(x + layer + np.rot90(layer, k=2, axes=(1, 2)))


# (weight of the image, weight of the frost texture), both on the 0..255 scale
FROST = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))


def _value_noise(rng: np.random.Generator, cells: int, height: int, width: int) -> np.ndarray:
    """Uniform noise on a (cells + 1)^2 lattice, interpolated bilinearly to (height, width)."""
    lattice = torch.from_numpy(rng.random((1, 1, cells + 1, cells + 1), dtype=np.float32))
    return F.interpolate(lattice, size=(height, width), mode="bilinear", align_corners=True)[0, 0].numpy()


def frost_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A procedural ice texture (height, width, 3) uint8: ridged multi-octave value noise (bright veins, like the
    edges of ice crystals, coarse to fine) and a fine grain over an uneven pale haze, tinted blue-white (mean about
    0.55 of full scale). A substitute for the photos of frost that the generator blends; its lattice is relative to
    the texture's size, so it scales with the images."""
    veins = np.zeros((height, width))
    amplitude = 1.0
    for cells in (3, 6, 12, 24, 48):
        ridge = 1.0 - np.abs(2.0 * _value_noise(rng, cells, height, width) - 1.0)
        veins += amplitude * ridge**6
        amplitude *= 0.75
    grain = _value_noise(rng, 4 * max(height, width) // 10, height, width)
    haze = _value_noise(rng, 2, height, width)
    ice = 0.25 + 0.3 * haze + 0.6 * veins / veins.max() + 0.08 * (grain - 0.5)
    tint = np.array([0.84, 0.92, 1.0])
    return (np.clip(ice[..., None] * tint, 0, 1) * 255).astype(np.uint8)


@lru_cache(maxsize=4)
def frost_bank(height: int, width: int) -> np.ndarray:
    """The five procedural frost textures (5, 6 * height, 6 * width, 3) for images of this size, always the same
    (drawn from FROST_TEXTURE_SEED). Read-only."""
    rng = np.random.default_rng([FROST_TEXTURE_SEED, height, width])
    bank = np.stack([frost_texture(rng, FROST_SHEET * height, FROST_SHEET * width) for _ in range(FROST_TEXTURES)])
    bank.setflags(write=False)
    return bank


def frost(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """``clip(a * image + b * frost crop, 0, 255)``: a random crop of a random texture per image (procedural
    textures: see ``SUBSTITUTES`` in cifarlab.data.corruptions)."""
    image_weight, frost_weight = FROST[severity - 1]
    n, height, width = images.shape[:3]
    bank = frost_bank(height, width)
    which = np.asarray(rng.integers(0, FROST_TEXTURES, size=n))[:, None, None]
    top = np.asarray(rng.integers(0, bank.shape[1] - height, size=n))[:, None, None]
    left = np.asarray(rng.integers(0, bank.shape[2] - width, size=n))[:, None, None]
    crops = bank[which, top + np.arange(height)[None, :, None], left + np.arange(width)[None, None, :]]
    mixed = image_weight * images.astype(np.float64) + frost_weight * crops
    return np.clip(mixed, 0, 255).astype(np.uint8)


# (amount of fog, decay of the plasma fractal's roughness per octave)
FOG = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))


def plasma_fractal(rng: np.random.Generator, n: int, size: int, decay: float) -> np.ndarray:
    """n diamond-square height maps (n, size, size) on [0, 1] (``size`` a power of two), each step's noise
    wibble * U(-wibble, wibble) with wibble starting at 100 and divided by ``decay`` per octave, the map wrapping
    around its edges, as the generator's ``plasma_fractal``."""
    heights = np.zeros((n, size, size))
    step, wibble = size, 100.0
    while step >= 2:
        half = step // 2
        corners = heights[:, ::step, ::step]
        square = corners + np.roll(corners, -1, axis=1)
        square = square + np.roll(square, -1, axis=2)
        heights[:, half::step, half::step] = square / 4 + wibble * rng.uniform(-wibble, wibble, square.shape)
        centres, corners = heights[:, half::step, half::step], heights[:, ::step, ::step]
        across = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2)
        heights[:, ::step, half::step] = across / 4 + wibble * rng.uniform(-wibble, wibble, across.shape)
        down = centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1)
        heights[:, half::step, ::step] = down / 4 + wibble * rng.uniform(-wibble, wibble, down.shape)
        step, wibble = half, wibble / decay
    heights -= heights.min(axis=(1, 2), keepdims=True)
    return heights / heights.max(axis=(1, 2), keepdims=True)


def fog(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A plasma fractal (map side: the next power of two at or above the image side, 32 for CIFAR) added to every
    channel, then rescaled by max / (max + amount), max the image's brightest value."""
    amount, decay = FOG[severity - 1]
    n, height, width = images.shape[:3]
    size = 1 << (max(height, width) - 1).bit_length()
    x = images / 255.0
    brightest = x.max(axis=(1, 2, 3), keepdims=True)
    x = x + amount * plasma_fractal(rng, n, size, decay)[:, :height, :width, None]
    return clip_to_uint8(x * brightest / (brightest + amount))


# /////////////// elastic ///////////////

# (alpha, sigma, affine jitter) as fractions of the side (32 * each is the generator's IMSIZE * each)
ELASTIC = ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))


def _fold(index: np.ndarray, length: int, mode: str) -> np.ndarray:
    """Integer indices folded into [0, length): "mirror" (d c b | a b c d | c b a: OpenCV's BORDER_REFLECT_101) or
    "reflect" (c b a | a b c d | d c b: scipy.ndimage's "reflect")."""
    if mode == "mirror":
        period = 2 * (length - 1)
        index = np.mod(index, period)
        return np.where(index >= length, period - index, index)
    period = 2 * length
    index = np.mod(index, period)
    return np.where(index >= length, period - 1 - index, index)


def bilinear_sample(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, mode: str) -> np.ndarray:
    """(N, H, W, C) sampled at (N, H, W) fractional positions by bilinear interpolation, the border extended by
    ``mode`` (see ``_fold``)."""
    n, height, width = x.shape[:3]
    r0, c0 = np.floor(rows), np.floor(cols)
    fr, fc = (rows - r0)[..., None], (cols - c0)[..., None]
    r0, c0 = r0.astype(np.intp), c0.astype(np.intp)
    ra, rb = _fold(r0, height, mode), _fold(r0 + 1, height, mode)
    ca, cb = _fold(c0, width, mode), _fold(c0 + 1, width, mode)
    which = np.arange(n)[:, None, None]
    top = x[which, ra, ca] * (1 - fc) + x[which, ra, cb] * fc
    bottom = x[which, rb, ca] * (1 - fc) + x[which, rb, cb] * fc
    return top * (1 - fr) + bottom * fr


def _random_affine(x: np.ndarray, jitter: float, rng: np.random.Generator) -> np.ndarray:
    """The generator's random affine warp: three points around the centre (at +-side // 3) each moved by
    U(-jitter, jitter) in x and y, the image warped so the points land there (``cv2.warpAffine``, linear,
    BORDER_REFLECT_101)."""
    n, height, width = x.shape[:3]
    cx, cy, arm = width // 2, height // 2, min(height, width) // 3
    source = np.array([[cx + arm, cy + arm], [cx + arm, cy - arm], [cx - arm, cy - arm]], dtype=np.float64)
    target = source + rng.uniform(-jitter, jitter, size=(n, 3, 2))
    # the inverse map, target -> source, is what the warp samples with: [tx, ty, 1] @ inverse = [sx, sy]
    inverse = np.linalg.solve(np.concatenate([target, np.ones((n, 3, 1))], axis=2), np.broadcast_to(source, (n, 3, 2)))
    yy, xx = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    src_x = xx * inverse[:, 0, 0, None, None] + yy * inverse[:, 1, 0, None, None] + inverse[:, 2, 0, None, None]
    src_y = xx * inverse[:, 0, 1, None, None] + yy * inverse[:, 1, 1, None, None] + inverse[:, 2, 1, None, None]
    return bilinear_sample(x, src_y, src_x, "mirror")


def elastic_transform(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A random affine warp, then a smooth random displacement field: uniform noise on [-1, 1] blurred by a Gaussian
    of ``sigma`` (truncated at 3 sigma, border reflected) times ``alpha``, resampled bilinearly (scipy's
    map_coordinates, order 1, mode "reflect"). Two separate interpolations, as the generator does."""
    n, height, width = images.shape[:3]
    alpha, sigma, jitter = (fraction * min(height, width) for fraction in ELASTIC[severity - 1])
    x = _random_affine(images / 255.0, jitter, rng)
    field = rng.uniform(-1, 1, size=(2, n, height, width))
    field = ndimage.gaussian_filter(field, sigma=(0, 0, sigma, sigma), mode="reflect", truncate=3.0) * alpha
    yy, xx = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    return clip_to_uint8(bilinear_sample(x, yy + field[1], xx + field[0], "reflect"))
