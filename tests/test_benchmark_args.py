"""Benchmark scripts are user-facing: a bad argument, a reuse of a run of another protocol
or a rerun that would replace committed results of another protocol ends in one line
(exit code 2) before anything is trained or written; committed results stay byte-identical."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_bad_input import _snapshot
from tests.test_benchmarks import _load

REPO = Path(__file__).resolve().parents[1]
STUDIES = REPO / "studies"
HAS_DATA = (REPO.parent / "shared" / "data" / "eg1800").is_dir()

CASES = [
    ("fidelity_audit", ["--threads", "0"], "--threads"),
    ("fidelity_audit", ["--shard", "abc"], "--shard"),
    ("fidelity_audit", ["--shard", "1/0"], "--shard"),
    ("fidelity_audit", ["--epochs", "0"], "--epochs"),
    ("fidelity_audit", ["--seed", "-1"], "--seed"),
    ("fidelity_audit", ["no/such/study.toml"], "no such file"),
    ("fidelity_audit", ["--supernet", "no/such/supernet.pt"], "no such file"),
    ("fidelity_audit", ["--references", "resnet"], "resnet"),
    ("search_comparison", ["--top", "0"], "--top"),
    ("search_comparison", ["--shard", "3/2"], "--shard"),
    ("search_comparison", ["--threads", "-1"], "--threads"),
    ("search_comparison", ["--batch-size", "zero"], "--batch-size"),
    ("final_models", ["--max-steps", "0"], "--max-steps"),
    ("final_models", ["--seed", "-3"], "--seed"),
    ("final_models", ["--train", "resnet"], "resnet"),
    ("final_models", ["--threads", "0"], "--threads"),
    ("rung_agreement", ["no/such/study.toml"], "no such file"),
    ("long_curves", ["--epochs", "0"], "--epochs"),
    ("long_curves", ["--seed", "x"], "--seed"),
    ("long_curves", ["--recipe", "long-ish"], "--recipe"),
    ("long_curves", ["--networks", "resnet"], "resnet"),
    ("long_curves", ["--networks", "sinet-kd"], "sinet-kd"),
    ("long_curves", ["no/such/study.toml"], "no such file"),
    ("long_curves", ["--out", str(REPO / "README.md")], "--out"),
    ("long_curves", ["--runs", str(REPO / "README.md")], "--runs"),
    ("rung_agreement", [str(STUDIES / "eg1800_extremec3_supernet.toml")], "no second rung"),
    ("protocol", [], "give at least one"),
    ("protocol", ["resnet:final"], "resnet"),
    ("protocol", ["sinet1:final", "sinet1:long-ish"], "unknown recipe 'long-ish'"),
    ("protocol", ["sinet:final", "--threads", "0"], "--threads"),
    ("metric_cost", ["--steps", "0"], "--steps"),
    ("metric_cost", ["--network", "resnet"], "--network"),
    ("metric_cost", ["--batch-size", "x"], "--batch-size"),
    ("metric_cost", ["--steps", "3"], "holds results of another protocol"),  # the committed results are of --steps 9
]
# these read the committed EG1800 studies' data: only where it is present
WITH_DATA = [
    ("fidelity_audit", ["--epochs", "30"], "holds results of another protocol"),
    ("search_comparison", [str(STUDIES / "eg1800_extremec3_supernet.toml"), str(STUDIES / "eg1800_extremec3.toml"), "--out", "{tmp}/out"], "needs a rungs study"),
    ("final_models", ["--train", "extremec3net", "--max-steps", "1", "--runs", "{tmp}/runs"], "holds another network or protocol"),
    ("final_models", ["--train", "extremec3net-kd", "--teacher-weights", "no/such.pth"], "--teacher-weights"),
    ("long_curves", ["--epochs", "20"], "more than the recipe's 30"),
    ("long_curves", ["--networks", "0123456789ab"], "no trial of study"),
    ("long_curves", ["--epochs", "200", "--no-train"], "holds results of another protocol"),
]


def _committed() -> dict:
    return {**_snapshot(REPO / "benchmarks" / "results"), **{f"final/{k}": v for k, v in _snapshot(STUDIES / "eg1800_extremec3_r128-final").items()}}


@pytest.mark.parametrize("name,args,expected", CASES + [pytest.param(*c, marks=pytest.mark.skipif(not HAS_DATA, reason="needs ../shared/data/eg1800")) for c in WITH_DATA],
                         ids=[f"{c[0]} {' '.join(c[1])[-40:]}" for c in CASES + WITH_DATA])
def test_a_benchmark_refuses_in_one_line_before_any_work(name, args, expected, tmp_path, monkeypatch, capsys):
    before = _committed()
    monkeypatch.setattr("sys.argv", [name, *(a.format(tmp=tmp_path) for a in args)])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        _load(name).main()
    assert stop.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], captured.err
    assert _committed() == before
    assert list(tmp_path.iterdir()) == [], "nothing is trained or written"


def test_protocol_refuses_to_replace_a_committed_row_of_another_protocol(tmp_path, monkeypatch, capsys):
    import pandas as pd

    results = tmp_path / "results"
    results.mkdir()
    pd.DataFrame([{"run": "sinet1:final", "preset": "sinet1", "epochs": 15, "train_size": 224, "seed": 0, "loss": "ce", "classes": 1}]).to_csv(results / "protocol.csv", index=False)
    before = _snapshot(results)
    monkeypatch.setattr("sys.argv", ["protocol", "sinet1:final", "--results", str(results), "--folder", str(tmp_path / "runs")])
    with pytest.raises(SystemExit) as stop:
        _load("protocol").main()
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds another protocol (epochs)" in err[0], err
    assert _snapshot(results) == before and not (tmp_path / "runs").exists()
