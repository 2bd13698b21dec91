"""Create or continue a study in an Optuna storage and run trials until the target count.

Scale-out is Optuna's: every worker (a process here, a machine elsewhere) opens the same
study in the same storage; SQLite for one machine, PostgreSQL for many.
"""

from __future__ import annotations

import signal
import time
import warnings

import optuna
from optuna.trial import TrialState

import search_spaces
from lightseg_nas.errors import STOP, FieldError, Interrupted, UserError, install_stop_handlers, stop_with_parent
from lightseg_nas.presets import get_preset
from lightseg_nas.progress import log_line, percent
from lightseg_nas.search.objective import FINISHED, Objective
from lightseg_nas.search.record import TrialRecord
from lightseg_nas.search.storage import fail_dead_trials, make_storage, redact, sqlite_lock, sqlite_path
from lightseg_nas.search.study_file import StudyFile


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=8)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=12)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=8)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UserError(f"unknown sampler {name!r}; known: gp, nsga2, random, tpe")


def open_study(study_file: StudyFile, storage: str | None = None, study_name: str | None = None, sampler_seed_offset: int = 0, create: bool = True) -> optuna.Study:
    url = study_file.storage_url(storage)
    name = study_name or study_file.study.name
    directions = ["maximize"] + ["minimize"] * len(study_file.objectives.minimize)
    database = sqlite_path(url)
    if not create and database is not None and not database.exists():
        raise UserError(f"no study {name!r}: {database} does not exist (run lightseg-nas search first)")
    backend = make_storage(url, study_file.study.heartbeat_s, study_file.study.grace_s)
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(backend, include_best_trial=False)}
    if name in existing:
        if [d.name.lower() for d in existing[name].directions] != directions:
            raise FieldError("study_name", f"study {name!r} in {redact(url)} has other objectives; use another {{0}} or storage")
    elif not create:
        raise UserError(f"no study {name!r} in {redact(url)}")
    # Each (re)start draws new random numbers: a resumed study does not replay the
    # random start-up points it already evaluated.
    finished = 0
    if name in existing:
        finished = existing[name].n_trials
    sampler = make_sampler(study_file.study.sampler, study_file.study.seed + 7919 * finished + sampler_seed_offset)
    study = optuna.create_study(storage=backend, study_name=name, directions=directions, sampler=sampler, load_if_exists=True)
    if name not in existing:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(study_file.objective_names)
        study.set_user_attr("space", study_file.study.space)
        study.set_user_attr("num_classes", study_file.study.num_classes)
        study.set_user_attr("objectives", study_file.objective_names)
        # the study file's name only: a path of the machine it ran on means nothing elsewhere
        # (the database lies beside its study file)
        study.set_user_attr("study_file", study_file.path.name if study_file.path else None)
        if study_file.fidelity.mode == "supernet":
            # one pseudo-rung: scored at the supernet's size after no training of its own
            study.set_user_attr("rungs", [{"size": study_file.supernet.size, "epochs": 0}])
        else:
            study.set_user_attr("rungs", [r.model_dump() for r in study_file.fidelity.rungs])
        study.set_user_attr("fidelity_mode", study_file.fidelity.mode)
        study.set_user_attr("final_recipe", study_file.study.final_recipe)
        _enqueue_baselines(study, study_file)
    return study


def _enqueue_baselines(study: optuna.Study, study_file: StudyFile) -> None:
    space = study_file.study.space
    names = search_spaces.space_presets(space) if study_file.baselines.presets == "auto" else study_file.baselines.presets
    for name in names:
        config = get_preset(name).model_copy(update={"num_classes": study_file.study.num_classes})
        study.enqueue_trial(search_spaces.encode(space, config), user_attrs={"baseline": name})


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def pending_count(study: optuna.Study) -> int:
    """Trials finished or in progress: what a new trial would add to."""
    return len(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)))


def run_search(
    study_file: StudyFile,
    n_trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    progress: bool = True,
    worker: int = 0,
    cpu_budget_s: float | None = None,
) -> optuna.Study:
    """Run trials until the study holds ``n_trials`` finished ones, or ``timeout`` seconds of
    wall time, or ``cpu_budget_s`` seconds of this process's CPU time have passed (the
    fair budget for comparing search settings on a shared machine)."""
    # the progress bar and each trial's recorded reason report failures (no log tracebacks)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    target = n_trials or study_file.study.n_trials
    timeout = timeout or study_file.study.timeout_s
    # the lock first, then the supernet: a second search started meanwhile is refused at
    # the lock instead of training (and replacing) the supernet the first one is training
    with sqlite_lock(study_file.storage_url(storage)):
        if study_file.fidelity.mode == "supernet":
            from lightseg_nas.search.supernet_fidelity import ensure_supernet

            ensure_supernet(study_file, progress)
        return _run(study_file, target, timeout, storage, study_name, progress, worker, cpu_budget_s)


