"""Small datasets: recipes scale to them (validation share, batch size and LR, schedule), and runs can start from a
trained model (``--init-from``, ``--freeze-epochs``, the ``finetune`` recipe)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cifarlab.config.scaling import MIN_BATCH, MIN_STEPS_PER_EPOCH, scale_to_data
from cifarlab.config.train_config import RECIPES, make_config
from cifarlab.data.split import class_quotas, stratified_split
from cifarlab.engine.transfer import apply_init, load_init, weights_sha256

# --- scaling ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", sorted(set(RECIPES) - {"finetune"}))
@pytest.mark.parametrize("epochs", [None, 3])
def test_cifar_sized_data_keeps_every_recipe_exactly(recipe, epochs):
    config = make_config(recipe, epochs=epochs)
    for n in (50_000, 45_000):  # CIFAR-10/100's training images, and with a slice of them gone
        scaled, record = scale_to_data(config, n, 10)
        assert scaled == config and record.changes == ()
    assert scale_to_data(config, 50_000, 100)[0] == config  # CIFAR-100 too


def changes(config, n, classes=10):
    scaled, record = scale_to_data(config, n, classes)
    return scaled, {c.field: (c.before, c.after) for c in record.changes}


def test_a_small_set_gets_a_validation_share_more_steps_and_a_shorter_warm_up():
    """The issue's case: 3,000 images, the fast recipe for 3 epochs."""
    scaled, changed = changes(make_config("fast", epochs=3), 3000)
    assert changed["val_size"] == (1000, 300)  # 10%, under the recipe's cap
    assert changed["batch_size"] == (512, 64)  # 2,700 images: 5 steps at 512, 42 at 64
    assert 2700 // scaled.batch_size >= MIN_STEPS_PER_EPOCH > 2700 // (2 * scaled.batch_size)
    assert changed["lr"] == (0.75, pytest.approx(0.75 * 64 / 512))  # the recipe's linear rule
    assert changed["warmup_epochs"] == (2.0, pytest.approx(0.6))  # 2 of 10 epochs -> 0.6 of 3: the same share
    assert scaled.epochs == 3


def test_a_tiny_set_stops_at_the_smallest_batch_and_adam_keeps_its_lr():
    scaled, changed = changes(make_config("seed"), 300)
    assert "val_size" not in changed  # the seed recipe's 10% already is a share
    assert changed["batch_size"] == (64, MIN_BATCH)  # 270 images: 16 steps at the smallest batch
    assert "lr" not in changed and scaled.lr == 1e-3  # lr_scaling "none" for Adam
    assert scaled.step_size == 10  # 20 epochs as in the recipe: the schedule is the recipe's


def test_a_short_seed_run_on_small_data_keeps_the_step_at_half_way():
    scaled, changed = changes(make_config("seed", epochs=6), 300)
    assert changed["step_size"] == (10, 3)


def test_validation_keeps_one_image_per_class():
    assert changes(make_config("fast"), 200, classes=40)[1]["val_size"] == (1000, 40)
    assert changes(make_config("seed"), 90, classes=10)[1]["val_size"] == (None, 10)


def test_values_that_are_not_the_recipes_are_kept():
    """A flag (or a replayed, already scaled config) wins over the scaling; --no-scale keeps the recipe."""
    given = make_config("fast", batch_size=256, val_size=500)
    scaled, changed = changes(given, 3000)
    assert scaled.batch_size == 256 and scaled.val_size == 500 and "lr" not in changed
    lr_given = make_config("fast", lr=0.5)
    scaled, changed = changes(lr_given, 3000)
    assert scaled.batch_size == 64 and scaled.lr == 0.5  # the batch still scales; the given LR stays
    once, _ = changes(make_config("fast", epochs=3), 3000)
    assert changes(once, 3000) == (once, {})  # a replay of a scaled config is not scaled again
    off = make_config("fast", scale_to_data=False)
    assert changes(off, 3000) == (off, {})


