"""Off a terminal (nohup, tee, a scheduler) long commands print one line per epoch or per
finished trial instead of a bar, percentages with their unit; with --json the lines go to
stderr so stdout stays one JSON object."""

import json

from typer.testing import CliRunner

from lightseg_nas.cli import app
from tests.test_search import write_study

runner = CliRunner()


def test_train_prints_a_line_per_epoch_and_keeps_json_clean(tmp_path):
    args = ["train", "--preset", "sinet", "--data", "synthetic:count=8", "--size", "32", "--batch-size", "4", "--epochs", "2", "--max-steps", "3"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"] and all("%" in line for line in lines)
    quiet = runner.invoke(app, [*args, "--out", str(tmp_path / "b"), "--json"])
    assert quiet.exit_code == 0 and json.loads(quiet.stdout)["val_size"] == 32 and "epoch 1/2" in quiet.stderr
    silent = runner.invoke(app, [*args, "--out", str(tmp_path / "c"), "--no-progress"])
    assert "epoch 1/2" not in silent.output


def test_search_prints_a_line_per_finished_trial(tmp_path):
    study = write_study(tmp_path, fidelity="false")
    result = runner.invoke(app, ["search", str(study), "--n-trials", "2", "--no-report"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("trial ")]
    assert len(lines) == 2 and "validation fg IoU" in lines[0] and "%" in lines[0] and "front" in lines[-1]


def test_eval_labels_percentages(tmp_path):
    out = tmp_path / "run"
    runner.invoke(app, ["train", "--preset", "sinet", "--data", "synthetic:count=8", "--size", "32", "--epochs", "1", "--max-steps", "1", "--out", str(out), "--no-progress"])
    result = runner.invoke(app, ["eval", str(out / "model.pt")])
    assert result.exit_code == 0, result.output
    assert all(line.split()[1].endswith("%") for line in result.stdout.splitlines() if line.startswith(("fg_iou", "miou", "boundary_f")))
