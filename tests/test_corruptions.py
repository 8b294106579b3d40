"""The CIFAR-10-C corruptions (cifarlab.data.corruptions): shapes, determinism, severity order, and closed-form checks
of the simple ones against a direct computation (numpy, colorsys, Pillow, scipy.ndimage)."""

from __future__ import annotations

import colorsys
import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from cifarlab.data import corruptions
from cifarlab.data.corruptions import CORRUPTIONS, SEVERITIES, SUBSTITUTES, corrupt, frost_is_procedural
from cifarlab.data.corruptions_spatial import _motion_blur, disk_kernel, frost_bank, motion_taps, zoom_factors

# Corruptions that draw nothing at random: the same output for every seed.
DETERMINISTIC = {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression"}


def gradients(side: int) -> np.ndarray:
    """Four smooth images: ramps in x, y and diagonally, and a soft disk, each with an edge somewhere."""
    yy, xx = np.mgrid[0:side, 0:side] / (side - 1)
    ramp_x = np.stack([xx, 1 - xx, 0.5 * xx + 0.25], axis=-1)
    ramp_y = np.stack([yy, yy**2, 1 - yy], axis=-1)
    diagonal = np.stack([(xx + yy) / 2, np.abs(xx - yy), 0.3 + 0.4 * xx * yy], axis=-1)
    disk = ((xx - 0.5) ** 2 + (yy - 0.4) ** 2 < 0.08).astype(float)
    blob = np.stack([0.2 + 0.6 * disk, 0.5 * np.ones_like(xx), 0.8 - 0.6 * disk], axis=-1)
    return (np.stack([ramp_x, ramp_y, diagonal, blob]) * 255).astype(np.uint8)


def make_images(side: int = 32) -> np.ndarray:
    """8 random-ish images (4 uniform noise, 4 smoothed noise) and 4 smooth gradients, from a fixed seed."""
    rng = np.random.default_rng(1234)
    noise = rng.integers(0, 256, size=(4, side, side, 3))
    smooth = ndimage.gaussian_filter(rng.random((4, side, side, 3)), sigma=(0, 2, 2, 0))
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min()) * 255
    return np.concatenate([noise, smooth, gradients(side)]).astype(np.uint8)


IMAGES = make_images()


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_the_names_and_severities_are_cifar_10_c_s():
    assert CORRUPTIONS == (
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
    assert SEVERITIES == (1, 2, 3, 4, 5)
    assert set(corruptions.REGISTRY) == set(CORRUPTIONS)
    assert frost_is_procedural() and "photo" in SUBSTITUTES["frost"] and set(SUBSTITUTES) == {"frost"}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_severity_is_uint8_of_the_same_shape_and_reproducible(name):
    for severity in SEVERITIES:
        out = corrupt(IMAGES, name, severity, seed=7)
        assert out.dtype == np.uint8 and out.shape == IMAGES.shape
        assert np.array_equal(out, corrupt(IMAGES, name, severity, seed=7))
        other = corrupt(IMAGES, name, severity, seed=8)
        if name in DETERMINISTIC:
            assert np.array_equal(out, other)
        else:
            assert not np.array_equal(out, other)
        assert not np.array_equal(out, IMAGES)


@pytest.mark.parametrize("name", [n for n in CORRUPTIONS if n != "elastic_transform"])
def test_severity_one_is_closer_to_the_clean_image_than_severity_five(name):
    assert mad(corrupt(IMAGES, name, 1, seed=3), IMAGES) < mad(corrupt(IMAGES, name, 5, seed=3), IMAGES)


def plane_residual(images: np.ndarray) -> float:
    """RMS distance of channel 0's interior (4 pixels in from each edge) from its least-squares plane, per image."""
    inner = images[:, 4:-4, 4:-4, 0].astype(np.float64)
    yy, xx = np.mgrid[0 : inner.shape[1], 0 : inner.shape[2]]
    design = np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)], axis=1)
    residuals = []
    for image in inner:
        coef, *_ = np.linalg.lstsq(design, image.ravel(), rcond=None)
        residuals.append(np.sqrt(np.mean((design @ coef - image.ravel()) ** 2)))
    return float(np.mean(residuals))


def test_elastic_severity_five_warps_locally_and_severity_one_is_a_pure_affine():
    # The generator's severity 1 is an affine warp alone with the largest jitter (0.08 * 32 px; 0.03 * 32 at
    # severity 5), so by mean absolute difference it moves pixels further than severity 5: what grows with the
    # severity is the local, non-affine displacement. A warped linear ramp shows it: an affine warp keeps it a plane.
    yy, xx = np.mgrid[0:32, 0:32]
    ramp = np.repeat(np.stack([xx * 5 + yy * 2 + 40] * 3, axis=-1)[None], 6, axis=0).astype(np.uint8)
    mild, strong = corrupt(ramp, "elastic_transform", 1, seed=5), corrupt(ramp, "elastic_transform", 5, seed=5)
    assert plane_residual(mild) < 0.6 < 2.0 < plane_residual(strong)
    first, fifth = (corrupt(IMAGES, "elastic_transform", severity, seed=3) for severity in (1, 5))
    assert mad(first, IMAGES) > mad(fifth, IMAGES)


