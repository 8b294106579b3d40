"""``cifarlab predict`` on the user's own files: any format, size and mode; bad files reported, others classified."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifarlab.base.errors import CheckpointError
from cifarlab.cli.main import main
from cifarlab.data.cifar10 import CLASSES, load_cifar10
from cifarlab.data.split import normalize
from cifarlab.models.registry import build_model
from cifarlab.runs.checkpoint import load_checkpoint, model_from_checkpoint
from cifarlab.tools import predict
from cifarlab.tools.predict import load_image, predict_files

NOT_AN_IMAGE = "not an image in an accepted format (PNG, JPEG, BMP, GIF, TIFF, WebP...; never EPS or PDF)"


def as_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def enlarge(image: Image.Image, size: int, width: int) -> Image.Image:
    """Blow a 32x32 image up to size x size, centred on a wider grey canvas: a 'photo' of another shape."""
    canvas = Image.new("RGB", (width, size), (128, 128, 128))
    canvas.paste(image.resize((size, size), Image.Resampling.NEAREST), ((width - size) // 2, 0))
    return canvas


@pytest.fixture(scope="module")
def photos(tmp_path_factory, fake_cifar) -> tuple[Path, list[str]]:
    """One test image of each class, saved in assorted formats, sizes and modes; the class is the file name."""
    data = load_cifar10(fake_cifar)
    folder = tmp_path_factory.mktemp("photos")
    (folder / "more").mkdir()
    labels = []
    for c, name in enumerate(data.classes):
        i = int(torch.nonzero(data.test_labels == c)[0])
        image, stem = as_pil(data.test_images[i]), f"{c}-{name}"
        if c % 4 == 0:
            enlarge(image, 256, 400).save(folder / f"{stem}.jpg", quality=95)
        elif c % 4 == 1:
            enlarge(image, 96, 96).convert("RGBA").save(folder / f"{stem}.png")
        elif c % 4 == 2:
            image.save(folder / "more" / f"{stem}.webp", lossless=True)
        else:
            enlarge(image, 64, 100).save(folder / f"{stem}.bmp")
        labels.append(name)
    (folder / "readme.txt").write_text("not an image, and skipped: folders are scanned by extension")
    (folder / ".hidden.png").write_bytes(b"skipped too")
    return folder, labels


def test_a_folder_of_photos_gets_sensible_top3_lists(tiny_run, photos):
    folder, labels = photos
    results = predict_files(tiny_run, [folder], top_k=3)
    assert len(results) == 10 and all(r.error is None for r in results)
    correct = 0
    for r in results:
        truth = Path(r.file).stem.split("-", 1)[1]
        assert len(r.top) == 3
        probs = [p for _, p in r.top]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        correct += r.top[0][0] == truth
    assert correct >= 9  # the tiny run scores 100% on this generated data; one JPEG may blur past it


def test_a_32x32_png_is_classified_exactly_as_in_evaluation(tiny_run, fake_cifar, tmp_path):
    """No resize happens at 32x32, so predict must give the evaluation pipeline's probabilities."""
    data = load_cifar10(fake_cifar)
    as_pil(data.test_images[0]).save(tmp_path / "x.png")
    assert torch.equal(load_image(tmp_path / "x.png"), data.test_images[0])
    state = load_checkpoint(tiny_run)
    model = model_from_checkpoint(state)
    with torch.no_grad():
        x = normalize(data.test_images[:1], torch.tensor(state["mean"]), torch.tensor(state["std"]))
        expected = model(x).softmax(1)[0]
    (result,) = predict_files(tiny_run, [tmp_path / "x.png"], top_k=10)
    got = {c: p for c, p in result.top}
    for j, name in enumerate(state["classes"]):
        assert got[name] == pytest.approx(float(expected[j]), abs=1e-6)


