"""Weight-sharing supernet (lightseg_nas/supernet.py, families/c3net_supernet.py): every
network of the extremec3 space is a sub-network computed exactly as its standalone twin;
supernet training resumes exactly; a study can score its trials with a supernet."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import search_spaces
from lightseg_nas.cli import app
from lightseg_nas.errors import UserError
from lightseg_nas.families import build_model
from lightseg_nas.families.blocks import C3Block
from lightseg_nas.presets import get_preset
from lightseg_nas.settings import SupernetSettings
from lightseg_nas.supernet import build_supernet, load_supernet, recalibrate, subnet, train_supernet
from tests.test_search import TINY

runner = CliRunner()
SPACE = search_spaces.supernet_space("extremec3")
SETTINGS = dict(size=32, batch_size=4, recalibration_images=8, random_subnets=1)


def _randomised(supernet):
    """Batch-norm statistics and PReLU slopes away from their defaults, so that a copy that
    took the wrong channels shows."""
    generator = torch.Generator().manual_seed(0)
    for module in supernet.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            for name, low, high in (("running_mean", -0.5, 0.5), ("running_var", 0.5, 2.0), ("weight", 0.5, 1.5), ("bias", -0.2, 0.2)):
                tensor = getattr(module, name)
                tensor.data.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
        if isinstance(module, torch.nn.PReLU):
            module.weight.data.copy_(torch.rand(module.weight.shape, generator=generator) * 0.5)
    return supernet


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    return _randomised(build_supernet("extremec3", 1))


@pytest.fixture(scope="module")
def sinet_supernets():
    torch.manual_seed(0)
    return {space: _randomised(build_supernet(space, 2)) for space in ("sinet", "hybrid")}


CONFIGS = {"extremec3net": lambda: get_preset("extremec3net"), "largest": lambda: SPACE.largest(1), "smallest": lambda: SPACE.smallest(1)}
CONFIGS.update({f"sample{seed}": (lambda seed=seed: search_spaces.sample("extremec3", seed)) for seed in range(6)})


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_subnetwork_is_its_standalone_twin_exactly(supernet, name):
    config = CONFIGS[name]()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    supernet.eval()
    twin = subnet(supernet, config).eval()
    with torch.no_grad():
        assert torch.equal(supernet(x, config), twin(x))
    # and it is what build_model(config) builds: the weights load strictly
    build_model(config).load_state_dict(twin.state_dict(), strict=True)


SINET_CONFIGS = {
    "sinet/sinet": lambda: get_preset("sinet"),
    **{f"{space}/{end}": (lambda space=space, end=end: getattr(search_spaces.supernet_space(space), end)(2)) for space in ("sinet", "hybrid") for end in ("largest", "smallest")},
    **{f"{space}/sample{seed}": (lambda space=space, seed=seed: search_spaces.sample(space, seed, 2)) for space in ("sinet", "hybrid") for seed in range(4)},
}


@pytest.mark.parametrize("name", sorted(SINET_CONFIGS))
def test_a_sinet_or_hybrid_subnetwork_is_its_standalone_twin_exactly(sinet_supernets, name):
    supernet, config = sinet_supernets[name.split("/")[0]], SINET_CONFIGS[name]()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    supernet.eval()
    twin = subnet(supernet, config).eval()
    with torch.no_grad():
        assert torch.equal(supernet(x, config), twin(x))
    build_model(config).load_state_dict(twin.state_dict(), strict=True)


def test_the_sinet_supernet_holds_no_c3_block_and_no_larger_kernel(sinet_supernets):
    hybrid_sample = next(c for c in (search_spaces.sample("hybrid", seed, 2) for seed in range(50)) if any(isinstance(b, C3Block) for st in c.stages for b in st.blocks))
    with pytest.raises(UserError, match="C3 block"):
        subnet(sinet_supernets["sinet"], hybrid_sample)
    subnet(sinet_supernets["hybrid"], hybrid_sample)
    from lightseg_nas.families.blocks import S2Block, S2Branch

    wide = get_preset("sinet")
    stage = wide.stages[0].model_copy(update={"blocks": (S2Block(branches=(S2Branch(kernel_size=9, pool_size=1),) * 2),) * 2})
    with pytest.raises(UserError, match="larger kernel"):
        subnet(sinet_supernets["sinet"], wide.model_copy(update={"stages": (stage, wide.stages[1])}))


def test_in_training_mode_too(supernet):
    config = search_spaces.sample("extremec3", 11)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    supernet.train()
    twin = subnet(supernet, config).train()
    with torch.no_grad():
        assert torch.allclose(supernet(x, config), twin(x), atol=1e-5)
    supernet.eval()


@pytest.mark.parametrize(
    "change,reason",
    [
        (lambda c: get_preset("sinet"), "not c3net"),
        (lambda c: c.model_copy(update={"stem_width": 44}), "wider"),
        (lambda c: c.model_copy(update={"num_classes": 2}), "classes"),
        (lambda c: c.model_copy(update={"fine_block": C3Block(dilation_rates=(9,))}), "dilation rate"),
        (lambda c: c.model_copy(update={"fine_block": C3Block(dilation_rates=(1, 2), reduced_width=3)}), "pruned"),
    ],
)
def test_networks_outside_the_supernet_are_refused_with_the_reason(supernet, change, reason):
    with pytest.raises(UserError, match=reason):
        subnet(supernet, change(get_preset("extremec3net")))


def test_recalibration_sets_batch_norm_statistics_from_the_images(supernet):
    twin = subnet(supernet, get_preset("extremec3net"))
    images = (torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 255).to(torch.uint8)
    from lightseg_nas.data.transforms import get_preprocessing

    preprocessing = get_preprocessing("default")
    first = {k: v.clone() for k, v in recalibrate(twin, images, preprocessing).state_dict().items() if "running" in k}
    again = {k: v.clone() for k, v in recalibrate(twin, images, preprocessing).state_dict().items() if "running" in k}
    assert not twin.training and all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.allclose(first["stem.bn.running_mean"], torch.zeros_like(first["stem.bn.running_mean"]))


def test_training_resumes_exactly_and_writes_a_supernet_file(tmp_path, monkeypatch):
    import lightseg_nas.supernet as module

    settings = SupernetSettings(epochs=2, max_steps=4, **SETTINGS)
    whole = train_supernet("extremec3", 1, "synthetic:count=8", tmp_path / "whole", settings, progress=False)
    real_score, calls = module.score, []

    def stop_in_epoch_two(*args):
        calls.append(1)
        if len(calls) == 3:  # the first score of epoch 2, before its checkpoint
            raise KeyboardInterrupt
        return real_score(*args)

    monkeypatch.setattr(module, "score", stop_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train_supernet("extremec3", 1, "synthetic:count=8", tmp_path / "split", settings, progress=False)
    monkeypatch.setattr(module, "score", real_score)
    assert (tmp_path / "split" / "checkpoint.pt").exists() and not (tmp_path / "split" / "supernet.pt").exists()
    resumed = train_supernet("extremec3", 1, "synthetic:count=8", tmp_path / "split", settings, resume=True, progress=False)
    assert all(torch.equal(whole["state_dict"][k], resumed["state_dict"][k]) for k in whole["state_dict"])
    loaded, record = load_supernet(tmp_path / "split" / "supernet.pt")
    assert record["space"] == "extremec3" and len(record["history"]) == 2 and "val_largest_fg_iou" in record["history"][-1]
    with pytest.raises(UserError, match="not a supernet file"):
        model_file = tmp_path / "model.pt"
        torch.save({"format": "lightseg-nas-model"}, model_file)
        load_supernet(model_file)
    # damaged in each of the ways a file can be: a key missing, a wrong type, non-finite weights
    good = torch.load(tmp_path / "split" / "supernet.pt", weights_only=True)
    key = next(iter(good["state_dict"]))
    nan_weights = {**good["state_dict"], key: good["state_dict"][key] * float("nan")}
    for damage, message in (
        ({"space": None}, "damaged"), ({"settings": {"epochs": "many"}}, "damaged"), ({"data": {}}, "damaged"),
        ({"num_classes": 7}, "damaged"), ({"state_dict": nan_weights}, "non-finite"),
    ):
        torch.save({**good, **damage}, tmp_path / "bad.pt")
        with pytest.raises(UserError, match=message):
            load_supernet(tmp_path / "bad.pt")


SUPERNET_STUDY = TINY.replace("{space}", "extremec3").replace("{minimize}", '["params"]').replace("{budgets}", "").replace("{study_extra}", "")
SUPERNET_STUDY = SUPERNET_STUDY.replace("{fidelity}", "true").replace("{proxies}", "[]").replace("{rungs}", "[{ size = 32, epochs = 1 }]")
SUPERNET_STUDY = SUPERNET_STUDY.replace("[fidelity]\n", '[fidelity]\nmode = "supernet"\n').replace("{{", "{").replace("}}", "}")
SUPERNET_STUDY += "\n[supernet]\nepochs = 1\nsize = 32\nbatch_size = 4\nrandom_subnets = 1\nrecalibration_images = 8\n"


def test_a_study_scores_its_trials_with_the_supernet_it_trains_first(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(SUPERNET_STUDY)
    result = runner.invoke(app, ["search", str(path), "--n-trials", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    trained = tmp_path / "tiny-supernet" / "supernet.pt"
    stamp = trained.stat().st_mtime_ns
    import pandas as pd

    trials = pd.read_csv(tmp_path / "tiny-report" / "trials.csv")
    assert set(trials.outcome) <= {"scored", "duplicate"} and (trials.epochs == 0).all() and trials.val_fg_iou.notna().all()
    assert "Fidelity: **supernet**" in (tmp_path / "tiny-report" / "summary.md").read_text()
    result = runner.invoke(app, ["search", str(path), "--n-trials", "6", "--no-progress", "--no-report"])
    assert result.exit_code == 0 and trained.stat().st_mtime_ns == stamp  # the supernet is reused, not retrained
    # a supernet trained on another validation split may have seen this study's validation images
    path.write_text(SUPERNET_STUDY.replace('spec = "synthetic:count=12"', 'spec = "synthetic:count=12"\nval_seed = 5'))
    result = runner.invoke(app, ["search", str(path), "--study-name", "other", "--no-progress"])
    assert result.exit_code == 2 and "not this study's supernet" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "other" not in [s.study_name for s in __import__("optuna").get_all_study_summaries(f"sqlite:///{tmp_path / 'tiny.db'}")]


def test_a_supernet_file_that_is_not_one_is_refused_with_one_line(tmp_path):
    path = tmp_path / "tiny.toml"
    (tmp_path / "fake.pt").write_bytes(b"not a supernet")
    path.write_text(SUPERNET_STUDY + 'file = "fake.pt"\n')
    result = runner.invoke(app, ["search", str(path), "--no-progress"])
    assert result.exit_code == 2 and "fake.pt" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "tiny-report").exists() and not (tmp_path / "tiny.db").exists()


def test_the_supernet_command(tmp_path):
    args = ["supernet", "--space", "extremec3", "--data", "synthetic:count=8", "--out", str(tmp_path / "s"), "--epochs", "1", "--size", "32", "--batch-size", "4", "--max-steps", "1", "--recalibration-images", "4", "--no-progress", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["space"] == "extremec3" and 0 <= summary["val_largest_fg_iou"] <= 1
    result = runner.invoke(app, [*args[:2], "mobilenet", *args[3:]])
    assert result.exit_code == 2 and "unknown search space 'mobilenet'" in result.stderr


def test_workers_sharing_a_study_score_with_the_supernet_trained_once(tmp_path, postgres_url):
    import subprocess

    from tests.test_scaleout import CLI, ENV

    path = tmp_path / "tiny.toml"
    path.write_text(SUPERNET_STUDY)
    result = subprocess.run([*CLI, "search", str(path), "--storage", postgres_url, "--study-name", "supernet-workers", "--workers", "2", "--n-trials", "6", "--no-progress", "--no-report"], env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    import optuna

    from lightseg_nas.search.record import TrialRecord

    trials = optuna.load_study(study_name="supernet-workers", storage=postgres_url).trials
    finished = [TrialRecord.of(t) for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) == 6 and {r.outcome for r in finished} <= {"scored", "duplicate"}
    assert (tmp_path / "tiny-supernet" / "supernet.pt").exists()


def test_a_supernet_is_recognised_wherever_the_same_dataset_lies(tmp_path):
    """A supernet trained on one machine's copy of a dataset serves a study whose copy lies
    elsewhere (the check compares which images train and validate, not paths)."""
    import shutil

    from lightseg_nas.search import load_study_file
    from lightseg_nas.search.supernet_fidelity import ensure_supernet
    from tests.fixtures import write_dataset

    here = write_dataset(tmp_path / "here", "extportraitseg", count=12)
    study = SUPERNET_STUDY.replace('spec = "synthetic:count=12"', f'spec = "eg1800:{here}"').replace("recalibration_images = 8", "recalibration_images = 4")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "tiny.toml").write_text(study)
    ensure_supernet(load_study_file(tmp_path / "a" / "tiny.toml"), progress=False)
    there = shutil.copytree(here, tmp_path / "there")
    shutil.copytree(tmp_path / "a" / "tiny-supernet", tmp_path / "b" / "tiny-supernet")
    (tmp_path / "b" / "tiny.toml").write_text(study.replace(str(here), str(there)))
    ensure_supernet(load_study_file(tmp_path / "b" / "tiny.toml"), progress=False)  # accepted, not retrained
    assert not (tmp_path / "b" / "tiny-supernet" / "checkpoint.pt").exists()
    (there / "eg1800_train.txt").write_text("\n".join((here / "eg1800_train.txt").read_text().split()[:-1]) + "\n")
    with pytest.raises(UserError, match="other data"):
        ensure_supernet(load_study_file(tmp_path / "b" / "tiny.toml"), progress=False)
