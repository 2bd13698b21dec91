"""The benchmark scripts still import against the package (they are run by hand, for hours,
so a stale import would otherwise show only then) and explain themselves."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_a_benchmark_script_imports_and_has_a_usage_docstring(path):
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the scripts run only under __main__
    assert callable(getattr(module, "main", None)), f"{path.name} has no main()"
    assert module.__doc__ and f"benchmarks/{path.name}" in module.__doc__, f"{path.name}: its docstring should say how to run it"


def _load(name):
    path = next(p for p in BENCHMARKS if p.stem == name)
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_audit_shards_split_the_chosen_networks_exactly_once_with_balanced_cost():
    import pandas as pd

    audit = _load("fidelity_audit")
    chosen = pd.DataFrame({"number": range(9), "latency_ratio": [3.0, 1.0, 2.0, 2.5, 1.5, None, 0.5, 2.0, 1.0]}, index=[4, 8, 1, 0, 7, 3, 2, 6, 5])
    parts = [audit.shard_of(chosen, (k, 3)) for k in (1, 2, 3)]
    assert sorted(n for part in parts for n in part.number) == list(range(9))
    loads = [part.latency_ratio.fillna(chosen.latency_ratio.median()).sum() for part in parts]
    assert max(loads) - min(loads) <= 1.0  # greedy longest-first: within the smallest item's cost of even
    from argparse import ArgumentTypeError

    from lightseg_nas.scripts import shard

    assert shard("2/3") == (2, 3)
    for bad in ("4/3", "0/2", "1/0", "abc", "1/2/3"):
        with pytest.raises(ArgumentTypeError):
            shard(bad)


def test_search_comparison_hypervolume_gain_counts_only_what_the_published_networks_do_not_cover():
    import numpy as np

    comparison = _load("search_comparison")
    published = np.array([[0.90, 40.0], [0.92, 80.0]])  # (fg IoU, params)
    scale = np.array([100.0])
    assert comparison.hypervolume_gain(np.empty((0, 2)), published, scale) == 0.0
    assert comparison.hypervolume_gain(np.array([[0.89, 60.0]]), published, scale) == 0.0  # dominated by both
    # a point better than the first published network in both objectives adds the strip
    # [0.09, 0.10] x [0.30, 0.80] and the band [0.10, 1.1] x [0.30, 0.40] (normalised: 1 - IoU, params / 100)
    gain = comparison.hypervolume_gain(np.array([[0.91, 30.0]]), published, scale)
    assert abs(gain - (0.01 * 0.5 + 1.0 * 0.1)) < 1e-9
    frame = __import__("pandas").DataFrame({"params": [5, 1, 9, 3, 7]})
    assert comparison.spread(frame, 3).params.tolist() == [1, 5, 9] and len(comparison.spread(frame, 10)) == 5


def test_final_models_names_and_comparison_lines():
    import pandas as pd

    final = _load("final_models")
    assert final.parse_name("extremec3net") == ("extremec3net", False)
    assert final.parse_name("0123456789ab-kd") == ("0123456789ab", True)
    for bad in ("resnet", "0123-kd", "../x", "0123456789AB"):
        with pytest.raises(SystemExit):
            final.parse_name(bad)
    assert final.file_name("sinet", 0) == "sinet.pt" and final.file_name("sinet", 1) == "sinet-seed1.pt"
    frame = pd.DataFrame({
        "model": ["extremec3net", "extremec3net", "0123456789ab", "0123456789ab", "fedcba987654", "sinet"],
        "seed": [0, 1, 0, 1, 0, 0], "params": [37738, 37738, 30000, 30000, 50000, 86684],
        "latency_ratio": [1.7, 1.7, 0.4, 0.4, 0.9, 1.0], "val_fg_iou_224": [93.0, 93.2, 93.5, 93.9, 95.0, 94.0],
    })
    by_model, lines = final.summary(frame)
    assert by_model.set_index("model").loc["extremec3net", "val_fg_iou_224_mean"] == pytest.approx(93.1)
    # the over-budget network is compared with neither; the one within budget with ExtremeC3Net, with SINet's
    # bar (not met: 0.30 points short, though faster), and, being fast, with SINet's accuracy
    assert len(lines) == 3, lines
    assert "+0.60 points against ExtremeC3Net (seeds 0,1) in seed means," in lines[0]
    # gaps are paired by seed: SINet has seed 0 only, so seed 0 against seed 0 (93.5 - 94.0), the all-seed means beside
    assert "-0.50 points against SINet (seeds 0, the ones both have) (-0.30 over all of each one's seeds)" in lines[2]
    assert lines[1].startswith("- 0123456789ab against SINet (seeds 0, the ones both have): -0.50 points in seed means (-0.30 over all")
    assert "latency 0.40x of SINet's (latency_ratio)" in lines[1] and lines[1].endswith(": not met.")
    frame.loc[frame.model == "0123456789ab", "val_fg_iou_224"] += 0.7  # seed 0 now 0.20 above SINet's seed 0, still faster: met
    _, lines = final.summary(frame)
    assert lines[1].startswith("- 0123456789ab against SINet (seeds 0, the ones both have): +0.20 points") and lines[1].endswith(": met.")
    slower = frame.assign(latency_ratio_onnxruntime=[1.5, 1.5, 1.2, 1.2, 0.9, 1.0])  # slower than SINet on the other backend
    assert final.summary(slower)[1][1].endswith(": not met.") and "0.40x, 1.20x of SINet's" in final.summary(slower)[1][1]
    frame.loc[frame.model == "0123456789ab", "val_fg_iou_224"] -= 0.7
    assert "seed spread 0.40 here, 0.20 for ExtremeC3Net" in lines[0]
    _, lines = final.summary(frame[frame.seed == 0])
    assert "seed spread n/a (one seed) here, n/a (one seed) for" in lines[0]
    # a third SINet seed does not move a two-seed network's gap: seeds 0,1 against seeds 0,1
    three = pd.concat([frame, pd.DataFrame({"model": ["sinet", "sinet"], "seed": [1, 2], "params": [86684] * 2, "latency_ratio": [1.0] * 2,
                                            "val_fg_iou_224": [94.4, 92.0]})], ignore_index=True)
    line = final.summary(three)[1][1]
    assert line.startswith("- 0123456789ab against SINet (seeds 0,1, the ones both have): -0.50 points in seed means (+0.23 over all"), line
    # no seed in common: the means over each one's own seeds, said so
    apart = three.assign(seed=[0, 1, 5, 6, 0, 0, 1, 2])
    assert "against SINet (seeds none in common: each one's own): +0.23 points" in final.summary(apart)[1][1]


def test_final_models_ledger_keeps_every_entry_when_trainings_finish_together(tmp_path):
    import threading

    final = _load("final_models")
    final.record_threads(tmp_path, "old.pt", 2)
    writers = [threading.Thread(target=final.record_threads, args=(tmp_path, f"net{i}.pt", 1)) for i in range(12)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    ledger = final.read_ledger(tmp_path)
    assert ledger["old.pt"] == {"threads": 2} and sorted(ledger) == sorted(["old.pt", *(f"net{i}.pt" for i in range(12))])
    assert not list(tmp_path.glob("*.tmp"))


def test_rung_agreement_uses_only_trials_with_both_rungs():
    from lightseg_nas.search.record import TrialRecord

    agreement = _load("rung_agreement").agreement
    records = [
        TrialRecord(params=p, rung_val_fg_iou=r)
        for p, r in [(10, {0: 0.1, 1: 0.3}), (20, {0: 0.2, 1: 0.2}), (30, {0: 0.3, 1: 0.1}), (40, {0: 0.9})]
    ]
    result = agreement(records)
    assert result["promoted_trials"] == 3  # the trial stopped at rung 0 is left out
    assert result["tau_rung0_vs_rung1"] == pytest.approx(-1.0) and result["tau_params_vs_rung1"] == pytest.approx(-1.0)


def test_search_comparison_gain_checks_leave_out_the_best_point_and_the_range_one_arm_never_reached():
    import numpy as np
    import pandas as pd

    comparison = _load("search_comparison")
    frame = pd.DataFrame({
        "arm": ["published", "published", "rungs", "supernet", "supernet"],
        "final_val_fg_iou": [0.90, 0.92, 0.91, 0.85, 0.91],
        "params": [40.0, 80.0, 30.0, 5.0, 30.0],
        "latency_ratio": [2.0, 1.0, 1.0, 0.5, 1.0],
    })
    scale = frame[["params", "latency_ratio"]].max().to_numpy(float)
    published = frame[frame.arm == "published"][["final_val_fg_iou", "params", "latency_ratio"]].to_numpy(float)
    rungs, supernet = (comparison.gains(frame, arm, published, scale) for arm in ("rungs", "supernet"))
    only_mid = comparison.hypervolume_gain(np.array([[0.91, 30.0, 1.0]]), published, scale)
    assert rungs["hypervolume_gain"] == pytest.approx(only_mid) and rungs["gain_without_best_point"] == 0.0
    assert supernet["hypervolume_gain"] > only_mid > 0  # the small point adds the cheap corner
    assert supernet["gain_from_common_params"] == pytest.approx(only_mid)  # the 5-parameter point is below the rung arm's range
    assert supernet["gain_without_best_point"] < supernet["hypervolume_gain"]
    summary = pd.DataFrame({"arm": ["rungs", "supernet"], "search_hours": [2.0, 1.0], "g": [0.2, 0.3]})
    assert comparison.per_hour(summary, "g") == pytest.approx(3.0)
    assert np.isnan(comparison.per_hour(summary.assign(g=[0.0, 0.3]), "g"))


@pytest.mark.parametrize("name,args", [
    ("final_models", ["{study}", "--train", "extremec3net"]),
    ("search_comparison", ["{study}", "{study}", "--out", "{tmp}/out"]),
    ("fidelity_audit", ["{study}", "--out", "{tmp}/out"]),
])
def test_an_eg1800_benchmark_skips_with_its_reason_where_the_data_is_absent(tmp_path, monkeypatch, capsys, name, args):
    # a committed EG1800 study file copied where its relative data folder does not exist (a fresh clone without ../shared)
    study = tmp_path / "eg1800_extremec3_r128.toml"
    study.write_text((Path(__file__).resolve().parents[1] / "studies" / study.name).read_text())
    monkeypatch.setattr("sys.argv", [name, *(a.format(study=study, tmp=tmp_path) for a in args)])
    _load(name).main()
    out = capsys.readouterr().out
    assert out.startswith("skipped: ") and "no such dataset folder" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == [study.name]  # nothing trained or written


def test_the_audit_retrains_on_finals_runner_with_two_workers_and_reuses_on_a_rerun(tmp_path):
    """The fidelity audit end to end on a tiny synthetic study: its networks are trained by
    final's runner (two workers claiming runs), each once, and a rerun trains nothing."""
    import subprocess
    import sys

    from tests.test_search import write_study

    study = write_study(tmp_path, fidelity="false")
    from lightseg_nas.search import load_study_file, run_search

    run_search(load_study_file(study), n_trials=3, progress=False)
    args = [sys.executable, str(Path(__file__).resolve().parents[1] / "benchmarks" / "fidelity_audit.py"), str(study), "--count", "2", "--epochs", "1", "--size", "32", "--eval-size", "32",
            "--batch-size", "4", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--threads", "1", "--workers", "2"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    trained = [line for line in first.stdout.splitlines() if "] training " in line]
    assert len(trained) == 3 and len({line.split("] training ")[1] for line in trained}) == 3, first.stdout  # 2 chosen + the SINet reference
    assert (tmp_path / "out" / "fidelity_audit.md").exists()
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    reused = {line.split("kept in ")[1] for line in again.stdout.splitlines() if line.endswith("reused")}
    assert again.returncode == 0 and "] training " not in again.stdout and len(reused) == 3, again.stdout  # each worker sees all three kept