def test_modes_are_converted_to_rgb(tmp_path):
    Image.new("RGBA", (40, 40), (10, 20, 30, 0)).save(tmp_path / "clear.png")  # fully transparent
    Image.new("L", (50, 20), 77).save(tmp_path / "grey.png")
    Image.fromarray(np.full((20, 20), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")  # 16-bit grey
    Image.new("CMYK", (33, 33), (0, 255, 255, 0)).save(tmp_path / "print.jpg")
    Image.new("P", (10, 10), 3).save(tmp_path / "palette.gif")
    assert torch.all(load_image(tmp_path / "clear.png") == 255)  # transparency shows the white background
    assert torch.all(load_image(tmp_path / "grey.png") == 77)
    assert torch.all(load_image(tmp_path / "deep.png") == 255)
    red = load_image(tmp_path / "print.jpg").float().mean(dim=(1, 2))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    for name in ("clear.png", "grey.png", "deep.png", "print.jpg", "palette.gif"):
        image = load_image(tmp_path / name)
        assert image.shape == (3, 32, 32) and image.dtype == torch.uint8


def test_exif_orientation_is_applied(tmp_path):
    """A phone photo stored sideways: red left half, blue right, with 'rotate 90 degrees clockwise' in EXIF."""
    image = Image.new("RGB", (64, 32), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    x = load_image(tmp_path / "phone.jpg").float()
    assert x[0, :12].mean() > 200 and x[2, :12].mean() < 60  # upright: red on top
    assert x[2, -12:].mean() > 200 and x[0, -12:].mean() < 60  # blue below


def test_bad_files_get_their_own_line_and_the_others_are_still_classified(tiny_run, photos, tmp_path, capsys):
    folder, _ = photos
    good = next(p for p in sorted(folder.glob("*.png")) if not p.name.startswith("."))
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "fake.jpg").write_text("not really a jpeg")
    (tmp_path / "cut.jpg").write_bytes((sorted(folder.glob("*.jpg"))[0]).read_bytes()[:400])
    (tmp_path / "empty").mkdir()
    inputs = [
        tmp_path / "notes.txt",
        good,
        tmp_path / "fake.jpg",
        tmp_path / "missing.png",
        tmp_path / "cut.jpg",
        tmp_path / "empty",
    ]
    code = main(["predict", "--checkpoint", str(tiny_run), *map(str, inputs)])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert code == 1 and "Traceback" not in err
    assert "5 of 6 files could not be classified" in err
    assert lines[0] == f"{tmp_path / 'notes.txt'}: error: " + NOT_AN_IMAGE
    assert lines[1].startswith(f"{good}: ") and "error" not in lines[1] and lines[1].count(",") == 2
    assert lines[2] == f"{tmp_path / 'fake.jpg'}: error: " + NOT_AN_IMAGE
    assert lines[3] == f"{tmp_path / 'missing.png'}: error: no such file"
    assert lines[4].startswith(f"{tmp_path / 'cut.jpg'}: error: damaged or unreadable image")
    assert lines[5] == f"{tmp_path / 'empty'}: error: no image files in this folder"


def test_json_output_and_exit_code_0_when_all_succeed(tiny_run, photos, capsys):
    folder, _ = photos
    assert main(["predict", "--checkpoint", str(tiny_run), str(folder), "--json", "--top-k", "5"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 10
    for r in results:
        assert set(r) == {"file", "predictions"} and len(r["predictions"]) == 5
        assert set(r["predictions"][0]) == {"class", "probability"}


def test_json_reports_errors_too(tiny_run, tmp_path, capsys):
    (tmp_path / "a.txt").write_text("x")
    assert main(["predict", "--checkpoint", str(tiny_run), str(tmp_path / "a.txt"), "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == [{"file": str(tmp_path / "a.txt"), "error": NOT_AN_IMAGE}]


@pytest.mark.parametrize("k", ["0", "x"])
def test_a_bad_top_k_is_a_usage_error(tiny_run, photos, k, capsys):
    folder, _ = photos
    with pytest.raises(SystemExit) as info:
        raise SystemExit(main(["predict", "--checkpoint", str(tiny_run), str(folder), "--top-k", k]))
    assert info.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_a_top_k_over_the_class_count_gives_every_class_once(tiny_run, tmp_path):
    """--top-k is capped at the model's classes (10 here), as training caps top-3 on 2 or 3 classes."""
    Image.new("RGB", (32, 32), (200, 40, 40)).save(tmp_path / "x.png")
    (result,) = predict_files(tiny_run, [tmp_path / "x.png"], top_k=11)
    assert sorted(c for c, _ in result.top) == sorted(CLASSES)
    assert sum(p for _, p in result.top) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_predict_applies_the_runs_test_time_augmentation(tiny_run, tmp_path, level):
    """README: predict scores an image as the run's own test did, with its TTA level (0, mirror, or shifts too)."""
    from cifarlab.engine.infer import tta_logits

    state = torch.load(tiny_run / "best.pt", weights_only=True)
    state["config"]["tta"] = level
    torch.save(state, tmp_path / "tta.pt")
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # asymmetric: mirroring matters
    Image.fromarray(noise).save(tmp_path / "noise.png")
    model = model_from_checkpoint(load_checkpoint(tmp_path / "tta.pt")).eval()
    x = normalize(
        torch.from_numpy(noise).permute(2, 0, 1)[None], torch.tensor(state["mean"]), torch.tensor(state["std"])
    )
    with torch.no_grad():
        plain = model(x).softmax(1)[0]
        expected = {
            0: plain,
            1: (0.5 * (model(x) + model(x.flip(3)))).softmax(1)[0],
            2: tta_logits(model, x, 2).softmax(1)[0],
        }[level]
    (result,) = predict_files(tmp_path / "tta.pt", [tmp_path / "noise.png"], top_k=10)
    got = dict(result.top)
    for j, name in enumerate(state["classes"]):
        assert got[name] == pytest.approx(float(expected[j]), abs=1e-6)
    if level:
        assert (expected - plain).abs().max() > 1e-4  # the augmented views did change the answer


def test_predict_uses_the_checkpoints_image_size_and_class_names(tmp_path, monkeypatch):
    """A model trained at 64 px on three named classes: each photo is decoded at 64 x 64 and named by its classes."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3).eval()  # global pooling: takes 64 x 64 images
    mean, std = [0.5, 0.4, 0.3], [0.25, 0.25, 0.25]
    state = {
        "model": model.state_dict(),
        "model_name": "resnet18",
        "config": {"seed": 0, "val_size": 10, "tta": 0},
        "epoch": 1,
        "mean": mean,
        "std": std,
        "classes": ["tench", "church", "golf ball"],
        "image_size": 64,
    }
    torch.save(state, tmp_path / "big.pt")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    seen = []
    classify = predict.classify

    def spy(model, images, *args, **kwargs):
        seen.append(images)
        return classify(model, images, *args, **kwargs)

    monkeypatch.setattr(predict, "classify", spy)
    (result,) = predict_files(tmp_path / "big.pt", [tmp_path / "photo.png"], top_k=3)
    x = load_image(tmp_path / "photo.png", 64)
    assert seen[0].shape == (1, 3, 64, 64) and torch.equal(seen[0][0], x)
    with torch.no_grad():
        expected = model(normalize(x[None], torch.tensor(mean), torch.tensor(std))).softmax(1)[0]
    got = dict(result.top)
    assert set(got) == {"tench", "church", "golf ball"}
    for j, name in enumerate(state["classes"]):
        assert got[name] == pytest.approx(float(expected[j]), abs=1e-5)


def test_a_checkpoint_with_a_bad_image_size_is_refused(tiny_run, tmp_path, photos):
    state = torch.load(tiny_run / "best.pt", weights_only=True)
    state["image_size"] = 10**6
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"'image_size' is not a whole number from 16 to 512"):
        predict_files(tmp_path / "bad.pt", [photos[0]])
