"""What one trial does: sample, cost, check budgets, skip duplicates, screen, train in rungs.

Cheap before expensive: parameters and MACs are known before any training, so a candidate
over a hard budget ends at once (PRUNED, ``infeasible``), and an architecture already
trained (same arch id) is not trained again. Every trial records what it built in its
trial record (``record.py``): config, arch id, costs, proxies, the rung (fidelity) reached,
how it ended, seed, code version.
"""

from __future__ import annotations

import time

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

import search_spaces
from lightseg_nas.config import arch_id
from lightseg_nas.cost import count_macs, count_params, measure_latency
from lightseg_nas.data import load_split
from lightseg_nas.data.transforms import get_preprocessing, normalize
from lightseg_nas.errors import stop_requested
from lightseg_nas.families import build_model
from lightseg_nas.modelfile import code_version
from lightseg_nas.presets import get_preset
from lightseg_nas.search.fidelity import is_promoted
from lightseg_nas.search.proxies import compute_proxies
from lightseg_nas.search.record import RECORD_VERSION, TrialRecord, record
from lightseg_nas.search.study_file import COST_ATTRS, StudyFile
from lightseg_nas.settings import SplitSettings, TrainSettings
from lightseg_nas.train import fit, images_per_s

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class SurplusTrial(Exception):
    """Raised when racing workers asked for more trials than the study's target."""


