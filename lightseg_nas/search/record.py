"""The trial record: every attribute a search trial stores, in one typed, versioned schema.

Optuna keeps a trial's attributes as a flat JSON dict (``trial.user_attrs``); the study
databases, ``trials.csv`` and optuna-dashboard show them under these flat names, so the
stored form stays flat: ``rung{i}_val_fg_iou`` for each rung and ``proxy_{name}`` for each
zero-cost proxy. Everything in the package writes through :func:`record` and reads through
:meth:`TrialRecord.of`; nothing else parses attribute names.

``outcome`` says how a trial ended, for control flow; ``reason`` says it in words, for
people. Trials stored before the outcome existed (record version 0, such as the committed
``studies/eg1800_extremec3.db``) get theirs from their reason once, in :func:`_legacy_outcome`.
"""

from __future__ import annotations

import re
from typing import Literal, Optional

import optuna
from pydantic import BaseModel, ConfigDict, Field

RECORD_VERSION = 1

__all__ = ["RECORD_VERSION", "Outcome", "TrialRecord", "record", "rung_key"]

# trained: trained to the last rung it was promoted to; scored: scored with a supernet's
# weights (fidelity mode "supernet"), untrained; duplicate: took a trained twin's
# values; over_budget: a hard budget refused it before training; skipped: a proxy screen
# refused it; surplus: racing workers asked for more trials than the target (not a loss);
# interrupted: Ctrl-C or SIGTERM during training; worker_died: found running by a later run;
# failed: an error during the trial.
Outcome = Literal["trained", "scored", "duplicate", "over_budget", "skipped", "surplus", "interrupted", "worker_died", "failed"]

_RUNG = re.compile(r"^rung(\d+)_val_fg_iou$")
_PROXY = "proxy_"


def rung_key(index: int) -> str:
    return f"rung{index}_val_fg_iou"


class TrialRecord(BaseModel):
    """What one trial stored. Every field is optional: a trial writes them as it goes."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    record_version: int = 0
    # what was built
    config: Optional[dict] = None
    arch_id: Optional[str] = None
    baseline: Optional[str] = None  # the preset a baseline trial replays
    seed: Optional[int] = None
    code_version: Optional[str] = None
    # costs
    params: Optional[int] = None
    macs: Optional[int] = None
    latency_ms: Optional[float] = None
    latency_backend: Optional[str] = None
    latency_ratio: Optional[float] = None
    # how it ended
    outcome: Optional[Outcome] = None
    reason: Optional[str] = None
    infeasible: bool = False
    duplicate_of: Optional[int] = None
    # training
    rung_val_fg_iou: dict[int, float] = Field(default_factory=dict)
    fidelity: Optional[int] = None  # index of the last rung trained
    epochs: Optional[int] = None
    train_seconds: Optional[float] = None
    images_per_s: Optional[float] = None
    # zero-cost proxies and the screen that read them
    proxies: dict[str, float] = Field(default_factory=dict)
    screen_correlation: Optional[float] = None

    @classmethod
    def of(cls, trial: optuna.trial.FrozenTrial | optuna.Trial) -> "TrialRecord":
        """The record of a stored (or running) trial."""
        parsed = cls.from_attrs(trial.user_attrs)
        if getattr(trial, "state", None) == optuna.trial.TrialState.FAIL and parsed.outcome in (None, "trained", "scored", "duplicate"):
            # failed without saying why: its worker was killed and the heartbeat found it stale
            parsed.outcome = "worker_died"
        return parsed

    @classmethod
    def from_attrs(cls, attrs: dict) -> "TrialRecord":
        values: dict = {"rung_val_fg_iou": {}, "proxies": {}}
        for key, value in attrs.items():
            rung = _RUNG.match(key)
            if rung:
                values["rung_val_fg_iou"][int(rung.group(1))] = value
            elif key.startswith(_PROXY):
                values["proxies"][key[len(_PROXY):]] = value
            elif key in cls.model_fields:
                values[key] = value
        parsed = cls.model_validate(values)
        if parsed.outcome is None:
            parsed.outcome = _legacy_outcome(parsed)
        return parsed

    def to_attrs(self, fields: set[str] | None = None) -> dict:
        """The flat attributes of ``fields`` (all that are set, by default)."""
        data = self.model_dump(include=fields, exclude_unset=fields is None)
        flat = {}
        for key, value in data.items():
            if key == "rung_val_fg_iou":
                flat.update({rung_key(index): score for index, score in value.items()})
            elif key == "proxies":
                flat.update({f"{_PROXY}{name}": score for name, score in value.items()})
            else:
                flat[key] = value
        return flat


def record(trial: optuna.Trial, **values) -> None:
    """Validate ``values`` as fields of the record and store them on the running trial.

    ``rung_val_fg_iou`` and ``proxies`` add to what is stored (one rung, some proxies)."""
    checked = TrialRecord.model_validate(values)
    for key, value in checked.to_attrs(set(values)).items():
        trial.set_user_attr(key, value)


def _legacy_outcome(parsed: TrialRecord) -> Optional[Outcome]:
    """The outcome of a trial stored before outcomes were (record version 0), from its reason."""
    reason = parsed.reason or ""
    for prefix, outcome in (
        ("surplus", "surplus"), ("over budget", "over_budget"), ("skipped", "skipped"), ("interrupted", "interrupted"),
        ("failed: its worker died", "worker_died"), ("failed", "failed"),
    ):
        if reason.startswith(prefix):
            return outcome
    if parsed.duplicate_of is not None:
        return "duplicate"
    if parsed.fidelity is not None:
        return "trained"
    return None
