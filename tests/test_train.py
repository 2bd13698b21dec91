import hashlib
import json

import pytest
import torch
from typer.testing import CliRunner

import search_spaces
from lightseg_nas.cli import app
from lightseg_nas.config import to_json
from lightseg_nas.data import load_split
from lightseg_nas.data.transforms import get_preprocessing, normalize
from lightseg_nas.families import build_model
from lightseg_nas.metrics import SegmentationMeter
from lightseg_nas.modelfile import load_model_file
from lightseg_nas.speed import place_input, place_model
from lightseg_nas.train import fit, settings_from

runner = CliRunner()


def _tiny_config(num_classes=1):
    # a small sample of the sinet space: fast at 64x64
    return search_spaces.sample("sinet", 1, num_classes=num_classes)


@pytest.fixture(scope="module")
def tiny_data():
    return load_split("synthetic:count=24", "train", 64), load_split("synthetic:count=24", "val", 64)


@pytest.mark.parametrize("num_classes", [1, 2])
def test_training_lowers_the_loss(tiny_data, num_classes):
    torch.manual_seed(0)
    model = build_model(_tiny_config(num_classes))
    settings = settings_from(epochs=6, batch_size=8, size=64, augment=False, lr=1e-2)
    history = fit(model, *tiny_data, settings, get_preprocessing("default"), progress=False)
    assert len(history) == 6
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels-last", "nchw"])
def test_resume_after_a_stop_gives_the_same_weights(tiny_data, tmp_path, channels_last):
    settings = settings_from(epochs=3, batch_size=8, size=64, lr=5e-3, channels_last=channels_last)
    preprocessing = get_preprocessing("default")

    torch.manual_seed(0)
    straight = build_model(_tiny_config())
    fit(straight, *tiny_data, settings, preprocessing, progress=False)

    class Stop(Exception):
        pass

    def stop_after_two(row):
        if row["epoch"] == 2:
            raise Stop

    checkpoint = tmp_path / "checkpoint.pt"
    torch.manual_seed(0)
    interrupted = build_model(_tiny_config())
    with pytest.raises(Stop):
        fit(interrupted, *tiny_data, settings, preprocessing, checkpoint=checkpoint, progress=False, on_epoch=stop_after_two)
    torch.manual_seed(123)  # a fresh process would not share the first run's RNG state
    resumed = build_model(_tiny_config())
    history = fit(resumed, *tiny_data, settings, preprocessing, checkpoint=checkpoint, resume=True, progress=False)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def _trained(tiny_data, checkpoint=None, resume=False, on_epoch=None, **options):
    torch.manual_seed(0)
    model = build_model(_tiny_config())
    settings = settings_from(epochs=2, batch_size=8, size=64, lr=5e-3, **options)
    history = fit(model, *tiny_data, settings, get_preprocessing("default"), checkpoint=checkpoint, resume=resume, progress=False, on_epoch=on_epoch)
    return model, history


@torch.no_grad()
def _agreement(a, b, data) -> float:
    """Share of validation pixels on which two networks make the same foreground call."""
    x = normalize(data.images, get_preprocessing("default"))
    return (a.eval()(x) > 0).eq(b.eval()(x) > 0).float().mean().item()


def test_the_fast_path_computes_what_eager_nchw_computes(tiny_data):
    # one forward and backward on one batch: the same outputs and gradients within float tolerance
    batch = normalize(tiny_data[0].images[:8], get_preprocessing("default"))
    results = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = place_model(build_model(_tiny_config()), channels_last)
        out = model(place_input(batch, channels_last))
        out.square().mean().backward()
        results.append((out.detach(), {name: p.grad for name, p in model.named_parameters()}))
    (eager_out, eager_grads), (fast_out, fast_grads) = results
    assert torch.allclose(eager_out, fast_out, rtol=1e-4, atol=1e-5)
    for name, grad in eager_grads.items():  # float32 sums over 8x64x64 pixels, in another order
        assert (grad - fast_grads[name]).norm() <= 1e-2 * grad.norm() + 1e-7, name
    # whole runs: one path repeated is bit-identical; the other path trains the same network
    # (Adam turns float noise in near-zero gradients into whole steps, so weights are compared
    # through what the networks predict)
    fast, history = _trained(tiny_data)  # the default: channels-last
    again, _ = _trained(tiny_data)
    eager, eager_history = _trained(tiny_data, channels_last=False)
    for key, value in fast.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
        assert value.is_contiguous(), key  # handed back in the default layout
    assert _agreement(fast, eager, tiny_data[1]) > 0.99
    assert abs(history[-1]["val_fg_iou"] - eager_history[-1]["val_fg_iou"]) < 0.01
    for row in history:
        assert row["images_per_s"] > 0 and row["timed_images"] > 0 and row["startup_s"] >= 0


