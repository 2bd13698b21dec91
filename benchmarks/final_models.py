"""Final models of a study: chosen networks trained with the study's final recipe, all scored
the same way, in one table.

    python benchmarks/final_models.py [STUDY] --train NAME [NAME ...] [--seed S] [--threads 1]
    python benchmarks/final_models.py [STUDY]                  # the table only

A client of the library's final job (``lightseg_nas/search/final.py``, the job behind
``lightseg-nas final``), kept for the committed results' commands: both choose, check, train
and score the same way.

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

import re
from pathlib import Path


from lightseg_nas.errors import DatasetMissing, UserError
from lightseg_nas.scripts import Parser, count, existing_file, fail, seed
from lightseg_nas.search import load_study_file, open_study
from lightseg_nas.search.final import (  # noqa: F401  (re-exported: the tests read them here)
    NAME_PATTERN, PUBLISHED, file_name, final_folder, plan_runs, read_ledger, record_threads, results_table, summary, train_runs, write_results,
)
from lightseg_nas.speed import use_threads

REPO = Path(__file__).resolve().parents[1]


def parse_name(name: str) -> tuple[str, bool]:
    if not re.fullmatch(NAME_PATTERN, name):
        fail(f"{name!r}: not a published network ({', '.join(PUBLISHED)}) or a 12-hex-digit arch_id (optionally with -kd)")
    return name.removesuffix("-kd"), name.endswith("-kd")


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
    for name in args.train:
        parse_name(name)
    try:
        study_file = load_study_file(args.study)
    except DatasetMissing as error:  # EG1800 is not on this machine
        print(f"skipped: {error}")
        return
    except UserError as error:
        fail(str(error))
    if not study_file.study.final_recipe:
        fail(f"{args.study}: names no final_recipe")
    if any(parse_name(name)[1] for name in args.train) and not Path(args.teacher_weights).is_file():
        fail(f"--teacher-weights {args.teacher_weights}: no such file (the released SINet weights, needed by the -kd names; not kept in git)")
    use_threads(args.threads)
    final_dir = args.final_dir or final_folder(study_file)
    if args.train:
        try:  # every name and every file it would replace, before any training
            study = open_study(study_file, create=False)
            runs = plan_runs(study_file, study, args.train, (args.seed,), args.runs / study_file.study.name, final_dir, max_steps=args.max_steps, teacher="sinet")
        except UserError as error:
            fail(str(error))
        train_runs(runs, study_file.data_spec(), args.threads, progress=__import__("sys").stderr.isatty(), teacher_weights=args.teacher_weights)
    if args.no_table or not final_dir.is_dir():
        return
    frame = results_table(study_file, final_dir)
    if len(frame):
        write_results(frame, study_file, final_dir)
        print((final_dir / "results.md").read_text())


if __name__ == "__main__":
    main()
