"""Supernet search against rung search at equal machine time: hypervolume of the
stand-alone-retrained front of each, as a gain over the published networks, per hour.

    python benchmarks/search_comparison.py [RUNG_STUDY] [SUPERNET_STUDY] [--top 6]
                                           [--epochs 15] [--size 160] [--eval-size 224]
                                           [--runs runs/audit] [--threads 1] [--shard K/N]

Defaults: ``studies/eg1800_extremec3.toml`` (rungs) against
``studies/eg1800_extremec3_supernet.toml`` (supernet fidelity), which share space,
objectives, budget, cost measurement and validation split. From each study's front (its own
fidelity; published networks left out) ``--top`` members spread over the parameter range
are trained from scratch with one protocol (the fidelity audit's: same seed, same training
list minus the same validation split; networks already trained by the audit under the same
``--runs`` folder are reused after their settings are checked) and scored at
``--eval-size`` (per-image foreground IoU, the papers' "mIoU"). The published networks
(ExtremeC3Net, SINet) are trained alike.

Hypervolume is computed in normalised objectives: 1 - validation fg IoU, and each cost
(parameters, latency ratio to SINet as the study measured it) divided by its largest value
among all points; reference point 1.1. An arm's gain is the hypervolume of its retrained
front together with the published networks, minus that of the published networks alone.
Its hours are the search's own machine time: the sum of its trials' wall times, plus, for
the supernet study, the supernet's training time (both run as one process on this 2-core
machine). Retraining costs the same in both arms (``--top`` networks each) and is reported
apart.

``--shard K/N`` trains only a share of the networks (run shards side by side, one thread
each) and writes no table; a run without it writes benchmarks/results/search_comparison.md
and .csv. Resumable per epoch, like the audit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lightseg_nas.config import arch_id, config_from_dict
from lightseg_nas.errors import DatasetMissing, UserError
from lightseg_nas.inference import evaluate_network, load_network
from lightseg_nas.presets import get_preset
from lightseg_nas.search import load_study_file, open_study
from lightseg_nas.search.final import retrain, spread
from lightseg_nas.search.pareto import hypervolume
from lightseg_nas.search.record import TrialRecord
from lightseg_nas.search.report import trials_dataframe
from lightseg_nas.scripts import Parser, add_retraining_protocol, check_reusable, count, existing_file, fail, guard_results, record_protocol, shard
from lightseg_nas.train import settings_from
from lightseg_nas.speed import use_threads

REPO = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "results"
# what must match for a network trained earlier in --runs to be reused
# the objectives of the hypervolume: fg IoU (maximised), then the costs (minimised)
OBJECTIVES = ["final_val_fg_iou", "params", "latency_ratio"]


def hypervolume_gain(points: np.ndarray, published: np.ndarray, scale: np.ndarray) -> float:
    """Hypervolume of points + published minus that of published alone; rows are
    (fg IoU, cost, ...); fg IoU is maximised, costs are divided by ``scale`` and minimised;
    reference point 1.1 in every normalised objective."""

    def normalised(rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=float).reshape(-1, 1 + len(scale))
        return np.column_stack([1 - rows[:, 0], rows[:, 1:] / scale])

    reference = np.full(1 + len(scale), 1.1)
    both = normalised(np.vstack([published, points])) if len(points) else normalised(published)
    return float(hypervolume(both, reference) - hypervolume(normalised(published), reference))


def common_params(frame: pd.DataFrame) -> int:
    """The smallest parameter count that every arm's retrained front reaches."""
    return int(frame[frame.arm != "published"].groupby("arm").params.min().max())


def gains(frame: pd.DataFrame, arm: str, published: np.ndarray, scale: np.ndarray) -> dict:
    """An arm's hypervolume gain, and two checks of how much it rests on few points: the gain
    without the one point that adds most, and the gain of its points at or above
    common_params."""
    points = frame[frame.arm == arm][OBJECTIVES].to_numpy(float)
    common = common_params(frame)
    return {
        "hypervolume_gain": hypervolume_gain(points, published, scale),
        "gain_without_best_point": min((hypervolume_gain(np.delete(points, i, 0), published, scale) for i in range(len(points))), default=0.0),
        "gain_from_common_params": hypervolume_gain(points[points[:, 1] >= common], published, scale),
    }


