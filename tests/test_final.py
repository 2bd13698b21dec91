"""`lightseg-nas final`: a study's chosen networks trained per seed with one recipe, reused
only when their protocol matches, and compared in one table (tiny steps here)."""

import json
from pathlib import Path

from typer.testing import CliRunner

from lightseg_nas.cli import app
from tests.test_bad_input import _snapshot
from tests.test_search import write_study

runner = CliRunner()


def test_final_trains_two_networks_for_two_seeds_and_reuses_them(tmp_path):
    study = write_study(tmp_path, fidelity="false")
    assert runner.invoke(app, ["search", str(study), "--n-trials", "3", "--no-progress", "--no-report"]).exit_code == 0
    args = ["final", str(study), "--front", "--top", "1", "--baselines", "sinet", "--seeds", "0,1", "--recipe", "curve",
            "--max-steps", "1", "--runs", str(tmp_path / "runs"), "--no-png", "--threads", "1", "--no-progress"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    folder = tmp_path / "tiny-final"
    kept = sorted(p.name for p in folder.glob("*.pt"))
    assert len(kept) == 4 and "sinet.pt" in kept and "sinet-seed1.pt" in kept
    assert {row["seeds"] for row in summary["networks"]} == {"0,1"} and len(summary["networks"]) == 2
    assert all(0 <= row["val_fg_iou_224"] <= 100 and row["latency_ratio"] > 0 and row["latency_ratio_onnxruntime"] > 0 for row in summary["models"])
    # SINet is the reference: its own trained copies read 1.00 on both backends, not a second timing of it
    assert {(row["latency_ratio"], row["latency_ratio_onnxruntime"]) for row in summary["models"] if row["model"] == "sinet"} == {(1.0, 1.0)}
    assert all(row["cpu_minutes"] > 0 for row in summary["models"])  # the threads each model file records
    for name in ("results.md", "results.csv", "final_params.html", "final_latency.html", "plotly.min.js"):  # the pages work offline
        assert (folder / name).exists(), name
    assert "Written by `lightseg-nas final`" in (folder / "results.md").read_text()
    # the same command again: every network reused, nothing trained
    again = runner.invoke(app, [*args, "--no-table"])
    assert again.exit_code == 0 and "training" not in again.stderr + again.stdout and again.output.count("reused") == 4
    # a table rewritten without images drops the images of the older table (no stale PNG beside new figures)
    for name in ("final_params", "final_latency"):
        (folder / f"{name}.png").write_bytes(b"an image of an older table")
    redone = runner.invoke(app, args)
    assert redone.exit_code == 0 and redone.output.count("reused") == 4, redone.output
    assert not list(folder.glob("*.png"))
    assert all(f"{name}.png" not in (folder / f"{name}.html").read_text() for name in ("final_params", "final_latency"))
    # another protocol is refused before any work, and nothing changes
    before = _snapshot(tmp_path)
    changed = list(args)
    changed[changed.index("--max-steps") + 1] = "2"
    refused = runner.invoke(app, changed)
    assert refused.exit_code == 2 and "holds another network or protocol" in refused.stderr, refused.output
    assert len(refused.stderr.strip().splitlines()) == 1 and _snapshot(tmp_path) == before


def test_final_refuses_bad_choices_in_one_line(tmp_path):
    study = write_study(tmp_path, fidelity="false")
    assert runner.invoke(app, ["search", str(study), "--n-trials", "2", "--no-progress", "--no-report"]).exit_code == 0
    before = _snapshot(tmp_path)
    for extra, expected in [
        (["--seeds", "a,b"], "--seeds"), (["--top", "2"], "--top goes with --front"), (["--arch", "0123456789ab"], "no trial of study"),
        (["--baselines", "resnet"], "resnet"), (["--trial", "99"], "has no trial 99"), (["--recipe", "fast"], "--recipe"),
        (["--kd-weight", "2"], "No such option"), (["--teacher-weights", "x.pth"], "--teacher-weights goes with --teacher"),
    ]:
        result = runner.invoke(app, ["final", str(study), "--max-steps", "1", *extra])
        assert result.exit_code == 2 and expected in result.stderr, (extra, result.output)
        assert len(result.stderr.strip().splitlines()) == 1
    assert _snapshot(tmp_path) == before


def test_two_workers_train_every_run_once_and_the_table_covers_them(tmp_path, capfd):
    study = write_study(tmp_path, fidelity="false")
    assert runner.invoke(app, ["search", str(study), "--n-trials", "3", "--no-progress", "--no-report"]).exit_code == 0
    args = ["final", str(study), "--front", "--top", "1", "--baselines", "sinet", "--seeds", "0,1", "--recipe", "curve", "--max-steps", "1",
            "--runs", str(tmp_path / "runs"), "--no-png", "--threads", "1", "--workers", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = capfd.readouterr().out.splitlines()
    trained = sorted(line.split("training ", 1)[1].split(" (")[0] for line in lines if "] training " in line)
    assert len(trained) == 4 and len(set(trained)) == 4, lines  # each network and seed once, whichever worker took it
    assert {line.split(":")[0] for line in lines if "] training " in line} <= {"worker 1", "worker 2"}
    # no bars from processes side by side: a named line per epoch instead
    epochs = [line for line in lines if ": epoch 1/" in line]
    assert sorted(line.split("] ", 1)[1].split(":")[0] for line in epochs) == sorted(trained), lines
    assert all("validation fg IoU" in line for line in epochs)
    assert len(list((tmp_path / "tiny-final").glob("*.pt"))) == 4 and (tmp_path / "tiny-final" / "results.md").exists()


def test_a_worker_passes_over_a_run_another_one_holds(tmp_path):
    from lightseg_nas.checks import file_lock
    from lightseg_nas.search import load_study_file, open_study
    from lightseg_nas.search.final import plan_runs, train_runs

    study = write_study(tmp_path, fidelity="false")
    assert runner.invoke(app, ["search", str(study), "--n-trials", "2", "--no-progress", "--no-report"]).exit_code == 0
    study_file = load_study_file(study)
    runs = plan_runs(study_file, open_study(study_file, create=False), ["sinet"], (0, 1), tmp_path / "runs", recipe="curve", max_steps=1)
    lines = []
    (tmp_path / "runs").mkdir()
    with file_lock(tmp_path / "runs" / ".sinet-seed0.claim"):  # another worker is training seed 0
        train_runs(runs, study_file.data_spec(), 1, progress=False, on_run=lines.append, share=True)
    assert "another worker is training it" in lines[0] and "training sinet seed 1" in lines[1]
    assert not runs[0].model_file.exists() and runs[1].model_file.exists()


def test_a_compressed_network_in_the_final_folder_is_scored_with_its_source_teacher_and_the_sinet_bar(tmp_path):
    study = write_study(tmp_path, fidelity="false")
    assert runner.invoke(app, ["search", str(study), "--n-trials", "2", "--no-progress", "--no-report"]).exit_code == 0
    common = ["--runs", str(tmp_path / "runs"), "--no-png", "--threads", "1", "--no-progress", "--recipe", "curve", "--max-steps", "1"]
    assert runner.invoke(app, ["final", str(study), "--baselines", "sinet", "--no-table", *common]).exit_code == 0
    folder = tmp_path / "tiny-final"
    squeezed = runner.invoke(app, [
        "compress", str(folder / "sinet.pt"), "--target-params", "37738", "--teacher", str(folder / "sinet.pt"), "--out", str(folder / "sinet-c37738-kd.pt"),
        "--steps", "1", "--epochs-per-step", "1", "--max-steps-per-step", "1", "--size", "64", "--threads", "1", "--no-progress",
    ])
    assert squeezed.exit_code == 0, squeezed.output
    result = runner.invoke(app, ["final", str(study), "--baselines", "none", *common, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    rows = {row["model"]: row for row in summary["models"]}
    assert set(rows) == {"sinet", "sinet-c37738-kd"}
    assert rows["sinet-c37738-kd"]["source"] == "sinet.pt" and rows["sinet-c37738-kd"]["teacher"] == "sinet.pt" and rows["sinet"]["teacher"] == rows["sinet"]["source"] == ""
    assert rows["sinet-c37738-kd"]["params"] <= 37738 < rows["sinet"]["params"] and rows["sinet-c37738-kd"]["cpu_minutes"] > 0
    assert rows["sinet-c37738-kd"]["seed"] == 0  # the compression's seed, not its last fine-tuning's (seed + step)
    bar = [line for line in summary["comparisons"] if line.startswith("- sinet-c37738-kd against SINet")]
    assert len(bar) == 1 and "latency_ratio, latency_ratio_onnxruntime" in bar[0] and bar[0].endswith(("target (at most 37,738 params and SINet's latency, at least its accuracy): met.", "not met."))


def test_a_front_without_a_searched_member_is_said_and_the_other_choices_go_ahead(tmp_path):
    study = write_study(tmp_path, fidelity="false")
    # one trial: the enqueued SINet alone, so the front holds no searched network
    assert runner.invoke(app, ["search", str(study), "--n-trials", "1", "--no-progress", "--no-report"]).exit_code == 0
    common = ["final", str(study), "--front", "--recipe", "curve", "--max-steps", "1", "--runs", str(tmp_path / "runs"), "--threads", "1", "--no-progress", "--no-table"]
    alone = runner.invoke(app, [*common, "--baselines", "none"])
    assert alone.exit_code == 2 and "no searched network on its full-fidelity front" in alone.stderr and len(alone.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
    with_baseline = runner.invoke(app, [*common, "--baselines", "sinet"])
    assert with_baseline.exit_code == 0, with_baseline.output
    assert "no searched network on its full-fidelity front" in with_baseline.output and "training sinet seed 0" in with_baseline.output
    assert sorted(p.name for p in (tmp_path / "tiny-final").glob("*.pt")) == ["sinet.pt"]


def test_the_table_names_every_setting_of_its_recipe():
    from lightseg_nas.search.final import recipe_text

    assert json.loads(recipe_text("long")) == {"epochs": 100, "size": 224, "batch_size": 16, "lr": 0.005, "schedule": "cosine", "loss": "ce", "edge_weight": 0.5}
    assert "edge_weight" not in json.loads(recipe_text("final"))


def test_final_plots_leave_room_for_the_end_points_labels():
    """The x range reaches past the outermost points on both sides (a label centred on the leftmost point was cut off)."""
    import math

    import pandas as pd

    from lightseg_nas.search.final import padded_range

    params = pd.Series([35990, 86684, float("nan")])
    low, high = padded_range(params, log=True)
    span = math.log10(86684) - math.log10(35990)
    assert low < math.log10(35990) - 0.1 * span and high > math.log10(86684) + 0.1 * span
    low, high = padded_range(pd.Series([0.94, 1.0]), log=False)
    assert low < 0.94 - 0.006 and high > 1.0 + 0.006
    low, high = padded_range(pd.Series([1.0]), log=False)  # one network: still a range around it
    assert low < 1.0 < high
    assert padded_range(pd.Series([float("nan")]), log=False) is None
    # and the plots use it: both axes of a two-network table reach past its end points
    from lightseg_nas.search.final import final_figure
    from lightseg_nas.search.study_file import load_study_file

    by_model = pd.DataFrame({"model": ["7825f0dea1a9", "sinet"], "recipe": ["long", "long"], "params": [35990, 86684], "latency_ratio": [0.94, 1.0],
                             "seeds": ["0", "0"], "val_fg_iou_224_mean": [94.6, 95.26], "val_fg_iou_224_min": [94.6, 95.26], "val_fg_iou_224_max": [94.6, 95.26]})
    study_file = load_study_file(Path(__file__).resolve().parents[1] / "studies" / "eg1800_hybrid_r128.toml", needs_data=False)
    low, high = final_figure(by_model, "params", study_file).layout.xaxis.range
    assert low < math.log10(35990) and high > math.log10(86684)
    low, high = final_figure(by_model, "latency", study_file).layout.xaxis.range
    assert low < 0.94 and high > 1.0


def test_final_plot_labels_of_crowded_points_do_not_overlap_and_stay_in_the_plot():
    """Labels of near points (two networks at nearly one size and score, a column of
    compressed networks) are moved apart, beside or above their points, within the plot
    area, and each label that moved hangs on a line from its own point."""
    from lightseg_nas.search.final import LABEL_FONT_PX, label_places

    line = LABEL_FONT_PX + 3
    texts = ["7825f0dea1a9 (long)", "sinet-c37738-e10-kd (long+compress)", "sinet-c37738-e10 (long+compress)", "a (final)", "b (final)", "c (final)"]
    px = [200.0, 210.0, 210.0, 60.0, 60.0, 62.0]
    py = [300.0, 301.0, 295.0, 100.0, 98.0, 96.0]
    area = (0.0, 700.0, 0.0, 390.0)
    for beside in (True, False):
        places = label_places(px, py, texts, beside=beside, area=area)
        boxes = []
        for x, y, text, (shift, side) in zip(px, py, texts, places):
            width = 0.52 * LABEL_FONT_PX * len(text)
            left = {"right": x + 10, "left": x - 10 - width, "above": x - width / 2}[side]
            centre = (y if beside else y + 8 + line / 2) + shift
            boxes.append((left, left + width, centre - line / 2, centre + line / 2))
            assert side in (("right", "left") if beside else ("above",))
        for i, a in enumerate(boxes):
            assert area[0] <= a[0] and a[1] <= area[1] and area[2] <= a[2] and a[3] <= area[3], (texts[i], a)
            for j, b in enumerate(boxes[:i]):
                assert not (a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]), (texts[i], texts[j])
        assert any(shift for shift, _ in places)  # crowded: something had to move
    # a lone point's label stays where it was
    assert label_places([300.0], [200.0], ["sinet (long)"], beside=True, area=area) == [(0, "right")]
    # and the figure draws one annotation per point, the moved ones on a visible line
    import pandas as pd

    from lightseg_nas.search.final import final_figure
    from lightseg_nas.search.study_file import load_study_file

    by_model = pd.DataFrame({"model": ["7825f0dea1a9", "sinet-c37738-e10-kd", "sinet"], "recipe": ["long", "long+compress", "long"], "params": [35990, 37540, 86684],
                             "latency_ratio": [0.88, 0.66, 1.0], "seeds": ["0", "0,1", "0,1"], "val_fg_iou_224_mean": [94.60, 94.62, 95.24],
                             "val_fg_iou_224_min": [94.60, 94.59, 95.21], "val_fg_iou_224_max": [94.60, 94.64, 95.26]})
    study_file = load_study_file(Path(__file__).resolve().parents[1] / "studies" / "eg1800_hybrid_r128.toml", needs_data=False)
    annotations = final_figure(by_model, "params", study_file).layout.annotations
    assert sorted(a.text for a in annotations) == sorted(by_model.model + " (" + by_model.recipe + ")")
    assert all((a.ay != 0) == (a.arrowcolor != "rgba(0,0,0,0)") for a in annotations)


def test_one_table_over_final_folders_of_two_recipes_names_each_rows_recipe(tmp_path):
    """`final --also FOLDER`: the model files of another final folder (another recipe) scored
    in the same table, timed side by side; each row names its recipe, networks are grouped
    per recipe, compared only with published networks trained alike, and a file copied
    into both folders is counted once."""
    import shutil

    study = write_study(tmp_path, fidelity="false")
    assert runner.invoke(app, ["search", str(study), "--n-trials", "2", "--no-progress", "--no-report"]).exit_code == 0
    common = ["--runs", str(tmp_path / "runs"), "--no-png", "--threads", "1", "--no-progress", "--max-steps", "1", "--baselines", "sinet"]
    other = tmp_path / "tiny-other"
    assert runner.invoke(app, ["final", str(study), "--recipe", "curve", "--no-table", *common]).exit_code == 0
    trained = runner.invoke(app, ["final", str(study), "--recipe", "final", "--no-table", "--out", str(other), *common, "--runs", str(tmp_path / "runs-final")])
    assert trained.exit_code == 0, trained.output
    squeezed = runner.invoke(app, [
        "compress", str(other / "sinet.pt"), "--target-params", "37738", "--out", str(other / "sinet-c37738.pt"),
        "--steps", "1", "--epochs-per-step", "1", "--max-steps-per-step", "1", "--size", "64", "--threads", "1", "--no-progress",
    ])
    assert squeezed.exit_code == 0, squeezed.output
    folder = tmp_path / "tiny-final"
    shutil.copy(folder / "sinet.pt", other / "sinet-curve-copy.pt")  # the same bytes in both folders: one row
    before = _snapshot(tmp_path)
    for extra, expected in [(["--also", str(tmp_path / "nowhere")], "no such folder"), (["--also", str(tmp_path / "runs")], "holds no model file"),
                            (["--also", str(other), "--no-table"], "--also adds folders to the table")]:
        refused = runner.invoke(app, ["final", str(study), *common, "--baselines", "none", *extra])
        assert refused.exit_code == 2 and expected in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, (extra, refused.output)
    assert _snapshot(tmp_path) == before
    result = runner.invoke(app, ["final", str(study), *common, "--baselines", "none", "--also", str(other), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    rows = {(row["file"], row["recipe"]) for row in summary["models"]}
    assert rows == {("sinet.pt", "curve"), ("../tiny-other/sinet.pt", "final"), ("../tiny-other/sinet-c37738.pt", "final+compress")}, rows
    assert {(row["model"], row["recipe"]) for row in summary["networks"]} == {("sinet", "curve"), ("sinet", "final"), ("sinet-c37738", "final+compress")}
    # SINet is timed once per backend for both recipes' copies (same network): both read 1.00 there
    assert {row["latency_ratio"] for row in summary["models"] if row["model"] == "sinet"} == {1.0}
    # the compressed network is compared with the SINet of its source's recipe, and the line says which recipe
    bar = [line for line in summary["comparisons"] if "sinet-c37738 against SINet" in line]
    assert len(bar) == 1 and bar[0].startswith("- [final] sinet-c37738 against SINet (seeds 0)"), summary["comparisons"]
    # a table of other folders alone, in a new folder; a table of nothing is refused in one line
    alone = runner.invoke(app, ["final", str(study), *common, "--baselines", "none", "--also", str(other), "--out", str(tmp_path / "both")])
    assert alone.exit_code == 0 and (tmp_path / "both" / "results.md").exists(), alone.output
    assert "../tiny-other/sinet-c37738.pt" in (tmp_path / "both" / "results.md").read_text()
    empty = runner.invoke(app, ["final", str(study), *common, "--baselines", "none", "--out", str(tmp_path / "empty")])
    assert empty.exit_code == 2 and "holds no model file to score" in empty.stderr and not (tmp_path / "empty").exists(), empty.output
    text = (folder / "results.md").read_text()
    assert "Trained with the recipe each row names (`curve`: " in text and "`final`: " in text and "NAME+compress: " in text
    assert "other: " not in text  # only the kinds of row the table holds are explained
    assert "sinet (curve)" in (folder / "final_params.html").read_text()


def test_a_model_files_recipe_is_named_from_its_settings_when_it_was_not_recorded():
    from lightseg_nas.search.final import training_recipe
    from lightseg_nas.train import settings_from

    for name in ("curve", "final", "long"):
        training = settings_from(name, seed=1).model_dump()
        assert training_recipe(training) == name
        assert training_recipe({**training, "recipe": None}) == name  # files written before the name was recorded
    assert training_recipe({**settings_from("final").model_dump(), "recipe": None, "epochs": 7}) == "other"
