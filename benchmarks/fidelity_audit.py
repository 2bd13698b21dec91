"""Fidelity audit: do the search's cheap signals rank networks the way long training does?

    python benchmarks/fidelity_audit.py [STUDY] [--count 12] [--epochs 15] [--size 160]
                                        [--eval-size 224] [--runs runs/audit] [--threads 2]
                                        [--supernet FILE] [--shard K/N] [--workers N]
                                        [--references sinet]

Picks ``--count`` architectures of a finished study (by default the committed
``studies/eg1800_extremec3.toml``): every baseline trial, then the full-fidelity front,
then dominated full-fidelity trials spread over the parameter range. Trains each from
scratch with one long protocol (same seed, same training list minus the same validation
split as the study) and scores it at ``--eval-size`` on that validation split (per-image
foreground IoU, the papers' "mIoU"). Then, against that final figure, Kendall's tau and
Spearman's rho of each cheap signal the search used: the value after each rung, each
zero-cost proxy, and the parameter count alone (the baseline a cheap signal must beat), and
how many of the final top 3 each signal puts in its own top 3. With ``--supernet FILE`` (a
supernet of the study's space trained on the study's data and training split), the score of
each audited network with the supernet's weights and recalibrated batch norm is one more
signal: the weight-sharing fidelity's ranking against stand-alone training.

Networks are trained on ``lightseg-nas final``'s runner (lightseg_nas/search/final.py):
``--workers 2 --threads 1`` trains two at a time, each worker claiming the next untrained
network. Or run ``--shard 1/2`` and ``--shard 2/2`` side by side (one thread
each): a shard trains its share of the networks (shares balanced by the study's measured
latency) and writes no table; a run without ``--shard`` afterwards reads the finished model
files back and writes the table.

``--references`` names published networks outside the study's space (by default SINet for
an ``extremec3`` study) trained with the same protocol and listed for comparison; having no
cheap signals, they are left out of every correlation.

Resumable: each network trains under RUNS/<arch_id>/ with a checkpoint every epoch (a stop
loses at most one epoch); finished networks are read back from their model files.
Writes benchmarks/results/fidelity_audit.md and fidelity_audit.csv after every network.
The trained networks of the committed results (15 epochs at 160 px) are kept as model files
in benchmarks/results/fidelity_audit_models/NAME.pt; to reuse them instead of training
again, place each as RUNS/NAME/model.pt:

    for f in benchmarks/results/fidelity_audit_models/*.pt; do
        mkdir -p runs/audit/$(basename $f .pt) && cp $f runs/audit/$(basename $f .pt)/model.pt; done
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from scipy.stats import kendalltau, spearmanr

from lightseg_nas.config import arch_id, config_from_dict
from lightseg_nas.errors import DatasetMissing, UserError
from lightseg_nas.inference import evaluate_network, load_network
from lightseg_nas.presets import get_preset
from lightseg_nas.search import load_study_file, open_study
from lightseg_nas.search.final import retrain, spread
from lightseg_nas.search.record import TrialRecord, rung_key
from lightseg_nas.search.report import trials_dataframe
from lightseg_nas.scripts import Parser, add_retraining_protocol, check_reusable, count, existing_file, fail, guard_results, record_protocol, shard
from lightseg_nas.train import settings_from
from lightseg_nas.speed import use_threads

REPO = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "results"


def choose(table: pd.DataFrame, count: int) -> pd.DataFrame:
    """Every baseline, then front members and the rest in equal parts, each spread over the
    parameter range. The rest includes trials the search stopped at a lower rung (they have
    fewer cheap signals; each signal is scored on the trials that have it)."""
    done = table[(table.state == "COMPLETE") & table.duplicate_of.isna()]
    baselines = done[done.baseline.notna()]
    front, dominated = done[done.on_front & done.baseline.isna()], done[~done.on_front & done.baseline.isna()]
    left = max(0, count - len(baselines))
    k_dominated = min(len(dominated), left // 2)
    k_front = min(len(front), left - k_dominated)
    k_dominated = min(len(dominated), left - k_front)
    return pd.concat([baselines, spread(front, k_front), spread(dominated, k_dominated)])


def shard_of(chosen: pd.DataFrame, part: tuple[int, int]) -> pd.DataFrame:
    """Part K of N of the chosen rows: longest-first greedy balance on measured latency
    (a stand-in for training cost), so the shards finish near one another."""
    k, n = part
    load, owner = [0.0] * n, {}
    cost = chosen.latency_ratio.fillna(chosen.latency_ratio.median())
    for index in cost.sort_values(ascending=False, kind="stable").index:
        lightest = load.index(min(load))
        owner[index], load[lightest] = lightest, load[lightest] + float(cost[index])
    return chosen[[owner[i] == k - 1 for i in chosen.index]]


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("study", nargs="?", type=existing_file, default=REPO / "studies" / "eg1800_extremec3.toml")
    parser.add_argument("--count", type=count(1, 1000), default=12)
    add_retraining_protocol(parser, REPO / "runs" / "audit")
    parser.add_argument("--threads", type=count(1, 1024), default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--supernet", type=existing_file, default=None, help="score every audited network with this supernet too")
    parser.add_argument("--shard", type=shard, default=None, help="K/N: train only this share of the networks, write no table")
    parser.add_argument("--workers", type=count(1, 64), default=1, help="train N networks at a time, --threads each (final's runner)")
    parser.add_argument("--references", nargs="*", default=None, help="presets trained alike for comparison (default: sinet)")
    args = parser.parse_args()
    references = ["sinet"] if args.references is None else args.references
    try:
        for name in references:
            get_preset(name)
        study_file = load_study_file(args.study)
        settings = settings_from(
            epochs=args.epochs, size=args.size, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
            val_fraction=study_file.data.val_fraction, val_seed=study_file.data.val_seed,
        )
    except DatasetMissing as error:  # EG1800 is not on this machine
        print(f"skipped: {error}")
        return
    except UserError as error:
        fail(str(error))
    protocol = {
        "study": args.study.name, "count": args.count, "epochs": args.epochs, "size": args.size, "eval_size": args.eval_size,
        "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "references": references,
        "supernet": args.supernet.name if args.supernet else None,
    }
    args.protocol = protocol
    if args.shard is None:
        guard_results(args.out, "fidelity_audit", protocol)
    use_threads(args.threads)
    study = open_study(study_file, create=False)
    table = trials_dataframe(study)
    chosen = choose(table, args.count)
    if args.shard is not None:
        chosen = shard_of(chosen, args.shard)
    data = study_file.data_spec()
    for arch in [*chosen.arch_id, *[f"reference-{name}" for name in references]]:
        check_reusable(args.runs / arch / "model.pt", settings)  # every reuse checked before any training
    records = {t.number: TrialRecord.of(t) for t in study.trials}
    references_of = {name: get_preset(name).model_copy(update={"num_classes": study_file.study.num_classes}) for name in references}
    # every network trained first, on final's runner (resumable per epoch; --workers side by side)
    retrain(
        [(trial.arch_id, config_from_dict(records[int(trial.number)].config), args.runs / trial.arch_id) for _, trial in chosen.iterrows()]
        + ([(f"reference-{name}", config, args.runs / f"reference-{name}") for name, config in references_of.items()] if args.shard is None else []),
        settings, data, args.workers, args.threads,
    )
    if args.shard is not None:
        return
    rungs = sorted({index for stored in records.values() for index in stored.rung_val_fg_iou})
    proxies = sorted({name for stored in records.values() for name in stored.proxies})
    rows = []
    supernet = None
    if args.supernet is not None:
        from lightseg_nas.supernet import load_supernet, recalibration_split, score

        from lightseg_nas.data import split_fingerprint

        try:
            supernet, supernet_record = load_supernet(args.supernet)
        except UserError as error:
            fail(str(error))
        if supernet_record["space"] != study_file.study.space:
            fail(f"{args.supernet}: a supernet of space {supernet_record['space']!r}, the study's is {study_file.study.space!r}")
        fingerprint = split_fingerprint(data, study_file.data.val_fraction, study_file.data.val_seed)
        if (supernet_record.get("data") or {}).get("fingerprint") != fingerprint:
            fail(f"{args.supernet}: was trained on other data or another split than the study's; give the study's own supernet")
        recalibration, supernet_val = recalibration_split(supernet_record, data)
    signals = [rung_key(i) for i in rungs] + [f"proxy_{n}" for n in proxies] + (["supernet_val_fg_iou"] if supernet is not None else []) + ["params"]
    for _, trial in chosen.iterrows():
        stored = records[int(trial.number)]
        out = args.runs / trial.arch_id
        model, preprocessing, record = load_network(out / "model.pt")
        final = evaluate_network(model, preprocessing, data, "val", args.eval_size, settings.val_fraction, settings.val_seed, progress=False)
        rows.append({
            "trial": int(trial.number), "arch_id": trial.arch_id, "baseline": trial.baseline, "on_front": bool(trial.on_front),
            "params": int(trial.params), "final_val_fg_iou": final["fg_iou"],
            "final_val_fg_iou_train_size": record["metrics"]["val_fg_iou"], "cpu_minutes": record["train_seconds"] / 60,
            **{rung_key(i): stored.rung_val_fg_iou.get(i) for i in rungs}, **{f"proxy_{n}": stored.proxies.get(n) for n in proxies},
        })
        if supernet is not None:
            rows[-1]["supernet_val_fg_iou"] = score(supernet, config_from_dict(stored.config), recalibration, supernet_val, supernet_record["preprocessing"])["fg_iou"]
        write(pd.DataFrame(rows), signals, args)
    for name, config in references_of.items():
        out = args.runs / f"reference-{name}"
        model, preprocessing, record = load_network(out / "model.pt")
        final = evaluate_network(model, preprocessing, data, "val", args.eval_size, settings.val_fraction, settings.val_seed, progress=False)
        rows.append({
            "trial": None, "arch_id": arch_id(config), "baseline": f"{name} (reference)", "on_front": False,
            "params": sum(p.numel() for p in model.parameters()), "final_val_fg_iou": final["fg_iou"],
            "final_val_fg_iou_train_size": record["metrics"]["val_fg_iou"], "cpu_minutes": record["train_seconds"] / 60,
        })
        write(pd.DataFrame(rows), signals, args)


def write(frame: pd.DataFrame, signals: list[str], args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "fidelity_audit.csv", index=False)
    lines = [
        "# Fidelity audit",
        "",
        f"{len(frame)} architectures of `{args.study.name}`, each trained from scratch for {args.epochs} epochs at {args.size} px "
        f"(batch {args.batch_size}, lr {args.lr:g}, seed {args.seed}), scored on the study's validation split at {args.eval_size} px "
        "(per-image foreground IoU, in %; final_val_fg_iou_train_size: the last epoch's figure at the training size). "
        "Rows marked reference are published networks outside the space, trained alike and left out of the correlations. "
        "Written by `python benchmarks/fidelity_audit.py`.",
        "",
        frame.assign(final_val_fg_iou=frame.final_val_fg_iou * 100, final_val_fg_iou_train_size=frame.final_val_fg_iou_train_size * 100)
        .to_markdown(index=False, floatfmt=".4g"),
        "",
    ]
    audited = frame[frame.trial.notna()]
    for target, label in (("final_val_fg_iou", f"at {args.eval_size} px"), ("final_val_fg_iou_train_size", f"at the training size, {args.size} px")):
        if len(audited) < 4:
            break
        agreement = []
        for signal in signals:
            present = audited[audited[signal].notna()]
            if len(present) < 4:
                continue
            values, final = present[signal].astype(float), present[target]
            tau, rho = kendalltau(values, final).statistic, spearmanr(values, final).statistic
            # of the final top 3 among these trials, how many this signal also ranks top 3
            hits = len(set(present.nlargest(3, target).arch_id) & set(present.loc[values.nlargest(3).index, "arch_id"]))
            # the baseline on the same trials: a signal seen only on promoted trials meets a narrower range
            params_tau = kendalltau(present.params.astype(float), final).statistic
            agreement.append({
                "signal": signal, "trials": len(present), "kendall_tau": tau, "spearman_rho": rho, "final_top3_in_its_top3": hits,
                "params_kendall_tau_same_trials": params_tau,
            })
        lines += [f"Agreement of each cheap signal with the final validation fg IoU {label}:", "", pd.DataFrame(agreement).to_markdown(index=False, floatfmt=".2f"), ""]
    (args.out / "fidelity_audit.md").write_text("\n".join(lines))
    record_protocol(args.out, "fidelity_audit", args.protocol)


if __name__ == "__main__":
    main()
