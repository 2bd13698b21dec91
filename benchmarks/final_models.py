"""Final models of a study: chosen networks trained with the study's final recipe, all scored
the same way, in one table.

    python benchmarks/final_models.py [STUDY] --train NAME [NAME ...] [--seed S] [--threads 1]
    python benchmarks/final_models.py [STUDY]                  # the table only

STUDY is a study file (default ``studies/eg1800_extremec3_r128.toml``); its ``final_recipe``
(e.g. ``final``: 30 epochs at 224 px), validation split, class count and data are used. A
NAME is a published network (``extremec3net``, ``sinet``) or a trial's ``arch_id`` from the
study, optionally with ``-kd``: distilled from the released SINet (``--teacher-weights``,
default ``../shared/reference/official/SINet.pth``; that teacher was trained with extra
portrait data, and every ``-kd`` model file records it). Every network trains with the same
recipe and seed on the same training list minus the same validation split, with the study's
class count (one foreground logit for the EG1800 studies, the published networks included).

Each training runs in RUNS/<name>-seed<S>/ (a checkpoint every epoch: a stop loses at most
one epoch and the same command continues it; a finished model.pt there is reused after its
protocol is checked) and its model file is copied to ``studies/<study>-final/<name>.pt``
(seed 0) or ``<name>-seed<S>.pt``. To use both cores, run two commands side by side, each
with ``--threads 1`` (e.g. under ``taskset -c 0`` and ``taskset -c 1``).

The table (``studies/<study>-final/results.md`` and ``.csv``, rewritten at the end of every
run without ``--no-table``) scores every model file in that folder: parameters,
conv-only MACs at 224 (convolutions and linear layers only), latency as a ratio to SINet
(timed round-robin in one run, batch 1, the study's [cost] backend and threads; run the
table on an idle machine), and the papers' metric on the validation split: per-image
foreground IoU at 224x224, with mIoU and boundary F, in %. train_minutes is the training's
wall time; cpu_minutes multiplies it by the threads it used.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pandas as pd
import torch

from lightseg_nas.config import arch_id, config_from_dict
from lightseg_nas.cost import count_macs, count_params, measure_latency
from lightseg_nas.errors import DatasetMissing, UserError
from lightseg_nas.families import build_model
from lightseg_nas.inference import evaluate_network, load_network
from lightseg_nas.modelfile import load_record
from lightseg_nas.presets import get_preset
from lightseg_nas.search import load_study_file, open_study
from lightseg_nas.search.record import TrialRecord
from lightseg_nas.settings import changed_settings
from lightseg_nas.speed import SPEED_FIELDS
from lightseg_nas.scripts import Parser, count, existing_file, fail, seed
from lightseg_nas.train import settings_from, train_to_file

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = ("extremec3net", "sinet")
# Settings that change how fast a run goes, or only name its values, not what it computes: a
# reused run folder must match every other setting.
NOT_PROTOCOL = (*SPEED_FIELDS, "device", "recipe")
PARAMS_LIMIT = 37_738  # ExtremeC3Net's published parameter count


def parse_name(name: str) -> tuple[str, bool]:
    base, kd = (name[:-3], True) if name.endswith("-kd") else (name, False)
    if base not in PUBLISHED and not re.fullmatch(r"[0-9a-f]{12}", base):
        fail(f"{name!r}: not a published network ({', '.join(PUBLISHED)}) or a 12-hex-digit arch_id (optionally with -kd)")
    return base, kd


def config_for(base: str, study, num_classes: int):
    if base in PUBLISHED:
        return get_preset(base).model_copy(update={"num_classes": num_classes})
    for trial in study.trials:
        record = TrialRecord.of(trial)
        if record.config and record.arch_id == base:
            return config_from_dict(record.config)
    fail(f"{base}: no trial of study {study.study_name} has this arch_id")


def file_name(name: str, seed: int) -> str:
    return f"{name}.pt" if seed == 0 else f"{name}-seed{seed}.pt"


def planned(name: str, args, study_file, study, final_dir: Path):
    """(config, settings, run folder) of one NAME, after checking, before any training, that a
    finished run there and the committed model file it would replace hold this network
    trained with this protocol (a smoke run with --max-steps never replaces a real one)."""
    base, kd = parse_name(name)
    config = config_for(base, study, study_file.study.num_classes)
    teacher = dict(teacher="sinet") if kd else {}
    settings = settings_from(study_file.study.final_recipe, seed=args.seed, val_fraction=study_file.data.val_fraction,
                             val_seed=study_file.data.val_seed, max_steps=args.max_steps, **teacher)
    out = args.runs / f"{name}-seed{args.seed}"
    for path, hint in ((out / "model.pt", "another --runs folder"), (final_dir / file_name(name, args.seed), "--final-dir elsewhere")):
        if path.exists():
            record = load_record(path)
            differs = changed_settings(record["training"], settings, ignore=NOT_PROTOCOL)
            if differs or record["arch_id"] != arch_id(config):
                fail(f"{path}: holds another network or protocol ({', '.join(differs) or 'arch_id'}); give {hint}")
    return config, settings, out


def train_one(name: str, args, study_file, study, final_dir: Path) -> None:
    base, kd = parse_name(name)
    config, settings, out = planned(name, args, study_file, study, final_dir)
    if not (out / "model.pt").exists():
        print(f"training {name} (seed {args.seed}, {study_file.study.final_recipe} recipe) in {out}", flush=True)
        train_to_file(config, study_file.data_spec(), out, settings, resume=(out / "checkpoint.pt").exists(), progress=sys.stderr.isatty(),
                      teacher_weights=args.teacher_weights if kd else None)
    final_dir.mkdir(parents=True, exist_ok=True)
    target = final_dir / file_name(name, args.seed)
    shutil.copyfile(out / "model.pt", target.with_suffix(".tmp"))
    target.with_suffix(".tmp").replace(target)
    record_threads(final_dir, target.name, args.threads)


def read_ledger(final_dir: Path) -> dict:
    path = final_dir / "trainings.json"
    return json.loads(path.read_text()) if path.exists() else {}


def record_threads(final_dir: Path, name: str, threads: int) -> None:
    """Add one entry to trainings.json under a lock (trainings run side by side), written whole
    and atomically."""
    with open(final_dir / ".trainings.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ledger = {**read_ledger(final_dir), name: {"threads": threads}}
        tmp = final_dir / f"trainings.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(ledger, indent=1, sort_keys=True) + "\n")
        tmp.replace(final_dir / "trainings.json")


def table(study_file, final_dir: Path, ledger: dict) -> pd.DataFrame:
    data, cost = study_file.data_spec(), study_file.cost
    rows, models = [], {}
    for path in sorted(final_dir.glob("*.pt")):
        model, preprocessing, record = load_network(path)
        name = re.sub(r"-seed\d+$", "", path.stem)
        metrics = evaluate_network(model, preprocessing, data, "val", 224, record["training"]["val_fraction"], record["training"]["val_seed"], progress=False)
        threads = ledger.get(path.name, {}).get("threads")
        rows.append({
            "model": name, "file": path.name, "arch_id": record["arch_id"], "seed": record["training"]["seed"],
            "teacher": "SINet (released)" if record.get("teacher") else "",
            "params": count_params(model), "macs_conv_only_m": count_macs(model, 224, ("conv_only",))["conv_only"].macs / 1e6,
            "val_fg_iou_224": metrics["fg_iou"] * 100, "val_miou_224": metrics["miou"] * 100, "val_boundary_f_224": metrics["boundary_f"] * 100,
            "train_minutes": record["train_seconds"] / 60, "cpu_minutes": record["train_seconds"] / 60 * threads if threads else None,
        })
        models.setdefault(record["arch_id"], model)
    if not rows:
        return pd.DataFrame()
    reference = build_model(get_preset(cost.reference).model_copy(update={"num_classes": study_file.study.num_classes})).eval()
    timing = measure_latency({"reference": reference, **models}, size=cost.size, threads=cost.threads, repeats=max(30, cost.repeats), backend=cost.backend)
    frame = pd.DataFrame(rows).sort_values(["model", "seed"], kind="stable").reset_index(drop=True)
    frame.insert(7, "latency_ratio", [timing[a].median_ms / timing["reference"].median_ms for a in frame.arch_id])
    return frame


def spread(row) -> str:
    """A network's range over its seeds, in points, or 'one seed'."""
    return f"{row.val_fg_iou_224_max - row.val_fg_iou_224_min:.2f}" if "," in row.seeds else "n/a (one seed)"


