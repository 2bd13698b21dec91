"""From a study's front to trained, compared networks: the `final` job.

Chosen networks (front members, trials, arch ids, the published networks) are trained with
the study's final recipe (or another named one) on the study's data minus its validation
split, for each seed, each in its own run folder (a checkpoint every epoch: a stop loses at
most one epoch and the same command continues). A finished run is reused only when the
trainer's settings comparison says it was trained with this protocol; every reuse, and every
model file the job would replace, is checked before any training. Each finished model file
is copied into ``STEM-final/NAME.pt`` (seed 0) or ``NAME-seed<S>.pt``, and the table scores
every model file there the same way: parameters, conv-only MACs, latency as a ratio to the
study's reference timed side by side on its backend, and the papers' metric at 224.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from lightseg_nas.config import config_from_dict
from lightseg_nas.errors import FieldError, UserError
from lightseg_nas.presets import get_preset
from lightseg_nas.search.record import TrialRecord
from lightseg_nas.search.study_file import StudyFile, derived_folder
from lightseg_nas.settings import RECIPES, changed_settings

__all__ = ["PUBLISHED", "FinalRun", "spread", "choose_networks", "plan_runs", "train_runs", "train_in_workers", "train_one", "check_all_kept", "retrain", "parse_seeds", "run_final", "results_table", "write_results", "file_name"]

PUBLISHED = ("extremec3net", "sinet")
PARAMS_LIMIT = 37_738  # ExtremeC3Net's published parameter count
NAME_PATTERN = r"(extremec3net|sinet|[0-9a-f]{12})(-kd)?"


@dataclass(frozen=True)
class FinalRun:
    name: str  # a published network or an arch id, "-kd" when distilled
    seed: int
    config: object
    settings: object
    run_dir: Path
    model_file: Path  # where the finished model file is kept (STEM-final/...)

    @property
    def distilled(self) -> bool:
        return self.name.endswith("-kd")


def file_name(name: str, seed: int) -> str:
    return f"{name}.pt" if seed == 0 else f"{name}-seed{seed}.pt"


def final_folder(study_file: StudyFile) -> Path:
    return derived_folder(study_file, "final")


def spread(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """k rows evenly spaced over the parameter range (all of them if there are fewer)."""
    frame, k = frame.sort_values("params"), min(k, len(frame))
    if k <= 0:
        return frame.iloc[:0]
    picks = sorted({round(i * (len(frame) - 1) / max(1, k - 1)) for i in range(k)})
    return frame.iloc[picks]


def choose_networks(
    study, front: bool = False, top: Optional[int] = None, trials: tuple[int, ...] = (), archs: tuple[str, ...] = (),
    best_under_params: Optional[int] = None, baselines: tuple[str, ...] = PUBLISHED, on_note=None,
) -> list[str]:
    """Names of the networks to train: front members (``top`` of them spread over the
    parameter range), given trials and arch ids, the most accurate full-fidelity trial
    under a parameter count, and the published ``baselines``; in that order, each once.

    A front with no searched member (the published networks dominate every searched one,
    or none reached full fidelity yet) is an error when nothing else is chosen; with other
    choices it is said through ``on_note`` and they go ahead."""
    from lightseg_nas.search.export import choose_trials
    from lightseg_nas.search.report import trials_dataframe

    frame = trials_dataframe(study)
    names: list[str] = []
    searched = frame[frame.baseline.isna()] if len(frame) else frame
    if front:
        members = searched[searched.on_front]
        if members.empty:
            empty = f"study {study.study_name!r} has no searched network on its full-fidelity front yet"
            if on_note is None or not (trials or archs or best_under_params is not None or baselines):
                raise UserError(empty)
            on_note(f"{empty} (the published networks dominate it, or no searched trial reached full fidelity); training the other choices")
        names += list((spread(members, top) if top else members).arch_id)
    for number in trials:
        choose_trials(study, trial=number)  # exists and finished, or one line
        names.append(frame[frame.number == number].arch_id.iloc[0])
    for identity in archs:
        if not re.fullmatch(r"[0-9a-f]{12}", identity) or identity not in set(frame.arch_id.dropna()):
            raise FieldError("arch", f"{{0}} {identity!r}: no trial of study {study.study_name!r} has this arch id")
        names.append(identity)
    if best_under_params is not None:
        number = choose_trials(study, max_params=best_under_params)[0]
        names.append(frame[frame.number == number].arch_id.iloc[0])
    for name in baselines:
        get_preset(name)
        names.append(name)
    return list(dict.fromkeys(names))


def _config_for(name: str, study, num_classes: int):
    base = name.removesuffix("-kd")
    if base in PUBLISHED:
        return get_preset(base).model_copy(update={"num_classes": num_classes})
    for trial in study.get_trials(deepcopy=False):
        record = TrialRecord.of(trial)
        if record.config and record.arch_id == base:
            return config_from_dict(record.config, f"trial {trial.number} (config)")
    raise UserError(f"{base}: no trial of study {study.study_name!r} has this arch id")


def plan_runs(
    study_file: StudyFile, study, names: list[str], seeds: tuple[int, ...], runs_dir: Path, final_dir: Optional[Path] = None,
    recipe: Optional[str] = None, max_steps: Optional[int] = None, teacher: Optional[str] = None,
) -> list[FinalRun]:
    """One run per name and seed, checked before any training: a finished run in its folder,
    and the model file it would replace, must hold this network trained with this protocol
    (so a smoke run with ``max_steps`` never replaces a real one)."""
    from lightseg_nas.train import protocol_differences, settings_from

    recipe = recipe or study_file.study.final_recipe
    if recipe is None and names:  # the table alone needs none: each model file records its own
        raise FieldError("recipe", f"{study_file.path}: names no final_recipe; give {{0}} NAME ({', '.join(sorted(RECIPES))})")
    final_dir = Path(final_dir or final_folder(study_file))
    runs = []
    for name in names:
        if not re.fullmatch(NAME_PATTERN, name):
            raise UserError(f"{name!r}: not a published network ({', '.join(PUBLISHED)}) or a 12-hex-digit arch id (optionally with -kd)")
        config = _config_for(name, study, study_file.study.num_classes)
        for seed in seeds:
            distil = {"teacher": teacher} if name.endswith("-kd") else {}
            settings = settings_from(recipe, seed=seed, val_fraction=study_file.data.val_fraction, val_seed=study_file.data.val_seed, max_steps=max_steps, **distil)
            run = FinalRun(name, seed, config, settings, Path(runs_dir) / f"{name}-seed{seed}", final_dir / file_name(name, seed))
            for path, hint in ((run.run_dir / "model.pt", "another runs folder"), (run.model_file, "another final folder")):
                differ = protocol_differences(path, settings, config) if path.exists() else []
                if differ:
                    raise UserError(f"{path}: holds another network or protocol ({', '.join(differ)}); choose {hint}")
            runs.append(run)
    return runs


def train_runs(
    runs: list[FinalRun], data_spec: str, threads: int, progress: bool = True, teacher_weights: Optional[Path] = None, on_run=print, share: bool = False
) -> None:
    """Train every run that has no finished model file yet (resuming a stopped one), then
    keep its model file in the final folder.

    With ``share``, this process is one of several working through the same runs: it claims
    a run by taking its claim lock (``RUNS/.NAME-seedS.claim``, held while it trains the run)
    and passes over a run another worker holds, so every run is trained once, whichever
    worker reaches it first; nothing is split out in advance."""
    import contextlib

    from lightseg_nas.checks import file_lock

    for index, run in enumerate(runs, 1):
        with contextlib.ExitStack() as held:
            if share:
                run.run_dir.parent.mkdir(parents=True, exist_ok=True)
                try:
                    held.enter_context(file_lock(run.run_dir.parent / f".{run.run_dir.name}.claim"))
                except BlockingIOError:
                    on_run(f"[{index}/{len(runs)}] {run.name} seed {run.seed}: another worker is training it")
                    continue
            train_one(run, data_spec, threads, progress, teacher_weights, on_run, f"[{index}/{len(runs)}]")


def train_one(run: FinalRun, data_spec: str, threads: int, progress: bool | str = True, teacher_weights: Optional[Path] = None, on_run=print, label: str = "") -> None:
    """Train one run unless it is finished (resuming a stopped one), then keep its model file
    in the final folder. ``progress``: True (a bar, or a line per epoch off a terminal),
    False (nothing), or "lines" (a line per epoch through ``on_run``, named: a worker)."""
    from lightseg_nas.train import train_to_file

    label = f"{label} " if label else ""

    def epoch_line(row):  # workers side by side: a line per epoch, named, instead of bars
        on_run(f"{label}{run.name} seed {run.seed}: epoch {row['epoch']}/{run.settings.epochs}, loss {row['loss']:.3f}, "
               f"validation fg IoU {100 * row.get('val_fg_iou', float('nan')):.2f}%, {row['seconds']:.0f}s")

    if run.model_file.exists():  # kept earlier, its protocol checked by plan_runs
        on_run(f"{label}{run.name} seed {run.seed}: kept in {run.model_file}, reused")
        return
    if not (run.run_dir / "model.pt").exists():
        on_run(f"{label}training {run.name} seed {run.seed} ({run.settings.recipe} recipe) in {run.run_dir}")
        train_to_file(
            run.config, data_spec, run.run_dir, run.settings, resume=(run.run_dir / "checkpoint.pt").exists(), progress=progress is True,
            teacher_weights=teacher_weights if run.distilled else None, on_epoch=epoch_line if progress == "lines" else None,
        )
    else:
        on_run(f"{label}{run.name} seed {run.seed}: finished in {run.run_dir}, reused")
    if run.model_file != run.run_dir / "model.pt":  # else kept where it was trained (retrain)
        keep_model_file(run.run_dir / "model.pt", run.model_file, threads)


def keep_model_file(source: Path, model_file: Path, threads: int) -> None:
    """Copy a finished model file into the final folder (atomically) and record its threads."""
    model_file.parent.mkdir(parents=True, exist_ok=True)
    temporary = model_file.with_suffix(f".{os.getpid()}.tmp")
    shutil.copyfile(source, temporary)
    temporary.replace(model_file)
    record_threads(model_file.parent, model_file.name, threads)


def _train_here(runs, data_spec, threads, progress, teacher_weights, on_run, queue, share: bool) -> None:
    """This process's share of the runs: taken from the queue (a server database), else
    claimed by lock files (``share``) or all of them."""
    if queue is not None:
        from lightseg_nas.search.final_queue import train_from_queue

        train_from_queue(queue, runs, data_spec, threads, progress, teacher_weights, on_run)
    else:
        train_runs(runs, data_spec, threads, progress, teacher_weights, on_run, share)


def _worker(runs, data_spec, threads, teacher_weights, number, queue=None, progress=True) -> None:
    """One of ``train_in_workers``'s processes: a user mistake or a stop is one line, and
    the exit code tells the parent."""
    import sys

    from lightseg_nas.errors import install_stop_handlers, stop_with_parent
    from lightseg_nas.speed import use_threads

    install_stop_handlers()
    stop_with_parent()
    use_threads(threads)
    try:
        lines = "lines" if progress else False  # bars of several processes would overwrite each other
        _train_here(runs, data_spec, threads, lines, teacher_weights, lambda line: print(f"worker {number}: {line}", flush=True), queue, share=True)
    except UserError as error:
        print(f"worker {number}: error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def train_in_workers(
    runs: list[FinalRun], data_spec: str, workers: int, threads: Optional[int] = None, teacher_weights: Optional[Path] = None, progress: bool = True, on_run=print,
    queue=None,
) -> None:
    """``workers`` processes on this machine train the runs side by side, ``threads`` each
    (default: the cores this process may use, shared out), claiming runs as in
    ``train_runs(share=True)``; one worker trains here, in this process. With a ``queue``
    (final_queue.py: a study in a server database) they take runs from it instead, as
    workers on other machines do."""
    import multiprocessing

    import torch

    from lightseg_nas.checks import usable_cores

    if workers == 1:
        _train_here(runs, data_spec, threads or torch.get_num_threads(), progress, teacher_weights, on_run, queue, share=False)
        return
    threads = threads or max(1, usable_cores() // workers)
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker, args=(runs, data_spec, threads, teacher_weights, number, queue, progress)) for number in range(1, workers + 1)]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:  # Ctrl-C reaches the workers too; a SIGTERM to this process alone does not
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGINT)
        for process in processes:
            process.join()
        raise
    failed = [number for number, process in enumerate(processes, 1) if process.exitcode != 0]
    if failed:
        raise UserError(f"final: worker(s) {', '.join(map(str, failed))} stopped before their runs finished (see their lines above); run the same command to continue")


def check_all_kept(runs: list[FinalRun]) -> None:
    """Every run's model file is kept; else one line naming a run still trained elsewhere."""
    missing = [run for run in runs if not run.model_file.exists()]
    if missing:  # a run another worker (on this machine or another) still holds
        raise UserError(f"final: {len(missing)} run(s) are still being trained elsewhere ({missing[0].name} seed {missing[0].seed}); run the command again when they finish")