def test_a_resume_may_change_the_path(tiny_data, tmp_path):
    class Stop(Exception):
        pass

    def stop(row):
        raise Stop

    with pytest.raises(Stop):
        _trained(tiny_data, checkpoint=tmp_path / "checkpoint.pt", on_epoch=stop, channels_last=False)
    resumed, history = _trained(tiny_data, checkpoint=tmp_path / "checkpoint.pt", resume=True)  # now channels-last
    straight, _ = _trained(tiny_data, channels_last=False)
    assert [row["epoch"] for row in history] == [1, 2]
    assert _agreement(straight, resumed, tiny_data[1]) > 0.99


class _Tiny(torch.nn.Module):
    """Conv, BN, PReLU, conv: the switch is what is tested, and Inductor compiles this in
    seconds where a whole network takes minutes on a fresh machine."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.PReLU(8), torch.nn.Conv2d(8, 1, 1))

    def forward(self, x):
        return self.body(x)


def test_compiled_training_runs_and_matches_eager(monkeypatch):
    compiled_models = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **options: compiled_models.append(model) or real_compile(model, **options))
    data = load_split("synthetic:count=8", "train", 32), load_split("synthetic:count=8", "val", 32)
    models, histories = {}, {}
    for compile_it in (False, True):
        torch.manual_seed(0)
        models[compile_it] = _Tiny()
        settings = settings_from(epochs=2, batch_size=4, size=32, compile=compile_it)
        histories[compile_it] = fit(models[compile_it], *data, settings, get_preprocessing("default"), progress=False)
    assert compiled_models == [models[True]]  # the compiled run went through torch.compile, the other did not
    assert _agreement(models[False], models[True], data[1]) > 0.99
    assert histories[True][-1]["images_per_s"] > 0


def test_encoder_first_stage_runs_for_both_families(tiny_data):
    for config in (_tiny_config(2), search_spaces.sample("extremec3", 2, num_classes=2)):
        model = build_model(config)
        settings = settings_from(epochs=2, encoder_epochs=1, batch_size=12, size=64, max_steps=3)
        history = fit(model, *tiny_data, settings, get_preprocessing("default"), progress=False)
        assert [row["stage"] for row in history] == ["encoder", "full"]


def test_train_cli_writes_a_self_contained_model_file(tmp_path):
    config = tmp_path / "net.json"
    config.write_text(to_json(_tiny_config()))
    out = tmp_path / "run"
    args = ["train", str(config), "--data", "synthetic:count=16", "--out", str(out), "--epochs", "2", "--size", "64", "--batch-size", "8", "--no-progress", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert 0 <= metrics["val_fg_iou"] <= 1 and metrics["synthetic"] is True
    assert metrics["images_per_s"] > 0 and metrics["train_seconds"] > 0
    record = torch.load(out / "model.pt", weights_only=True)
    assert record["training"]["seed"] == 0 and record["preprocessing"]["name"] == "default"
    assert len(record["history"]) == 2 and not (out / "checkpoint.pt").exists()
    model, _ = load_model_file(out / "model.pt")
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    # a finished run is not overwritten
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "already holds a finished model.pt" in again.stderr


def test_cli_resume_continues_a_stopped_run(tmp_path):
    out = tmp_path / "run"
    base = ["train", "--preset", "sinet", "--data", "synthetic:count=8", "--out", str(out), "--size", "64", "--batch-size", "8", "--no-progress"]
    # simulate a stop: a checkpoint after epoch 1 of a 2-epoch run
    settings = settings_from(epochs=2, size=64, batch_size=8)
    from lightseg_nas.presets import get_preset

    torch.manual_seed(0)
    model = build_model(get_preset("sinet"))
    data = load_split("synthetic:count=8", "train", 64), load_split("synthetic:count=8", "val", 64)

    def stop(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(model, *data, settings, get_preprocessing("default"), checkpoint=out / "checkpoint.pt", progress=False, on_epoch=stop)
    refused = runner.invoke(app, [*base, "--epochs", "2"])
    assert refused.exit_code == 2 and "--resume" in refused.stderr
    resumed = runner.invoke(app, [*base, "--epochs", "2", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert [row["epoch"] for row in torch.load(out / "model.pt", weights_only=True)["history"]] == [1, 2]


def test_resume_takes_network_data_and_settings_from_the_checkpoint(tmp_path):
    from tests.fixtures import stopping_after_one_epoch

    out = tmp_path / "run"
    args = ["train", "--preset", "sinet", "--data", "synthetic:count=8", "--out", str(out), "--size", "64", "--batch-size", "4", "--epochs", "2", "--lr", "0.002", "--no-progress"]
    with stopping_after_one_epoch():
        assert runner.invoke(app, args).exit_code == 130 and (out / "checkpoint.pt").exists()
    resumed = runner.invoke(app, ["train", "--out", str(out), "--resume", "--no-progress"])  # nothing repeated
    assert resumed.exit_code == 0, resumed.output
    record = torch.load(out / "model.pt", weights_only=True)
    assert [row["epoch"] for row in record["history"]] == [1, 2]
    assert record["training"]["lr"] == 0.002 and record["training"]["batch_size"] == 4 and record["data"]["spec"] == "synthetic:count=8"
    assert record["config"]["family"] == "sinet"


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--data", "imagenet"], "unknown dataset spec"),
        (["--data", "eg1800:/nonexistent/eg1800"], "no such dataset folder"),
        (["--size", "100"], "multiple of 32"),
        (["--epochs", "0"], "--epochs"),
        (["--encoder-epochs", "3", "--epochs", "2"], "must be fewer than"),
    ],
)
def test_train_bad_input_exit_2_and_nothing_written(tmp_path, args, expected):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--preset", "sinet", "--out", str(out), "--no-progress", *args])
    assert result.exit_code == 2, result.output
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def test_meter_perfect_and_empty_images():
    meter = SegmentationMeter()
    target = torch.zeros(2, 16, 16, dtype=torch.bool)
    target[0, 4:12, 4:12] = True
    meter.update(target.clone(), target)
    metrics = meter.compute()
    assert metrics["fg_iou"] == 1.0 and metrics["miou"] == 1.0 and metrics["boundary_f"] == 1.0


def test_boundary_f_neighbourhoods_are_the_max_pool_ones_at_every_shape_and_edge():
    """The boundary-F windows (shifted ORs) against their definition: max pools padded with
    -inf, so a window is cut at the image's edges (the former code, which
    benchmarks/metric_cost.py keeps as its reference); empty, full, thin and random masks."""
    from lightseg_nas.metrics import _boundary, _dilate
    from tests.test_benchmarks import _load

    reference = _load("metric_cost")
    generator = torch.Generator().manual_seed(0)
    for shape in [(2, 1, 1), (2, 1, 9), (2, 7, 1), (3, 2, 3), (4, 17, 9), (2, 64, 48)]:
        masks = [torch.rand(shape, generator=generator) < p for p in (0.02, 0.5, 0.98)] + [torch.zeros(shape, dtype=torch.bool), torch.ones(shape, dtype=torch.bool)]
        for mask in masks:
            assert torch.equal(_boundary(mask), reference.max_pool_boundary(mask)), shape
            for radius in (1, 2, 3, 7):
                assert torch.equal(_dilate(mask, radius), reference.max_pool_dilate(mask, radius)), (shape, radius)


def test_train_with_a_teacher_distils_and_records_it(tmp_path):
    base = ["--data", "synthetic:count=8", "--size", "32", "--epochs", "2", "--batch-size", "4", "--no-progress"]
    teacher = tmp_path / "teacher"
    assert runner.invoke(app, ["train", "--preset", "sinet", "--out", str(teacher), *base]).exit_code == 0
    config = tmp_path / "net.json"
    config.write_text(to_json(_tiny_config()))
    plain = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "plain"), *base])
    silent = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "silent"), *base, "--teacher", str(teacher / "model.pt"), "--kd-weight", "0", "--cwd-weight", "0"])
    taught = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "taught"), *base, "--teacher", str(teacher / "model.pt"), "--json"])
    assert plain.exit_code == silent.exit_code == taught.exit_code == 0, (plain.output, silent.output, taught.output)
    # the record names the teacher by file name, architecture and digest, not by a path on this machine
    digest = hashlib.sha256((teacher / "model.pt").read_bytes()).hexdigest()[:16]
    teacher_arch = torch.load(teacher / "model.pt", weights_only=True)["arch_id"]
    assert json.loads(taught.stdout)["teacher"] == f"model file model.pt (arch {teacher_arch}, sha256 {digest})"
    records = {name: torch.load(tmp_path / name / "model.pt", weights_only=True) for name in ("plain", "silent", "taught")}
    assert records["plain"]["teacher"] is None and records["taught"]["training"]["teacher"] == str(teacher / "model.pt")
    # the teacher's terms are the only change: at weight 0 the run is the plain one, bit for bit
    for key, value in records["plain"]["state_dict"].items():
        assert torch.equal(value, records["silent"]["state_dict"][key]), key
    assert any(not torch.equal(v, records["taught"]["state_dict"][k]) for k, v in records["plain"]["state_dict"].items())


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--teacher", "sinet"], "needs --teacher-weights"),
        (["--teacher-weights", "x.pth"], "--teacher-weights goes with"),
        (["--teacher", "no/such/file.pt"], "neither a model file nor a preset"),
        (["--teacher", "sinet", "--teacher-weights", "x.pth", "--kd-temperature", "0"], "--kd-temperature"),
    ],
)
def test_bad_teachers_are_refused_before_any_work(tmp_path, args, expected):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--preset", "sinet", "--data", "synthetic:count=8", "--size", "32", "--out", str(out), "--no-progress", *args])
    assert result.exit_code == 2 and expected in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_compiling_is_automatic_for_long_runs_only(monkeypatch):
    from lightseg_nas import speed
    from lightseg_nas.errors import UserError

    monkeypatch.setattr(speed.shutil, "which", lambda name: "/usr/bin/g++")
    assert not speed.use_compile(None, speed.COMPILE_AUTO_STEPS - 1)
    assert speed.use_compile(None, speed.COMPILE_AUTO_STEPS)
    assert not speed.use_compile(False, 10**6) and speed.use_compile(True, 1)
    monkeypatch.setattr(speed.shutil, "which", lambda name: None)  # no C++ compiler
    assert not speed.use_compile(None, 10**6)
    with pytest.raises(UserError, match="C\\+\\+ compiler"):
        speed.use_compile(True, 1)


def test_a_checkpoint_from_before_a_setting_existed_resumes_and_a_changed_one_is_refused(tmp_path):
    """A setting added to the trainer after a checkpoint was written (the loss, the recipe)
    counts as its default there; a setting that really changed is still refused."""
    out = tmp_path / "run"
    base = ["train", "--preset", "sinet", "--data", "synthetic:count=8", "--out", str(out), "--size", "64", "--batch-size", "8", "--epochs", "2", "--no-progress"]
    settings = settings_from(epochs=2, size=64, batch_size=8)
    from lightseg_nas.presets import get_preset

    model = build_model(get_preset("sinet"))
    data = load_split("synthetic:count=8", "train", 64), load_split("synthetic:count=8", "val", 64)

    def stop(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(model, *data, settings, get_preprocessing("default"), checkpoint=out / "checkpoint.pt", progress=False, on_epoch=stop)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    for newer in ("loss", "recipe"):
        del state["settings"][newer]
    torch.save(state, out / "checkpoint.pt")
    refused = runner.invoke(app, [*base, "--resume", "--loss", "lovasz"])
    assert refused.exit_code == 2 and "loss 'ce' (now 'lovasz')" in refused.stderr
    resumed = runner.invoke(app, [*base, "--resume"])
    assert resumed.exit_code == 0, resumed.output


def test_a_preset_teacher_is_recorded_by_weights_file_name_and_digest(official):
    from lightseg_nas.data.transforms import get_preprocessing
    from lightseg_nas.distill import load_teacher

    weights = official / "SINet.pth"
    model, preprocessing, description = load_teacher("sinet", weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    assert description == f"preset sinet (SINet.pth, sha256 {digest})" and str(official) not in description
    assert not model.training and preprocessing == get_preprocessing("released")


def test_the_foreground_of_two_logits_is_argmax_ties_and_nans_included():
    from lightseg_nas.metrics import predict_foreground

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 2, 9, 11, generator=generator).round()  # rounding makes ties
    logits[torch.rand(logits.shape, generator=generator) < 0.15] = float("nan")
    logits[0, :, 0, :3] = torch.tensor([[float("inf"), 1.0, float("-inf")], [float("inf"), float("inf"), 0.0]])
    assert torch.equal(predict_foreground(logits), logits.argmax(1) == 1)
    assert torch.equal(predict_foreground(logits[:, :1]), logits[:, 0] > 0)


def test_denormals_are_flushed_in_the_calling_thread_and_in_threads_started_after():
    """A denormal product reads as zero in the main thread and in a thread pool's threads
    (they inherit the mode), after any command's thread setup, fit or evaluate."""
    import subprocess
    import sys

    script = (
        "import torch\n"
        "from lightseg_nas.speed import use_threads\n"
        "tiny = torch.full((4096,), 1e-30)\n"
        "assert (tiny * 1e-10 != 0).all()\n"  # IEEE: a denormal, not zero
        "use_threads(2)\n"
        "assert (tiny * 1e-10 == 0).all()\n"
        "x = torch.full((1 << 22,), 1e-30)\n"  # big enough for torch to split over both threads
        "assert (x * 1e-10 == 0).all(), 'a pool thread kept denormals'\n"
        "print('flushed')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "flushed" in result.stdout, result.stderr