def test_gaussian_noise_has_the_published_sigma_and_keeps_the_mean():
    grey = np.full((64, 32, 32, 3), 128, dtype=np.uint8)
    for severity, sigma in zip(SEVERITIES, (0.04, 0.06, 0.08, 0.09, 0.10), strict=True):
        out = corrupt(grey, "gaussian_noise", severity, seed=severity) / 255.0
        assert abs(out.std() - sigma) < 0.02 * sigma
        assert abs(out.mean() - (128 - 0.5) / 255) < 0.001  # truncation to uint8 lowers it half a level


def test_shot_and_impulse_noise_follow_their_distributions():
    grey = np.full((64, 32, 32, 3), 128, dtype=np.uint8)
    for severity, lam in zip(SEVERITIES, (500, 250, 100, 75, 50), strict=True):
        out = corrupt(grey, "shot_noise", severity, seed=1) / 255.0
        assert abs(out.std() - np.sqrt(128 / 255 / lam)) < 0.03 * np.sqrt(128 / 255 / lam)
    for severity, amount in zip(SEVERITIES, (0.01, 0.02, 0.03, 0.05, 0.07), strict=True):
        out = corrupt(grey, "impulse_noise", severity, seed=1)
        assert set(np.unique(out)) == {0, 128, 255}
        assert abs((out != 128).mean() - amount) < 0.1 * amount
        assert abs((out == 255).mean() - amount / 2) < 0.1 * amount


def test_contrast_is_the_closed_form_about_each_channels_mean():
    for severity, c in zip(SEVERITIES, (0.75, 0.5, 0.4, 0.3, 0.15), strict=True):
        expected = []
        for image in IMAGES:
            x = image / 255.0
            mean = x.mean(axis=(0, 1), keepdims=True)
            expected.append(np.floor(np.clip((x - mean) * c + mean, 0, 1) * 255))
        assert np.array_equal(corrupt(IMAGES, "contrast", severity, seed=0), np.array(expected, dtype=np.uint8))


def test_brightness_adds_to_hsv_value():
    levels = np.array([0, 1, 37, 128, 200, 250, 255], dtype=np.uint8)
    grey = np.broadcast_to(levels[:, None, None, None], (len(levels), 8, 8, 3)).copy()
    for severity, c in zip(SEVERITIES, (0.05, 0.1, 0.15, 0.2, 0.3), strict=True):
        expected = np.floor(np.clip(grey / 255.0 + c, 0, 1) * 255).astype(np.uint8)
        assert np.array_equal(corrupt(grey, "brightness", severity, seed=0), expected)
        # colours: against the standard library's HSV, pixel by pixel
        out = corrupt(IMAGES[:4], "brightness", severity, seed=0).reshape(-1, 3).astype(int)
        reference = []
        for pixel in IMAGES[:4].reshape(-1, 3) / 255.0:
            h, s, v = colorsys.rgb_to_hsv(*pixel)
            reference.append(np.floor(np.clip(colorsys.hsv_to_rgb(h, s, min(v + c, 1.0)), 0, 1) * 255))
        diff = np.abs(out - np.array(reference))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.995


def pillow_pixelate(image: np.ndarray, factor: float) -> np.ndarray:
    side = image.shape[0]
    small = Image.fromarray(image).resize((int(side * factor),) * 2, Image.Resampling.BOX)
    return np.asarray(small.resize((side, side), Image.Resampling.BOX))


def pillow_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


@pytest.mark.parametrize("side", [32, 64])
def test_pixelate_and_jpeg_are_pillows(side):
    images = IMAGES if side == 32 else make_images(64)[::3]
    for severity, factor, quality in zip(SEVERITIES, (0.95, 0.9, 0.85, 0.75, 0.65), (80, 65, 58, 50, 40), strict=True):
        expected = np.stack([pillow_pixelate(image, factor) for image in images])
        assert np.array_equal(corrupt(images, "pixelate", severity, seed=0), expected)
        expected = np.stack([pillow_jpeg(image, quality) for image in images])
        assert np.array_equal(corrupt(images, "jpeg_compression", severity, seed=0), expected)


