"""The Muon optimizer (``optimizer: muon``): orthogonalised steps for conv weights, Nesterov SGD for the rest."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cifarlab.base.errors import UsageError
from cifarlab.config.train_config import make_config
from cifarlab.engine.optim import MuonSGD, make_optimizer, orthogonalize
from cifarlab.engine.train import train
from cifarlab.models.registry import build_model
from cifarlab.runs.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures in conftest.py


@pytest.mark.parametrize("shape", [(16, 72), (72, 16), (32, 32)])
def test_orthogonalize_pulls_every_singular_value_near_one_and_keeps_the_directions(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    g[:, 0] *= 50  # one direction far stronger than the others, as in a real gradient
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    out = orthogonalize(g)
    assert out.shape == g.shape
    singular = torch.linalg.svdvals(out)
    before = s / s.max()
    assert singular.max() < 1.3 and (singular > 0.6).float().mean() >= 0.9  # the bulk near 1, none far above it
    assert (before > 0.6).float().mean() < 0.1  # where almost every direction was far weaker than the strongest
    polar = u @ vh  # the exact nearest semi-orthogonal matrix
    cosine = (out * polar).sum() / (out.norm() * polar.norm())
    assert cosine > 0.95


def test_the_sgd_groups_step_exactly_as_torchs_nesterov_sgd():
    torch.manual_seed(0)
    ours, theirs = nn.Linear(5, 3), nn.Linear(5, 3)
    theirs.load_state_dict(ours.state_dict())
    a = MuonSGD(ours.parameters(), lr=0.1, momentum=0.85, weight_decay=0.01)
    b = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.85, nesterov=True, weight_decay=0.01)
    for step in range(4):
        x = torch.randn(8, 5, generator=torch.Generator().manual_seed(step))
        for model, opt in ((ours, a), (theirs, b)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_muon_takes_the_conv_weights_and_sgd_the_rest():
    config = make_config("fast", optimizer="muon", model_width=8, muon_lr=0.3, muon_momentum=0.5)
    model = build_model("fastcnn", width=8)
    model.stem.weight.requires_grad_(False)  # as the whitening leaves it: frozen
    opt = make_optimizer(model, config)
    muon = [g for g in opt.param_groups if g["muon"]]
    assert len(muon) == 1 and (muon[0]["lr"], muon[0]["momentum"]) == (0.3, 0.5)
    trainable_convs = {id(p) for p in model.parameters() if p.ndim == 4 and p.requires_grad}
    assert {id(p) for p in muon[0]["params"]} == trainable_convs and id(model.stem.weight) not in trainable_convs
    others = [p for g in opt.param_groups if not g["muon"] for p in g["params"]]
    assert others and all(p.ndim < 4 for p in others)
    norm_group = next(g for g in opt.param_groups if not g["muon"] and g["lr"] == config.lr * config.bias_lr_scale)
    assert all(p.ndim == 1 for p in norm_group["params"])  # BatchNorm shifts keep their higher LR


def test_a_muon_step_turns_each_conv_weight_by_about_the_lr_and_keeps_its_scale():
    conv = nn.Conv2d(8, 16, 3, bias=False)
    with torch.no_grad():
        conv.weight.mul_(4 / conv.weight.norm())  # the first step also sets the scale
    opt = MuonSGD([{"params": [conv.weight], "muon": True}], lr=0.1, momentum=0.6)
    for step in range(3):
        before = conv.weight.detach().clone()
        opt.zero_grad()
        gen = torch.Generator().manual_seed(step)
        x, weights = torch.randn(4, 8, 6, 6, generator=gen), torch.randn(4, 16, 4, 4, generator=gen)
        (conv(x) * weights).sum().backward()  # a gradient of full rank, as from a real loss
        opt.step()
        assert conv.weight.norm().item() == pytest.approx(16**0.5, rel=1e-5)  # sqrt(out channels)
        if step > 0:  # once at that scale, a full-rank step moves each filter (about unit norm) by about lr
            per_filter = (conv.weight - before).flatten(1).norm(dim=1)
            assert 0.05 < per_filter.mean().item() < 0.2


def test_the_fast_recipe_trains_with_muon_and_saves_its_momentum(small_config, tmp_path):
    run = train(
        small_config(
            out=tmp_path, recipe="fast", model="fastcnn", optimizer="muon", model_width=8, epochs=3, limit_train=400
        )
    )
    summary = json.loads((run / "run.json").read_text())
    history = load_checkpoint(run, "last.pt")["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]  # it learns
    assert summary["test_top1"] > 0.1  # better than chance on the generated classes
    state = load_checkpoint(run, "last.pt")["optimizer"]
    assert [g["muon"] for g in state["param_groups"]][0] is True and state["state"]  # momentum saved for resume


def test_muon_settings_are_checked():
    with pytest.raises(UsageError, match="muon_lr: must be positive"):
        make_config("fast", optimizer="muon", muon_lr=0.0)
    with pytest.raises(UsageError, match="optimizer: must be one of adam, sgd, muon"):
        make_config("fast", optimizer="lion")


def test_the_command_line_chooses_the_optimizer(small_config, fake_cifar, tmp_path, cli_error):
    """``--optimizer muon`` replaces the recipe's optimizer (the saved config and the optimizer state say so)."""
    from cifarlab.cli.main import main

    config = small_config.write(tmp_path / "config.json", limit_train=100, epochs=1, model="fastcnn", model_width=8)
    args = ["train", "--config", str(config), "--data-dir", str(fake_cifar), "--out", str(tmp_path), "--no-analysis"]
    assert main([*args, "--name", "m", "--optimizer", "muon"]) == 0
    assert json.loads((tmp_path / "m" / "config.json").read_text())["optimizer"] == "muon"
    assert load_checkpoint(tmp_path / "m", "last.pt")["optimizer"]["param_groups"][0]["muon"] is True
    assert "invalid choice" in cli_error("train", "--optimizer", "lion", one_line=False)
