"""Scale-out and crash safety with real processes and a real PostgreSQL server."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import torch
from optuna.trial import TrialState

from lightseg_nas.search import load_study_file, run_search
from lightseg_nas.search.final_queue import RUN_ATTR
from lightseg_nas.search.storage import make_storage
from tests.test_search import SLOW_RUNGS, write_study

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
CLI = [sys.executable, "-m", "lightseg_nas.cli"]
FAST_HEARTBEAT = "heartbeat_s = 1\ngrace_s = 4"


def search_process(study, storage, name, n_trials, *extra, background=False):
    args = [*CLI, "search", str(study), "--storage", storage, "--study-name", name, "--n-trials", str(n_trials), "--threads", "1", "--no-progress", "--no-report", *extra]
    # a job started in the background of a non-interactive shell inherits SIGINT as ignored
    ignore_sigint = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if background else None
    return subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ignore_sigint)


def opened(storage):
    """The storage as the project opens it: a new SQLite file's tables are created under its
    lock, so a test polling while a worker starts cannot race the worker's table creation."""
    return make_storage(storage)


def states(storage, name):
    study = optuna.load_study(study_name=name, storage=opened(storage))
    return study, [t.state for t in study.trials]


def wait_for(condition, timeout=120, step=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return False


def running_trials(storage, name):
    try:
        return [t for t in optuna.load_study(study_name=name, storage=opened(storage)).trials if t.state == TrialState.RUNNING and "seed" in t.user_attrs]
    except Exception:  # the study is still being created by the worker, or the file is busy
        return []


@pytest.mark.slow
def test_four_workers_share_one_study_exactly(tmp_path, postgres_url):
    study = write_study(tmp_path, fidelity="false")
    result = subprocess.run(
        [*CLI, "search", str(study), "--storage", postgres_url, "--study-name", "four", "--workers", "4", "--n-trials", "40", "--no-progress", "--no-report"],
        env=ENV, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    loaded, trial_states = states(postgres_url, "four")
    finished = [t for t in loaded.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 40
    numbers = [t.number for t in loaded.trials]
    assert len(numbers) == len(set(numbers))
    assert TrialState.RUNNING not in trial_states and TrialState.WAITING not in trial_states
    for trial in loaded.trials:
        if trial.state == TrialState.FAIL:
            assert trial.user_attrs["reason"].startswith("surplus")  # a race lost, never a lost result
        else:
            assert trial.user_attrs["arch_id"] and (trial.state == TrialState.PRUNED or trial.values)


@pytest.mark.slow
def test_sigkilled_worker_is_detected_and_the_study_still_completes(tmp_path, postgres_url):
    study = write_study(tmp_path, fidelity="false", study_extra=FAST_HEARTBEAT)
    workers = [search_process(study, postgres_url, "kill", 10) for _ in range(3)]
    assert wait_for(lambda: len(running_trials(postgres_url, "kill")) >= 3)
    victim = workers[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    for worker in workers[1:]:
        assert worker.wait(timeout=600) == 0, worker.stderr.read()[-2000:]
    # a later run picks up whatever the killed worker left (its stale trial is retried)
    time.sleep(5)
    rerun = subprocess.run([*CLI, "search", str(study), "--storage", postgres_url, "--study-name", "kill", "--n-trials", "10", "--threads", "1", "--no-progress", "--no-report"], env=ENV, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    loaded, trial_states = states(postgres_url, "kill")
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in trial_states) == 10
    assert TrialState.RUNNING not in trial_states
    assert TrialState.FAIL in trial_states  # the killed worker's trial, failed as stale and retried


@pytest.mark.slow
@pytest.mark.parametrize("stop,background", [(signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, True)])
def test_sigint_or_sigterm_stops_cleanly_and_the_same_command_resumes(tmp_path, postgres_url, stop, background):
    study = write_study(tmp_path, fidelity="false", rungs=SLOW_RUNGS)
    name = f"interrupt-{stop.name}-{background}"
    worker = search_process(study, postgres_url, name, 4, background=background)
    assert wait_for(lambda: any("rung0_val_fg_iou" not in t.user_attrs for t in running_trials(postgres_url, name)))
    worker.send_signal(stop)
    code = worker.wait(timeout=120)
    stderr = worker.stderr.read()
    assert code == 130, (code, stderr[-3000:])
    assert "interrupted" in stderr
    loaded, trial_states = states(postgres_url, name)
    assert TrialState.RUNNING not in trial_states and TrialState.FAIL in trial_states, [(t.state, t.user_attrs.get("outcome")) for t in loaded.trials]
    resumed = search_process(study, postgres_url, name, 4)
    assert resumed.wait(timeout=600) == 0
    _, trial_states = states(postgres_url, name)
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in trial_states) == 4


def test_a_second_process_on_one_sqlite_file_is_refused(tmp_path):
    study = write_study(tmp_path, fidelity="false", rungs=SLOW_RUNGS)  # trials long enough to be seen running
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    # more trials than it can finish while the second process starts, however loaded the
    # machine: it is stopped once the second one was refused
    first = search_process(study, storage, "tiny", 1000)
    assert wait_for(lambda: first.poll() is not None or ((tmp_path / "shared.db").exists() and running_trials(storage, "tiny")), timeout=300)
    assert first.poll() is None, first.stderr.read()[-2000:]  # the first worker is still at work, not ended early
    second = subprocess.run([*CLI, "search", str(study), "--storage", storage, "--study-name", "tiny", "--no-progress"], env=ENV, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and "use PostgreSQL" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert first.poll() is None  # the refusal did not disturb the running search
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=600) == 130
    _, trial_states = states(storage, "tiny")
    assert trial_states and TrialState.RUNNING not in trial_states  # the stopped trial is marked failed, the study consistent


def test_workers_refuse_sqlite(tmp_path):
    study = write_study(tmp_path)
    result = subprocess.run([*CLI, "search", str(study), "--workers", "2"], env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "postgresql://" in result.stderr


def test_a_killed_training_resumes_from_its_checkpoint_to_the_same_weights(tmp_path):
    common = ["--preset", "sinet", "--data", "synthetic:count=24", "--size", "64", "--batch-size", "8", "--epochs", "3", "--no-progress"]
    straight = subprocess.run([*CLI, "train", *common, "--out", str(tmp_path / "straight")], env=ENV, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = subprocess.Popen([*CLI, "train", *common, "--out", str(tmp_path / "killed")], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert wait_for(lambda: (tmp_path / "killed" / "checkpoint.pt").exists(), timeout=300, step=0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert not (tmp_path / "killed" / "model.pt").exists()
    resumed = subprocess.run([*CLI, "train", *common, "--out", str(tmp_path / "killed"), "--resume"], env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_trial_that_goes_wrong_is_recorded_and_the_study_goes_on(tmp_path, monkeypatch):
    import lightseg_nas.search.objective as objective

    real_fit = objective.fit
    calls = []

    def flaky_fit(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        if len(calls) == 3:
            raise FloatingPointError("loss became nan at epoch 0, step 0")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(objective, "fit", flaky_fit)
    study = run_search(load_study_file(write_study(tmp_path, fidelity="false")), n_trials=3, storage="memory", progress=False)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert [t.user_attrs["reason"] for t in failed] == [
        "failed: RuntimeError: CUDA out of memory (simulated)",
        "failed: FloatingPointError: loss became nan at epoch 0, step 0",
    ]
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials) == 3


def final_process(study, storage, machine, *extra, name="shared"):
    """`final` on one 'machine': its own runs folder and final folder, one shared database."""
    args = [*CLI, "final", str(study), "--storage", storage, "--study-name", name, "--baselines", "sinet", "--seeds", "0,1", "--recipe", "curve",
            "--runs", str(machine / "runs"), "--out", str(machine / "final"), "--threads", "1", "--no-progress", "--no-png", *extra]
    return subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def queued(storage, name):
    return optuna.load_study(study_name=f"{name}:final", storage=opened(storage)).trials


@pytest.mark.slow
def test_final_runs_are_shared_by_machines_through_the_study_database(tmp_path, postgres_url):
    study = write_study(tmp_path, fidelity="false")
    searched = subprocess.run([*CLI, "search", str(study), "--storage", postgres_url, "--study-name", "shared", "--n-trials", "3", "--threads", "1", "--no-progress", "--no-report"], env=ENV, capture_output=True, text=True, timeout=600)
    assert searched.returncode == 0, searched.stderr[-2000:]
    a, b = tmp_path / "a", tmp_path / "b"
    workers = [final_process(study, postgres_url, machine, "--front", "--top", "1", "--max-steps", "2", "--no-table") for machine in (a, b)]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    # each machine ends when the queue is empty; one still training leaves the other's folder short
    assert all(worker.returncode in (0, 2) for worker in workers), outputs
    trained = [line.split("training ")[1].split(" (")[0] for out, err in outputs for line in (out + err).splitlines() if "] training " in line]
    assert len(trained) == 4 and len(set(trained)) == 4, outputs  # four runs, each trained once, by whichever machine took it
    # either machine fetches the runs the other one trained (with or without its table)
    fetched = final_process(study, postgres_url, a, "--front", "--top", "1", "--max-steps", "2", "--no-table")
    assert fetched.wait(timeout=600) == 0
    table = final_process(study, postgres_url, b, "--front", "--top", "1", "--max-steps", "2", "--json")
    out, err = table.communicate(timeout=600)
    assert table.returncode == 0, err[-2000:]
    assert len(json.loads(out)["models"]) == 4 and "] training " not in err
    assert len(list((a / "final").glob("*.pt"))) == 4
    for kept in (a / "final").glob("*.pt"):
        assert kept.read_bytes() == (b / "final" / kept.name).read_bytes()
    # one finished trial per run; two machines queueing at the same moment may each have queued
    # a run, and then the later trial is failed as a duplicate without training
    trials = queued(postgres_url, "shared")
    finished = [t.user_attrs[RUN_ATTR] for t in trials if t.state.name == "COMPLETE"]
    assert len(finished) == 4 and len(set(finished)) == 4, [(t.state.name, t.user_attrs) for t in trials]
    assert all(t.user_attrs.get("reason", "").startswith("duplicate of trial ") and t.user_attrs[RUN_ATTR] in finished
               for t in trials if t.state.name != "COMPLETE"), [(t.state.name, t.user_attrs.get("reason")) for t in trials]
    # another protocol under the same study name is refused in one line, nothing queued
    refused = final_process(study, postgres_url, tmp_path / "c", "--front", "--top", "1", "--max-steps", "3", "--no-table")
    out, err = refused.communicate(timeout=600)
    assert refused.returncode == 2 and "queued with another network or protocol" in err and len(err.strip().splitlines()) == 1, err
    assert len(queued(postgres_url, "shared")) == len(trials) and not (tmp_path / "c").exists()


@pytest.mark.slow
def test_a_killed_final_worker_s_run_goes_back_to_the_queue(tmp_path, postgres_url):
    study = write_study(tmp_path, fidelity="false", study_extra=FAST_HEARTBEAT)
    searched = subprocess.run([*CLI, "search", str(study), "--storage", postgres_url, "--study-name", "killed", "--n-trials", "1", "--threads", "1", "--no-progress", "--no-report"], env=ENV, capture_output=True, text=True, timeout=600)
    assert searched.returncode == 0, searched.stderr[-2000:]
    a, b = tmp_path / "a", tmp_path / "b"
    worker = final_process(study, postgres_url, a, "--max-steps", "4", "--no-table", name="killed")

    def running():
        try:
            return [t for t in queued(postgres_url, "killed") if t.state == TrialState.RUNNING]
        except Exception:  # the queue is still being created
            return []

    assert wait_for(lambda: running(), timeout=300, step=0.1)
    worker.send_signal(signal.SIGKILL)
    worker.communicate(timeout=60)
    time.sleep(6)  # past the study's grace_s (4 s) since the killed worker's last heartbeat
    rest = final_process(study, postgres_url, b, "--max-steps", "4", "--no-table", name="killed")
    out, err = rest.communicate(timeout=600)
    assert rest.returncode == 0, err[-2000:]
    assert sorted(p.name for p in (b / "final").glob("*.pt")) == ["sinet-seed1.pt", "sinet.pt"]
    states_now = [t.state for t in queued(postgres_url, "killed")]
    assert states_now.count(TrialState.COMPLETE) == 2 and TrialState.FAIL in states_now and TrialState.RUNNING not in states_now


def children(pid):
    """The live child processes of ``pid`` (Linux /proc)."""
    try:
        return [int(child) for child in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except FileNotFoundError:
        return []


def gone(pids):
    """Every one of ``pids`` has ended (a zombie has ended too)."""
    def ended(pid):
        try:
            return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except (FileNotFoundError, ProcessLookupError):
            return True
    return all(ended(pid) for pid in pids)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_final_workers_stop_when_their_parent_alone_is_stopped_or_killed(tmp_path, stop):
    """A scheduler's SIGTERM reaches the parent only (not its process group), and a SIGKILL
    gives the parent no chance to say anything: in both cases no worker goes on training."""
    study = write_study(tmp_path, fidelity="false")
    searched = subprocess.run([*CLI, "search", str(study), "--n-trials", "1", "--threads", "1", "--no-progress", "--no-report"], env=ENV, capture_output=True, text=True, timeout=600)
    assert searched.returncode == 0, searched.stderr[-2000:]
    args = [*CLI, "final", str(study), "--baselines", "sinet", "--seeds", "0,1", "--recipe", "curve", "--workers", "2", "--threads", "1",
            "--runs", str(tmp_path / "runs"), "--no-table", "--no-progress"]
    parent = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    runs = tmp_path / "runs" / "tiny"
    assert wait_for(lambda: len(list(runs.glob("sinet-seed*/.lock"))) == 2, timeout=300), parent.stderr.read() if parent.poll() is not None else ""
    workers = children(parent.pid)
    assert len(workers) >= 2
    os.kill(parent.pid, stop)
    _, err = parent.communicate(timeout=180)
    assert parent.returncode == (130 if stop == signal.SIGTERM else -signal.SIGKILL), err[-2000:]
    assert wait_for(lambda: gone(workers), timeout=120), [open(f"/proc/{pid}/cmdline").read() for pid in workers if not gone([pid])]
    assert not list(runs.glob("*/model.pt"))  # stopped, not finished


@pytest.mark.slow
def test_search_workers_stop_when_their_parent_is_killed(tmp_path, postgres_url):
    study = write_study(tmp_path, fidelity="false", rungs=SLOW_RUNGS)
    parent = search_process(study, postgres_url, "orphans", 40, "--workers", "2", background=True)
    assert wait_for(lambda: len(running_trials(postgres_url, "orphans")) >= 2, timeout=300)
    workers = children(parent.pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    assert wait_for(lambda: gone(workers), timeout=120)
    _, trial_states = states(postgres_url, "orphans")
    assert TrialState.RUNNING not in trial_states  # each worker marked its trial failed as it stopped
    assert sum(s == TrialState.COMPLETE for s in trial_states) < 40
