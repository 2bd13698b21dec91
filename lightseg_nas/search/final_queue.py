"""`final` runs shared across machines through the study's own storage.

When a study lives in a server database (PostgreSQL), its final runs are a companion Optuna
study in that database, ``STUDY:final``: one enqueued trial per run (network and seed), its
protocol in the trial's attributes. A worker on any machine that reaches the database and
has the study file and the data runs the same ``lightseg-nas final`` command: it takes the
next waiting run (Optuna's WAITING -> RUNNING update is a row lock, so a run goes to one
worker), trains it in its own runs folder with heartbeats, and stores the finished model
file in the trial. A killed worker's run goes back to the queue once its heartbeat is
``grace_s`` old, as a search trial does; a stopped one is failed at once and queued again by
the next command. Every machine's table then fetches every finished run, so any of them can
write it. SQLite and in-memory studies stay on one machine (the runs folder's claim locks).
"""

from __future__ import annotations

import base64
import contextlib
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import optuna
from optuna.trial import TrialState

from lightseg_nas.errors import UserError
from lightseg_nas.search.storage import make_storage, redact, sqlite_path

__all__ = ["Queue", "queue_for", "enqueue", "train_from_queue", "fetch_finished"]

RUN_ATTR = "run"  # NAME-seedS: the run a queued trial stands for
MODEL_ATTR = "model_file"  # the finished model file, base64
LIVE = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)


@dataclass(frozen=True)
class Queue:
    """Where a study's final runs are queued (picklable, for worker processes)."""

    url: str
    name: str
    heartbeat_s: int
    grace_s: int

    def open(self) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
        storage = make_storage(self.url, self.heartbeat_s, self.grace_s)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = optuna.create_study(study_name=self.name, storage=storage, direction="maximize", load_if_exists=True)
        return study, storage


def queue_for(study_file, storage: Optional[str], study_name: str) -> Optional[Queue]:
    """The queue of a study in a server database; None for SQLite and memory (one machine)."""
    url = study_file.storage_url(storage)
    if url == "memory" or sqlite_path(url) is not None:
        return None
    return Queue(url, f"{study_name}:final", study_file.study.heartbeat_s, study_file.study.grace_s)


def run_key(run) -> str:
    return f"{run.name}-seed{run.seed}"


def _protocol(run) -> dict:
    from lightseg_nas.config import arch_id

    return {"arch_id": arch_id(run.config), "training": run.settings.model_dump(mode="json")}


def _differences(attrs: dict, run) -> list[str]:
    from lightseg_nas.settings import changed_settings
    from lightseg_nas.train import NOT_PROTOCOL

    differ = changed_settings(attrs.get("training") or {}, run.settings, ignore=NOT_PROTOCOL)
    return differ + (["arch_id"] if attrs.get("arch_id") != _protocol(run)["arch_id"] else [])


def _by_run(study: optuna.Study) -> dict[str, list]:
    trials: dict[str, list] = {}
    for trial in study.get_trials(deepcopy=False):
        trials.setdefault(trial.user_attrs.get(RUN_ATTR), []).append(trial)
    return trials


def enqueue(queue: Queue, runs: list) -> None:
    """Queue every run the queue does not hold yet (waiting, running or finished), after
    checking that the runs it holds are these networks with this protocol; a run whose
    trials all failed (a stopped or twice-killed worker) is queued again."""
    study, _ = queue.open()
    held = _by_run(study)
    live = {run_key(run): [trial for trial in held.get(run_key(run), []) if trial.state in LIVE] for run in runs}
    for run in runs:  # every check before anything is queued
        for trial in live[run_key(run)]:
            differ = _differences(trial.user_attrs, run)
            if differ:
                raise UserError(
                    f"{redact(queue.url)} study {queue.name!r}: run {run_key(run)} is queued with another network or protocol "
                    f"({', '.join(differ)}); to start that queue again: optuna delete-study --study-name '{queue.name}' --storage URL"
                )
    for run in runs:
        if not live[run_key(run)]:
            study.enqueue_trial({}, user_attrs={RUN_ATTR: run_key(run), **_protocol(run)})


