"""The trial record (lightseg_nas/search/record.py): one typed schema for what trials store,
outcomes for control flow, and studies stored before it still load."""

from __future__ import annotations

import collections
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from pydantic import ValidationError

from lightseg_nas.search import load_study_file, run_search, trials_dataframe
from lightseg_nas.search.record import RECORD_VERSION, TrialRecord, record
from tests.test_search import write_study

STUDY_DB = Path(__file__).resolve().parents[1] / "studies" / "eg1800_extremec3.db"


def test_a_record_round_trips_through_the_flat_attributes():
    full = TrialRecord(
        record_version=RECORD_VERSION, config={"family": "c3net"}, arch_id="0123456789ab", params=1000, macs=2000,
        latency_ms=1.5, latency_backend="torch", latency_ratio=0.5, outcome="trained", reason=None, duplicate_of=None,
        rung_val_fg_iou={0: 0.7, 1: 0.8}, fidelity=1, epochs=5, proxies={"synflow": 3.0}, seed=0, code_version="x",
    )
    attrs = full.to_attrs()
    assert attrs["rung0_val_fg_iou"] == 0.7 and attrs["rung1_val_fg_iou"] == 0.8 and attrs["proxy_synflow"] == 3.0
    assert "rung_val_fg_iou" not in attrs and "proxies" not in attrs
    assert TrialRecord.from_attrs(attrs) == full


def test_writing_checks_names_and_types():
    study = optuna.create_study()
    trial = study.ask()
    record(trial, params=12, rung_val_fg_iou={0: 0.5})
    assert trial.user_attrs == {"params": 12, "rung0_val_fg_iou": 0.5}
    for bad in ({"parms": 12}, {"params": "many"}, {"outcome": "exploded"}, {"rung_val_fg_iou": {"first": 0.5}}):
        with pytest.raises(ValidationError):
            record(trial, **bad)
    assert trial.user_attrs == {"params": 12, "rung0_val_fg_iou": 0.5}


def test_outcomes_decide_not_the_words_of_a_reason():
    assert TrialRecord.from_attrs({"outcome": "surplus", "reason": "whatever words"}).outcome == "surplus"
    assert TrialRecord.from_attrs({"outcome": "failed", "reason": "surplus: words that look like another outcome"}).outcome == "failed"


def test_a_new_search_records_version_and_outcome_for_every_trial(tmp_path):
    study = run_search(load_study_file(write_study(tmp_path, budgets="max_params = 3000")), n_trials=3, storage="memory", progress=False)
    for trial in study.trials:
        stored = TrialRecord.of(trial)
        assert stored.record_version == RECORD_VERSION and stored.arch_id and stored.params
        expected = "over_budget" if stored.params > 3000 else "trained"
        assert stored.outcome in (expected, "duplicate"), (trial.number, stored)
    frame = trials_dataframe(study)
    assert frame.outcome.notna().all()


def test_the_committed_study_loads_with_outcomes_from_its_reasons():
    if not STUDY_DB.exists():
        pytest.skip(f"{STUDY_DB} is not in this checkout")
    study = optuna.load_study(study_name="eg1800_extremec3", storage=f"sqlite:///{STUDY_DB}")
    records = [(trial, TrialRecord.of(trial)) for trial in study.trials]
    assert len(records) >= 40
    outcomes = collections.Counter(stored.outcome for _, stored in records)
    for trial, stored in records:
        assert stored.record_version == 0 and stored.arch_id and stored.params
        if stored.infeasible:
            assert stored.outcome == "over_budget"
        elif trial.state == TrialState.COMPLETE and stored.duplicate_of is None:
            assert stored.outcome == "trained" and stored.rung_val_fg_iou
    assert outcomes["over_budget"] > 0 and outcomes["trained"] > 0