class Objective:
    def __init__(self, study_file: StudyFile, target: int | None = None):
        self.study_file = study_file
        self.target = target
        self.space = search_spaces.get_space(study_file.study.space)
        self.spec = study_file.data_spec()
        self.preprocessing = get_preprocessing("default")
        self._data: dict = {}
        self.supernet = None
        if study_file.fidelity.mode == "supernet":
            from lightseg_nas.search.supernet_fidelity import open_supernet

            self.supernet, self.recalibration, self.supernet_val = open_supernet(study_file)

    def data(self, split: str, size: int):
        """Splits are decoded once per process and reused by every trial."""
        key = (split, size)
        if key not in self._data:
            data = self.study_file.data
            self._data[key] = load_split(self.spec, split, size, data.val_fraction, data.val_seed)
        return self._data[key]

    # -- costs -------------------------------------------------------------------------
    def _costs(self, trial: optuna.Trial, model: torch.nn.Module) -> dict:
        sf = self.study_file
        costs = {"params": count_params(model)}
        record(trial, params=costs["params"])
        needs = set(sf.objectives.minimize) | {name for name, limit in (("macs", sf.budgets.max_macs), ("latency", sf.budgets.max_latency_ratio)) if limit}
        if "macs" in needs:
            costs["macs"] = count_macs(model, sf.cost.size, counters=["fvcore"])["fvcore"].macs
            record(trial, macs=costs["macs"])
        self._check_budgets(trial, costs, ("params", "macs"))
        if "latency" in needs:
            reference = build_model(get_preset(sf.cost.reference).model_copy(update={"num_classes": sf.study.num_classes}))
            timing = measure_latency(
                {"candidate": model, "reference": reference}, sf.cost.size, sf.cost.threads, warmup=2, repeats=sf.cost.repeats, backend=sf.cost.backend
            )
            costs["latency"] = timing["candidate"].median_ms / timing["reference"].median_ms
            record(trial, latency_ms=timing["candidate"].median_ms, latency_backend=sf.cost.backend, latency_ratio=costs["latency"])
            self._check_budgets(trial, costs, ("latency",))
        return costs

    def _check_budgets(self, trial: optuna.Trial, costs: dict, names) -> None:
        """Check the budgets of the costs in ``names`` (those just measured)."""
        budgets = self.study_file.budgets
        limits = {"params": budgets.max_params, "macs": budgets.max_macs, "latency": budgets.max_latency_ratio}
        checked = {name: limit for name, limit in limits.items() if limit is not None and name in names}
        for name, limit in checked.items():
            # > 0 is infeasible; the samplers steer away from it (Optuna's constraint API)
            trial.set_constraint(f"max_{name}", float(costs[name] - limit))
        over = [f"{name} {costs[name]:.4g} > {limit:g}" for name, limit in checked.items() if costs[name] > limit]
        if over:
            record(trial, infeasible=True, outcome="over_budget", reason="over budget: " + ", ".join(over))
            raise optuna.TrialPruned("over budget: " + ", ".join(over))

    # -- duplicates and proxies ---------------------------------------------------------
    @staticmethod
    def _trained_twin(trial: optuna.Trial, identity: str):
        for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            stored = TrialRecord.of(other)
            if other.number != trial.number and stored.arch_id == identity and stored.duplicate_of is None:
                return other
        return None

    def _screen(self, trial: optuna.Trial, scores: dict) -> None:
        screen = self.study_file.proxies.screen
        if screen is None:
            return
        trained = [
            (t, stored) for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            for stored in [TrialRecord.of(t)]
            if screen.proxy in stored.proxies and stored.duplicate_of is None
        ]
        if len(trained) < screen.min_trials:
            return
        import pandas as pd

        proxy = pd.Series([stored.proxies[screen.proxy] for _, stored in trained])
        accuracy = pd.Series([t.values[0] for t, _ in trained])
        correlation = proxy.corr(accuracy, method="spearman")
        record(trial, screen_correlation=float(correlation))
        if not correlation >= screen.min_correlation:
            return
        threshold = float(np.quantile(proxy, screen.skip_below_quantile))
        if scores[screen.proxy] < threshold:
            reason = f"skipped: {screen.proxy} {scores[screen.proxy]:.3g} below the {screen.skip_below_quantile:g} quantile {threshold:.3g} (correlation {correlation:.2f})"
            record(trial, outcome="skipped", reason=reason)
            raise optuna.TrialPruned(reason)

    # -- multi-fidelity -------------------------------------------------------------------
    def _promoted(self, trial: optuna.Trial, rung: int, accuracy: float, costs: dict) -> bool:
        names = self.study_file.objectives.minimize
        rows, candidate = [], None
        for other in trial.study.get_trials(deepcopy=False):
            if other.number == trial.number:
                candidate = len(rows)
                rows.append([-accuracy, *[costs[n] for n in names]])
                continue
            stored = TrialRecord.of(other)
            if rung in stored.rung_val_fg_iou and stored.duplicate_of is None:
                rows.append([-stored.rung_val_fg_iou[rung], *[getattr(stored, COST_ATTRS[n]) for n in names]])
        return is_promoted(candidate, np.array(rows, dtype=float), self.study_file.fidelity.reduction_factor)

    # -- the trial ----------------------------------------------------------------------
    def _check_surplus(self, trial: optuna.Trial) -> None:
        """Trial numbers are handed out atomically by the storage: a trial goes ahead only if
        fewer than ``target`` earlier trials are finished or still running, so racing
        workers end with exactly ``target`` finished trials."""
        if self.target is None:
            return
        earlier = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number and t.state != TrialState.FAIL]
        if len(earlier) >= self.target:
            reason = f"surplus: {len(earlier)} earlier trials already meet the target of {self.target}"
            record(trial, outcome="surplus", reason=reason)
            raise SurplusTrial(reason)

    def __call__(self, trial: optuna.Trial) -> tuple:
        sf = self.study_file
        self._check_surplus(trial)
        started = time.perf_counter()
        config = self.space(trial, num_classes=sf.study.num_classes)
        identity = arch_id(config)
        record(trial, record_version=RECORD_VERSION, config=config.model_dump(mode="json"), arch_id=identity, seed=sf.study.seed, code_version=code_version())
        torch.manual_seed(sf.study.seed)
        model = build_model(config)
        costs = self._costs(trial, model)

        twin = self._trained_twin(trial, identity)
        if twin is not None:
            stored = TrialRecord.of(twin)
            record(trial, outcome="duplicate", duplicate_of=twin.number, fidelity=stored.fidelity, epochs=stored.epochs)
            return tuple(twin.values)

        first_rung = sf.fidelity.rungs[0]
        if sf.proxies.compute:
            batch = self.data("train", first_rung.size)
            x = normalize(batch.images[: sf.training.batch_size], self.preprocessing)
            scores = compute_proxies(sf.proxies.compute, model, x, batch.masks[: sf.training.batch_size])
            record(trial, proxies=scores)
            self._screen(trial, scores)

        epochs, histories = 0, []
        try:
            if self.supernet is not None:
                from lightseg_nas.supernet import score

                accuracy = score(self.supernet, config, self.recalibration, self.supernet_val, self.preprocessing)["fg_iou"]
                record(trial, rung_val_fg_iou={0: accuracy}, fidelity=0, epochs=0, outcome="scored", train_seconds=time.perf_counter() - started)
            for index, rung in enumerate(() if self.supernet is not None else sf.fidelity.rungs):
                split = sf.data.model_dump(include=set(SplitSettings.model_fields))
                settings = TrainSettings(**sf.training.model_dump(), **split, epochs=rung.epochs, size=rung.size, seed=sf.study.seed)
                history = fit(model, self.data("train", rung.size), self.data("val", rung.size), settings, self.preprocessing, progress=False)
                accuracy = history[-1]["val_fg_iou"]
                histories += history
                epochs += rung.epochs
                record(
                    trial, rung_val_fg_iou={index: accuracy}, fidelity=index, epochs=epochs, outcome="trained",
                    train_seconds=time.perf_counter() - started, images_per_s=images_per_s(histories),
                )
                last = index == len(sf.fidelity.rungs) - 1
                if not last and sf.fidelity.enabled and not self._promoted(trial, index, accuracy, costs):
                    break
            stop_requested()  # a stop whose exception was dropped ends the trial as interrupted
        except KeyboardInterrupt:
            record(trial, outcome="interrupted", reason="interrupted (SIGINT or SIGTERM) during training")
            raise
        except Exception as error:  # NaN loss, out of memory, a broken candidate: recorded, the study goes on
            record(trial, outcome="failed", reason=f"failed: {error.__class__.__name__}: {str(error)[:300]}")
            raise
        return (accuracy, *[costs[name] for name in sf.objectives.minimize])
