"""The search end to end on tiny synthetic trials (32-64 px, a few images, 1 epoch a rung)."""

import json
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

import search_spaces
from lightseg_nas.cli import app
from lightseg_nas.errors import UserError
from lightseg_nas.presets import get_preset
from lightseg_nas.search import load_study_file, open_study, run_search
from lightseg_nas.search.fidelity import is_promoted
from lightseg_nas.search.report import trials_dataframe

runner = CliRunner()

TINY = """
[study]
name = "tiny"
space = "{space}"
num_classes = 1
seed = 0
n_trials = 4
{study_extra}

[data]
spec = "synthetic:count=12"

[objectives]
minimize = {minimize}

[budgets]
{budgets}

[cost]
size = 64
repeats = 1

[fidelity]
enabled = {fidelity}
reduction_factor = 2
rungs = {rungs}

[training]
batch_size = 8

[proxies]
compute = {proxies}
"""


FAST_RUNGS = "[{ size = 32, epochs = 1 }, { size = 64, epochs = 1 }]"
# trials that spend a few seconds in their first rung: a signal sent while one trains lands in training
SLOW_RUNGS = "[{ size = 64, epochs = 12 }, { size = 64, epochs = 1 }]"


def write_study(folder, space="sinet", minimize='["params"]', budgets="", fidelity="true", proxies="[]", study_extra="", rungs=FAST_RUNGS):
    path = folder / "tiny.toml"
    path.write_text(TINY.format(space=space, minimize=minimize, budgets=budgets, fidelity=fidelity, proxies=proxies, study_extra=study_extra, rungs=rungs))
    return path


def finished(study):
    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def test_tiny_study_in_memory_records_what_each_trial_built(tmp_path):
    study = run_search(load_study_file(write_study(tmp_path, proxies='["synflow", "grad_norm", "naswot"]')), n_trials=3, storage="memory", progress=False)
    assert len(finished(study)) == 3
    first = study.trials[0]
    assert first.user_attrs["baseline"] == "sinet"  # the published network is enqueued first
    from lightseg_nas.config import arch_id

    assert first.user_attrs["arch_id"] == arch_id(get_preset("sinet").model_copy(update={"num_classes": 1}))
    for trial in study.trials:
        attrs = trial.user_attrs
        assert {"config", "arch_id", "params", "seed", "code_version"} <= set(attrs)
        if trial.state == TrialState.COMPLETE:
            assert {"fidelity", "epochs", "proxy_synflow", "proxy_grad_norm", "proxy_naswot"} <= set(attrs)
            assert trial.values[1] == attrs["params"]


@pytest.mark.slow
def test_stop_and_rerun_continues_without_repeating_trials(tmp_path):
    path = write_study(tmp_path)
    study_file = load_study_file(path)
    first = run_search(study_file, n_trials=2, progress=False)
    before = [(t.number, t.params, t.values) for t in first.trials]
    assert (tmp_path / "tiny.db").exists()  # SQLite beside the study file by default
    second = run_search(load_study_file(path), n_trials=4, progress=False)
    assert len(finished(second)) == 4
    assert [(t.number, t.params, t.values) for t in second.trials[:2]] == before
    params = [json.dumps(t.params, sort_keys=True) for t in second.trials]
    assert len(set(params)) == len(params)
    # a third run with the target already reached adds nothing
    third = run_search(load_study_file(path), n_trials=4, progress=False)
    assert len(third.trials) == 4


def test_over_budget_candidates_cost_no_training(tmp_path):
    study = run_search(load_study_file(write_study(tmp_path, budgets="max_params = 60000")), n_trials=4, storage="memory", progress=False)
    infeasible = [t for t in study.trials if t.user_attrs.get("infeasible")]
    assert infeasible, "the enqueued SINet (86,684 params with 1 class) is over this budget"
    for trial in infeasible:
        assert trial.state == TrialState.PRUNED
        assert trial.user_attrs["params"] > 60000 and "over budget" in trial.user_attrs["reason"]
        assert "epochs" not in trial.user_attrs and "rung0_val_fg_iou" not in trial.user_attrs


def test_duplicates_are_not_trained_twice(tmp_path):
    study_file = load_study_file(write_study(tmp_path, fidelity="false"))
    study = open_study(study_file, "memory")
    params = search_spaces.encode("sinet", search_spaces.sample("sinet", 3, num_classes=1))
    study.enqueue_trial(params)
    study.enqueue_trial(params)
    from lightseg_nas.search.objective import Objective

    study.optimize(Objective(study_file), n_trials=3)  # the baseline, then the pair
    original, twin = study.trials[1], study.trials[2]
    assert twin.user_attrs["duplicate_of"] == original.number
    assert twin.values == original.values
    assert "train_seconds" not in twin.user_attrs and "rung0_val_fg_iou" not in twin.user_attrs


