"""AugMix (Hendrycks et al., ICLR 2020) as batched tensor operations: mixtures of random augmentation chains.

Each image gets ``width`` chains of ``depth`` operations (a random 1-3 per chain when ``depth`` is -1); the chains'
results are mixed with Dirichlet(1, ..., 1) weights, and the mixture with the image itself by m ~ Beta(1, 1), as
in the paper. The operations are the paper's CIFAR set, which leaves out every operation that resembles a test
corruption of CIFAR-10-C (contrast, colour, brightness, sharpness; no noise, blur, weather, JPEG, pixelation or
elastic warps either), so a robustness score measured on CIFAR-10-C is not a leak.

Every random number comes from the caller's ``torch.Generator`` (on the CPU), so batches stay seeded. Each image
draws its own operation, magnitude and sign at every step of every chain, as in the paper (not one operation for
the whole batch); all chains of a batch run as one batch of images, sorted by operation at each step, so a step
costs one call per pointwise operation, one ``grid_sample`` for all rotations and shears and one gather for all
shifts. Chains work in uint8 as the paper's PIL operations do, with PIL's arithmetic (equalize and autocontrast
give PIL's values exactly; rotations and shears round to the nearest value where PIL truncates); the mixture is
float32 in [0, 255].
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cifarlab.config.train_config import TrainConfig

# The operations, pointwise ones first: an operation's code is its index in OPS; codes from GEOMETRIC_FROM on move
# pixels (rotate and shears by grid_sample, translations by a gather).
POINTWISE = ("autocontrast", "equalize", "posterize", "solarize")
GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
OPS = POINTWISE + GEOMETRIC
GEOMETRIC_FROM = len(POINTWISE)
MAX_RANDOM_DEPTH = 3  # depth -1: each chain takes 1 to 3 operations


@dataclass(frozen=True)
class AugMix:
    """The mixture's settings (TrainConfig's augmix_* fields). ``views`` 2: two independent mixtures of each image,
    yielded after the clean image for the Jensen-Shannon consistency loss."""

    width: int = 3
    depth: int = -1
    severity: int = 3
    views: int = 1


def augmix_from(config: TrainConfig) -> AugMix | None:
    """The AugMix settings of a TrainConfig; None when ``augmix`` is off (its batches draw no random numbers)."""
    if not config.augmix:
        return None
    views = 2 if config.augmix_jsd > 0 else 1
    return AugMix(config.augmix_width, config.augmix_depth, config.augmix_severity, views)


def to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """CPU values on ``device`` (through pinned memory to a GPU, without waiting), as batches.send does."""
    if device.type == "cuda":
        return values.pin_memory().to(device, non_blocking=True)
    return values.to(device)


# --- pointwise operations (uint8 in, uint8 out; per-image parameters) -----------------------------------------------


def per_image(values: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """One value per image, shaped to broadcast over (N, C, H, W) and on the images' device."""
    return to_device(values, images.device).view(-1, 1, 1, 1)


def solarize(images: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Invert every value at or above the image's threshold (PIL's ImageOps.solarize)."""
    t = per_image(threshold.to(torch.int16), images)
    return torch.where(images.to(torch.int16) < t, images, 255 - images)


def posterize(images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the top ``bits`` bits of every value (PIL's ImageOps.posterize)."""
    mask = (255 << (8 - bits.long())) & 255
    return images & per_image(mask.to(torch.uint8), images)


