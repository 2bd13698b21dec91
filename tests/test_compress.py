"""Distillation terms and `compress`: prune -> fine-tune (-> KD) to a target, as a model file."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from lightseg_nas import prune
from lightseg_nas.cli import app
from lightseg_nas.compress import compress_to_file, settings_from
from lightseg_nas.config import config_from_json
from lightseg_nas.cost import count_params
from lightseg_nas.data.transforms import denormalize, get_preprocessing, normalize
from lightseg_nas.distill import Distiller, channel_wise_kd, pixel_kd, two_class_logits
from lightseg_nas.errors import UserError
from lightseg_nas.families import build_model
from lightseg_nas.modelfile import load_model_file
from lightseg_nas.presets import get_preset

runner = CliRunner()
DATA = "synthetic:count=16"


def test_one_logit_maps_to_two_classes_whose_softmax_is_the_sigmoid():
    z = torch.randn(2, 1, 4, 4)
    two = two_class_logits(z)
    assert torch.allclose(torch.softmax(two, 1)[:, 1:], torch.sigmoid(z))
    with pytest.raises(ValueError):
        two_class_logits(torch.randn(1, 3, 2, 2))


def test_kd_terms_vanish_for_equal_logits_and_pull_towards_the_teacher():
    teacher = torch.randn(2, 2, 8, 8)
    assert pixel_kd(teacher, teacher, 2.0).abs() < 1e-6
    assert channel_wise_kd(teacher, teacher, 2.0).abs() < 1e-6
    student = torch.zeros(2, 2, 8, 8, requires_grad=True)
    loss = pixel_kd(student, teacher, 2.0) + channel_wise_kd(student, teacher, 2.0)
    assert loss > 0
    loss.backward()
    # one gradient step moves the student's logits towards the teacher's
    stepped = (student - 1.0 * student.grad).detach()
    assert pixel_kd(stepped, teacher, 2.0) < pixel_kd(student.detach(), teacher, 2.0)


def test_denormalize_inverts_both_recipes():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    for name in ("default", "released"):
        recipe = get_preprocessing(name)
        assert torch.allclose(denormalize(normalize(images, recipe), recipe), images.float(), atol=1e-3)


def test_distiller_feeds_the_teacher_its_own_preprocessing_and_maps_classes():
    torch.manual_seed(0)
    teacher = build_model(get_preset("extremec3net")).eval()  # 1 class, released recipe
    student = build_model(get_preset("sinet")).eval()  # 2 classes
    released, default = get_preprocessing("released"), get_preprocessing("default")
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    distiller = Distiller(teacher, released, default)
    x = normalize(images, default)
    with torch.no_grad():
        assert torch.allclose(distiller.teacher_logits(x), teacher(normalize(images, released)), atol=1e-4)
    with torch.no_grad():
        assert student(x).shape[1] == 2 and teacher(x).shape[1] == 1
    loss = distiller(x, 3 * torch.randn(2, 2, 64, 64), None)
    assert torch.isfinite(loss) and loss > 0.01


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A SINet briefly trained on synthetic portraits, as a model file."""
    root = tmp_path_factory.mktemp("compress")
    args = ["train", "--preset", "sinet", "--data", DATA, "--out", str(root / "big"), "--epochs", "1", "--size", "64", "--batch-size", "8", "--no-progress"]
    assert runner.invoke(app, args).exit_code == 0
    return root / "big" / "model.pt"


