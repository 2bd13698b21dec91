"""Export chosen trials as config files that ``lightseg-nas train`` takes as they are."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from lightseg_nas.config import arch_id, config_from_dict, to_json
from lightseg_nas.errors import FieldError, UserError
from lightseg_nas.modelfile import atomic_write_text
from lightseg_nas.search.record import TrialRecord
from lightseg_nas.search.report import trials_dataframe


def choose_trials(study: optuna.Study, trial: int | None = None, max_params: int | None = None, front: bool = False) -> list[int]:
    """Exactly one rule: a trial number, the most accurate full-fidelity trial under a
    parameter budget, or the whole full-fidelity front."""
    if sum(x is not None and x is not False for x in (trial, max_params, front)) != 1:
        raise FieldError(("trial", "best_under_params", "front"), "give exactly one of {0} N, {1} N, {2}")
    frame = trials_dataframe(study)
    if frame.empty:
        raise UserError(f"study {study.study_name!r} has no trials")
    if trial is not None:
        rows = frame[frame.number == trial]
        if rows.empty:
            raise UserError(f"study {study.study_name!r} has no trial {trial} (trials 0..{frame.number.max()})")
        if rows.state.iloc[0] != TrialState.COMPLETE.name:
            raise UserError(f"trial {trial} of study {study.study_name!r} did not finish ({rows.state.iloc[0].lower()}: {rows.reason.iloc[0] or 'no reason recorded'})")
        return [trial]
    eligible = frame[(frame.state == "COMPLETE") & frame.full_fidelity & frame.duplicate_of.isna()]
    if front:
        chosen = eligible[eligible.on_front]
        if chosen.empty:
            raise UserError(f"study {study.study_name!r} has no full-fidelity trial on its front yet")
        return chosen.number.tolist()
    under = eligible[eligible.params <= max_params]
    if under.empty:
        smallest = f"the smallest has {int(eligible.params.min()):,}" if len(eligible) else "none has reached full fidelity yet"
        raise UserError(f"no full-fidelity trial of study {study.study_name!r} has at most {max_params} parameters ({smallest})")
    return [int(under.sort_values("val_fg_iou", ascending=False).number.iloc[0])]


def export_trials(study: optuna.Study, numbers: list[int], out: Path) -> list[Path]:
    """Write each trial's recorded config as OUT/<arch_id>.json (checked against its id)."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    configs = []
    for number in numbers:
        stored = TrialRecord.of(trials[number])
        config = config_from_dict(stored.config, f"trial {number} (config)")
        if arch_id(config) != stored.arch_id:
            raise UserError(f"trial {number}: the recorded config does not match its recorded arch id")
        configs.append(config)
    return [atomic_write_text(Path(out) / f"{arch_id(c)}.json", to_json(c)) for c in configs]


def fidelity_note(study: optuna.Study, number: int) -> str:
    """What to know about exporting one trial: empty for a full-fidelity trial, else that it
    stopped at a lower rung (its accuracy is from fewer epochs: not comparable with the front)."""
    frame = trials_dataframe(study)
    row = frame[frame.number == number]
    if row.empty or bool(row.full_fidelity.iloc[0]) or row.state.iloc[0] != TrialState.COMPLETE.name:
        return ""
    rungs = len(study.user_attrs.get("rungs", [None]))
    return (
        f"note: trial {number} stopped at rung {int(row.fidelity.iloc[0])} of {rungs} ({int(row.epochs.iloc[0])} epochs): "
        "its accuracy is not comparable with the full-fidelity front"
    )