def apply_lut(images: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Each channel of each image through its own 256-entry look-up table ``lut`` (N * C, 256)."""
    n, c, h, w = images.shape
    return lut.gather(1, images.reshape(n * c, h * w).long()).to(torch.uint8).view(n, c, h, w)


def autocontrast(images: torch.Tensor) -> torch.Tensor:
    """Stretch each channel of each image so its darkest value becomes 0 and its lightest 255 (PIL's
    ImageOps.autocontrast: its look-up table in the same float64 arithmetic, truncated); flat channels stay."""
    n, c, _, _ = images.shape
    lo = images.amin(dim=(2, 3)).double().view(n * c, 1)
    hi = images.amax(dim=(2, 3)).double().view(n * c, 1)
    flat = hi <= lo
    scale = 255.0 / torch.where(flat, torch.ones_like(hi), hi - lo)
    values = torch.arange(256, dtype=torch.float64, device=images.device)
    lut = torch.where(flat, values, (values * scale + (-lo * scale)).trunc().clamp(0, 255))
    return apply_lut(images, lut.to(torch.uint8))


def equalize(images: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation of each channel of each image, exactly as PIL's ImageOps.equalize computes it: a
    256-bin histogram per channel (scatter_add), then the look-up table from its cumulative sum."""
    n, c, h, w = images.shape
    values = images.reshape(n * c, h * w).long()
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=images.device)
    hist.scatter_add_(1, values, torch.ones_like(values))
    top = hist.gather(1, values.amax(1, keepdim=True))  # count of the lightest value present
    step = (h * w - top) // 255
    before = hist.cumsum(1) - hist  # pixels darker than each value
    lut = ((step // 2 + before) // step.clamp(min=1)).clamp(max=255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=images.device))
    return lut.gather(1, values).to(torch.uint8).view(n, c, h, w)


# --- geometric operations: one affine warp, or one gather, of all the rows that take them -----------------------------


def pixel_matrices(kind: torch.Tensor, amount: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(K, 2, 3) float64 maps from output to input pixel coordinates, as PIL's ``transform(AFFINE)`` takes them
    (continuous coordinates, pixel centres at +0.5). ``kind`` indexes GEOMETRIC; ``amount`` is the rotation in
    degrees (counter-clockwise about the centre, as ``Image.rotate``), the shear factor or the shift in pixels."""
    amount = amount.double()
    zero = torch.zeros_like(amount)
    angle = torch.where(kind == 0, -amount * math.pi / 180, zero)
    cos, sin = torch.cos(angle), torch.sin(angle)
    a, b, d, e = cos, sin, -sin, cos
    b = torch.where(kind == 1, amount, b)
    d = torch.where(kind == 2, amount, d)
    cx, cy = w / 2, h / 2
    c = torch.where(kind == 0, cx - a * cx - b * cy, torch.where(kind == 3, amount, zero))
    f = torch.where(kind == 0, cy - d * cx - e * cy, torch.where(kind == 4, amount, zero))
    return torch.stack([a, b, c, d, e, f], 1).view(-1, 2, 3)


def normalised_theta(pixel: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pixel-coordinate maps as ``affine_grid`` thetas (coordinates in [-1, 1], align_corners=False)."""
    a, b, c = pixel[:, 0, 0], pixel[:, 0, 1], pixel[:, 0, 2]
    d, e, f = pixel[:, 1, 0], pixel[:, 1, 1], pixel[:, 1, 2]
    row0 = torch.stack([a, b * h / w, a + b * h / w + 2 * c / w - 1], 1)
    row1 = torch.stack([d * w / h, e, d * w / h + e + 2 * f / h - 1], 1)
    return torch.stack([row0, row1], 1).float()


def sample_grid(theta: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``affine_grid(theta, align_corners=False)`` computed as a row term plus a column term (cheaper on a CPU),
    and the mask of sample points that fall inside the input image."""
    u = (torch.arange(w, device=theta.device, dtype=theta.dtype) * 2 + 1) / w - 1  # pixel centres, [-1, 1]
    v = (torch.arange(h, device=theta.device, dtype=theta.dtype) * 2 + 1) / h - 1
    grid = torch.empty(len(theta), h, w, 2, device=theta.device, dtype=theta.dtype)
    for i in range(2):  # x, then y, of every sample point
        by_row = (theta[:, i, 1, None] * v + theta[:, i, 2, None])[:, :, None]  # (N, H, 1)
        torch.add(by_row, theta[:, i, 0, None, None] * u, out=grid[..., i])
    return grid, grid.abs().amax(-1) <= 1


def warp(images: torch.Tensor, pixel: torch.Tensor) -> torch.Tensor:
    """Each image resampled through its pixel map (bilinear, edge pixels repeated for sample points inside the
    image, black outside it, as PIL does), rounded back to uint8."""
    n, c, h, w = images.shape
    grid, inside = sample_grid(to_device(normalised_theta(pixel, h, w), images.device), h, w)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.mul_(inside[:, None]).round_().clamp_(0, 255).to(torch.uint8)


def shift(images: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Whole-pixel translations (what ``warp`` gives for them, as one gather): output pixel (y, x) is input pixel
    (y + dy, x + dx), black where that lies outside the image. ``dx`` and ``dy``: (N,) integer CPU tensors."""
    n, c, h, w = images.shape
    rows = dy.long()[:, None] + torch.arange(h)  # (N, H)
    cols = dx.long()[:, None] + torch.arange(w)  # (N, W)
    valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    flat = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]
    flat = to_device(flat.view(n, 1, h * w), images.device)
    moved = images.reshape(n, c, h * w).gather(2, flat.expand(n, c, h * w))
    return moved.mul_(to_device(valid.view(n, 1, h * w), images.device)).view(n, c, h, w)


# --- the chains and the mixture -------------------------------------------------------------------------------------


def magnitudes(op: torch.Tensor, level: torch.Tensor, sign: torch.Tensor, side: int) -> torch.Tensor:
    """Each operation's parameter from its level in [0.1, severity), as the paper's code maps them: posterize keeps
    4 - int(level * 4 / 10) bits, solarize's threshold is 256 - int(level * 25.6), rotations are int(level * 3)
    degrees, shears level * 0.03, shifts int(level * side / 30) pixels; geometric ones take the random sign."""
    table = {
        "posterize": 4 - (level * 4 / 10).floor(),
        "solarize": 256 - (level * 256 / 10).floor(),
        "rotate": (level * 30 / 10).floor(),
        "shear_x": level * 0.3 / 10,
        "shear_y": level * 0.3 / 10,
        "translate_x": (level * side / 3 / 10).floor(),
        "translate_y": (level * side / 3 / 10).floor(),
    }
    out = torch.zeros_like(level)
    for name, value in table.items():
        out = torch.where(op == OPS.index(name), value, out)
    return torch.where(op >= GEOMETRIC_FROM, out * sign, out)


POINTWISE_FUNCTIONS = {
    "autocontrast": lambda x, _: autocontrast(x),
    "equalize": lambda x, _: equalize(x),
    "posterize": lambda x, p: posterize(x, p.long()),
    "solarize": lambda x, p: solarize(x, p.long()),
}
WARPS = (OPS.index("rotate"), OPS.index("shear_y"))  # first and last code warped by grid_sample
SHIFTS = (OPS.index("translate_x"), OPS.index("translate_y"))  # whole-pixel shifts, one gather


def apply_sorted(images: torch.Tensor, op: torch.Tensor, amount: torch.Tensor) -> None:
    """One step of every chain, in place, on images sorted by operation: row i gets ``op[i]`` (-1: none) with
    parameter ``amount[i]`` (CPU tensors). Each operation present is one call on its contiguous slice."""
    counts = torch.bincount(op + 1, minlength=len(OPS) + 1).tolist()
    starts = [0, *itertools.accumulate(counts)]  # rows of code k: starts[k + 1] to starts[k + 2]

    def rows(first: int, last: int) -> slice:
        return slice(starts[first + 1], starts[last + 2])

    for code, name in enumerate(POINTWISE):
        part = rows(code, code)
        if part.stop > part.start:
            images[part] = POINTWISE_FUNCTIONS[name](images[part], amount[part])
    part = rows(*WARPS)
    if part.stop > part.start:
        _, _, h, w = images.shape
        images[part] = warp(images[part], pixel_matrices(op[part] - WARPS[0], amount[part], h, w))
    part = rows(*SHIFTS)
    if part.stop > part.start:
        zero = torch.zeros_like(amount[part])
        dx = torch.where(op[part] == SHIFTS[0], amount[part], zero)
        images[part] = shift(images[part], dx, torch.where(op[part] == SHIFTS[1], amount[part], zero))


def chains(images: torch.Tensor, settings: AugMix, gen: torch.Generator) -> torch.Tensor:
    """Every image through its own random chain of operations (a batch of chains: images may repeat).

    At each step every row draws its operation, level and sign; the rows are then sorted by operation (a chain's
    rows are independent, so only the final order matters), which makes each operation's rows one slice."""
    n, _, h, w = images.shape
    steps = MAX_RANDOM_DEPTH if settings.depth < 0 else settings.depth
    depth = torch.randint(1, steps + 1, (n,), generator=gen) if settings.depth < 0 else torch.full((n,), steps)
    order = torch.arange(n)  # the input row that each row now holds
    out = images
    for s in range(steps):
        op = torch.randint(0, len(OPS), (n,), generator=gen)
        level = 0.1 + (settings.severity - 0.1) * torch.rand(n, generator=gen, dtype=torch.float64)
        sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).double()
        op = torch.where(depth > s, op, -1)  # -1: this row's chain has ended
        perm = torch.sort(op, stable=True).indices
        out, order, depth, op = out.index_select(0, to_device(perm, out.device)), order[perm], depth[perm], op[perm]
        apply_sorted(out, op, magnitudes(op, level[perm], sign[perm], min(h, w)))
    return out.index_select(0, to_device(torch.argsort(order), out.device))  # back in the input's order


def mix(images: torch.Tensor, settings: AugMix, gen: torch.Generator) -> torch.Tensor:
    """One AugMix view of each uint8 image: (1 - m) * image + m * sum_i w_i * chain_i(image), float32 in
    [0, 255], with w ~ Dirichlet(1, ..., 1) and m ~ Beta(1, 1) drawn per image."""
    n, width = len(images), settings.width
    e = -torch.log1p(-torch.rand(n, width, generator=gen)).clamp_min(1e-12)  # Exp(1): normalised, a Dirichlet(1)
    weights = to_device(e / e.sum(1, keepdim=True), images.device)
    m = per_image(torch.rand(n, generator=gen), images)  # Beta(1, 1) is uniform
    chained = chains(images.repeat(width, 1, 1, 1), settings, gen).view(width, *images.shape)
    out = images.float().mul_(1 - m)
    for k in range(width):
        out.add_(chained[k].float().mul_(m * weights[:, k].view(-1, 1, 1, 1)))
    return out.clamp_(0, 255)


def augmix_batch(images: torch.Tensor, settings: AugMix, gen: torch.Generator) -> torch.Tensor:
    """The batch as training takes it, float32 in [0, 255]: one AugMix view of each image, or (``views`` 2) the
    clean images followed by two independent views, 3N images in all (for the consistency loss)."""
    if settings.views == 1:
        return mix(images, settings, gen)
    return torch.cat([images.float(), mix(images, settings, gen), mix(images, settings, gen)])