def test_compress_reaches_the_target_and_the_file_rebuilds_the_pruned_network(trained, tmp_path):
    out = tmp_path / "small.pt"
    args = [
        "compress", str(trained), "--target-params", "40000", "--teacher", str(trained), "--steps", "2", "--epochs-per-step", "1",
        "--data", DATA, "--recipe", "long", "--size", "64", "--batch-size", "8", "--mac-size", "64", "--out", str(out), "--no-progress", "--json",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    steps = summary["steps"]
    assert [row["step"] for row in steps] == [0, 1, 2]
    assert steps[0]["params"] == 86_910 and steps[0]["params"] > steps[1]["params"] > steps[2]["params"]
    assert 0.9 * 40_000 <= summary["params"] <= 40_000 and summary["mac_counter"] == "conv_only"
    assert summary["teacher"].startswith("model file")
    model, record = load_model_file(out)  # build_model(config) + strict state_dict
    assert count_params(model) == summary["params"]
    assert record["training"]["val_fraction"] == 0.1 and record["training"]["size"] == 64  # eval finds the same split
    # fine-tuned with the long recipe's boundary-band term; --size given here overrides its 224
    assert record["training"]["edge_weight"] == 0.5 and record["compress"]["settings"]["recipe"] == "long"
    # the file's config is the one the pruned weights' shapes spell, and goes to the trainer as it is
    assert prune.config_of(model) == record["config_object"]
    config_path = tmp_path / "small.json"  # written beside the model file
    assert config_from_json(config_path.read_text()) == record["config_object"]
    retrain = ["train", str(config_path), "--data", DATA, "--out", str(tmp_path / "again"), "--epochs", "1", "--size", "64", "--max-steps", "1", "--no-progress"]
    assert runner.invoke(app, retrain).exit_code == 0
    assert not (tmp_path / "small.pt.partial").exists()


class Stop(Exception):
    pass


@pytest.mark.slow
def test_compress_resumes_after_a_stop_to_the_same_weights(trained, tmp_path):
    settings = settings_from(metric="params", target=45_000, steps=2, epochs_per_step=1, size=64, mac_size=64, batch_size=8, max_steps_per_step=2)
    whole = compress_to_file(trained, tmp_path / "whole.pt", DATA, settings, progress=False)

    def stop_after_first_step(row):
        if row["step"] == 1:
            raise Stop

    with pytest.raises(Stop):
        compress_to_file(trained, tmp_path / "cut.pt", DATA, settings, progress=False, on_row=stop_after_first_step)
    assert (tmp_path / "cut.pt.partial").exists() and not (tmp_path / "cut.pt").exists()
    seen = []
    compress_to_file(trained, tmp_path / "cut.pt", DATA, settings, progress=False, resume=True, on_row=seen.append)
    assert [row["step"] for row in seen] == [0, 1, 2]  # the saved steps are replayed, step 2 is new
    resumed = torch.load(tmp_path / "cut.pt", weights_only=True)
    assert resumed["config"] == whole["config"]
    for key, value in whole["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    assert not (tmp_path / "cut.pt.partial").exists()


def test_compress_refuses_to_continue_without_resume(trained, tmp_path):
    (tmp_path / "small.pt.partial").write_bytes(b"x")
    result = runner.invoke(app, ["compress", str(trained), "--target-params", "40000", "--data", DATA, "--out", str(tmp_path / "small.pt")])
    assert result.exit_code == 2 and "--resume" in result.stderr


def test_a_percentage_target_is_that_share_of_the_current_count():
    from lightseg_nas.compress import resolve_target, settings_from
    from lightseg_nas.cost import count_params

    model = build_model(get_preset("sinet"))
    settings = resolve_target(model, settings_from(metric="params", target_percent=60.0))
    assert settings.target == int(count_params(model) * 0.6) and settings.target_percent == 60.0
    assert resolve_target(model, settings_from(metric="params", target=20000)).target == 20000
    with pytest.raises(UserError, match="exactly one target"):
        settings_from(metric="params", target=20000, target_percent=50.0)


def test_a_recipe_gives_the_fine_tuning_its_loss_and_size_and_the_options_override_it(monkeypatch):
    from lightseg_nas.compress import _fine_tune_settings
    from lightseg_nas.data.transforms import get_preprocessing
    from lightseg_nas.errors import FieldError
    from lightseg_nas.settings import RECIPES

    settings = settings_from(recipe="long", metric="params", target=20000)
    assert (settings.edge_weight, settings.size, settings.recipe, settings.epochs_per_step) == (0.5, 224, "long", 4)  # not its 100 epochs
    tuned = _fine_tune_settings(settings, get_preprocessing("default"), 1)
    assert (tuned.edge_weight, tuned.edge_band, tuned.size, tuned.epochs) == (0.5, 15, 224, 4)
    assert settings_from(recipe="long", metric="params", target=20000, edge_weight=0.0, size=160).model_dump(include={"edge_weight", "size"}) == {"edge_weight": 0.0, "size": 160}
    assert settings_from(metric="params", target=20000).edge_weight == 0.0  # no recipe: cross-entropy alone, as before
    with pytest.raises(FieldError, match="'fast' is unknown"):
        settings_from(recipe="fast", metric="params", target=20000)
    monkeypatch.setitem(RECIPES, "warped", {"epochs": 30, "affine": True})
    with pytest.raises(FieldError, match="sets affine, which compress"):  # refused, not silently dropped
        settings_from(recipe="warped", metric="params", target=20000)
