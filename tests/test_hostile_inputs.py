"""Files are untrusted: hostile checkpoints and images are refused in one line, in bounded memory, never a traceback.

Every hostile file is made here, in tmp_path. Memory is measured as the peak resident size of a child process
(``os.wait4``), which includes the ~0.7 GB that importing torch maps in.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from cifarlab.base.errors import CheckpointError, UsageError, escape
from cifarlab.cli.main import main
from cifarlab.data import images
from cifarlab.data.cifar10 import CLASSES
from cifarlab.models.registry import build_model
from cifarlab.runs.checkpoint import load_checkpoint, model_from_checkpoint
from cifarlab.tools.predict import Result, load_image, render

ACCEPTED = " (PNG, JPEG, BMP, GIF, TIFF, WebP...; never EPS or PDF)"
SRC = Path(__file__).resolve().parents[1] / "src"
IMAGE_BOUND = 600 * 2**20  # peak resident growth allowed to predict one huge image, over a tiny one (torch's own
# resident size differs between machines: 0.5 GB here, about 1.4 GB on CI, so it is measured, not assumed)
CLAIM_BOUND = 150 * 2**20  # growth allowed while refusing a checkpoint that claims a huge model


# --- helpers -----------------------------------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_flat_png(path: Path, width: int, height: int, bit_depth: int, colour_type: int, pixel: bytes) -> Path:
    """A PNG of one colour whose rows are never all in memory: a huge image in a small file, written fast by
    deflating a block of rows once and repeating it (a full flush ends each copy on a byte, with no references
    back), then an empty final block and the checksum of all rows."""
    row = b"\0" + pixel * width  # filter byte 0, then the pixels
    rows = max(1, min(height, 2**21 // len(row)))
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = packer.compress(row * rows) + packer.flush(zlib.Z_FULL_FLUSH)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    last = tail.compress(row * (height % rows)) + tail.flush(zlib.Z_FULL_FLUSH) if height % rows else b""
    checksum = 1
    for _ in range(height):
        checksum = zlib.adler32(row, checksum)
    data = b"\x78\xda" + block * (height // rows) + last + b"\x03\x00" + struct.pack(">I", checksum)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")
    )
    return path


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}


def run_measured(args: list[str], tmp_path: Path) -> tuple[int, str, str, int]:
    """Run ``python ARGS`` in a child; its exit code, stdout, stderr and peak resident bytes."""
    if not hasattr(os, "wait4"):
        pytest.skip("needs os.wait4 to measure a child's peak memory")
    out_path, err_path = tmp_path / "child.out", tmp_path / "child.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        child = subprocess.Popen([sys.executable, *args], stdout=out, stderr=err, env=child_env())
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here; tell Popen so it does not wait again
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux
    return child.returncode, out_path.read_text(), err_path.read_text(), peak


def fastcnn_state(width: int = 8) -> dict:
    """A valid, untrained fastcnn checkpoint (no training needed: only its checks are tested)."""
    torch.manual_seed(0)
    model = build_model("fastcnn", width=width)
    return {
        "model": model.state_dict(),
        "model_name": "fastcnn",
        "model_kwargs": {"width": width, "dirac": False, "frozen_bn_scale": False, "frozen_stem": False},
        "config": {"seed": 0, "val_size": 100, "tta": 0},
        "epoch": 3,
        "best_val_top1": 0.5,
        "mean": [0.49, 0.48, 0.45],
        "std": [0.25, 0.24, 0.26],
        "classes": list(CLASSES),
    }


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "good.pt"
    torch.save(fastcnn_state(), path)
    return path


@pytest.fixture
def photo(tmp_path) -> Path:
    Image.new("RGB", (40, 30), (200, 30, 40)).save(tmp_path / "photo.png")
    return tmp_path / "photo.png"


def refusal(path: Path) -> str:
    """The one-line message load_checkpoint gives for ``path`` (the test fails if it loads)."""
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


# --- checkpoints -------------------------------------------------------------------------------------------------


def test_the_test_checkpoint_itself_is_accepted(good_checkpoint):
    state = load_checkpoint(good_checkpoint)
    model = model_from_checkpoint(state)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def changed(**fields):
    """A checkpoint edit: set (or, with None, delete) top-level fields."""

    def edit(state: dict) -> None:
        for key, value in fields.items():
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value

    return edit


def kwargs(**values):
    return lambda state: state["model_kwargs"].update(values)


def weight(name: str, make):
    return lambda state: state["model"].__setitem__(name, make(state["model"][name]))


HOSTILE_CHECKPOINTS = {
    "huge width": (kwargs(width=10**6), "width must be a whole number from 1 to 1024 (got 1000000)"),
    "width of 400 digits": (kwargs(width=10**400), "width must be a whole number from 1 to 1024 (got a 1329-bit"),
    "width as text": (kwargs(width="64"), "width must be a whole number from 1 to 1024 (got '64')"),
    "width as bool": (kwargs(width=True), "width must be a whole number"),
    "width as float": (kwargs(width=8.0), "width must be a whole number"),
    "dirac not a bool": (kwargs(dirac=2), "dirac must be true or false (got 2)"),
    "unknown argument": (kwargs(depth=1000), "unknown argument 'depth' (model 'fastcnn' takes: width, dirac"),
    "width of another model": (kwargs(width=1024), "does not match model 'fastcnn' (is it from another model?): "),
    "unknown model": (changed(model_name="vgg\n99"), "is for unknown model 'vgg\\n99'"),
    "NaN mean": (changed(mean=[0.5, math.nan, 0.5]), "'mean' is not a list of 3 finite numbers"),
    "infinite std": (changed(std=[0.2, math.inf, 0.2]), "'std' is not a list of 3 finite numbers"),
    "zero std": (changed(std=[0.2, 0.0, 0.2]), "'std' has a value that is not positive"),
    "four means": (changed(mean=[0.5] * 4), "'mean' is not a list of 3 finite numbers"),
    "classes shorter than the head": (
        changed(classes=list(CLASSES)[:9]),
        "'classes' has 9 names but the model's head has 10 outputs",
    ),
    "one class": (changed(classes=["cat"]), "'classes' has 1 names (a model has 2 to 1000 classes)"),
    "1001 classes": (changed(classes=[f"c{i}" for i in range(1001)]), "'classes' has 1001 names"),
    "a class name with an escape sequence": (
        changed(classes=list(CLASSES[:9]) + ["\x1b[2Jtruck"]),
        "not printable ('\\x1b[2Jtruck')",
    ),
    "a class named twice": (changed(classes=list(CLASSES[:9]) + ["cat"]), "'classes' names a class twice"),
    "negative epoch": (changed(epoch=-1), "'epoch' is missing or not a whole number >= 0"),
    "epoch as bool": (changed(epoch=True), "'epoch' is missing or not a whole number >= 0"),
    "NaN best accuracy": (changed(best_val_top1=math.nan), "'best_val_top1' is not a finite number"),
    "a mean too large for a float": (changed(mean=[10**400, 0.5, 0.5]), "'mean' is not a list of 3 finite numbers"),
    "a seed of 400 digits": (
        changed(config={"seed": 10**400, "val_size": 100}),
        "'config' has a seed or val_size out of range",
    ),
    "data_dir as a number": (
        changed(config={"seed": 0, "val_size": 100, "data_dir": 7}),
        "'config' has a data_dir that is not a folder name",
    ),
    "NaN weights": (
        weight("head.weight", lambda t: torch.full_like(t, math.nan)),
        "weight 'head.weight' holds NaN or infinite values",
    ),
    "stride-0 weights": (
        weight("head.weight", lambda t: torch.zeros(1).expand(t.shape)),
        "weight 'head.weight' claims more values than the file stores",
    ),
    "integer weights": (weight("head.weight", lambda t: t.to(torch.int32)), "1 wrong type (e.g. 'head.weight')"),
    "missing weights": (lambda s: s["model"].pop("stem.weight"), "1 missing (e.g. 'stem.weight')"),
    "a train_model of another width": (
        changed(train_model=build_model("fastcnn", width=16).state_dict()),
        "(is it from another model?)",
    ),
}


@pytest.mark.parametrize("edit, message", HOSTILE_CHECKPOINTS.values(), ids=HOSTILE_CHECKPOINTS)
def test_a_hostile_checkpoint_is_refused_in_one_line(edit, message, tmp_path):
    state = fastcnn_state()
    edit(state)
    torch.save(state, tmp_path / "bad.pt")
    assert message in refusal(tmp_path / "bad.pt")


def test_a_compressed_checkpoint_cannot_unpack_to_more_than_its_size(tmp_path):
    """A zip bomb: 64 MB of zeros deflated to a few hundred KB; refused from the zip directory alone."""
    state = fastcnn_state()
    state["padding"] = torch.zeros(16 * 2**20)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with zipfile.ZipFile(buffer) as plain, zipfile.ZipFile(tmp_path / "bomb.pt", "w", zipfile.ZIP_DEFLATED) as bomb:
        for record in plain.infolist():
            bomb.writestr(record.filename, plain.read(record.filename))
    assert (tmp_path / "bomb.pt").stat().st_size < 2**20
    assert "more than the file's" in refusal(tmp_path / "bomb.pt")


def test_a_plain_pickle_is_refused_unread(tmp_path):
    import pickle

    (tmp_path / "old.pt").write_bytes(pickle.dumps(fastcnn_state(), protocol=2))
    assert "plain pickle or a legacy (pre-1.6) torch file" in refusal(tmp_path / "old.pt")


@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
def test_nan_normalisation_is_refused_by_every_command(command, tmp_path, photo, capsys):
    state = fastcnn_state()
    state["std"] = [0.25, math.nan, 0.25]
    torch.save(state, tmp_path / "nan.pt")
    args = {
        "predict": ["predict", "--checkpoint", str(tmp_path / "nan.pt"), str(photo)],
        "evaluate": ["evaluate", str(tmp_path / "nan.pt")],
        "export": ["export", str(tmp_path / "nan.pt"), "--out", str(tmp_path / "m.onnx")],
    }[command]
    code = main(args)
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert captured.err.startswith("cifarlab: error: ") and len(captured.err.strip().splitlines()) == 1
    assert "'std' is not a list of 3 finite numbers" in captured.err
    assert not (tmp_path / "m.onnx").exists()


def test_a_huge_claimed_model_is_refused_without_allocating_it(tmp_path):
    """Width 10**6 is outside the registry's range; width 1024 is inside it (a 1.2 GB model) but the weights are
    from width 8: both are refused by comparing with the model built on the meta device, in little memory."""
    for width in (10**6, 1024):
        state = fastcnn_state()
        state["model_kwargs"]["width"] = width
        torch.save(state, tmp_path / f"claims-{width}.pt")
    script = (
        "import resource, sys\n"
        "from cifarlab.runs.checkpoint import load_checkpoint\n"
        "from cifarlab.base.errors import CheckpointError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        load_checkpoint(path)\n"
        "    except CheckpointError as exc:\n"
        "        print(exc)\n"
        "print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    code, out, err, _ = run_measured(
        ["-c", script, str(tmp_path / "claims-1000000.pt"), str(tmp_path / "claims-1024.pt")], tmp_path
    )
    assert code == 0, err
    lines = out.strip().splitlines()
    assert "width must be a whole number from 1 to 1024 (got 1000000)" in lines[0]
    assert "does not match model 'fastcnn'" in lines[1]
    before, after = map(int, lines[2].split())
    scale = 1 if sys.platform == "darwin" else 1024
    assert (after - before) * scale < CLAIM_BOUND


def test_building_a_model_outside_its_declared_range_is_a_usage_error():
    """So no run can train a model that its own checkpoint could not be loaded into."""
    with pytest.raises(UsageError, match="width must be a whole number from 1 to 1024 .got 2048."):
        build_model("fastcnn", width=2048)
    with pytest.raises(UsageError, match="unknown argument 'width'"):
        build_model("mycnn", width=8)
    with pytest.raises(UsageError, match="num_classes must be a whole number from 2 to 1000"):
        build_model("mycnn", num_classes=10**6)


# --- images: size and memory -------------------------------------------------------------------------------------


def test_an_image_over_the_pixel_limit_is_refused_on_its_line(good_checkpoint, photo, tmp_path, capsys):
    """13,000 x 13,000 16-bit grey (338 MB of pixels) in a few hundred KB: over Pillow's limit, never decoded."""
    big = write_flat_png(tmp_path / "big.png", 13_000, 13_000, 16, 0, b"\x80\x80")
    assert big.stat().st_size < 600_000
    small = write_flat_png(tmp_path / "small.png", 1000, 700, 16, 0, b"\x80\x80")  # the same writer, decodable
    with Image.open(small) as image:
        assert image.mode == "I;16" and np.asarray(image).min() == np.asarray(image).max() == 0x8080
    code = main(["predict", "--checkpoint", str(good_checkpoint), str(big), str(photo)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 1 and len(lines) == 2
    assert lines[0] == (
        f"{big}: error: image too large to decode safely (13000 x 13000 pixels, over Pillow's "
        f"limit of {Image.MAX_IMAGE_PIXELS:,})"
    )
    assert lines[1].startswith(f"{photo}: ") and "error" not in lines[1]


@pytest.mark.slow  # ~15-20 s: a tiny and two 81-megapixel images, each in a child that imports torch
def test_images_just_under_the_pixel_limit_are_predicted_in_bounded_memory(good_checkpoint, tmp_path):
    """9,000 x 9,000 pixels (81 M, under the 89 M limit): 16-bit grey and RGBA, predicted by the CLI in a child,
    need at most IMAGE_BOUND more memory than a 16 x 16 image (a full float copy of one would need 1 GB)."""
    tiny = write_flat_png(tmp_path / "tiny.png", 16, 16, 8, 6, b"\xff\x00\x00\x80")
    grey = write_flat_png(tmp_path / "grey16.png", 9_000, 9_000, 16, 0, b"\x80\x80")
    rgba = write_flat_png(tmp_path / "rgba.png", 9_000, 9_000, 8, 6, b"\xff\x00\x00\x80")
    assert grey.stat().st_size + rgba.stat().st_size < 2_000_000
    peaks = {}
    for image in (tiny, grey, rgba):  # the promise is per image file: one child each
        code, out, err, peaks[image.name] = run_measured(
            ["-m", "cifarlab", "predict", "--checkpoint", str(good_checkpoint), str(image), "--json"], tmp_path
        )
        assert code == 0, err
        assert [r["file"] for r in json.loads(out)] == [str(image)]
    for name in (grey.name, rgba.name):
        growth = peaks[name] - peaks[tiny.name]
        assert growth < IMAGE_BOUND, f"{name}: {growth / 2**20:.0f} MB more than a 16 x 16 image"


def test_jpeg_and_jpeg2000_are_decoded_at_a_reduced_scale(tmp_path, monkeypatch):
    Image.new("RGB", (3000, 2000), (30, 160, 90)).save(tmp_path / "big.jpg", quality=95)
    Image.new("RGB", (600, 400), (30, 160, 90)).save(tmp_path / "big.jp2")  # 5 levels to drop (the default)
    Image.new("RGB", (600, 400), (30, 160, 90)).save(tmp_path / "two.j2k", num_resolutions=2)  # 1 level
    Image.new("RGB", (600, 400), (30, 160, 90)).save(tmp_path / "flat.j2k", num_resolutions=1)  # none
    for name, size in (
        ("big.jpg", (375, 250)),
        ("big.jp2", (150, 100)),
        ("two.j2k", (300, 200)),
        ("flat.j2k", (600, 400)),
    ):
        with images.open_image(tmp_path / name) as image:
            images.decode_reduced(image, images.jpeg2000_drop(image, tmp_path / name))
            assert image.size == size, name
        rgb = load_image(tmp_path / name).float().mean(dim=(1, 2))
        assert torch.allclose(rgb, torch.tensor([30.0, 160.0, 90.0]), atol=3), name
    monkeypatch.setattr(images, "JPEG2000_MAX_SAMPLES", 100_000)  # as if these were huge
    assert load_image(tmp_path / "big.jp2").shape == (3, 32, 32)  # 150 x 100 x 3 samples
    with pytest.raises(ValueError, match=r"JPEG 2000 image too large to decode safely \(600 x 400 pixels and only 0"):
        load_image(tmp_path / "flat.j2k")


# --- images: geometry and colours --------------------------------------------------------------------------------


def reference(path: Path) -> np.ndarray:
    """The plain pipeline at full resolution: EXIF transpose, RGB, centred square crop, bilinear resize."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    small = image.crop((left, top, left + side, top + side)).resize((32, 32), Image.Resampling.BILINEAR)
    return np.asarray(small).transpose(2, 0, 1).astype(int)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("size", [(50, 37), (37, 50), (33, 90), (301, 200)])
def test_the_reduced_decoder_keeps_the_geometry(orientation, size, tmp_path, monkeypatch):
    """Strips, the EXIF transpose on the small result and the mapped crop give the full-size pipeline's pixels
    (to 1 level where the transpose swaps the axes, so Pillow resamples them in the other order)."""
    monkeypatch.setattr(images, "STRIP_PIXELS", 1000)  # many strips even for small images
    rng = np.random.default_rng(orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(tmp_path / "x.png", exif=exif)
    difference = np.abs(load_image(tmp_path / "x.png").numpy().astype(int) - reference(tmp_path / "x.png")).max()
    assert difference <= (1 if orientation >= 5 else 0)


def palette(index: int, colour: tuple[int, int, int], transparent: bool = False) -> Image.Image:
    image = Image.new("P", (20, 30), index)
    image.putpalette([0, 0, 0] * index + list(colour) + [0, 0, 0] * (255 - index))
    if transparent:
        image.info["transparency"] = index
    return image


def grey(values: np.ndarray) -> Image.Image:
    return Image.fromarray(values)


COLOURS = {
    # name: (image, file it is saved as (None: used as decoded), the mode Pillow reads back, expected RGB)
    "16-bit grey, mid": (Image.new("I;16", (20, 30), 32896), "x.png", "I;16", (128, 128, 128)),
    "16-bit grey, dark (not stretched)": (grey(np.full((30, 20), 200, np.uint16)), "x.png", "I;16", (1, 1, 1)),
    "16-bit grey, white (PPM)": (grey(np.full((30, 20), 65535, np.uint16)), "x.ppm", "I", (255, 255, 255)),
    "16-bit big-endian grey": (Image.new("I;16B", (20, 30), 32896), "x.tif", "I;16B", (128, 128, 128)),
    "32-bit integer grey": (grey(np.full((30, 20), 40000, np.int32)), "x.tif", "I", (156, 156, 156)),
    "32-bit integer, negative": (grey(np.full((30, 20), -5, np.int32)), "x.tif", "I", (0, 0, 0)),
    "float grey 0.5": (grey(np.full((30, 20), 0.5, np.float32)), "x.tif", "F", (128, 128, 128)),
    "float grey above 1": (grey(np.full((30, 20), 7.5, np.float32)), "x.tif", "F", (255, 255, 255)),
    "float grey NaN": (grey(np.full((30, 20), np.nan, np.float32)), "x.tif", "F", (0, 0, 0)),
    "LAB red": (Image.new("LAB", (20, 30), (138, 209, 198)), "x.tif", "LAB", (255, 0, 0)),  # sRGB red, D50 L*a*b*
    "LAB white": (Image.new("LAB", (20, 30), (255, 128, 128)), "x.tif", "LAB", (255, 255, 255)),
    "CMYK red": (Image.new("CMYK", (20, 30), (0, 255, 255, 0)), "x.tif", "CMYK", (255, 0, 0)),
    "CMYK black (JPEG)": (Image.new("CMYK", (20, 30), (0, 0, 0, 255)), "x.jpg", "CMYK", (0, 0, 0)),
    "palette": (palette(7, (0, 0, 255)), "x.gif", "P", (0, 0, 255)),
    "palette with transparency": (palette(7, (0, 0, 255), transparent=True), "x.png", "P", (255, 255, 255)),
    "palette + alpha": (Image.new("PA", (20, 30), (3, 0)), None, "PA", (255, 255, 255)),
    "grey + alpha, clear": (Image.new("LA", (20, 30), (100, 0)), "x.png", "LA", (255, 255, 255)),
    "grey + alpha, opaque": (Image.new("LA", (20, 30), (100, 255)), "x.png", "LA", (100, 100, 100)),
    "RGBA half transparent": (Image.new("RGBA", (20, 30), (255, 0, 0, 128)), "x.png", "RGBA", (255, 127, 127)),
    "RGBA clear (WebP)": (Image.new("RGBA", (20, 30), (0, 0, 255, 0)), "x.webp", "RGBA", (255, 255, 255)),
    "grey with a transparent value": (Image.new("L", (20, 30), 9), "x.png", "L", (255, 255, 255)),
    "1-bit white": (Image.new("1", (20, 30), 1), "x.png", "1", (255, 255, 255)),
    "1-bit black": (Image.new("1", (20, 30), 0), "x.bmp", "1", (0, 0, 0)),
    "YCbCr red (JPEG)": (Image.new("YCbCr", (20, 30), (76, 85, 255)), "x.jpg", "RGB", (254, 0, 0)),
    "HSV red": (Image.new("HSV", (20, 30), (0, 255, 255)), None, "HSV", (255, 0, 0)),
}


@pytest.mark.parametrize("image, filename, mode, expected", COLOURS.values(), ids=COLOURS)
def test_every_mode_comes_out_in_the_right_colour(image, filename, mode, expected, tmp_path):
    if filename is None:
        rgb = torch.from_numpy(np.asarray(images.shrink(image), dtype=np.uint8).copy()).permute(2, 0, 1)
    else:
        options = {"transparency": 9} if image.mode == "L" else {"lossless": True} if filename.endswith("webp") else {}
        image.save(tmp_path / filename, **options)
        with Image.open(tmp_path / filename) as saved:
            assert saved.mode == mode  # the file really holds the mode under test
        rgb = load_image(tmp_path / filename)
    assert rgb.shape == (3, 32, 32) and rgb.dtype == torch.uint8
    tolerance = 6 if image.mode in ("LAB", "YCbCr") else 1
    assert torch.allclose(rgb.float().mean(dim=(1, 2)), torch.tensor(expected, dtype=torch.float32), atol=tolerance)
    assert int(rgb.float().std(dim=(1, 2)).max()) == 0  # one colour in, one colour out


# --- output ------------------------------------------------------------------------------------------------------


def test_file_names_cannot_forge_lines_or_move_the_cursor(good_checkpoint, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    tricky = folder / "a\nb.png: ship 0.999\x1b[2J.png"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(tricky, format="PNG")
    (folder / "c\rd\u202e.png").write_text("not an image")
    code = main(["predict", "--checkpoint", str(good_checkpoint), str(folder)])
    out = capsys.readouterr().out
    lines = out.strip().split("\n")
    assert code == 1 and len(lines) == 2
    assert "\x1b" not in out and "\r" not in out and "\u202e" not in out
    assert lines[0].startswith(str(folder / "a\\nb.png: ship 0.999\\x1b[2J.png") + ": ")
    assert lines[1] == str(folder / "c\\rd\\u202e.png") + ": error: not an image in an accepted format" + ACCEPTED
    assert main(["predict", "--checkpoint", str(good_checkpoint), str(folder), "--json"]) == 1
    results = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in results] == [str(tricky), str(folder / "c\rd\u202e.png")]


def test_undecodable_bytes_in_a_name_are_shown_escaped():
    """A Linux file name that is not UTF-8 arrives with surrogates, which cannot even be printed as they are."""
    name = "photo-\udcff.png"
    line = Result(name, error="no such file").as_line()
    assert line == "photo-\\udcff.png: error: no such file"
    line.encode("utf-8")  # printable on any terminal
    assert escape("plain name.png") == "plain name.png"
    assert json.loads(render([Result("a\nb", top=[("cat", 0.5)])], as_json=True))[0]["file"] == "a\nb"


# --- property-based ----------------------------------------------------------------------------------------------

SAVE_AS = {
    "L": ["png", "bmp", "tiff", "webp", "jpeg", "gif", "jpeg2000"],
    "RGB": ["png", "bmp", "tiff", "webp", "jpeg", "jpeg2000"],
    "RGBA": ["png", "tiff", "webp"],
    "LA": ["png", "tiff"],
    "1": ["png", "bmp", "tiff"],
    "P": ["png", "gif"],
    "I;16": ["png", "tiff"],
    "I": ["tiff"],
    "F": ["tiff"],
    "CMYK": ["jpeg", "tiff"],
    "LAB": ["tiff"],
}


@st.composite
def image_files(draw) -> tuple[str, str, bytes]:
    """A small image of a random mode, size and content, encoded in a format that can hold that mode."""
    mode = draw(st.sampled_from(sorted(SAVE_AS)))
    fmt = draw(st.sampled_from(SAVE_AS[mode]))
    width, height = draw(st.integers(1, 80)), draw(st.integers(1, 80))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    bands = len(Image.new(mode, (1, 1)).getbands())
    raw = rng.integers(0, 256, width * height * bands * 4, dtype=np.uint8).tobytes()
    if mode == "F":
        values = rng.normal(0.5, 2, (height, width)).astype(np.float32)
        values[rng.random((height, width)) < 0.1] = np.nan
        image = Image.fromarray(values)
    elif mode in ("I", "I;16"):
        image = Image.fromarray(rng.integers(0, 65536, (height, width)).astype(np.int32 if mode == "I" else np.uint16))
    else:
        image = Image.frombytes(mode, (width, height), raw)
    orientation = draw(st.integers(1, 8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"exif": exif} if fmt in ("png", "jpeg", "webp") else {}))
    return mode, fmt, buffer.getvalue()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=image_files())
def test_any_small_image_becomes_a_32x32_rgb_tensor(file, tmp_path):
    _, fmt, data = file
    path = tmp_path / f"x.{fmt}"
    path.write_bytes(data)
    x = load_image(path)
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    file=image_files(),
    cuts=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8),
    truncate=st.floats(0.05, 1),
)
def test_a_damaged_image_is_a_tensor_or_a_one_line_error(file, cuts, truncate, tmp_path):
    """Bytes overwritten and the end cut off: the result is a tensor or a ValueError, never another exception."""
    _, fmt, data = file
    damaged = bytearray(data)
    for where, value in cuts:
        damaged[int(where * len(damaged))] = value
    path = tmp_path / f"x.{fmt}"
    path.write_bytes(bytes(damaged[: max(1, int(truncate * len(damaged)))]))
    try:
        x = load_image(path)
    except ValueError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert x.shape == (3, 32, 32) and x.dtype == torch.uint8


def test_evaluate_refuses_a_checkpoint_trained_on_other_classes(tiny_run, fake_cifar, tmp_path, cli_error):
    state = torch.load(tiny_run / "best.pt", weights_only=True)
    state["classes"] = [f"kind {k}" for k in range(len(state["classes"]))]  # same head, other classes
    state["dataset"]["classes"] = state["classes"]  # a consistent checkpoint, for other data
    torch.save(state, tmp_path / "other.pt")
    err = cli_error("evaluate", str(tmp_path / "other.pt"), "--data-dir", str(fake_cifar), "--device", "cpu", code=1)
    assert "was trained on classes kind 0, kind 1" in err and "not on the 10 classes of the data" in err
    assert not (tmp_path / "test_metrics.json").exists()