def scipy_zoom_blur(image: np.ndarray, severity: int) -> np.ndarray:
    """The generator's zoom blur written out with scipy.ndimage.zoom, for one image."""
    x = (image / 255.0).astype(np.float32)
    total = np.zeros_like(x)
    for factor in zoom_factors(severity):
        crop = int(np.ceil(32 / factor))
        top = (32 - crop) // 2
        zoomed = ndimage.zoom(x[top : top + crop, top : top + crop], (factor, factor, 1), order=1)
        trim = (zoomed.shape[0] - 32) // 2
        total += zoomed[trim : trim + 32, trim : trim + 32]
    return (np.clip((x + total) / (len(zoom_factors(severity)) + 1), 0, 1) * 255).astype(np.uint8)


def test_zoom_blur_matches_scipy_zoom_and_the_generators_factor_lists():
    assert [len(zoom_factors(s)) for s in SEVERITIES] == [7, 12, 16, 21, 26]  # np.arange's float end, as published
    for severity in (1, 5):
        out = corrupt(IMAGES[4:8], "zoom_blur", severity, seed=0).astype(int)
        diff = np.abs(out - np.stack([scipy_zoom_blur(image, severity) for image in IMAGES[4:8]]))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99


def test_blur_kernels_are_the_generators():
    kernel = disk_kernel(0.3, 0.4)  # a single-pixel disk, anti-aliased by a 3 x 3 Gaussian of sigma 0.4
    g = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * 0.4**2))
    assert kernel.shape == (3, 3) and np.allclose(kernel, np.outer(g, g) / np.outer(g, g).sum())
    assert disk_kernel(1.5, 0.1).shape == (5, 5) and abs(disk_kernel(1.5, 0.1).sum() - 1) < 1e-12
    weights, dx, dy = motion_taps(6, 1.0, np.array([0.0, 90.0, 45.0]))
    assert len(weights) == 13 and abs(weights.sum() - 1) < 1e-12 and np.all(np.diff(weights) < 0)
    assert list(dx[0]) == list(range(13)) and not dy[0].any()
    assert list(dy[1]) == list(range(13)) and not dx[1].any()
    assert np.array_equal(dx[2], dy[2]) and dx[2][-1] == 8  # ceil(12 cos 45 - 0.5)
    flat = np.full((3, 32, 32, 3), 90, dtype=np.uint8)
    for name in ("defocus_blur", "motion_blur", "zoom_blur", "glass_blur"):  # normalised: a flat image stays
        # flat, to within float32 sums truncated to uint8 (the generator's zoom blur is float32 too)
        assert np.abs(corrupt(flat, name, 5, seed=0).astype(int) - 90).max() <= 1, name


def test_motion_blur_is_imagemagicks_line_kernel_written_out():
    # Each output pixel: sum over taps i of w_i * image[y + ceil(i sin a - .5), x + ceil(i cos a - .5)], the
    # coordinates clamped to the image (ImageMagick's edge virtual pixels).
    angles = np.array([0.0, 30.0, -45.0, 12.5])
    images = IMAGES[[0, 4, 8, 11]].astype(np.float64)
    out = _motion_blur(images, 6, 2.0, angles)
    taps = np.arange(13)
    weights = np.exp(-(taps**2) / 8.0) / np.exp(-(taps**2) / 8.0).sum()
    yy, xx = np.mgrid[0:32, 0:32]
    for image, angle, got in zip(images, angles, out, strict=True):
        expected = np.zeros_like(image)
        for i, weight in zip(taps, weights, strict=True):
            row = np.clip(yy + int(np.ceil(i * np.sin(np.radians(angle)) - 0.5)), 0, 31)
            col = np.clip(xx + int(np.ceil(i * np.cos(np.radians(angle)) - 0.5)), 0, 31)
            expected += weight * image[row, col]
        assert np.allclose(got, expected, atol=1e-3)
    ramp = np.repeat(gradients(32)[1:2], 2, axis=0)  # varies down the rows only: a horizontal blur leaves it
    assert np.abs(_motion_blur(ramp, 6, 2.0, np.array([0.0, 0.0])) - ramp).max() < 1e-3


def test_glass_blur_moves_each_pixel_from_an_upper_left_neighbour():
    # At severity 1 the Gaussian (sigma 0.05) is the identity, leaving the generator's shuffle alone: from the
    # bottom-right, each pixel copies the one at (dy, dx) in {-1, 0}^2; the top two rows and columns stay.
    out = corrupt(IMAGES, "glass_blur", 1, seed=2)
    assert np.array_equal(out[:, :2], IMAGES[:, :2]) and np.array_equal(out[:, :, :2], IMAGES[:, :, :2])
    inner = out[:, 2:, 2:]
    candidates = [IMAGES[:, 2 + dy : 32 + dy, 2 + dx : 32 + dx] for dy in (-1, 0) for dx in (-1, 0)]
    assert np.all(np.any([np.all(inner == c, axis=-1) for c in candidates], axis=0))
    assert np.mean(np.all(inner == IMAGES[:, 2:, 2:], axis=-1)) < 0.5


