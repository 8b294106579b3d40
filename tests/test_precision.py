"""bf16 autocast: used on CUDA and on CPUs that compute bf16 in hardware, plain fp32 everywhere else, and recorded."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cifarlab.engine import device as device_module
from cifarlab.engine.device import autocast, cpu_has_fast_bf16, uses_bf16
from cifarlab.engine.train import train_step

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_answer():
    """cpu_has_fast_bf16 caches its answer; each test asks afresh and leaves the real answer behind."""
    cpu_has_fast_bf16.cache_clear()
    yield
    cpu_has_fast_bf16.cache_clear()


def pretend_cpu(monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx: bool) -> None:
    """Make torch.cpu's CPUID checks answer as a CPU with (or without) bf16 instructions would."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)


@pytest.mark.parametrize("avx512_bf16, amx, fast", [(False, False, False), (True, False, True), (False, True, True)])
def test_a_cpu_counts_as_bf16_capable_only_with_bf16_instructions(monkeypatch, avx512_bf16, amx, fast):
    pretend_cpu(monkeypatch, avx512_bf16, amx)
    assert cpu_has_fast_bf16() is fast
    assert uses_bf16(True, CPU) is fast
    assert uses_bf16(False, CPU) is False  # never unless the config asks
    assert uses_bf16(True, torch.device("mps")) is False


def test_a_torch_without_the_checks_means_fp32(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert cpu_has_fast_bf16() is False


@pytest.mark.parametrize("capable", [True, False])
def test_a_training_step_runs_its_forward_pass_in_bf16_only_on_a_capable_cpu(monkeypatch, capable):
    """The logits come out of the autocast region: bf16 when it was on, fp32 when it was not; the weights stay
    fp32 either way and the step moves them."""
    monkeypatch.setattr(device_module, "cpu_has_fast_bf16", lambda: capable)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    loss, logits = train_step(model, optimizer, x, y, bf16=True)
    assert logits.dtype == (torch.bfloat16 if capable else torch.float32)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    _, plain = train_step(model, optimizer, x, y, bf16=False)
    assert plain.dtype == torch.float32
    with autocast(True, CPU):
        assert torch.is_autocast_enabled("cpu") is capable


@pytest.mark.parametrize("capable", [True, False])
def test_run_json_says_which_precision_trained(monkeypatch, small_config, fake_cifar, tmp_path, capable):
    from cifarlab.cli.main import main

    monkeypatch.setattr(device_module, "cpu_has_fast_bf16", lambda: capable)
    config = small_config.write(
        tmp_path / "config.json", limit_train=100, epochs=1, model="fastcnn", model_width=8, bf16=True
    )
    name = f"bf16-{capable}"
    args = ["train", "--config", str(config), "--data-dir", str(fake_cifar), "--out", str(tmp_path)]
    assert main([*args, "--name", name, "--no-analysis"]) == 0
    info = json.loads((tmp_path / name / "run.json").read_text())
    assert info["precision"] == ("bf16" if capable else "fp32")


class DtypeSpy(nn.Module):
    """A tiny classifier that records the dtype of the logits each forward pass made."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
        self.seen: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        self.seen.append(out.dtype)
        return out


@pytest.mark.parametrize("capable", [True, False])
@pytest.mark.parametrize("tta", [0, 2])
def test_scoring_runs_in_bf16_only_when_asked_and_on_a_capable_cpu_and_returns_fp32(monkeypatch, capable, tta):
    from cifarlab.engine.infer import infer

    monkeypatch.setattr(device_module, "cpu_has_fast_bf16", lambda: capable)
    torch.manual_seed(0)
    model = DtypeSpy()
    batches = [(torch.randn(5, 3, 8, 8), torch.randint(0, 10, (5,))) for _ in range(2)]
    logits, labels = infer(model, batches, tta=tta, bf16=True)
    assert logits.dtype == torch.float32 and logits.shape == (10, 10) and labels.shape == (10,)
    assert set(model.seen) == {torch.bfloat16 if capable else torch.float32}
    assert len(model.seen) == 2 * (6 if tta == 2 else 1)  # every TTA view went through the autocast region
    model.seen.clear()
    plain, _ = infer(model, batches, tta=tta)
    assert set(model.seen) == {torch.float32}
    if capable:  # bf16 rounds: close to the fp32 logits, not equal to them
        assert not torch.equal(plain, logits)
        torch.testing.assert_close(plain, logits, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("bf16", [True, False])
def test_evaluate_and_predict_score_in_the_precision_the_run_trained_in(monkeypatch, bf16):
    """A checkpoint of a bf16 run is scored in bf16 (on a capable CPU) by evaluate and predict, as its test was."""
    from cifarlab.data.cifar10 import ImageData
    from cifarlab.engine.infer import evaluate_checkpoint
    from cifarlab.tools.predict import classify

    monkeypatch.setattr(device_module, "cpu_has_fast_bf16", lambda: True)
    torch.manual_seed(0)
    model = DtypeSpy()
    images, labels = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8), torch.arange(6) % 2
    data = ImageData(images, labels, images, labels, ["a", "b"])
    state = {"config": {"val_size": 2, "seed": 0, "tta": 0, "bf16": bf16}, "mean": [0.5] * 3, "std": [0.25] * 3}
    probs, y, _ = evaluate_checkpoint(state, data, "test", CPU, batch_size=4, model=model)
    assert probs.dtype == torch.float32 and torch.equal(y, labels)
    assert set(model.seen) == {torch.bfloat16 if bf16 else torch.float32}
    model.seen.clear()
    classify(model, images, torch.zeros(3), torch.ones(3), CPU, tta=0, bf16=bf16)
    assert set(model.seen) == {torch.bfloat16 if bf16 else torch.float32}


def test_scoring_options_follow_the_saved_config_and_take_bf16_only_from_a_literal_true():
    from cifarlab.engine.infer import scoring_options

    assert scoring_options({"tta": 2, "bf16": True}) == {"tta": 2, "bf16": True}
    assert scoring_options({"tta": 1, "bf16": "yes"}) == {"tta": 1, "bf16": False}  # a crafted config stays fp32
    assert scoring_options({}) == {"tta": 0, "bf16": False}  # checkpoints from before bf16 and TTA