def retrain(named: list[tuple[str, object, Path]], settings, data_spec: str, workers: int = 1, threads: Optional[int] = None) -> None:
    """Train (name, config, run folder) triples with one protocol on this runner, each model
    file kept in its run folder: the benchmark scripts' retraining (the fidelity audit, the
    search comparison), with ``workers`` processes claiming runs as ``final --workers`` does.
    Reuse checks are the caller's, before this (``scripts.check_reusable``)."""
    runs = [FinalRun(name, settings.seed, config, settings, Path(folder), Path(folder) / "model.pt") for name, config, folder in named]
    train_in_workers(runs, data_spec, workers, threads, progress=False, on_run=lambda line: print(line, flush=True))
    check_all_kept(runs)


def read_ledger(final_dir: Path) -> dict:
    path = Path(final_dir) / "trainings.json"
    return json.loads(path.read_text()) if path.exists() else {}


def record_threads(final_dir: Path, name: str, threads: int) -> None:
    """Add one entry to trainings.json (the threads each training used, for CPU-minutes)
    under a lock (trainings run side by side), written whole and atomically."""
    with open(Path(final_dir) / ".trainings.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ledger = {**read_ledger(final_dir), name: {"threads": threads}}
        temporary = Path(final_dir) / f"trainings.json.{os.getpid()}.tmp"
        temporary.write_text(json.dumps(ledger, indent=1, sort_keys=True) + "\n")
        temporary.replace(Path(final_dir) / "trainings.json")


def other_backend(backend: str) -> str:
    """The latency backend timed beside the study's: torch for onnxruntime, else onnxruntime."""
    return "torch" if backend == "onnxruntime" else "onnxruntime"


def _teacher_label(record: dict) -> str:
    """What taught a model file besides the labels: a trainer's teacher, or a compression's."""
    teacher = record.get("teacher") or (record.get("compress") or {}).get("teacher")
    if not teacher:
        return ""
    if teacher.startswith("preset "):
        return f"{teacher.split()[1]} (released)"
    return teacher.removeprefix("model file ").split(" (")[0]  # the teacher's file name


def training_recipe(training: dict) -> str:
    """The named recipe (RECIPES) a trained model file's settings are, or "other"."""
    from lightseg_nas.train import NOT_PROTOCOL, settings_from

    if training.get("recipe") in RECIPES:
        return training["recipe"]
    for name in RECIPES:  # files written before the trainer recorded the name
        settings = settings_from(name, seed=training.get("seed"), val_fraction=training.get("val_fraction"), val_seed=training.get("val_seed"))
        if not changed_settings(training, settings, ignore=NOT_PROTOCOL):
            return name
    return "other"


def model_recipe(record: dict, folder: Path) -> str:
    """What a model file's row was trained with: its recipe, or for a compressed file its
    source's recipe and "+compress" (the source looked up beside it by name, then at the
    path the compression recorded; "unknown+compress" where neither is there)."""
    from lightseg_nas.modelfile import load_record

    compress = record.get("compress") or {}
    if not compress:
        return training_recipe(record.get("training") or {})
    source = Path(compress.get("source") or "")
    for path in (Path(folder) / source.name, source):
        if source.name and path.is_file():
            return f"{base_recipe(model_recipe(load_record(path), path.parent))}+compress"
    return "unknown+compress"


def base_recipe(recipe: str) -> str:
    """The recipe a row's networks are compared within: a compressed file's source's."""
    return recipe.removesuffix("+compress")


def table_files(final_dir: Path, also: tuple[Path, ...] = ()) -> list[Path]:
    """The final folder's model files, then those of the ``also`` folders; a file with the
    same bytes as one already listed (a model file copied between folders) once."""
    import hashlib

    files, seen = [], set()
    for folder in (Path(final_dir), *map(Path, also)):
        for path in sorted(folder.glob("*.pt")):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest not in seen:
                seen.add(digest)
                files.append(path)
    return files


def results_table(study_file: StudyFile, final_dir: Path, progress: bool = False, also: tuple[Path, ...] = ()) -> pd.DataFrame:
    """Every model file in the final folder (and in the ``also`` folders), scored the same
    way (one row per file).

    Latency is a ratio to the study's reference network, timed round-robin with every
    network in one run on the study's backend and, in a second run, on the other one
    (``latency_ratio`` and ``latency_ratio_<other>``). The reference is the folder's own
    trained copy of it where there is one (its row reads 1.00), else the preset built fresh.
    A compressed model file names its source (``source``); its minutes are the
    compression's alone. ``recipe`` says what each row was trained with (model_recipe)."""
    from lightseg_nas.cost import count_macs, count_params, measure_latency
    from lightseg_nas.families import build_model
    from lightseg_nas.inference import evaluate_network, load_network
    from lightseg_nas.config import arch_id

    data, cost, ledgers = study_file.data_spec(), study_file.cost, {}
    rows, models = [], {}
    for path in table_files(final_dir, also):
        model, preprocessing, record = load_network(path)
        metrics = evaluate_network(model, preprocessing, data, "val", 224, record["training"]["val_fraction"], record["training"]["val_seed"], progress=progress)
        ledger = ledgers.setdefault(path.parent, read_ledger(path.parent))
        threads = ledger.get(path.name, {}).get("threads") or record.get("threads")
        rows.append({
            "model": re.sub(r"-seed\d+$", "", path.stem), "file": os.path.relpath(path, final_dir), "arch_id": record["arch_id"],
            # the run's seed (a compression's own: its fine-tunings use seed + step)
            "seed": record.get("seed", record["training"]["seed"]), "recipe": model_recipe(record, path.parent),
            "teacher": _teacher_label(record), "source": Path((record.get("compress") or {}).get("source") or "").name,
            "params": count_params(model), "macs_conv_only_m": count_macs(model, 224, ("conv_only",))["conv_only"].macs / 1e6,
            "val_fg_iou_224": metrics["fg_iou"] * 100, "val_miou_224": metrics["miou"] * 100, "val_boundary_f_224": metrics["boundary_f"] * 100,
            "train_minutes": record["train_seconds"] / 60, "cpu_minutes": record["train_seconds"] / 60 * threads if threads else None,
        })
        models.setdefault(record["arch_id"], model)
    if not rows:
        return pd.DataFrame()
    preset = get_preset(cost.reference).model_copy(update={"num_classes": study_file.study.num_classes})
    reference = arch_id(preset)
    if reference not in models:
        models[reference] = build_model(preset).eval()
    frame = pd.DataFrame(rows).sort_values(["model", "recipe", "seed"], kind="stable").reset_index(drop=True)
    for position, backend in enumerate((cost.backend, other_backend(cost.backend))):
        timing = measure_latency(models, size=cost.size, threads=cost.threads, repeats=max(30, cost.repeats), backend=backend)
        column = "latency_ratio" if position == 0 else f"latency_ratio_{backend}"
        frame.insert(frame.columns.get_loc("macs_conv_only_m") + 1 + position, column, [timing[a].median_ms / timing[reference].median_ms for a in frame.arch_id])
    return frame


def _seed_spread(row) -> str:
    return f"{row.val_fg_iou_224_max - row.val_fg_iou_224_min:.2f}" if "," in row.seeds else "n/a (one seed)"


def summary(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Per network (and recipe, where the table has that column) over its seeds, and one
    line per comparison with a published network trained with the same recipe (a compressed
    network's: its source's): the gap in seed means with both networks' seed spread beside it."""
    keys = ["model", "recipe"] if "recipe" in frame.columns else ["model"]
    by_model = frame.groupby(keys, sort=False).agg(
        params=("params", "first"), latency_ratio=("latency_ratio", "first"),
        **{c: (c, "first") for c in frame.columns if c.startswith("latency_ratio_")}, seeds=("seed", lambda s: ",".join(map(str, sorted(s)))),
        val_fg_iou_224_mean=("val_fg_iou_224", "mean"), val_fg_iou_224_min=("val_fg_iou_224", "min"), val_fg_iou_224_max=("val_fg_iou_224", "max"),
    ).reset_index()
    scores = {key: dict(zip(part.seed, part.val_fg_iou_224)) for key, part in frame.groupby(keys, sort=False)}  # list keys: tuple keys
    scores_of = lambda row: scores[tuple(row[k] for k in keys)]  # noqa: E731  {seed: fg IoU} of a by_model row
    if "recipe" not in by_model.columns:
        return by_model, _comparisons(by_model, scores_of)
    base = by_model.recipe.map(base_recipe)
    groups = list(dict.fromkeys(base))
    lines = []
    for group in groups:
        said = _comparisons(by_model[base == group], scores_of)
        lines += [f"- [{group}] {line[2:]}" for line in said] if len(groups) > 1 else said
    return by_model, lines


def _paired_gap(mine: dict, theirs: dict) -> tuple[float, str, str]:
    """(gap, seeds, qualifier): the difference of seed means over the seeds both networks
    were trained with (the same seed is the same split order and initialisation stream), and
    how that differs from the means over all of each one's seeds, when it does."""
    shared = sorted(set(mine) & set(theirs))
    everything = sum(mine.values()) / len(mine) - sum(theirs.values()) / len(theirs)
    if not shared:
        return everything, "none in common: each one's own", ""
    gap = sum(mine[s] for s in shared) / len(shared) - sum(theirs[s] for s in shared) / len(shared)
    if set(mine) == set(theirs):
        return gap, ",".join(map(str, shared)), ""
    return gap, ",".join(map(str, shared)) + ", the ones both have", f" ({everything:+.2f} over all of each one's seeds)"


def _comparisons(by_model: pd.DataFrame, scores_of) -> list[str]:
    """The comparison lines of networks trained alike (summary); each gap is paired by seed
    (``scores_of(row)``: that row's {seed: fg IoU})."""
    lines = []
    base = by_model[by_model.model == "extremec3net"]
    searched = by_model[~by_model.model.str.replace("-kd", "").isin(PUBLISHED) & (by_model.params <= PARAMS_LIMIT)]
    if len(base) and len(searched):
        c3 = base.iloc[0]
        for _, row in searched.iterrows():
            kd = " (distilled; ExtremeC3Net here is not)" if row.model.endswith("-kd") else ""
            gap, seeds, qualifier = _paired_gap(scores_of(row), scores_of(c3))
            lines.append(
                f"- {row.model}{kd} ({row.params:,} params, seeds {row.seeds}): {gap:+.2f} points against "
                f"ExtremeC3Net (seeds {seeds}) in seed means{qualifier}, target +0.5; seed spread {_seed_spread(row)} here, {_seed_spread(c3)} for ExtremeC3Net."
            )
    sinet = by_model[by_model.model == "sinet"]
    fast = by_model[(by_model.latency_ratio <= 0.5) & ~by_model.model.isin(PUBLISHED)]
    if len(sinet) and len(searched):
        # the bar of a network one would pick over both: ExtremeC3Net's size, SINet's latency
        # on every backend timed, SINet's accuracy (seed means)
        top = sinet.iloc[0]
        ratios = [c for c in by_model.columns if c.startswith("latency_ratio")]
        for _, row in searched.iterrows():
            gap, seeds, qualifier = _paired_gap(scores_of(row), scores_of(top))
            met = gap >= 0 and all(row[c] <= top[c] for c in ratios)
            latency = ", ".join(f"{row[c] / top[c]:.2f}x" for c in ratios)
            lines.append(
                f"- {row.model} against SINet (seeds {seeds}): {gap:+.2f} points in seed means{qualifier} (seed spread {_seed_spread(row)} here, "
                f"{_seed_spread(top)} for SINet), latency {latency} of SINet's ({', '.join(ratios)}); "
                f"target (at most 37,738 params and SINet's latency, at least its accuracy): {'met' if met else 'not met'}."
            )
    if len(sinet):
        for _, row in fast.iterrows():
            gap, seeds, qualifier = _paired_gap(scores_of(row), scores_of(sinet.iloc[0]))
            lines.append(f"- {row.model} at {row.latency_ratio:.2f}x SINet's latency: {gap:+.2f} points against SINet (seeds {seeds}){qualifier}; target within 0.5.")
    return lines


def recipe_text(recipe: str) -> str:
    """A recipe's settings as the table names them: the usual ones and every one it sets."""
    from lightseg_nas.settings import RECIPES
    from lightseg_nas.train import settings_from

    named = {"epochs", "size", "batch_size", "lr", "schedule", "loss"} | set(RECIPES[recipe])
    return json.dumps(settings_from(recipe).model_dump(include=named))


FIGURE_SIZE = (900, 600)  # px: the PNG's size, and the size label placement assumes
LABEL_FONT_PX = 12


def final_figure(by_model: pd.DataFrame, cost: str, study_file: StudyFile):
    """Seed-mean validation fg IoU at 224 against parameters or latency; published marked.
    Each point's label is an annotation, moved up or down where it would overlap another."""
    import plotly.graph_objects as go

    column = {"params": "params", "latency": "latency_ratio"}[cost]
    label = {"params": "parameters", "latency": f"latency ratio to {study_file.cost.reference} ({study_file.cost.backend}, timed side by side)"}[cost]
    log = cost == "params"
    figure = go.Figure()
    published = by_model.model.isin(PUBLISHED)
    mixed = "recipe" in by_model.columns and by_model.recipe.nunique() > 1
    names = by_model.model + (" (" + by_model.recipe + ")" if mixed else "")
    for mask, name, marker in ((~published, "searched or compressed (seed mean)", dict(color="#1f77b4", size=10)), (published, "published", dict(symbol="star", size=16, color="#d62728"))):
        part = by_model[mask]
        if part.empty:
            continue
        figure.add_trace(go.Scatter(
            x=part[column], y=part.val_fg_iou_224_mean, mode="markers", name=name, marker=marker, cliponaxis=False,
            error_y=dict(type="data", symmetric=False, array=part.val_fg_iou_224_max - part.val_fg_iou_224_mean, arrayminus=part.val_fg_iou_224_mean - part.val_fg_iou_224_min),
            customdata=part.assign(model=names[mask])[["model", "params", "latency_ratio", "seeds"]].to_numpy(),
            hovertemplate="%{customdata[0]}<br>val fg IoU %{y:.2f}% (seeds %{customdata[3]})<br>%{customdata[1]:,} parameters<br>latency %{customdata[2]:.2f}x<extra></extra>",
        ))
    synthetic = " (synthetic data)" if study_file.data.spec.startswith("synthetic") else ""
    margin = dict(l=80, r=170 if mixed else 40, t=90, b=120)
    x_range = padded_range(by_model[column], log=log)
    y_range = padded_range(pd.concat([by_model.val_fg_iou_224_min, by_model.val_fg_iou_224_max]), log=False, pad=0.08)
    figure.update_layout(
        title=f"final models of {study_file.study.name}{synthetic}:<br>validation fg IoU at 224 against {label}", xaxis_title=label,
        yaxis_title="validation foreground IoU at 224 (%), seed mean and range", template="plotly_white", width=FIGURE_SIZE[0], height=FIGURE_SIZE[1],
        legend=dict(orientation="h", yanchor="top", y=-0.15), margin=margin,
    )
    figure.update_xaxes(type="log" if log else "linear", range=x_range)
    figure.update_yaxes(range=y_range)
    shown = by_model[column].notna() & by_model.val_fg_iou_224_mean.notna() & (by_model[column] > 0 if log else True)
    if shown.any() and x_range and y_range:
        xs = np.log10(by_model[column][shown].astype(float)) if log else by_model[column][shown].astype(float)
        plot = (FIGURE_SIZE[0] - margin["l"] - margin["r"], FIGURE_SIZE[1] - margin["t"] - margin["b"])
        px = [(float(x) - x_range[0]) / (x_range[1] - x_range[0]) * plot[0] for x in xs]
        py = [(float(y) - y_range[0]) / (y_range[1] - y_range[0]) * plot[1] for y in by_model.val_fg_iou_224_mean[shown]]
        texts = list(names[shown])
        places = label_places(px, py, texts, beside=mixed, area=(0, plot[0] + margin["r"] - 5, 0, plot[1]))
        for x, y, text, (shift, side) in zip(by_model[column][shown], by_model.val_fg_iou_224_mean[shown], texts, places):
            # a shifted label hangs on a thin line from its point
            figure.add_annotation(x=float(np.log10(x)) if log else x, y=y, text=text, font=dict(size=LABEL_FONT_PX), showarrow=True, arrowhead=0,
                                  arrowwidth=0.6 if shift else 0.1, arrowcolor="#999999" if shift else "rgba(0,0,0,0)",
                                  ax={"right": 10, "left": -10, "above": 0}[side], ay=-shift if mixed else -(shift + 8),
                                  xanchor={"right": "left", "left": "right", "above": "center"}[side], yanchor="middle" if mixed else "bottom")
    return figure


def label_places(px: list[float], py: list[float], texts: list[str], beside: bool, area: Optional[tuple[float, float, float, float]] = None, font_px: int = LABEL_FONT_PX) -> list[tuple[int, str]]:
    """Where each point's label goes, as (vertical pixel shift, up positive; side: "right",
    "left" or "above"), keeping the labels' boxes apart. Labels are placed from the top point
    down, each at the first free place in the order: no shift, one line down, one line up,
    two down, ... (beside its point: right, then left, at each shift; else above it). A
    place is free where its box meets no other point's marker and no label placed before
    it, and stays within area (left, right, bottom, top) where that is given: a label may
    reach into the right margin, not past the axes elsewhere. A shifted label is drawn
    on a thin line from its point. Boxes are estimated from the text length (0.52 of the
    font size a character, about Arial's); px, py are the points' pixel positions in the
    plot area (y up)."""
    line = font_px + 3
    placed: list[tuple[float, float, float, float]] = [(x - 7, x + 7, y - 7, y + 7) for x, y in zip(px, py)]  # the markers
    places: list[tuple[int, str]] = [(0, "right" if beside else "above")] * len(texts)
    for i in sorted(range(len(texts)), key=lambda i: -py[i]):
        width = 0.52 * font_px * len(texts[i])
        others = [b for j, b in enumerate(placed) if j != i]  # a label may touch its own marker
        candidates = [((k + 1) // 2 * line * (-1 if k % 2 else 1), side) for k in range(2 * len(texts) + 1)
                      for side in (("right", "left") if beside else ("above",))]  # shifts 0, one line down, one up, two down, ...
        for shift, side in candidates:
            left = {"right": px[i] + 10, "left": px[i] - 10 - width, "above": px[i] - width / 2}[side]
            centre = (py[i] if beside else py[i] + 8 + line / 2) + shift
            box = (left, left + width, centre - line / 2, centre + line / 2)
            inside = area is None or (box[0] >= area[0] and box[1] <= area[1] and box[2] >= area[2] and box[3] <= area[3])
            if inside and not any(box[0] < b[1] and b[0] < box[1] and box[2] < b[3] and b[2] < box[3] for b in others):
                break
        else:
            shift, side = candidates[0]
            left = px[i] + 10 if beside else px[i] - width / 2
            centre = py[i] if beside else py[i] + 8 + line / 2
            box = (left, left + width, centre - line / 2, centre + line / 2)
        placed.append(box)
        places[i] = (int(round(shift)), side)
    return places


def padded_range(values: pd.Series, log: bool, pad: float = 0.15) -> Optional[list[float]]:
    """An x range with room on both sides for the points' labels (in log10 units on a log axis)."""
    values = values.dropna()
    values = values[values > 0] if log else values
    if values.empty:
        return None
    low, high = (float(np.log10(values.min())), float(np.log10(values.max()))) if log else (float(values.min()), float(values.max()))
    span = high - low or (0.05 if log else max(abs(high) * 0.1, 0.1))
    return [low - pad * span, high + pad * span]


def write_results(frame: pd.DataFrame, study_file: StudyFile, final_dir: Path, png: bool = True) -> list[Path]:
    """results.csv, results.md and the plots (HTML, and PNG where kaleido can draw); the
    text names the recipe of the table's rows (their ``recipe`` column)."""
    from lightseg_nas.search.report import PLOTLYJS, _png_available, figure_html, place_plotlyjs, write_pngs

    final_dir = Path(final_dir)
    by_model, lines = summary(frame)
    frame.to_csv(final_dir / "results.csv", index=False)
    plotlyjs = place_plotlyjs(final_dir)
    written = [final_dir / "results.csv", *([final_dir / PLOTLYJS] if plotlyjs == PLOTLYJS else [])]
    png_note = _png_available() if png else "PNG export not asked for."
    figures = {f"final_{cost}": final_figure(by_model, cost, study_file) for cost in ("params", "latency")}
    if not png_note:
        png_note = write_pngs(figures, final_dir, width=900, height=600)
        written += [] if png_note else [final_dir / f"{name}.png" for name in figures]
    for name, figure in figures.items():
        if final_dir / f"{name}.png" not in written:  # never leave an image of an older table beside this one
            (final_dir / f"{name}.png").unlink(missing_ok=True)
        (final_dir / f"{name}.html").write_text(figure_html(figure, name, (final_dir / f"{name}.png").exists(), plotlyjs))
        written.append(final_dir / f"{name}.html")
    bases = list(dict.fromkeys(frame.recipe.map(base_recipe)))
    if len(bases) == 1 and bases[0] in RECIPES:
        trained = f"Trained with the `{bases[0]}` recipe ({recipe_text(bases[0])})"
    else:  # several recipes in one table (final --also), or settings of no named recipe
        parts = [f"`{name}`: {recipe_text(name)}" for name in bases if name in RECIPES]
        parts += ["other: settings of no named recipe"] * ("other" in bases) + ["unknown: a compressed file whose source is not at hand"] * ("unknown" in bases)
        parts += ["NAME+compress: compressed from a model file trained with NAME"] * bool(frame.recipe.str.endswith("+compress").any())
        trained = f"Trained with the recipe each row names ({'; '.join(parts)})"
    text = [
        f"# Final models of {study_file.study.name}",
        "",
        f"{trained}, "
        f"on the study's data (`{study_file.data.spec}`) minus its validation split ({study_file.data.val_fraction:g}, seed {study_file.data.val_seed}); "
        "an EG1800 test list is never read. Scored on that validation split with the papers' protocol: per-image foreground IoU at 224x224 (the papers' \"mIoU\"), mIoU over "
        "background and foreground, boundary F, in %. Parameters and conv-only MACs (convolutions and linear layers; batch norm, activations, "
        f"pooling and resizing left out) at 224; latency_ratio: median batch-1 latency over {study_file.cost.reference}'s (its trained copy here where there is one), "
        f"timed round-robin in one run on the study's backend ({study_file.cost.backend}, {study_file.cost.threads} thread(s)); "
        f"latency_ratio_{other_backend(study_file.cost.backend)}: the same in a second run on that backend. teacher: what a network was distilled from "
        "(the released SINet was trained with extra portrait data); source: the model file a compressed network was pruned from "
        "(its minutes are the compression's alone). train_minutes: wall time on this 2-core machine; cpu_minutes: times the threads used. Run-to-run noise of the "
        "validation fg IoU (other seeds) is 0.15-0.2 points. Written by `lightseg-nas final`.",
        "",
        frame.to_markdown(index=False, floatfmt=".4g"),
        "",
        "Per network, over its seeds:",
        "",
        by_model.to_markdown(index=False, floatfmt=".4g"),
        "",
        *(lines or ["No searched network at or under 37,738 parameters has been trained yet, or ExtremeC3Net has not."]),
        "",
        *[f"![{name}]({name}.png)" for name in ("final_params", "final_latency") if (final_dir / f"{name}.png").exists()],
        "",
    ]
    (final_dir / "results.md").write_text("\n".join(text))
    return [final_dir / "results.md", *written]


def parse_seeds(text: str) -> tuple[int, ...]:
    """``0,1`` -> (0, 1): whole numbers in the seed range, or one line saying what is wrong."""
    from lightseg_nas.settings import SEED_MAX

    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise FieldError("seeds", f"{{0}} {text!r}: give whole numbers separated by commas (0,1)") from None
    for value in seeds:
        if not 0 <= value <= SEED_MAX:
            raise FieldError("seeds", f"{{0}} must be from 0 to {SEED_MAX:,}, got {value:,}")
    return seeds


def run_final(
    study: Path, front: bool, top: Optional[int], trials: tuple[int, ...], archs: tuple[str, ...], best_under_params: Optional[int],
    baselines: tuple[str, ...], seeds: tuple[int, ...], recipe: Optional[str] = None, teacher: Optional[str] = None,
    teacher_weights: Optional[Path] = None, runs_dir: Path = Path("runs/final"), out: Optional[Path] = None, max_steps: Optional[int] = None,
    table: bool = True, png: bool = True, workers: int = 1, threads: Optional[int] = None, progress: bool = True, on_run=print,
    storage: Optional[str] = None, study_name: Optional[str] = None, also: tuple[Path, ...] = (),
):
    """The `final` job: choose, check every reuse, train (``workers`` at a time), then score
    every model file of the final folder (and of the ``also`` folders, in the same table).
    Returns (folder, per-file table, per-network table, comparison lines), or None with
    ``table`` off."""
    from lightseg_nas.checks import check_output_dir
    from lightseg_nas.search import load_study_file, open_study

    if teacher_weights is not None and teacher is None:
        raise FieldError(("teacher_weights", "teacher"), "{0} goes with {1} PRESET")
    if top is not None and not front:
        raise FieldError(("top", "front"), "{0} goes with {1}")
    if teacher_weights is not None and not Path(teacher_weights).is_file():
        raise FieldError("teacher_weights", f"{{0}} {teacher_weights}: no such file")
    if also and not table:
        raise FieldError(("also", "no_table"), "{0} adds folders to the table; it does not go with {1}")
    for extra in also:
        if not Path(extra).is_dir():
            raise FieldError("also", f"{{0}} {extra}: no such folder")
        if not any(Path(extra).glob("*.pt")):
            raise FieldError("also", f"{{0}} {extra}: holds no model file (*.pt)")
    study_file = load_study_file(study)
    folder = check_output_dir(out or final_folder(study_file))
    result = open_study(study_file, storage, study_name, create=False)
    names = choose_networks(result, front, top, trials, archs, best_under_params, baselines, on_run)
    names += [f"{name}-kd" for name in names] if teacher else []
    if not names and not table:
        raise FieldError(("front", "trial", "arch", "baselines"), "nothing to do: give {0}, {1} N, {2} ID or {3} NAMES, or leave the table on")
    plans = plan_runs(study_file, result, names, seeds, Path(runs_dir) / study_file.study.name, folder, recipe, max_steps, teacher)
    from lightseg_nas.search.final_queue import enqueue, fetch_finished, queue_for

    queue = queue_for(study_file, storage, result.study_name)  # a server database: runs shared by every machine
    if queue is not None:
        enqueue(queue, plans)
    train_in_workers(plans, study_file.data_spec(), workers, threads, teacher_weights, progress, on_run, queue)
    if queue is not None:
        folder.mkdir(parents=True, exist_ok=True)
        fetch_finished(queue, folder, on_run)
    check_all_kept(plans)
    if not table:
        return None
    frame = results_table(study_file, folder, progress, tuple(also))
    if frame.empty:
        raise UserError(f"{folder}: holds no model file to score; train networks first (--front, --trial, --arch, --baselines) or add folders with --also")
    folder.mkdir(parents=True, exist_ok=True)  # a table of --also folders alone
    write_results(frame, study_file, folder, png)
    return (folder, frame, *summary(frame))
