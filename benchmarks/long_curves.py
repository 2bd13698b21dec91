"""How far from convergence is a recipe? Chosen networks trained with the recipe's settings
but many more epochs (the schedule stretched over them), their learning curves, and whether
the recipe's own length ranks them as the long runs do.

    python benchmarks/long_curves.py [STUDY] [--networks sinet 7825f0dea1a9] [--recipe final]
                                     [--epochs 100] [--seed 0] [--train | --no-train]
                                     [--threads 1] [--runs runs/curves] [--out benchmarks/results]

Each network (a published one or an arch id of the study's trials) is trained on the study's
data minus its validation split, in RUNS/STUDY/NAME-seedS-EPOCHSep-RECIPE (a checkpoint
every epoch: a second call continues it; two calls with different --networks train side by
side, one thread each). With --no-train it only tabulates. The table is written from what
exists, finished or not: the trainer's per-epoch validation fg IoU (per-image foreground IoU
at the recipe's size on the validation split, the papers' "mIoU" at 224), from the model
file or the checkpoint, beside the same network and seed trained with the recipe itself
(STUDY-final/NAME.pt from `lightseg-nas final`, its trainer's last-epoch figure) where that
exists. A network's committed epochs (the CSV) stay where its run folder holds fewer (a
clone without the checkpoints). Writes OUT/long_curves_STUDY.md and .csv (with .protocol.json beside them; a rerun
of another recipe, length or seed is refused rather than replacing them: give --out).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd
import torch

from lightseg_nas.errors import UserError
from lightseg_nas.families import build_model
from lightseg_nas.scripts import Parser, count, existing_file, fail, guard_results, seed, write_results
from lightseg_nas.search import load_study_file, open_study
from lightseg_nas.search.final import NAME_PATTERN, _config_for, file_name, final_folder
from lightseg_nas.settings import RECIPES, changed_settings
from lightseg_nas.speed import use_threads

REPO = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "results"
COLUMNS = ["network", "epoch", "val_fg_iou", "seconds"]


def run_folder(runs: Path, study: str, name: str, seed_: int, epochs: int, recipe: str) -> Path:
    return Path(runs) / study / f"{name}-seed{seed_}-{epochs}ep-{recipe}"


def history_of(folder: Path, settings, config) -> list[dict]:
    """The per-epoch rows of a run folder (none yet: empty), after checking it holds this
    network trained with this protocol."""
    from lightseg_nas.config import arch_id, config_from_dict
    from lightseg_nas.modelfile import load_record, load_state_file
    from lightseg_nas.train import NOT_PROTOCOL, protocol_differences

    if (folder / "model.pt").exists():
        differ = protocol_differences(folder / "model.pt", settings, config)
        if differ:
            raise UserError(f"{folder / 'model.pt'}: another network or protocol ({', '.join(differ)}); give another --runs")
        return list(load_record(folder / "model.pt")["history"])
    if (folder / "checkpoint.pt").exists():
        state = load_state_file(folder / "checkpoint.pt", "checkpoint")
        stored = config_from_dict(state.get("config") or {}, f"{folder / 'checkpoint.pt'} (config)")
        differ = changed_settings(state.get("settings") or {}, settings, ignore=NOT_PROTOCOL)
        differ += [f"network {arch_id(stored)} (now {arch_id(config)})"] if arch_id(stored) != arch_id(config) else []
        if differ:
            raise UserError(f"{folder / 'checkpoint.pt'}: written with another protocol ({', '.join(differ)}); give another --runs")
        return list(state["history"])
    return []


def recipe_score(model_file: Path, settings) -> float | None:
    """The trainer's last-epoch validation fg IoU of the network trained with the recipe
    itself, if that model file exists and was trained with it."""
    from lightseg_nas.modelfile import load_record
    from lightseg_nas.train import protocol_differences

    if not model_file.exists() or protocol_differences(model_file, settings):
        return None
    return load_record(model_file)["history"][-1]["val_fg_iou"]


def ranking_line(summary: pd.DataFrame, recipe: str, epochs: int) -> str:
    done = summary[summary.epochs_done == epochs].dropna(subset=["val_fg_iou_recipe"])
    if len(done) < 2:
        return f"Ranking: not yet comparable ({len(done)} of {len(summary)} networks have finished {epochs} epochs and have a `{recipe}` model file)."
    long_order = list(done.sort_values("val_fg_iou_last", ascending=False).network)
    short_order = list(done.sort_values("val_fg_iou_recipe", ascending=False).network)
    same = "the same order" if long_order == short_order else "a different order"
    return (
        f"Ranking: the `{recipe}` recipe ({RECIPES[recipe]['epochs']} epochs) puts them in {same} as {epochs} epochs "
        f"({' > '.join(short_order)} against {' > '.join(long_order)}); run-to-run noise is 0.15-0.2 points."
    )


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("study", nargs="?", type=existing_file, default=REPO / "studies" / "eg1800_hybrid_r128.toml")
    parser.add_argument("--networks", nargs="+", default=["sinet"])
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="final")
    parser.add_argument("--epochs", type=count(1, 10_000), default=100)
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--train", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--threads", type=count(1, 1024), default=1)
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "curves")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    import optuna

    from lightseg_nas.train import settings_from, train_to_file

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    for path, flag in ((args.out, "--out"), (args.runs, "--runs")):
        if path.exists() and not path.is_dir():
            fail(f"{flag} {path}: not a folder")
    for name in args.networks:
        if not re.fullmatch(NAME_PATTERN, name) or name.endswith("-kd"):
            fail(f"--networks {name!r}: give published networks (extremec3net, sinet) or 12-hex-digit arch ids of the study")
    try:
        study_file = load_study_file(args.study)
        study = open_study(study_file, create=False)
        configs = {name: _config_for(name, study, study_file.study.num_classes) for name in args.networks}
        split = {"val_fraction": study_file.data.val_fraction, "val_seed": study_file.data.val_seed, "seed": args.seed}
        long_settings = settings_from(args.recipe, epochs=args.epochs, **split)
        recipe_settings = settings_from(args.recipe, **split)
        if args.epochs <= recipe_settings.epochs:
            fail(f"--epochs {args.epochs}: give more than the recipe's {recipe_settings.epochs}")
        name = f"long_curves_{study_file.study.name}"
        protocol = {"study": args.study.name, "recipe": args.recipe, "epochs": args.epochs, "seed": args.seed}
        guard_results(args.out, name, protocol)
        folders = {n: run_folder(args.runs, study_file.study.name, n, args.seed, args.epochs, args.recipe) for n in args.networks}
        for network in args.networks:  # every folder checked before any training
            history_of(folders[network], long_settings, configs[network])
        if args.train:
            use_threads(args.threads)
            for network in args.networks:
                if not (folders[network] / "model.pt").exists():
                    print(f"training {network} for {args.epochs} epochs ({folders[network]})", flush=True)
                    resume = (folders[network] / "checkpoint.pt").exists()
                    train_to_file(configs[network], study_file.data_spec(), folders[network], long_settings, resume=resume, progress=sys.stderr.isatty())
        # the committed table's epochs of a network stay where its run folder has fewer (a
        # clone without the checkpoints, a run restarted elsewhere): a rerun never loses them
        kept = pd.read_csv(args.out / f"{name}.csv") if (args.out / f"{name}.csv").exists() else pd.DataFrame(columns=COLUMNS)
        rows, summary = [], []
        final_dir = final_folder(study_file)
        for network in args.networks:
            history = history_of(folders[network], long_settings, configs[network])
            mine = [{"network": network, "epoch": row["epoch"], "val_fg_iou": 100 * row["val_fg_iou"], "seconds": row["seconds"]} for row in history]
            committed = kept[kept.network == network].to_dict(orient="records")
            mine = committed if len(committed) > len(mine) else mine
            rows += mine
            score = recipe_score(final_dir / file_name(network, args.seed), recipe_settings)
            at = {row["epoch"]: row["val_fg_iou"] for row in mine}
            summary.append({
                "network": network, "params": sum(p.numel() for p in build_model(configs[network]).parameters()),
                "epochs_done": len(mine), "finished": len(mine) == args.epochs,
                f"val_fg_iou_epoch{recipe_settings.epochs}": at.get(recipe_settings.epochs),
                "val_fg_iou_last": at.get(len(mine)), "val_fg_iou_best": max(at.values()) if at else None,
                "val_fg_iou_recipe": None if score is None else 100 * score,
                "cpu_minutes": sum(row["seconds"] for row in mine) / 60 * args.threads,
            })
    except UserError as error:
        fail(str(error))
    frame, table = pd.DataFrame(rows, columns=COLUMNS), pd.DataFrame(summary)
    # what the longer training gained, once it is done
    table["gain_over_recipe"] = (table.val_fg_iou_last - table.val_fg_iou_recipe).where(table.finished)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / f"{name}.csv", index=False)
    curve = frame.pivot(index="epoch", columns="network", values="val_fg_iou") if len(frame) else pd.DataFrame()
    shown = curve[(curve.index % 5 == 0) | (curve.index == 1) | (curve.index == curve.index.max())] if len(curve) else curve
    text = "\n".join([
        f"# Long learning curves: {study_file.study.name}, `{args.recipe}` recipe stretched to {args.epochs} epochs",
        "",
        f"Command: `python benchmarks/long_curves.py {args.study.relative_to(REPO) if args.study.is_relative_to(REPO) else args.study} "
        f"--networks {' '.join(args.networks)} --recipe {args.recipe} --epochs {args.epochs} --seed {args.seed}` (torch {torch.__version__}, CPU).",
        f"Settings: the `{args.recipe}` recipe ({RECIPES[args.recipe]}) with {args.epochs} epochs (warm-up epoch, then the cosine over all of them), "
        f"seed {args.seed}, the study's data minus its validation split ({study_file.data.val_fraction:g}, seed {study_file.data.val_seed}). "
        f"val fg IoU: the trainer's per-epoch figure, per-image foreground IoU at {long_settings.size}x{long_settings.size} on the validation split "
        f"(the papers' \"mIoU\"), in %. val_fg_iou_recipe: the same network and seed trained with the recipe itself "
        f"({recipe_settings.epochs} epochs; `{final_dir.name}/`), its last epoch. cpu_minutes: summed epoch times x {args.threads} thread(s). "
        "A run still going shows the epochs it has done. Run-to-run noise is 0.15-0.2 points.",
        "",
        table.to_markdown(index=False, floatfmt=".2f"),
        "",
        ranking_line(table, args.recipe, args.epochs),
        "",
        "Validation fg IoU by epoch (every 5th, the first and the last; all epochs in the CSV):",
        "",
        shown.to_markdown(floatfmt=".2f") if len(shown) else "(no epoch finished yet)",
        "",
    ])
    write_results(args.out, name, text, protocol)


if __name__ == "__main__":
    main()