def _run(study_file, target, timeout, storage, study_name, progress, worker, cpu_budget_s=None) -> optuna.Study:
    from tqdm import tqdm

    STOP.clear()
    study = open_study(study_file, storage, study_name, sampler_seed_offset=worker)
    if sqlite_path(study_file.storage_url(storage)) is not None:
        # we hold the SQLite lock: a trial still RUNNING belongs to a worker that died
        fail_dead_trials(study)
    objective = Objective(study_file, target)
    started = time.monotonic()
    cpu_started = time.process_time()
    bar = tqdm(total=target, initial=finished_count(study), desc=f"search {study.study_name}", unit="trial", disable=None if progress else True)

    shared = study_file.storage_url(storage) != "memory"
    failures = []

    def on_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.FAIL and TrialRecord.of(trial).outcome != "surplus":
            failures.append(trial.number)
        bar.n = min(finished_count(study), target)
        from lightseg_nas.search.report import front_size

        postfix = {"front": front_size(study), "last": trial.state.name.lower()}
        if timeout:
            postfix["left"] = f"{max(0, timeout - (time.monotonic() - started)):.0f}s"
        bar.set_postfix(postfix)
        bar.refresh()
        stored = TrialRecord.of(trial)
        result = f"validation fg IoU {percent(trial.values[0])} at rung {stored.fidelity}" if trial.values else (stored.reason or stored.outcome or "no result")
        log_line(progress, f"trial {trial.number} {trial.state.name.lower()}: {result}; {bar.n}/{target} finished, front {postfix['front']}")

    try:
        # One trial per optimize() call: before each, the study is asked how many trials
        # are finished or running, so workers stop at the target instead of overshooting.
        while True:
            if shared:
                # a killed worker's trial: failed after its grace period, and re-queued
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
            if pending_count(study) >= target:
                break
            left = None if timeout is None else timeout - (time.monotonic() - started)
            if left is not None and left <= 0:
                break
            if cpu_budget_s is not None and time.process_time() - cpu_started >= cpu_budget_s:
                break
            study.optimize(objective, n_trials=1, timeout=left, callbacks=[on_trial], catch=(Exception,), gc_after_trial=True)
            if STOP.is_set():
                raise Interrupted
            if len(failures) > max(10, target):
                raise UserError(f"study {study.study_name!r}: {len(failures)} trials failed in this run; see their 'reason' in trials.csv")
    finally:
        bar.close()
    return study


def _worker(study_file: StudyFile, n_trials, timeout, storage, study_name, worker: int, threads: int) -> None:
    from lightseg_nas.speed import use_threads

    use_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    install_stop_handlers()
    stop_with_parent()
    try:
        run_search(study_file, n_trials, timeout, storage, study_name, progress=False, worker=worker)
    except KeyboardInterrupt:
        pass  # the running trial is already marked failed; the parent reports the stop


def run_workers(
    study_file: StudyFile,
    workers: int,
    n_trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    progress: bool = True,
    threads: int | None = None,
) -> optuna.Study:
    """``workers`` processes on this machine, one study in a shared (PostgreSQL) storage.

    Each process is an ordinary Optuna worker: it asks the storage for the next trial and
    stops once the study holds the target count of finished trials."""
    import multiprocessing
    import os

    from tqdm import tqdm

    url = study_file.storage_url(storage)
    if url == "memory" or sqlite_path(url) is not None:
        raise FieldError(("workers", "storage"), "{0} needs a storage that several processes can share: use {1} postgresql://USER@HOST/DB")
    target = n_trials or study_file.study.n_trials
    if study_file.fidelity.mode == "supernet":
        from lightseg_nas.search.supernet_fidelity import ensure_supernet

        ensure_supernet(study_file, progress)  # trained once, before the workers start
    study = open_study(study_file, storage, study_name)  # created once, before the workers race to create it
    from lightseg_nas.checks import usable_cores

    # --threads is per worker; by default the cores this process may use are shared out
    threads = threads or max(1, usable_cores() // workers)
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker, args=(study_file, target, timeout, storage, study_name, index, threads))
        for index in range(workers)
    ]
    for process in processes:
        process.start()
    bar = tqdm(total=target, initial=finished_count(study), desc=f"search {study.study_name} ({workers} workers)", unit="trial", disable=None if progress else True)
    try:
        while any(p.is_alive() for p in processes):
            time.sleep(1.0)
            bar.n = min(finished_count(study), target)
            bar.refresh()
    except KeyboardInterrupt:
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGINT)
        for process in processes:
            process.join()
        raise
    finally:
        bar.close()
    failed = [p.exitcode for p in processes if p.exitcode]
    if failed:
        raise UserError(f"{len(failed)} of {workers} workers stopped with an error (exit codes {failed})")
    return study