def test_long_curves_ranking_compares_only_finished_networks_with_a_recipe_score():
    import pandas as pd

    curves = _load("long_curves")
    table = pd.DataFrame({"network": ["sinet", "a", "b"], "epochs_done": [100, 100, 40], "val_fg_iou_last": [95.0, 94.0, 96.0], "val_fg_iou_recipe": [94.3, 94.5, 92.0]})
    line = curves.ranking_line(table, "final", 100)
    assert "a different order" in line and "a > sinet against sinet > a" in line  # b has not finished: left out
    table.loc[1, "val_fg_iou_recipe"] = 93.0
    assert "the same order" in curves.ranking_line(table, "final", 100)
    assert "not yet comparable (1 of 3" in curves.ranking_line(table.assign(val_fg_iou_recipe=[94.3, None, None]), "final", 100)


def test_edge_term_cost_times_three_forms_and_keeps_its_protocol(tmp_path, monkeypatch, capsys):
    import sys

    import lightseg_nas.losses as losses

    bench, trainer_band = _load("edge_term_cost"), losses.boundary_band
    out = tmp_path / "results"
    for bad, said in ((["--steps", "0"], "--steps"), (["--network", "resnet"], "--network")):
        monkeypatch.setattr(sys, "argv", ["edge_term_cost.py", *bad, "--out", str(out)])
        with pytest.raises(SystemExit) as stop:
            bench.main()
        assert stop.value.code == 2 and said in capsys.readouterr().err and not out.exists()
    monkeypatch.setattr(sys, "argv", ["edge_term_cost.py", "--size", "32", "--batch-size", "2", "--steps", "1", "--out", str(out)])
    bench.main()
    table = (out / "edge_term_cost.md").read_text()
    assert "2-D max pools" in table and "window sums" in table and "| ce | " in table
    assert losses.boundary_band is trainer_band  # the trainer's band is put back
    monkeypatch.setattr(sys, "argv", ["edge_term_cost.py", "--size", "64", "--batch-size", "2", "--steps", "1", "--out", str(out)])
    with pytest.raises(SystemExit) as stop:  # another protocol: refused, the results kept
        bench.main()
    assert stop.value.code == 2 and (out / "edge_term_cost.md").read_text() == table