def test_class_quotas_give_every_class_a_validation_image():
    assert class_quotas([1000] * 10, 1000) == [100] * 10  # CIFAR: unchanged
    quotas = class_quotas([500, 20, 20], 30)  # proportional would give the small classes 1 each at most
    assert sum(quotas) == 30 and min(quotas) >= 1
    quotas = class_quotas([900, 5, 5, 5], 10)  # proportional: 10, 0, 0, 0
    assert quotas == [7, 1, 1, 1]
    labels = torch.tensor([0] * 900 + [1] * 5 + [2] * 5 + [3] * 5)
    _, val = stratified_split(labels, 10, seed=0)
    assert sorted(set(labels[val].tolist())) == [0, 1, 2, 3]


# --- training on a few hundred images ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory, make_image_folder):
    """300 training images (4 classes x 75) and 100 test images, 40x30 PNGs."""
    classes = ("circle", "square", "stripe", "wave")
    return make_image_folder(tmp_path_factory.mktemp("small"), classes=classes, per_class=75, test_per_class=25)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, small_folder):
    """A finished fast-recipe run (width 16) on the small folder, scaled to it: the init of the tests below."""
    from cifarlab.cli.main import main

    out = tmp_path_factory.mktemp("source")
    args = ["train", "--dataset", str(small_folder), "--recipe", "fast", "--epochs", "3", "--image-size", "32"]
    assert main([*args, "--width", "16", "--out", str(out), "--name", "src", "--no-analysis", "--device", "cpu"]) == 0
    return out / "src"


def test_a_short_run_on_a_few_hundred_images_scales_and_learns(source_run):
    info = json.loads((source_run / "run.json").read_text())
    changed = {c["field"]: (c["before"], c["after"]) for c in info["scaling"]["changes"]}
    assert info["scaling"]["train_images"] == 300
    assert changed["val_size"] == (1000, 30) and changed["batch_size"] == (512, MIN_BATCH)
    assert changed["warmup_epochs"][1] == pytest.approx(0.6)
    config = json.loads((source_run / "config.json").read_text())
    assert config["batch_size"] == MIN_BATCH and config["val_size"] == 30  # what the run used, for replays
    assert len(json.loads((source_run / "split.json").read_text())["val"]) == 30
    assert info["test_top1"] > 0.75  # chance is 0.25; 51 steps of 16 images in all