def test_multi_fidelity_promotes_and_stops_as_specified(tmp_path):
    study = run_search(load_study_file(write_study(tmp_path)), n_trials=6, storage="memory", progress=False)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    reached = {t.number: t.user_attrs["fidelity"] for t in complete}
    assert 0 in reached.values() or len(complete) < 3  # someone stopped early
    assert reached[complete[0].number] == 1  # the first finisher is promoted (best of one)
    for trial in complete:
        # replay the decision from what the study knew when this trial finished rung 0
        earlier = [t for t in complete if t.number != trial.number and "rung0_val_fg_iou" in t.user_attrs and t.datetime_complete < trial.datetime_complete]
        rows = [[-t.user_attrs["rung0_val_fg_iou"], t.user_attrs["params"]] for t in earlier]
        rows.append([-trial.user_attrs["rung0_val_fg_iou"], trial.user_attrs["params"]])
        expected = is_promoted(len(rows) - 1, np.array(rows), 2)
        assert (trial.user_attrs["fidelity"] == 1) == expected, trial.number
        assert trial.user_attrs["epochs"] == (2 if expected else 1)


def test_report_files_and_csv_match_the_study(tmp_path):
    path = write_study(tmp_path, minimize='["params", "macs", "latency"]', proxies='["grad_norm"]')
    result = runner.invoke(app, ["search", str(path), "--n-trials", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "tiny-report"
    assert f"report: {folder / 'summary.md'}" in result.stdout
    for name in ("pareto_params", "pareto_macs", "pareto_latency", "hypervolume"):
        assert (folder / f"{name}.html").stat().st_size > 1000
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tiny.db'}")
    table = pd.read_csv(folder / "trials.csv")
    assert table.number.tolist() == [t.number for t in study.trials]
    for trial in study.trials:
        row = table[table.number == trial.number].iloc[0]
        assert row.state == trial.state.name
        if trial.values:
            assert row.val_fg_iou == pytest.approx(trial.values[0]) and row.params == trial.values[1]
    summary = (folder / "summary.md").read_text()
    assert "Pareto front" in summary and "sinet" in summary and "grad_norm" in summary


def test_the_latency_backend_is_chosen_by_the_study_and_recorded(tmp_path):
    path = write_study(tmp_path, minimize='["latency"]', fidelity="false")
    path.write_text(path.read_text().replace("repeats = 1", 'repeats = 1\nbackend = "torch-channels-last"'))
    study = run_search(load_study_file(path), n_trials=2, storage="memory", progress=False)
    for trial in finished(study):
        assert trial.user_attrs["latency_backend"] == "torch-channels-last" and trial.user_attrs["latency_ratio"] > 0
        assert trial.user_attrs["images_per_s"] > 0
    table = trials_dataframe(study)
    assert set(table.latency_backend.dropna()) == {"torch-channels-last"}
    path.write_text(path.read_text().replace('"torch-channels-last"', '"tpu"'))
    with pytest.raises(UserError, match="cost.backend"):
        load_study_file(path)


def test_exported_config_trains_with_the_trainer(tmp_path):
    path = write_study(tmp_path)
    assert runner.invoke(app, ["search", str(path), "--n-trials", "3", "--no-progress", "--no-report"]).exit_code == 0
    result = runner.invoke(app, ["export", str(path), "--front", "--out", str(tmp_path / "front")])
    assert result.exit_code == 0, result.output
    configs = sorted((tmp_path / "front").glob("*.json"))
    assert configs and all(len(p.stem) == 12 for p in configs)
    trained = runner.invoke(app, ["train", str(configs[0]), "--data", "synthetic:count=8", "--out", str(tmp_path / "run"), "--size", "32", "--epochs", "1", "--max-steps", "1", "--no-progress"])
    assert trained.exit_code == 0, trained.output
    assert (tmp_path / "run" / "model.pt").exists()


def test_every_shipped_study_file_is_valid():
    from pathlib import Path

    files = sorted((Path(__file__).parents[1] / "studies").glob("*.toml"))
    assert any(f.name == "quickstart.toml" for f in files)
    for file in files:
        try:
            study = load_study_file(file)
        except UserError as error:  # EG1800 studies on a machine without ../shared: only the data is missing
            assert "no such dataset folder" in str(error) and 'spec = "eg1800:' in file.read_text(), str(error)
            continue
        assert study.study.space in search_spaces.list_spaces()


BAD_STUDIES = {
    "malformed": ("[study\nname=", "not valid TOML"),
    "unknown space": (TINY.replace("{space}", "mobilenet"), "unknown search space 'mobilenet'"),
    "unknown objective": (TINY.replace("{minimize}", '["flops"]'), "objectives.minimize.0"),
    "unknown sampler": (TINY.replace("{study_extra}", 'sampler = "cmaes"'), "study.sampler"),
    "impossible budget": (TINY.replace("{budgets}", "max_params = 500"), "is impossible"),
    "unknown key": (TINY.replace("{study_extra}", "colour = 1"), "study.colour"),
}


@pytest.mark.parametrize("case", sorted(BAD_STUDIES))
def test_bad_study_files_exit_2_with_one_line(tmp_path, case):
    text, expected = BAD_STUDIES[case]
    text = text.replace("{space}", "sinet").replace("{minimize}", '["params"]').replace("{budgets}", "").replace("{study_extra}", "")
    text = text.replace("{fidelity}", "true").replace("{proxies}", "[]").replace("{rungs}", FAST_RUNGS).replace("{{", "{").replace("}}", "}")
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = runner.invoke(app, ["search", str(path), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad.db").exists()


def test_unreachable_storage_and_bad_exports_leave_the_study_unharmed(tmp_path):
    path = write_study(tmp_path)
    result = runner.invoke(app, ["search", str(path), "--storage", "postgresql://nobody@127.0.0.1:1/none", "--no-progress"])
    assert result.exit_code == 2 and "cannot be opened" in result.stderr
    assert runner.invoke(app, ["search", str(path), "--n-trials", "2", "--no-progress", "--no-report"]).exit_code == 0
    storage = f"sqlite:///{tmp_path / 'tiny.db'}"
    before = [(t.number, t.state, t.values) for t in optuna.load_study(study_name="tiny", storage=storage).trials]
    for args, expected in (
        (["--trial", "99"], "has no trial 99"),
        (["--best-under-params", "10"], "at most 10 parameters"),
        ([], "give exactly one of"),
    ):
        result = runner.invoke(app, ["export", str(path), *args, "--out", str(tmp_path / "out")])
        assert result.exit_code == 2 and expected in result.stderr, result.output
    assert not (tmp_path / "out").exists()
    assert [(t.number, t.state, t.values) for t in optuna.load_study(study_name="tiny", storage=storage).trials] == before
    missing = runner.invoke(app, ["report", str(path), "--study-name", "other"])
    assert missing.exit_code == 2 and "no study 'other'" in missing.stderr


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "gp", "random"])
def test_every_sampler_runs_a_constrained_multi_objective_study(tmp_path, sampler):
    path = write_study(tmp_path, fidelity="false", budgets="max_params = 60000", study_extra=f'sampler = "{sampler}"')
    study = run_search(load_study_file(path), n_trials=3, storage="memory", progress=False)
    assert len(finished(study)) == 3
    assert type(study.sampler).__name__.lower().startswith({"tpe": "tpe", "nsga2": "nsgaii", "gp": "gp", "random": "random"}[sampler])


def test_exporting_a_trial_that_never_finished_is_refused(tmp_path):
    path = write_study(tmp_path, fidelity="false", budgets="max_params = 60000")
    assert runner.invoke(app, ["search", str(path), "--n-trials", "2", "--no-progress", "--no-report"]).exit_code == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tiny.db'}")
    pruned = next(t.number for t in study.trials if t.state == TrialState.PRUNED)  # the over-budget SINet
    result = runner.invoke(app, ["export", str(path), "--trial", str(pruned), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "did not finish (pruned: over budget" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_study_names_the_recipe_its_chosen_networks_are_trained_with(tmp_path):
    path = write_study(tmp_path, study_extra='final_recipe = "curve"')
    study = run_search(load_study_file(path), n_trials=1, storage="memory", progress=False)
    from lightseg_nas.search import write_report

    write_report(study, tmp_path / "report")
    assert "--recipe curve" in (tmp_path / "report" / "summary.md").read_text()
    path = write_study(tmp_path, study_extra='final_recipe = "forever"')
    with pytest.raises(UserError, match="final_recipe: 'forever' is unknown"):
        load_study_file(path)


def test_report_plots_are_drawn_in_one_browser_session_and_a_failed_one_leaves_no_image(tmp_path, monkeypatch):
    from lightseg_nas.search import report as report_module

    path = write_study(tmp_path, fidelity="false")
    study = run_search(load_study_file(path), n_trials=2, storage="memory", progress=False)
    real_note, real_write = report_module._png_available(), report_module.pio.write_images
    folder = tmp_path / "report"
    calls = []

    def counted(figures, files, **options):  # a browser session that draws every figure it is given
        calls.append(len(figures))
        for file in files:
            Path(file).write_bytes(b"\x89PNG\r\n\x1a\n")

    monkeypatch.setattr(report_module, "_png_available", lambda: "")
    monkeypatch.setattr(report_module.pio, "write_images", counted)
    report_module.write_report(study, folder)
    pngs = sorted(folder.glob("*.png"))
    assert calls == [len(pngs)] and len(pngs) >= 2  # every plot, one browser start
    assert all(p.name in (folder / f"{p.stem}.html").read_text() for p in pngs)

    def broken(figures, files, **options):  # the first image written, then the browser dies
        Path(files[0]).write_bytes(b"half")
        raise RuntimeError("browser closed")

    monkeypatch.setattr(report_module.pio, "write_images", broken)
    report_module.write_report(study, folder)
    assert not list(folder.glob("*.png")) and "PNG export failed (RuntimeError: browser closed)" in (folder / "summary.md").read_text()
    assert all(".png" not in page.read_text() for page in folder.glob("*.html"))  # no page points at a missing image
    if real_note:
        pytest.skip(f"the real browser part: {real_note}")
    monkeypatch.setattr(report_module.pio, "write_images", real_write)
    report_module.write_report(study, folder)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000 for p in folder.glob("*.png"))
    assert len(list(folder.glob("*.png"))) == len(pngs)