def test_denormals_times_kept_against_flushed_and_leaves_them_flushed(tmp_path, monkeypatch, capsys):
    import sys

    import torch

    bench, out = _load("denormals"), tmp_path / "results"
    final = Path(__file__).resolve().parents[1] / "studies" / "eg1800_hybrid_r128-final"
    for bad, said in ((["--repeats", "0"], "--repeats"), (["--threads", "2"], "--threads"), (["--models", "nope.pt"], "nope.pt"),
                      (["--no-released", "--data", f"eg1800:{tmp_path / 'none'}"], "no such dataset")):
        monkeypatch.setattr(sys, "argv", ["denormals.py", *bad, "--out", str(out)])
        with pytest.raises(SystemExit) as stop:
            bench.main()
        assert stop.value.code == 2 and said in capsys.readouterr().err and not out.exists()
    args = ["--models", str(final / "7825f0dea1a9.pt"), "--no-released", "--data", "synthetic:count=8", "--repeats", "1"]
    monkeypatch.setattr(sys, "argv", ["denormals.py", *args, "--size", "32", "--out", str(out)])
    bench.main()
    table = (out / "denormals.md").read_text()
    assert "| 7825f0dea1a9 (trained here) | NCHW |" in table and "| 7825f0dea1a9 (trained here) | channels-last |" in table
    assert (torch.full((8,), 1e-30) * 1e-10 == 0).all()  # flushed again afterwards, as the package runs
    monkeypatch.setattr(sys, "argv", ["denormals.py", *args, "--size", "64", "--out", str(out)])
    with pytest.raises(SystemExit) as stop:  # another protocol: refused, the results kept
        bench.main()
    assert stop.value.code == 2 and (out / "denormals.md").read_text() == table


def test_metric_cost_times_three_forms_and_keeps_its_protocol(tmp_path, monkeypatch):
    import sys

    import lightseg_nas.metrics as metrics

    bench, ours = _load("metric_cost"), (metrics._boundary, metrics._dilate)
    out = tmp_path / "results"  # bad arguments: tests/test_benchmark_args.py
    monkeypatch.setattr(sys, "argv", ["metric_cost.py", "--size", "32", "--batch-size", "2", "--steps", "1", "--out", str(out)])
    bench.main()
    table = (out / "metric_cost.md").read_text()
    assert "2-D max pools" in table and "shifted ORs" in table and "| forward alone | " in table
    assert (metrics._boundary, metrics._dilate) == ours  # the metric's own windows are put back
    monkeypatch.setattr(sys, "argv", ["metric_cost.py", "--size", "64", "--batch-size", "2", "--steps", "1", "--out", str(out)])
    with pytest.raises(SystemExit) as stop:  # another protocol: refused, the results kept
        bench.main()
    assert stop.value.code == 2 and (out / "metric_cost.md").read_text() == table