def trained(config, data: str, out: Path, settings, eval_size: int) -> dict:
    """A retrained network's scores (trained before, by ``retrain``)."""
    model, preprocessing, record = load_network(out / "model.pt")  # its protocol was checked before any training (check_reusable)
    final = evaluate_network(model, preprocessing, data, "val", eval_size, settings.val_fraction, settings.val_seed, progress=False)
    return {"final_val_fg_iou": final["fg_iou"], "retrain_minutes": record["train_seconds"] / 60}


def search_hours(study, study_file) -> float:
    """The search's machine time: its trials' wall times, plus the supernet's training."""
    seconds = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials if t.datetime_start and t.datetime_complete)
    if study_file.fidelity.mode == "supernet":
        seconds += float(torch.load(study_file.supernet_path(), weights_only=True, map_location="cpu")["train_seconds"])
    return seconds / 3600


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("rung_study", nargs="?", type=existing_file, default=REPO / "studies" / "eg1800_extremec3.toml")
    parser.add_argument("supernet_study", nargs="?", type=existing_file, default=REPO / "studies" / "eg1800_extremec3_supernet.toml")
    parser.add_argument("--top", type=count(1, 1000), default=6)
    add_retraining_protocol(parser, REPO / "runs" / "audit")
    parser.add_argument("--threads", type=count(1, 1024), default=1)
    parser.add_argument("--shard", type=shard, default=None, help="K/N: train only this share of the networks, write no table")
    parser.add_argument("--workers", type=count(1, 64), default=1, help="train N networks at a time, --threads each (final's runner)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.protocol = {
        "rung_study": args.rung_study.name, "supernet_study": args.supernet_study.name, "top": args.top, "epochs": args.epochs,
        "size": args.size, "eval_size": args.eval_size, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
    }
    if args.shard is None:
        guard_results(args.out, "search_comparison", args.protocol)
    use_threads(args.threads)

    arms, jobs = {}, []
    for arm, path in (("rungs", args.rung_study), ("supernet", args.supernet_study)):
        try:
            study_file = load_study_file(path)
            settings = settings_from(
                epochs=args.epochs, size=args.size, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                val_fraction=study_file.data.val_fraction, val_seed=study_file.data.val_seed,
            )
        except DatasetMissing as error:  # EG1800 is not on this machine
            print(f"skipped: {error}")
            return
        except UserError as error:
            fail(str(error))
        mode = "rungs" if arm == "rungs" else "supernet"
        if study_file.fidelity.mode != mode or (arm == "rungs" and not study_file.fidelity.enabled):
            fail(f"{path}: is a study with [fidelity] mode = {study_file.fidelity.mode!r}; the {arm} arm needs a {mode} study (arguments: RUNG_STUDY SUPERNET_STUDY)")
        if arm == "supernet" and not study_file.supernet_path().exists():
            fail(f"{study_file.supernet_path()}: the supernet study's supernet is not here (not kept in git): run lightseg-nas search {path} to train it first")
        study = open_study(study_file, create=False)
        table = trials_dataframe(study)
        front = table[table.on_front & table.baseline.isna()]
        records = {t.number: TrialRecord.of(t) for t in study.trials}
        chosen = spread(front, args.top)
        arms[arm] = (study_file, study, chosen)
        jobs += [(arm, config_from_dict(records[int(n)].config)) for n in chosen.number]
        data = study_file.data_spec()
        num_classes = study_file.study.num_classes
    published = {name: get_preset(name).model_copy(update={"num_classes": num_classes}) for name in ("extremec3net", "sinet")}
    jobs += [("published", config) for config in published.values()]
    folder = {arch_id(config): args.runs / (f"reference-{name}" if name == "sinet" else arch_id(config)) for name, config in published.items()}
    for _, config in jobs:  # every reuse checked before any training
        check_reusable(folder.get(arch_id(config), args.runs / arch_id(config)) / "model.pt", settings)
    k, n = args.shard or (1, 1)
    # every network trained first, on final's runner (resumable per epoch; --workers side by side)
    retrain(
        [(arch_id(config), config, folder.get(arch_id(config), args.runs / arch_id(config))) for index, (_, config) in enumerate(jobs) if index % n == k - 1],
        settings, data, args.workers, args.threads,
    )
    if args.shard is not None:
        return

    rows = []
    for arm, (study_file, study, chosen) in arms.items():
        for _, trial in chosen.iterrows():
            config = config_from_dict(TrialRecord.of(study.trials[int(trial.number)]).config)
            rows.append({
                "arm": arm, "trial": int(trial.number), "arch_id": trial.arch_id, "params": int(trial.params),
                "latency_ratio": float(trial.latency_ratio), "search_val_fg_iou": float(trial.val_fg_iou),
                **trained(config, data, args.runs / arch_id(config), settings, args.eval_size),
            })
    rung_table = trials_dataframe(arms["rungs"][1])
    for name, config in published.items():
        # latency as the rung study measured it (ExtremeC3Net is its baseline; SINet is the reference, 1.0 by definition)
        row = rung_table[rung_table.baseline == name]
        latency = float(row.latency_ratio.iloc[0]) if len(row) else 1.0
        params = sum(p.numel() for p in load_network(folder[arch_id(config)] / "model.pt")[0].parameters())
        rows.append({"arm": "published", "trial": None, "arch_id": f"{name} {arch_id(config)}", "params": params, "latency_ratio": latency,
                     "search_val_fg_iou": None, **trained(config, data, folder[arch_id(config)], settings, args.eval_size)})
    frame = pd.DataFrame(rows)
    scale = frame[OBJECTIVES[1:]].max().to_numpy(float)
    base = frame[frame.arm == "published"][OBJECTIVES].to_numpy(float)
    summary = pd.DataFrame([
        {"arm": arm, "trials": len(study.trials), "search_hours": search_hours(study, study_file),
         "retrained": int((frame.arm == arm).sum()), "retrain_hours": frame[frame.arm == arm].retrain_minutes.sum() / 60,
         **gains(frame, arm, base, scale)}
        for arm, (study_file, study, chosen) in arms.items()
    ])
    summary["gain_per_hour"] = summary.hypervolume_gain / summary.search_hours
    write(frame, summary, args)


