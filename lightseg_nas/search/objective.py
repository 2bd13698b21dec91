"""What one trial does: sample, cost, check budgets, skip duplicates, screen, train in rungs.

Cheap before expensive: parameters and MACs are known before any training, so a candidate
over a hard budget ends at once (PRUNED, ``infeasible``), and an architecture already
trained (same arch id) is not trained again. Every trial records what it built as user
attributes: config, arch id, costs, proxies, the rung (fidelity) reached, seed, code version.
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
from lightseg_nas.modelfile import code_version
from lightseg_nas.models import build_model
from lightseg_nas.presets import get_preset
from lightseg_nas.search.fidelity import is_promoted
from lightseg_nas.search.proxies import compute_proxies
from lightseg_nas.search.study_file import COST_ATTRS, StudyFile
from lightseg_nas.train import TrainSettings, fit, images_per_s

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
        trial.set_user_attr("params", costs["params"])
        needs = set(sf.objectives.minimize) | {name for name, limit in (("macs", sf.budgets.max_macs), ("latency", sf.budgets.max_latency_ratio)) if limit}
        if "macs" in needs:
            costs["macs"] = count_macs(model, sf.cost.size, counters=["fvcore"])["fvcore"].macs
            trial.set_user_attr("macs", costs["macs"])
        self._check_budgets(trial, costs, ("params", "macs"))
        if "latency" in needs:
            reference = build_model(get_preset(sf.cost.reference).model_copy(update={"num_classes": sf.study.num_classes}))
            timing = measure_latency(
                {"candidate": model, "reference": reference}, sf.cost.size, sf.cost.threads, warmup=2, repeats=sf.cost.repeats, backend=sf.cost.backend
            )
            costs["latency"] = timing["candidate"].median_ms / timing["reference"].median_ms
            trial.set_user_attr("latency_ms", timing["candidate"].median_ms)
            trial.set_user_attr("latency_backend", sf.cost.backend)
            trial.set_user_attr(COST_ATTRS["latency"], costs["latency"])
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
            trial.set_user_attr("infeasible", True)
            trial.set_user_attr("reason", "over budget: " + ", ".join(over))
            raise optuna.TrialPruned("over budget: " + ", ".join(over))

    # -- duplicates and proxies ---------------------------------------------------------
    @staticmethod
    def _trained_twin(trial: optuna.Trial, identity: str):
        for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if other.number != trial.number and other.user_attrs.get("arch_id") == identity and other.user_attrs.get("duplicate_of") is None:
                return other
        return None

    def _screen(self, trial: optuna.Trial, scores: dict) -> None:
        screen = self.study_file.proxies.screen
        if screen is None:
            return
        trained = [
            t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if f"proxy_{screen.proxy}" in t.user_attrs and t.user_attrs.get("duplicate_of") is None
        ]
        if len(trained) < screen.min_trials:
            return
        import pandas as pd

        proxy = pd.Series([t.user_attrs[f"proxy_{screen.proxy}"] for t in trained])
        accuracy = pd.Series([t.values[0] for t in trained])
        correlation = proxy.corr(accuracy, method="spearman")
        trial.set_user_attr("screen_correlation", float(correlation))
        if not correlation >= screen.min_correlation:
            return
        threshold = float(np.quantile(proxy, screen.skip_below_quantile))
        if scores[screen.proxy] < threshold:
            trial.set_user_attr("reason", f"skipped: {screen.proxy} {scores[screen.proxy]:.3g} below the {screen.skip_below_quantile:g} quantile {threshold:.3g} (correlation {correlation:.2f})")
            raise optuna.TrialPruned(trial.user_attrs["reason"])

    # -- multi-fidelity -------------------------------------------------------------------
    def _promoted(self, trial: optuna.Trial, rung: int, accuracy: float, costs: dict) -> bool:
        key = f"rung{rung}_val_fg_iou"
        names = self.study_file.objectives.minimize
        rows, candidate = [], None
        for other in trial.study.get_trials(deepcopy=False):
            if other.number == trial.number:
                candidate = len(rows)
                rows.append([-accuracy, *[costs[n] for n in names]])
            elif key in other.user_attrs and other.user_attrs.get("duplicate_of") is None:
                attrs = other.user_attrs
                rows.append([-attrs[key], *[attrs[COST_ATTRS[n]] for n in names]])
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
            trial.set_user_attr("reason", f"surplus: {len(earlier)} earlier trials already meet the target of {self.target}")
            raise SurplusTrial(trial.user_attrs["reason"])

    def __call__(self, trial: optuna.Trial) -> tuple:
        sf = self.study_file
        self._check_surplus(trial)
        started = time.perf_counter()
        config = self.space(trial, num_classes=sf.study.num_classes)
        identity = arch_id(config)
        for key, value in (("config", config.model_dump(mode="json")), ("arch_id", identity), ("seed", sf.study.seed), ("code_version", code_version())):
            trial.set_user_attr(key, value)
        torch.manual_seed(sf.study.seed)
        model = build_model(config)
        costs = self._costs(trial, model)

        twin = self._trained_twin(trial, identity)
        if twin is not None:
            trial.set_user_attr("duplicate_of", twin.number)
            for key in ("fidelity", "epochs"):
                trial.set_user_attr(key, twin.user_attrs.get(key))
            return tuple(twin.values)

        first_rung = sf.fidelity.rungs[0]
        if sf.proxies.compute:
            batch = self.data("train", first_rung.size)
            x = normalize(batch.images[: sf.training.batch_size], self.preprocessing)
            scores = compute_proxies(sf.proxies.compute, model, x, batch.masks[: sf.training.batch_size])
            for name, value in scores.items():
                trial.set_user_attr(f"proxy_{name}", value)
            self._screen(trial, scores)

        epochs, histories = 0, []
        try:
            for index, rung in enumerate(sf.fidelity.rungs):
                settings = TrainSettings(
                    epochs=rung.epochs, size=rung.size, batch_size=sf.training.batch_size, lr=sf.training.lr,
                    weight_decay=sf.training.weight_decay, augment=sf.training.augment, seed=sf.study.seed,
                    val_fraction=sf.data.val_fraction, val_seed=sf.data.val_seed, device=sf.training.device,
                    channels_last=sf.training.channels_last, compile=sf.training.compile,
                )
                history = fit(model, self.data("train", rung.size), self.data("val", rung.size), settings, self.preprocessing, progress=False)
                accuracy = history[-1]["val_fg_iou"]
                histories += history
                epochs += rung.epochs
                trial.set_user_attr(f"rung{index}_val_fg_iou", accuracy)
                trial.set_user_attr("fidelity", index)
                trial.set_user_attr("epochs", epochs)
                trial.set_user_attr("train_seconds", time.perf_counter() - started)
                trial.set_user_attr("images_per_s", images_per_s(histories))
                last = index == len(sf.fidelity.rungs) - 1
                if not last and sf.fidelity.enabled and not self._promoted(trial, index, accuracy, costs):
                    break
        except KeyboardInterrupt:
            trial.set_user_attr("reason", "interrupted (SIGINT or SIGTERM) during training")
            raise
        except Exception as error:  # NaN loss, out of memory, a broken candidate: recorded, the study goes on
            trial.set_user_attr("reason", f"failed: {error.__class__.__name__}: {str(error)[:300]}")
            raise
        return (accuracy, *[costs[name] for name in sf.objectives.minimize])