def summary(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    by_model = frame.groupby("model", sort=False).agg(
        params=("params", "first"), latency_ratio=("latency_ratio", "first"), seeds=("seed", lambda s: ",".join(map(str, sorted(s)))),
        val_fg_iou_224_mean=("val_fg_iou_224", "mean"), val_fg_iou_224_min=("val_fg_iou_224", "min"), val_fg_iou_224_max=("val_fg_iou_224", "max"),
    ).reset_index()
    lines = []
    base = by_model[by_model.model == "extremec3net"]
    searched = by_model[~by_model.model.str.replace("-kd", "").isin(PUBLISHED) & (by_model.params <= PARAMS_LIMIT)]
    if len(base) and len(searched):
        c3 = base.iloc[0]
        for _, row in searched.iterrows():
            kd = " (distilled; ExtremeC3Net here is not)" if row.model.endswith("-kd") else ""
            lines.append(
                f"- {row.model}{kd} ({row.params:,} params, seeds {row.seeds}): {row.val_fg_iou_224_mean - c3.val_fg_iou_224_mean:+.2f} points against "
                f"ExtremeC3Net (seeds {c3.seeds}) in seed means, target +0.5; seed spread {spread(row)} here, {spread(c3)} for ExtremeC3Net."
            )
    sinet = by_model[by_model.model == "sinet"]
    fast = by_model[(by_model.latency_ratio <= 0.5) & ~by_model.model.isin(PUBLISHED)]
    if len(sinet):
        for _, row in fast.iterrows():
            lines.append(f"- {row.model} at {row.latency_ratio:.2f}x SINet's latency: {row.val_fg_iou_224_mean - sinet.iloc[0].val_fg_iou_224_mean:+.2f} points against SINet (target within 0.5).")
    return by_model, lines


def write(frame: pd.DataFrame, study_file, final_dir: Path) -> None:
    by_model, lines = summary(frame)
    frame.to_csv(final_dir / "results.csv", index=False)
    recipe = study_file.study.final_recipe
    text = [
        f"# Final models of {study_file.study.name}",
        "",
        f"Trained with the `{recipe}` recipe ({json.dumps(settings_from(recipe).model_dump(include={'epochs', 'size', 'batch_size', 'lr', 'schedule', 'loss'}))}), "
        f"on the study's data (`{study_file.data.spec}`) minus its validation split ({study_file.data.val_fraction:g}, seed {study_file.data.val_seed}); "
        "an EG1800 test list is never read. Scored on that validation split with the papers' protocol: per-image foreground IoU at 224x224 (the papers' \"mIoU\"), mIoU over "
        "background and foreground, boundary F, in %. Parameters and conv-only MACs (convolutions and linear layers; batch norm, activations, "
        "pooling and resizing left out) at 224; latency_ratio: median batch-1 latency over SINet's, timed round-robin in one run "
        f"({study_file.cost.backend}, {study_file.cost.threads} thread(s)). -kd: distilled from the released SINet, which was trained with extra "
        "portrait data. train_minutes: wall time on this 2-core machine; cpu_minutes: times the threads used. Run-to-run noise of the "
        "validation fg IoU (other seeds) is 0.15-0.2 points. Written by `python benchmarks/final_models.py`.",
        "",
        frame.to_markdown(index=False, floatfmt=".4g"),
        "",
        "Per network, over its seeds:",
        "",
        by_model.to_markdown(index=False, floatfmt=".4g"),
        "",
        *(lines or ["No searched network at or under 37,738 parameters has been trained yet, or ExtremeC3Net has not."]),
        "",
    ]
    (final_dir / "results.md").write_text("\n".join(text))


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("study", nargs="?", type=existing_file, default=REPO / "studies" / "eg1800_extremec3_r128.toml")
    parser.add_argument("--train", nargs="*", default=[], metavar="NAME")
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--threads", type=count(1, 1024), default=1)
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "final")
    parser.add_argument("--final-dir", type=Path, default=None, help="where the model files and the table go (default: STUDY-final beside the study file)")
    parser.add_argument("--teacher-weights", type=Path, default=REPO.parent / "shared" / "reference" / "official" / "SINet.pth")
    parser.add_argument("--max-steps", type=count(1, 10**9), default=None, help="stop each training after this many steps (smoke tests)")
    parser.add_argument("--no-table", action="store_true", help="train only (the table times latency: write it on an idle machine)")
    args = parser.parse_args()
    try:
        study_file = load_study_file(args.study)
        for name in args.train:
            parse_name(name)
    except DatasetMissing as error:  # EG1800 is not on this machine
        print(f"skipped: {error}")
        return
    except UserError as error:
        fail(str(error))
    if not study_file.study.final_recipe:
        fail(f"{args.study}: names no final_recipe")
    if any(parse_name(name)[1] for name in args.train) and not Path(args.teacher_weights).is_file():
        fail(f"--teacher-weights {args.teacher_weights}: no such file (the released SINet weights, needed by the -kd names; not kept in git)")
    torch.set_num_threads(args.threads)
    final_dir = args.final_dir or study_file.folder / f"{study_file.path.stem}-final"
    if args.train:
        study = open_study(study_file, create=False)
        args.runs = args.runs / study_file.study.name
        try:
            for name in args.train:  # every name and every file it would replace, before any training
                planned(name, args, study_file, study, final_dir)
        except UserError as error:
            fail(str(error))
        for name in args.train:
            train_one(name, args, study_file, study, final_dir)
    if args.no_table or not final_dir.is_dir():
        return
    frame = table(study_file, final_dir, read_ledger(final_dir))
    if len(frame):
        write(frame, study_file, final_dir)
        print((final_dir / "results.md").read_text())


if __name__ == "__main__":
    main()