def per_hour(summary: pd.DataFrame, column: str) -> float:
    """Supernet arm over rung arm, in `column` per search hour (nan when the rung arm has none)."""
    rate = summary.set_index("arm")[column] / summary.set_index("arm").search_hours
    return rate["supernet"] / rate["rungs"] if rate["rungs"] > 0 else float("nan")


def write(frame: pd.DataFrame, summary: pd.DataFrame, args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "search_comparison.csv", index=False)
    ratio = summary.set_index("arm").gain_per_hour
    lines = [
        "# Supernet search against rung search",
        "",
        f"`{args.rung_study.name}` (rungs) against `{args.supernet_study.name}` (supernet fidelity). Up to {args.top} front members of each, "
        f"spread over the parameter range, and both published networks, trained from scratch for {args.epochs} epochs at {args.size} px "
        f"(batch {args.batch_size}, lr {args.lr:g}, seed {args.seed}) and scored on the validation split at {args.eval_size} px (per-image "
        "foreground IoU, in %). Hypervolume in normalised objectives (1 - fg IoU, parameters and latency ratio to SINet each divided by "
        "its largest value here; reference point 1.1), as a gain over the published networks alone. Search hours: the trials' wall time "
        "plus the supernet's training, one process on a 2-core machine. Written by `python benchmarks/search_comparison.py`.",
        "",
        frame.assign(final_val_fg_iou=frame.final_val_fg_iou * 100, search_val_fg_iou=frame.search_val_fg_iou * 100).to_markdown(index=False, floatfmt=".4g"),
        "",
        summary.to_markdown(index=False, floatfmt=".4g"),
        "",
        f"Gain per hour, supernet over rungs: {ratio['supernet'] / ratio['rungs']:.2f}x (target 2x)." if ratio["rungs"] > 0 else
        "The rung search's retrained front adds no hypervolume over the published networks, so no ratio is defined.",
        "",
        "gain_without_best_point: the gain with the arm's most valuable point left out. gain_from_common_params: the gain of the arm's "
        f"points at or above {common_params(frame):,} parameters, the smallest count every arm's retrained front reaches (so both arms cover "
        "the same parameter range). Per hour, supernet over rungs, on these: "
        + ", ".join(f"{column} {per_hour(summary, column):.2f}x" for column in ("gain_without_best_point", "gain_from_common_params")) + ".",
        "",
    ]
    (args.out / "search_comparison.md").write_text("\n".join(lines))
    record_protocol(args.out, "search_comparison", args.protocol)


if __name__ == "__main__":
    main()