@contextlib.contextmanager
def _heartbeat(storage, trial_id: int):
    """Optuna's heartbeat for a trial this process runs outside ``optimize``."""
    stop = threading.Event()
    storage.record_heartbeat(trial_id)

    def beat() -> None:
        while not stop.wait(storage.get_heartbeat_interval()):
            storage.record_heartbeat(trial_id)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _take(study: optuna.Study, storage, keys: set[str]):
    """The next waiting trial of one of these runs, now RUNNING and this process's; None
    when none is left."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a killed worker's run, queued again
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if trial.user_attrs.get(RUN_ATTR) in keys and storage.set_trial_state_values(trial._trial_id, TrialState.RUNNING):
            return trial
    return None


def _duplicate_of(study: optuna.Study, trial) -> Optional[int]:
    """Another trial of the same run that wins over this one: a finished one, or a running
    one queued earlier (two machines queueing the same run at the same moment)."""
    for other in _by_run(study).get(trial.user_attrs.get(RUN_ATTR), []):
        if other.number != trial.number and (other.state == TrialState.COMPLETE or (other.state == TrialState.RUNNING and other.number < trial.number)):
            return other.number
    return None


def train_from_queue(
    queue: Queue, runs: list, data_spec: str, threads: int, progress: bool = True, teacher_weights: Optional[Path] = None, on_run=print
) -> None:
    """Take waiting runs from the queue until none is left; train each (resuming a stopped
    one in this machine's runs folder), keep it in the final folder and store it in its trial."""
    from lightseg_nas.search.final import train_one

    study, storage = queue.open()
    by_key = {run_key(run): run for run in runs}
    while (trial := _take(study, storage, set(by_key))) is not None:
        run = by_key[trial.user_attrs[RUN_ATTR]]
        winner = _duplicate_of(study, trial)
        if winner is not None:
            storage.set_trial_user_attr(trial._trial_id, "reason", f"duplicate of trial {winner}")
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            continue
        try:
            with _heartbeat(storage, trial._trial_id):
                train_one(run, data_spec, threads, progress, teacher_weights, on_run, f"[queue trial {trial.number}]")
        except BaseException as error:  # a stop or an error: failed now, queued again by the next command
            storage.set_trial_user_attr(trial._trial_id, "reason", f"{type(error).__name__}: {error}"[:500])
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            raise
        from lightseg_nas.modelfile import load_record

        record = load_record(run.model_file)
        storage.set_trial_user_attr(trial._trial_id, MODEL_ATTR, base64.b64encode(run.model_file.read_bytes()).decode("ascii"))
        storage.set_trial_user_attr(trial._trial_id, "threads", threads)
        storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [float(record["metrics"].get("val_fg_iou", 0.0))])


def fetch_finished(queue: Queue, final_dir: Path, on_run=print) -> list[str]:
    """Write every finished run of the queue that the final folder lacks (trained on another
    machine) into it, atomically, with its threads; the names written."""
    from lightseg_nas.search.final import file_name, keep_model_file

    study, _ = queue.open()
    written = []
    for key, trials in _by_run(study).items():
        done = [trial for trial in trials if trial.state == TrialState.COMPLETE and MODEL_ATTR in trial.user_attrs]
        if key is None or not done:
            continue
        name, _, seed = key.rpartition("-seed")
        target = Path(final_dir) / file_name(name, int(seed))
        if target.exists():
            continue
        with tempfile.TemporaryDirectory(dir=final_dir) as scratch:
            source = Path(scratch) / "model.pt"
            source.write_bytes(base64.b64decode(done[0].user_attrs[MODEL_ATTR]))
            keep_model_file(source, target, int(done[0].user_attrs.get("threads", 1)))
        on_run(f"{name} seed {seed}: trained by another worker (queue trial {done[0].number}), fetched into {target}")
        written.append(target.name)
    return written