def test_frost_and_snow_brighten_and_frost_textures_are_fixed():
    bank = frost_bank(32, 32)
    assert bank.shape == (5, 192, 192, 3) and 100 < bank.mean() < 170 and not bank.flags.writeable
    frost_bank.cache_clear()
    assert np.array_equal(frost_bank(32, 32), bank)
    dark = np.full((4, 32, 32, 3), 30, dtype=np.uint8)
    for name in ("frost", "snow"):
        assert corrupt(dark, name, 5, seed=0).mean() > dark.mean() + 10, name


def test_fog_is_the_generators_rescaled_plasma():
    # On a flat image of value v: (v + a * plasma) * v / (v + a), the plasma map on [0, 1] reaching both ends, so
    # the output runs from v^2 / (v + a) up to v, and is smooth (neighbours close) but not flat.
    flat = np.full((4, 32, 32, 3), 150, dtype=np.uint8)
    v = 150 / 255
    for severity, amount in zip(SEVERITIES, (0.2, 0.5, 0.75, 1, 1.5), strict=True):
        out = corrupt(flat, "fog", severity, seed=severity).astype(int)
        assert np.array_equal(out[..., 0], out[..., 2])  # the same fog on every channel
        lowest = np.floor(v * v / (v + amount) * 255)
        assert np.all(np.abs(out.min(axis=(1, 2, 3)) - lowest) <= 1)
        assert np.all(np.abs(out.max(axis=(1, 2, 3)) - 150) <= 1)
        assert np.abs(np.diff(out, axis=2)).mean() < 0.1 * (out.max() - out.min())


@pytest.mark.parametrize("shape", [(3, 64, 64, 3), (2, 40, 48, 3), (2, 8, 8, 3), (0, 32, 32, 3)])
def test_other_sizes_work_and_spatial_effects_scale(shape):
    images = make_images(max(shape[1:3]))[: shape[0], : shape[1], : shape[2]]
    for name in CORRUPTIONS:
        for severity in (1, 5):
            out = corrupt(images, name, severity, seed=4)
            assert out.shape == shape and out.dtype == np.uint8, (name, severity)
    if shape[1] == 64:  # twice the side: the defocus disk (7 x 7) and its anti-alias taps (5) twice as wide
        assert disk_kernel(1.5 * 2, 0.1 * 2, 2).shape == (11, 11)
        for side, spread in ((32, 9), (64, 29)):  # a point becomes the disk: radius 1.5 (3 x 3), radius 3 (29 px)
            point = np.zeros((1, side, side, 3), dtype=np.uint8)
            point[0, side // 2, side // 2] = 255
            assert np.count_nonzero(corrupt(point, "defocus_blur", 5, seed=0)[0, ..., 0]) == spread


def test_chunks_give_the_same_result_for_deterministic_corruptions(monkeypatch):
    whole = {name: corrupt(IMAGES, name, 3, seed=1) for name in sorted(DETERMINISTIC)}
    monkeypatch.setattr(corruptions, "CHUNK", 5)
    for name, expected in whole.items():
        assert np.array_equal(corrupt(IMAGES, name, 3, seed=1), expected)
    assert corrupt(IMAGES, "gaussian_noise", 3, seed=1).shape == IMAGES.shape


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: corrupt(IMAGES, "speckle_noise", 1, 0), "gaussian_noise, shot_noise"),
        (lambda: corrupt(IMAGES, "fog", 0, 0), "1, 2, 3, 4, 5"),
        (lambda: corrupt(IMAGES, "fog", 6, 0), "1, 2, 3, 4, 5"),
        (lambda: corrupt(IMAGES, "fog", 2.0, 0), "1, 2, 3, 4, 5"),
        (lambda: corrupt(IMAGES, "fog", True, 0), "1, 2, 3, 4, 5"),
        (lambda: corrupt(IMAGES, "fog", 1, -1), "non-negative"),
        (lambda: corrupt(IMAGES.astype(np.float32), "fog", 1, 0), "uint8"),
        (lambda: corrupt(IMAGES[0], "fog", 1, 0), "(N, H, W, 3)"),
        (lambda: corrupt(IMAGES[..., :2], "fog", 1, 0), "(N, H, W, 3)"),
        (lambda: corrupt(IMAGES[:, :4, :4], "fog", 1, 0), "at least 8"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(call, words):
    with pytest.raises(ValueError) as caught:
        call()
    assert words in str(caught.value) and "\n" not in str(caught.value)
