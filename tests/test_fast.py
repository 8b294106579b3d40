"""Fast-training techniques: whitening, the translate-altflip augmentation, TTA, EMA/lookahead, the fast recipe."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.base.errors import UsageError
from cifarlab.config.fast import model_kwargs
from cifarlab.config.train_config import RECIPES, TrainConfig, make_config
from cifarlab.data.batches import Batches
from cifarlab.data.cifar10 import load_cifar10
from cifarlab.engine.averaging import WeightAverager
from cifarlab.engine.infer import tta_logits
from cifarlab.engine.optim import RunLength, param_groups
from cifarlab.models.fastcnn import init_whitening, patch_whitening
from cifarlab.models.registry import build_model

pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures in conftest.py


def correlated_images(n: int = 400, seed: int = 0) -> torch.Tensor:
    """Smooth, colour-correlated images: neighbouring pixels and channels are strongly correlated."""
    gen = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.randn(n, 1, 8, 8, generator=gen), size=32, mode="bilinear", align_corners=False)
    colour = torch.randn(n, 3, 32, 32, generator=gen) * 0.3
    return 2.0 * base + colour + 0.5


def test_whitening_makes_patch_covariance_identity():
    images = correlated_images()
    weight, bias = patch_whitening(images, kernel_size=2, eps=1e-6)
    assert weight.shape == (24, 3, 2, 2) and bias.shape == (24,)
    out = F.conv2d(images, weight[:12], bias[:12])  # the second half are the same filters negated
    feats = out.permute(0, 2, 3, 1).reshape(-1, 12).double()
    cov = torch.cov(feats.T)
    assert torch.allclose(cov, torch.eye(12, dtype=torch.float64), atol=0.02)
    assert feats.mean(0).abs().max() < 0.02
    raw = F.unfold(images, 2).transpose(1, 2).reshape(-1, 12)
    assert (torch.cov(raw.T) - torch.eye(12)).abs().max() > 1  # the input patches were far from white
    assert torch.equal(weight[12:], -weight[:12])


def test_whitening_initialises_a_frozen_stem_left_out_of_the_optimiser():
    model = build_model("fastcnn", width=8, frozen_stem=True, frozen_bn_scale=True)
    init_whitening(model, correlated_images(50))
    assert not model.stem.weight.requires_grad and not model.stem.bias.requires_grad
    config = make_config("fast", model_width=8)
    groups = param_groups(model, config)
    in_optimizer = {id(p) for g in groups for p in g["params"]}
    assert id(model.stem.weight) not in in_optimizer
    assert id(model.group1.norm1.weight) not in in_optimizer  # frozen BatchNorm scale
    assert id(model.group1.norm1.bias) in in_optimizer
    assert groups[1]["lr"] == pytest.approx(config.lr * 64) and groups[1]["weight_decay"] == pytest.approx(
        config.weight_decay / 64
    )
    assert all(p.requires_grad for g in groups for p in g["params"])


def test_dirac_init_starts_convolutions_as_identity():
    model = build_model("fastcnn", width=8, dirac=True)
    conv = model.group1.conv2  # 8 -> 8 channels: all filters are identities
    x = torch.randn(2, 8, 5, 5)
    assert torch.allclose(conv(x), x, atol=1e-6)


def translate_batches(images: torch.Tensor, labels: torch.Tensor, seed: int = 0, padding: int = 2) -> Batches:
    return Batches(
        images,
        labels,
        batch_size=16,
        mean=torch.zeros(3),
        std=torch.ones(3),
        shuffle=True,
        augment="translate-altflip",
        crop_padding=padding,
        seed=seed,
    )


def test_translate_altflip_keeps_labels_aligned_and_shifts_at_most_the_padding():
    n = 64
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    images[:, 0] = (torch.arange(n) * 3).to(torch.uint8)[:, None, None]  # channel 0 names the image
    images[:, 1, 16, 16] = 255  # one bright pixel in the middle
    labels = torch.arange(n)
    seen = []
    for x, y in translate_batches(images, labels):
        assert torch.allclose(x[:, 0].mean((1, 2)) * 255, (y * 3).float(), atol=1e-3)
        rows, cols = torch.nonzero(x[:, 1] > 0.5, as_tuple=True)[1:]
        assert ((rows - 16).abs() <= 2).all() and ((cols - 16).abs() <= 3).all()  # a mirror moves it one more
        seen.append(y)
    assert sorted(torch.cat(seen).tolist()) == list(range(n))


def flips(batches: Batches) -> dict[int, bool]:
    """Which image (by label) each pass mirrored: the images are bright on the left only."""
    return {int(label): bool(row[0, 0, -1] > row[0, 0, 0]) for x, y in batches for row, label in zip(x, y, strict=True)}


def test_flip_alternates_across_epochs_and_is_seeded():
    n = 200
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    images[:, :, :, :8] = 255
    batches = translate_batches(images, torch.arange(n), padding=0)
    first, second, third = flips(batches), flips(batches), flips(batches)
    assert all(second[i] != first[i] for i in range(n))  # every image flips the other way in the next epoch
    assert first == third
    assert 60 < sum(first.values()) < 140  # about half mirrored at first
    again = translate_batches(images, torch.arange(n), padding=0)
    assert flips(again) == first
    other = translate_batches(images, torch.arange(n), seed=1, padding=0)
    assert flips(other) != first


def test_augmented_batches_are_deterministic_under_the_seed():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (100,), generator=gen)
    a = [(x.clone(), y.clone()) for x, y in translate_batches(images, labels, seed=3)]
    b = [(x.clone(), y.clone()) for x, y in translate_batches(images, labels, seed=3)]
    c = [(x.clone(), y.clone()) for x, y in translate_batches(images, labels, seed=4)]
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True))
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c, strict=True))


def test_tta_shapes_and_level_zero_is_the_plain_model():
    model = build_model("fastcnn", width=8).eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        for level in (0, 1, 2):
            assert tta_logits(model, x, level).shape == (5, 10)
        assert torch.equal(tta_logits(model, x, 0), model(x))
    with pytest.raises(ValueError):
        tta_logits(model, x, 3)


def test_tta_does_not_lower_accuracy_of_a_trained_toy_model(fake_cifar):
    torch.manual_seed(0)
    data = load_cifar10(fake_cifar)
    mean, std = torch.tensor([0.3, 0.3, 0.3]), torch.tensor([0.2, 0.2, 0.2])
    model = build_model("fastcnn", width=8, dirac=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    train = Batches(
        data.train_images,
        data.train_labels,
        50,
        mean,
        std,
        shuffle=True,
        augment="translate-altflip",
        crop_padding=2,
        seed=0,
    )
    model.train()
    for _ in range(3):
        for x, y in train:
            loss = F.cross_entropy(model(x) * 9, y, label_smoothing=0.2)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    test = Batches(data.test_images, data.test_labels, 100, mean, std)
    with torch.no_grad():
        acc = {
            level: sum((tta_logits(model, x, level).argmax(1) == y).sum().item() for x, y in test)
            for level in (0, 1, 2)
        }
    assert acc[0] >= 150  # trained: 75%+ of 200 (chance is 20 images)
    assert acc[1] >= acc[0] and acc[2] >= acc[0]


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1, bias=False)
        self.bn = nn.BatchNorm1d(1)


def set_weight(model: Tiny, value: float) -> None:
    with torch.no_grad():
        model.lin.weight.fill_(value)


def test_ema_update_moves_the_average_not_the_weights():
    model = Tiny()
    set_weight(model, 1.0)
    ema = WeightAverager(model, "ema", decay=0.9, every=1, length=RunLength(10, 10))
    set_weight(model, 3.0)
    model.bn.num_batches_tracked.fill_(7)
    ema.update(model, decay=0.75)
    assert torch.allclose(ema.shadow.lin.weight, torch.full((1, 2), 0.75 * 1.0 + 0.25 * 3.0))
    assert torch.allclose(model.lin.weight, torch.full((1, 2), 3.0))  # training weights untouched
    assert ema.shadow.bn.num_batches_tracked.item() == 7  # counters are copied, not averaged
    assert ema.scored(model) is ema.shadow


def test_lookahead_update_resets_weights_to_the_average():
    model = Tiny()
    set_weight(model, 1.0)
    look = WeightAverager(model, "lookahead", decay=0.9, every=1, length=RunLength(10, 10))
    set_weight(model, 3.0)
    look.update(model, decay=0.5)
    assert torch.allclose(model.lin.weight, torch.full((1, 2), 2.0))
    assert torch.allclose(look.shadow.lin.weight, torch.full((1, 2), 2.0))
    assert look.scored(model) is model


def test_averaging_schedule_ramps_in_and_updates_every_k_steps_and_at_the_end():
    model = Tiny()
    set_weight(model, 0.0)
    avg = WeightAverager(model, "ema", decay=0.9, every=4, length=RunLength(10, 10))
    assert avg.decay_at(0) == 0.0
    assert avg.decay_at(10) == pytest.approx(0.9**4)
    assert avg.decay_at(5) == pytest.approx(0.9**4 * 0.125)
    updates = []
    avg.update = lambda m, decay: updates.append((avg.steps, decay))  # record instead of averaging
    for _ in range(10):
        avg.step(model)
    assert [s for s, _ in updates] == [4, 8, 10]  # every 4 steps, and always at the last step
    assert updates[-1][1] == pytest.approx(0.9**4)


def test_averaging_follows_a_run_length_re_planned_while_training():
    model = Tiny()
    length = RunLength(total_steps=10, steps_per_epoch=10)
    avg = WeightAverager(model, "ema", decay=0.9, every=4, length=length)
    updates = []
    avg.update = lambda m, decay: updates.append((avg.steps, decay))
    for _ in range(5):
        avg.step(model)
    length.total_steps = 6  # the pacer of a time-budget run shortened the run
    avg.step(model)
    assert [s for s, _ in updates] == [4, 6]  # the new last step gets the final update
    assert updates[-1][1] == pytest.approx(0.9**4)  # at full decay: the ramp ends at the new end


def test_seed_recipe_leaves_every_fast_switch_off():
    config = make_config("seed")
    defaults = TrainConfig()
    for name in (
        "whiten",
        "dirac_init",
        "frozen_bn_scale",
        "bias_lr_scale",
        "weight_averaging",
        "tta",
        "test_checkpoint",
        "channels_last",
        "compile",
        "time_budget",
        "train_steps",
        "model_width",
    ):
        assert getattr(config, name) == getattr(defaults, name)
    assert config.model == "mycnn" and model_kwargs(config) == {}
    assert "fast" in RECIPES and "resnet18-cifar" in RECIPES


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(model="mycnn", whiten=True), "only apply to fastcnn"),
        (dict(model="mycnn", model_width=32), "only apply to fastcnn"),
        (dict(weight_averaging="swa"), "weight_averaging"),
        (dict(tta=3), "tta must be"),
        (dict(test_checkpoint="first"), "test_checkpoint"),
        (dict(average_decay=1.0), "average_decay"),
        (dict(time_budget=-5.0), "--time-budget"),
        (dict(augment="mixup"), "augmentation"),
    ],
)
def test_bad_fast_settings_are_one_line_usage_errors(overrides, message):
    with pytest.raises(UsageError, match=message):
        make_config("fast", **overrides)


def test_cli_rejects_width_for_models_without_one(capsys):
    from cifarlab.cli.main import main

    assert main(["train", "--model", "mycnn", "--width", "8", "--epochs", "1"]) == 2
    assert "only apply to fastcnn" in capsys.readouterr().err


def test_fast_recipe_trains_and_tests_with_tta_and_ema(fake_cifar, tmp_path):
    from cifarlab.engine.train import train
    from cifarlab.runs.checkpoint import load_checkpoint
    from cifarlab.tools.evaluate import evaluate

    config = make_config(
        "fast",
        model_width=8,
        epochs=2,
        batch_size=100,
        val_size=100,
        data_dir=str(fake_cifar),
        out=str(tmp_path),
        name="fast",
        device="cpu",
        weight_averaging="ema",
        tta=2,
    )
    run = train(config)
    summary = json.loads((run / "run.json").read_text())
    assert summary["tta"] == 2 and summary["test_checkpoint"] == "last.pt"
    state = load_checkpoint(run, "last.pt")
    assert state["model_kwargs"] == {"dirac": True, "frozen_bn_scale": True, "frozen_stem": True, "width": 8}
    assert "train_model" in state and "averager" in state
    assert state["scheduler"]["last_epoch"] == 2 * 9  # 900 images / 100 per batch, two epochs
    # rebuilt from the checkpoint alone, same TTA
    again = evaluate(run / "last.pt", out=tmp_path / "again", data_dir=str(fake_cifar))
    assert again["top1"] == pytest.approx(summary["test_top1"])