def test_the_scaling_is_printed_at_the_start(small_folder, tmp_path, capsys):
    from cifarlab.cli.main import main

    args = ["train", "--dataset", str(small_folder), "--recipe", "seed", "--epochs", "1", "--image-size", "16"]
    main([*args, "--limit-train", "40", "--out", str(tmp_path), "--no-analysis", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "recipe scaled to 300 training images: batch_size 64 -> 16 (270 images make 4 steps an epoch" in out
    assert "step_size 10 -> 1" in out


# --- starting from a trained model ---------------------------------------------------------------------------


def test_the_same_classes_keep_the_head_and_other_classes_get_a_new_one(source_run):
    from cifarlab.models.registry import build_model

    state = load_init(source_run)
    assert Path(state["path"]).name == "last.pt"  # the fast recipe tests last.pt: that is the run's model
    kwargs = state["model_kwargs"]
    same = build_model("fastcnn", num_classes=4, **kwargs)
    assert apply_init(same, state, list(state["classes"])) is True
    assert all(torch.equal(v, state["model"][k]) for k, v in same.state_dict().items())
    for classes in (["a", "b", "c", "d"], ["a", "b"]):  # other names, other count
        model = build_model("fastcnn", num_classes=len(classes), **kwargs)
        fresh = model.head.weight.clone()
        assert apply_init(model, state, classes) is False
        assert torch.equal(model.head.weight, fresh)  # the head keeps its fresh initialisation
        body = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
        assert body and all(torch.equal(v, state["model"][k]) for k, v in body.items())


@pytest.fixture(scope="module")
def other_folder(tmp_path_factory, make_image_folder):
    """3 classes, none named as the source's: 40 train and 10 test images each, at another size (48x48)."""
    root = tmp_path_factory.mktemp("other")
    return make_image_folder(root, classes=("x", "y", "z"), per_class=40, test_per_class=10, size=(48, 48), seed=3)


def test_freeze_epochs_hold_the_body_and_the_run_records_its_init(source_run, other_folder, tmp_path):
    from cifarlab.engine.train import train
    from cifarlab.engine.transfer import with_init_model

    init = load_init(source_run)
    snapshots = {}

    def keep(epoch, model):
        snapshots[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    overrides = with_init_model({"init_from": str(source_run), "dataset": str(other_folder), "image_size": 48})
    config = make_config("finetune", **overrides, epochs=3, freeze_epochs=2, out=str(tmp_path), device="cpu")
    assert config.model == "fastcnn" and config.model_width == 16 and config.whiten  # the init's model
    run = train(config, on_epoch=keep)
    body = [k for k, v in init["model"].items() if not k.startswith("head.") and v.is_floating_point()]
    params = dict(build_like(init).named_parameters())  # the BatchNorm statistics adapt to the new data
    for epoch in (1, 2):  # the body's parameters are untouched while it is frozen; the head trains
        assert all(torch.equal(snapshots[epoch][k], init["model"][k]) for k in body if k in params), epoch
    assert not torch.equal(snapshots[1]["head.weight"], snapshots[2]["head.weight"])
    moved = [k for k in body if k in params and not torch.equal(snapshots[3][k], init["model"][k])]
    assert moved  # epoch 3 trains the body too
    info = json.loads((run / "run.json").read_text())
    assert info["init"]["sha256"] == weights_sha256(init["model"]) and info["init"]["head"] == "new"
    assert info["init"]["path"] == str((source_run / "last.pt").resolve())
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["init"] == info["init"]
    assert state["mean"] != init["mean"]  # the normalisation comes from the new training split


def build_like(state):
    from cifarlab.models.registry import build_model

    return build_model(state["model_name"], num_classes=len(state["classes"]), **state["model_kwargs"])


def test_report_and_compare_show_where_a_run_started(source_run, other_folder, tmp_path):
    from cifarlab.cli.main import main

    args = ["train", "--dataset", str(other_folder), "--recipe", "finetune", "--init-from", str(source_run)]
    args += ["--epochs", "2", "--freeze-epochs", "1", "--out", str(tmp_path), "--name", "ft", "--no-analysis"]
    assert main([*args, "--device", "cpu"]) == 0
    sha = json.loads((tmp_path / "ft" / "run.json").read_text())["init"]["sha256"][:12]
    assert main(["report", str(tmp_path / "ft"), "--out", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert "started from" in html and sha in html and "new head" in html
    assert "recipe scaled for the dataset" in html and "batch_size 512 -&gt; 16" in html
    scratch = ["train", "--dataset", str(other_folder), "--recipe", "fast", "--epochs", "1", "--width", "16"]
    assert main([*scratch, "--out", str(tmp_path), "--name", "scratch", "--no-analysis", "--device", "cpu"]) == 0
    assert main(["compare", str(tmp_path / "scratch"), str(tmp_path / "ft"), "--out", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "Where the weights started" in table and "random initialisation" in table and sha in table


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--width", "32"], "holds 'fastcnn' with other arguments: width 16 there, 32 here"),
        (["--model", "mycnn"], "holds a 'fastcnn' model; this run builds 'mycnn'"),
    ],
)
def test_another_model_or_width_is_refused_in_one_line(source_run, other_folder, cli_error, flags, message):
    line = cli_error(
        "train", "--dataset", str(other_folder), "--recipe", "finetune", "--init-from", str(source_run), *flags
    )
    assert message in line


def test_freezing_without_an_init_is_refused(cli_error, other_folder):
    assert "give --init-from" in cli_error("train", "--dataset", str(other_folder), "--freeze-epochs", "2")
    assert "give --init-from" in cli_error("train", "--dataset", str(other_folder), "--recipe", "finetune")
