"""AugMix (data/augmix.py): each operation against a direct computation or PIL, the mixture a convex combination,
seeded, none of its operations a CIFAR-10-C corruption; off, the batches and their random numbers exactly as before;
the Jensen-Shannon consistency loss; the config fields, the flags, and a 1-epoch run that records them."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from cifarlab.base.errors import UsageError
from cifarlab.cli.main import build_parser
from cifarlab.cli.train import overrides_from
from cifarlab.config.train_config import TrainConfig, make_config, validate
from cifarlab.data import augmix as A
from cifarlab.data.batches import Batches, random_crop, random_flip, random_translate
from cifarlab.data.corruptions import CORRUPTIONS
from cifarlab.data.split import normalize
from cifarlab.results.compare_groups import FIELD_DEFAULTS


def images(n: int = 8, seed: int = 0, size: int = 32) -> torch.Tensor:
    """Random uint8 images, with a low-contrast one and a flat channel among them."""
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    if n > 2:
        x[1] = x[1] // 4 + 60
        x[2, 0] = 7
    return x


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def from_pil(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- the operations ------------------------------------------------------------------------------------------------


def test_the_operations_are_the_papers_cifar_set_and_none_is_a_test_corruption():
    assert A.OPS == (
        "autocontrast",
        "equalize",
        "posterize",
        "solarize",
        "rotate",
        "shear_x",
        "shear_y",
        "translate_x",
        "translate_y",
    )
    assert len(CORRUPTIONS) == 15 and not set(A.OPS) & set(CORRUPTIONS)
    families = ("noise", "blur", "snow", "frost", "fog", "bright", "elastic", "pixel", "jpeg", "color", "sharp")
    assert not [op for op in A.OPS for word in families if word in op]
    assert "contrast" not in A.OPS  # the paper's image-quality operations are left out (autocontrast is a stretch)


def test_solarize_inverts_values_at_or_above_each_images_threshold():
    x = images(4)
    t = torch.tensor([0, 128, 200, 256])
    out = A.solarize(x, t)
    expected = torch.where(x.long() < t.view(-1, 1, 1, 1), x.long(), 255 - x.long())
    assert out.dtype == torch.uint8 and torch.equal(out.long(), expected)
    assert torch.equal(out[1], from_pil(ImageOps.solarize(to_pil(x[1]), 128)))


def test_posterize_keeps_the_top_bits():
    x = images(4)
    bits = torch.tensor([1, 3, 4, 8])
    out = A.posterize(x, bits)
    for i, b in enumerate(bits.tolist()):
        assert torch.equal(out[i].long(), (x[i].long() >> (8 - b)) << (8 - b))
        assert torch.equal(out[i], from_pil(ImageOps.posterize(to_pil(x[i]), b)))


def test_autocontrast_stretches_each_channel_to_the_full_range_as_pil_does():
    x = images(6)
    out = A.autocontrast(x)
    for i in range(len(x)):
        assert torch.equal(out[i], from_pil(ImageOps.autocontrast(to_pil(x[i]))))
    lo, hi = x[1].amin(dim=(1, 2)).double(), x[1].amax(dim=(1, 2)).double()
    stretched = ((x[1].double() - lo[:, None, None]) * (255 / (hi - lo))[:, None, None]).clamp(0, 255)
    assert (stretched - out[1].double()).abs().max() < 1 + 1e-9  # a min-max stretch, truncated
    assert out[1].amin() == 0 and out[1].amax() == 255
    assert torch.equal(out[2, 0], x[2, 0])  # a flat channel is left alone


def test_equalize_matches_pil_exactly():
    x = images(6)
    x[3] = (x[3] // 64) * 64  # only four values
    out = A.equalize(x)
    for i in range(len(x)):
        assert torch.equal(out[i], from_pil(ImageOps.equalize(to_pil(x[i])))), i


def test_a_known_shift_moves_a_pixel_where_expected():
    x = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    x[:, :, 10, 12] = 200
    moved = A.shift(x, torch.tensor([3, -2]), torch.tensor([0, 5]))  # output (y, x) = input (y + dy, x + dx)
    assert moved[0, :, 10, 9].tolist() == [200] * 3 and int(moved[0].sum()) == 600
    assert moved[1, :, 5, 14].tolist() == [200] * 3 and int(moved[1].sum()) == 600
    kinds, amounts = torch.tensor([3, 4]), torch.tensor([3.0, 5.0])  # translate_x 3, translate_y 5 through warp
    warped = A.warp(x, A.pixel_matrices(kinds, amounts, 32, 32))
    assert torch.equal(warped, A.shift(x, torch.tensor([3, 0]), torch.tensor([0, 5])))
    assert torch.equal(A.shift(images(1), torch.tensor([40]), torch.tensor([0])), torch.zeros(1, 3, 32, 32).byte())


def test_a_quarter_turn_is_a_rotation_of_the_pixel_grid():
    x = images(2)
    turned = A.warp(x, A.pixel_matrices(torch.tensor([0, 0]), torch.tensor([90.0, -90.0]), 32, 32))
    assert torch.equal(turned[0], torch.rot90(x[0], 1, dims=(1, 2)))  # counter-clockwise, as Image.rotate
    assert torch.equal(turned[1], torch.rot90(x[1], -1, dims=(1, 2)))


@pytest.mark.parametrize("kind, amount", [(0, 8.0), (0, -5.0), (1, 0.09), (1, -0.05), (2, 0.07), (3, -3.0)])
def test_rotations_shears_and_shifts_match_pil_to_rounding(kind, amount):
    x = images(1)
    pixel = A.pixel_matrices(torch.tensor([kind]), torch.tensor([amount]), 32, 32)
    if kind == 0:
        expected = to_pil(x[0]).rotate(amount, resample=Image.BILINEAR)
    else:
        expected = to_pil(x[0]).transform((32, 32), Image.AFFINE, tuple(pixel[0].flatten().tolist()), Image.BILINEAR)
    diff = (A.warp(x, pixel)[0].int() - from_pil(expected).int()).abs()
    assert diff.max() <= 1  # PIL truncates where warp rounds to the nearest value
    assert (diff == 0).float().mean() > 0.3


def test_magnitudes_follow_the_papers_levels():
    op = torch.tensor([A.OPS.index(name) for name in ("posterize", "solarize", "rotate", "shear_x", "translate_y")])
    level = torch.full((5,), 2.9, dtype=torch.float64)
    sign = torch.tensor([-1.0, -1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    got = A.magnitudes(op, level, sign, 32).tolist()
    assert got == pytest.approx([3, 256 - 74, -8, 0.087, -3])  # bits and thresholds take no sign


# --- the mixture -----------------------------------------------------------------------------------------------------


def test_a_view_is_float_in_range_and_the_jsd_batch_holds_the_clean_images_first():
    x = images(8)
    view = A.augmix_batch(x, A.AugMix(), gen())
    assert view.shape == x.shape and view.dtype == torch.float32
    assert view.min() >= 0 and view.max() <= 255
    assert (view - x.float()).abs().amax(dim=(1, 2, 3)).min() > 0  # every image changed
    three = A.augmix_batch(x, A.AugMix(views=2), gen())
    assert three.shape == (24, 3, 32, 32) and torch.equal(three[:8], x.float())
    assert not torch.equal(three[8:16], three[16:])  # two independent views


@pytest.mark.parametrize("settings", [A.AugMix(), A.AugMix(width=1, depth=2, severity=10), A.AugMix(depth=1)])
def test_the_same_seed_gives_the_same_views(settings):
    x = images(8, size=24)
    first = A.augmix_batch(x, settings, gen(3))
    assert torch.equal(first, A.augmix_batch(x, settings, gen(3)))
    assert not torch.equal(first, A.augmix_batch(x, settings, gen(4)))


def test_the_mixture_is_a_convex_combination_of_the_image_and_its_chains(monkeypatch):
    chained: list[torch.Tensor] = []
    original = A.chains
    monkeypatch.setattr(A, "chains", lambda x, s, g: chained.append(original(x, s, g)) or chained[-1])
    x = images(16)
    out = A.mix(x, A.AugMix(width=3), gen(1))
    every = torch.cat([x[None].float(), chained[0].view(3, *x.shape).float()])  # (1 + width, N, C, H, W)
    assert torch.all(out >= every.amin(0) - 1e-3) and torch.all(out <= every.amax(0) + 1e-3)
    assert (out - x.float()).abs().amax(dim=(1, 2, 3)).min() > 0


def test_chains_give_each_row_its_own_chain_back_in_its_place(monkeypatch):
    """Rows are sorted by operation at every step; a counting operation shows each comes back to its own row."""
    monkeypatch.setattr(A, "apply_sorted", lambda x, op, _: x.add_((op >= 0).to(torch.uint8).view(-1, 1, 1, 1)))
    x = (torch.arange(12, dtype=torch.uint8) * 20).view(12, 1, 1, 1).expand(12, 3, 8, 8).contiguous()
    out = A.chains(x, A.AugMix(depth=-1), gen(2))
    steps = (out.long() - x.long()).amax(dim=(1, 2, 3))
    assert torch.equal(out.long() - x.long(), steps.view(-1, 1, 1, 1).expand_as(x))  # one count per row
    assert set(steps.tolist()) <= {1, 2, 3} and len(set(steps.tolist())) > 1  # random depths 1-3


# --- in Batches -------------------------------------------------------------------------------------------------------


def expected_batches(x, y, batch_size, augment, padding, seed, mean, std):
    """What Batches yielded before AugMix existed: the same draws from the same generator, computed directly."""
    g = gen(seed)
    flip_first = torch.rand(len(x), generator=g) < 0.5 if augment == "translate-altflip" else None
    order = torch.randperm(len(x), generator=g)
    out = []
    for start in range(0, len(x), batch_size):
        idx = order[start : start + batch_size]
        b = x[idx]
        if augment == "crop-flip":
            b = random_flip(random_crop(b, padding, g), g)
        elif augment == "translate-altflip":
            b = random_translate(b, padding, g)
            b = torch.where(flip_first[idx][:, None, None, None], b.flip(3), b)
        out.append((normalize(b, mean, std), y[idx]))
    return out, g.get_state()


@pytest.mark.parametrize("augment", ["none", "crop-flip", "translate-altflip"])
def test_off_the_batches_and_their_random_numbers_are_exactly_as_before(augment):
    x, y = images(40), torch.arange(40) % 10
    mean, std = torch.full((3,), 0.47), torch.full((3,), 0.25)
    config = make_config("fast" if augment == "translate-altflip" else "seed")
    assert config.augmix is False and A.augmix_from(config) is None
    batches = Batches(
        x, y, 16, mean, std, shuffle=True, augment=augment, crop_padding=2, seed=5, augmix=A.augmix_from(config)
    )
    got = list(batches)
    expected, state = expected_batches(x, y, 16, augment, 2, 5, mean, std)
    assert len(got) == len(expected)
    for (gx, gy), (ex, ey) in zip(got, expected, strict=True):
        assert torch.equal(gx, ex) and torch.equal(gy, ey)
    assert torch.equal(batches.generator.get_state(), state)  # not one random number more


def test_batches_with_augmix_yield_views_and_with_jsd_three_times_the_images():
    x, y = images(20), torch.arange(20) % 10
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    plain = list(Batches(x, y, 8, mean, std, shuffle=True, augment="crop-flip", seed=1))
    mixed = list(Batches(x, y, 8, mean, std, shuffle=True, augment="crop-flip", seed=1, augmix=A.AugMix()))
    assert [len(b[0]) for b in mixed] == [8, 8, 4] and all(
        torch.equal(a[1], b[1]) for a, b in zip(plain, mixed, strict=True)
    )
    assert all(b[0].dtype == torch.float32 for b in mixed) and not torch.equal(plain[0][0], mixed[0][0])
    again = list(Batches(x, y, 8, mean, std, shuffle=True, augment="crop-flip", seed=1, augmix=A.AugMix()))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(mixed, again, strict=True))
    jsd = list(Batches(x, y, 8, mean, std, shuffle=True, augment="crop-flip", seed=1, augmix=A.AugMix(views=2)))
    assert [(len(b[0]), len(b[1])) for b in jsd] == [(24, 8), (24, 8), (12, 4)]
    assert torch.equal(jsd[0][0][:8], plain[0][0])  # the clean images: the crop and flip alone, same draws


def test_augmix_costs_less_than_a_training_step(capsys):
    """Throughput of Batches with and without AugMix on a CIFAR-sized batch of 512 (printed; -s shows it)."""
    x, y = images(2048), torch.zeros(2048, dtype=torch.long)
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    rates = {}
    for name, settings in (("off", None), ("augmix", A.AugMix()), ("augmix+jsd views", A.AugMix(views=2))):
        batches = Batches(x, y, 512, mean, std, shuffle=True, augment="translate-altflip", crop_padding=2,
                          augmix=settings)  # fmt: skip
        t0 = time.perf_counter()
        seen = sum(len(b[1]) for b in batches)
        rates[name] = seen / (time.perf_counter() - t0)
    with capsys.disabled():
        print(" ".join(f"{k}: {v:,.0f} img/s" for k, v in rates.items()))
    assert rates["augmix"] > 1000  # the fast recipe trains ~2,500-4,000 images/s here; measured ~10,000+


# --- the consistency loss and the training step -----------------------------------------------------------------------


def test_the_jensen_shannon_term_is_zero_for_equal_predictions_and_positive_otherwise(engine):
    js = engine("jensen_shannon")
    logits = torch.randn(6, 10, generator=gen())
    assert abs(float(js(logits, logits, logits.clone()))) < 1e-6
    other = torch.randn(6, 10, generator=gen(1))
    value = float(js(logits, other, logits))
    p = torch.stack([F.softmax(z, 1) for z in (logits, other, logits)])
    mean = p.mean(0)
    direct = float(((p * (p.log() - mean.log())).sum(-1)).mean(0).mean())  # mean KL to the average prediction
    assert value > 0 and value == pytest.approx(direct, rel=1e-5)


def test_a_jsd_step_adds_the_weighted_term_to_the_clean_cross_entropy(engine):
    train_step, js = engine("train_step"), engine("jensen_shannon")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    x, y = torch.randn(15, 3, 2, 2), torch.tensor([0, 1, 2, 3, 0])
    with torch.no_grad():
        logits = model(x)
    expected = F.cross_entropy(logits[:5], y) + 12 * js(*logits.split(5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    loss, clean = train_step(model, optimizer, x, y, 0.0, False, True, 12.0)
    assert clean.shape == (5, 4) and torch.allclose(clean, logits[:5])
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    plain, _ = train_step(model, optimizer, x[:5], y)
    assert float(plain) == pytest.approx(float(F.cross_entropy(logits[:5], y)), rel=1e-5)


# --- the config, the flags, old runs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, message",
    [
        ({"augmix_width": 0}, "augmix_width: must be between 1 and 10"),
        ({"augmix_depth": 0}, "augmix_depth: must be -1 (random 1-3) or between 1 and 10"),
        ({"augmix_severity": 11}, "augmix_severity: must be between 1 and 10"),
        ({"augmix_jsd": -1}, "augmix_jsd: must be between 0 and 100"),
        ({"augmix": 1}, "augmix: expected true or false"),
        ({"augmix_jsd": 12}, "augmix_jsd: the consistency loss compares AugMix views"),
    ],
)
def test_bad_augmix_values_are_one_line_naming_the_field(values, message):
    with pytest.raises(UsageError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        validate(TrainConfig.from_dict(values))


def test_old_configs_without_the_fields_load_with_augmix_off(tmp_path):
    values = {k: v for k, v in make_config("fast").to_dict().items() if not k.startswith("augmix")}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    config = TrainConfig.load(path)
    assert (config.augmix, config.augmix_width, config.augmix_depth, config.augmix_severity) == (False, 3, -1, 3)
    assert config.augmix_jsd == 0.0 and A.augmix_from(config) is None
    assert FIELD_DEFAULTS["augmix"] is False and FIELD_DEFAULTS["augmix_jsd"] == 0.0  # compare's old-run defaults


def test_the_flags_turn_augmix_on_for_any_recipe():
    parse = build_parser().parse_args
    assert "augmix" not in overrides_from(parse(["train", "--recipe", "fast"]))
    config = make_config("fast", **overrides_from(parse(["train", "--recipe", "fast", "--augmix"])))
    assert A.augmix_from(config) == A.AugMix(3, -1, 3, 1)
    config = make_config("seed", **overrides_from(parse(["train", "--augmix-jsd", "12"])))
    assert config.augmix and config.augmix_jsd == 12.0 and A.augmix_from(config) == A.AugMix(views=2)


def test_a_one_epoch_run_with_augmix_finishes_and_records_it(small_config, tmp_path, engine):
    from cifarlab.engine.train import train

    config = small_config(out=tmp_path, epochs=1, limit_train=200, augment="crop-flip", augmix=True, augmix_jsd=12.0)
    run = train(config)
    saved = json.loads((run / "config.json").read_text())
    assert saved["augmix"] is True and saved["augmix_jsd"] == 12.0 and saved["augmix_width"] == 3
    summary = json.loads((run / "run.json").read_text())
    assert 0 <= summary["test_top1"] <= 1 and summary["train_images"] == 200
