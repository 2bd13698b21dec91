"""Does a study's front change with the latency backend? Every full-fidelity trial of a
study (the baselines included) is timed again as a ratio to the study's reference network,
round-robin in one run, on two backends (eager PyTorch and ONNX Runtime by default); the
front over (validation fg IoU, parameters, latency ratio) is taken with each, and the
members that differ are listed.

    python benchmarks/backend_front.py [STUDY] [--backends torch onnxruntime] [--repeats 30] [--threads 1]

Reads the study's storage only (no dataset needed). Writes
benchmarks/results/backend_front_<study>.md and .csv (with .protocol.json beside them; a
rerun with other settings is refused rather than replacing them: give --out). Latency is
noisy on a shared machine: run it on an idle one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lightseg_nas.config import config_from_dict
from lightseg_nas.cost import LATENCY_BACKENDS, measure_latency
from lightseg_nas.errors import UserError
from lightseg_nas.families import build_model
from lightseg_nas.presets import get_preset
from lightseg_nas.scripts import Parser, count, existing_file, fail, guard_results, write_results
from lightseg_nas.search import load_study_file, open_study, trials_dataframe
from lightseg_nas.search.pareto import non_dominated_ranks
from lightseg_nas.search.record import TrialRecord

REPO = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "results"


def fronts(frame: pd.DataFrame, backends: list[str]) -> pd.DataFrame:
    """One on_front_<backend> column per backend: non-dominated on (fg IoU, params, latency)."""
    for backend in backends:
        losses = np.column_stack([-frame.val_fg_iou.to_numpy(float), frame.params.to_numpy(float), frame[f"latency_{backend}"].to_numpy(float)])
        frame[f"on_front_{backend}"] = non_dominated_ranks(losses) == 0
    return frame


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("study", nargs="?", type=existing_file, default=REPO / "studies" / "eg1800_hybrid_r128.toml")
    parser.add_argument("--backends", nargs=2, choices=LATENCY_BACKENDS, default=["torch", "onnxruntime"])
    parser.add_argument("--repeats", type=count(3, 10_000), default=30)
    parser.add_argument("--threads", type=count(1, 1024), default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    try:
        study_file = load_study_file(args.study, needs_data=False)
        study = open_study(study_file, create=False)
    except UserError as error:
        fail(str(error))
    name = f"backend_front_{study.study_name}"
    protocol = {"study": args.study.name, "backends": args.backends, "repeats": args.repeats, "threads": args.threads, "size": study_file.cost.size}
    guard_results(args.out, name, protocol)
    frame = trials_dataframe(study)
    frame = frame[(frame.state == "COMPLETE") & frame.full_fidelity & frame.duplicate_of.isna()].reset_index(drop=True)
    if frame.empty:
        fail(f"study {study.study_name!r} has no full-fidelity trial yet")
    records = {t.number: TrialRecord.of(t) for t in study.trials}
    models = {int(n): build_model(config_from_dict(records[int(n)].config)).eval() for n in frame.number}
    reference = build_model(get_preset(study_file.cost.reference).model_copy(update={"num_classes": study_file.study.num_classes})).eval()
    for backend in args.backends:
        print(f"timing {len(models)} networks and {study_file.cost.reference} on {backend}", flush=True)
        timing = measure_latency({"reference": reference, **{str(k): m for k, m in models.items()}}, study_file.cost.size, args.threads, repeats=args.repeats, backend=backend)
        frame[f"latency_{backend}"] = [timing[str(int(n))].median_ms / timing["reference"].median_ms for n in frame.number]
    frame = fronts(frame, args.backends)
    first, second = args.backends
    changed = frame[frame[f"on_front_{first}"] != frame[f"on_front_{second}"]]
    columns = ["number", "arch_id", "baseline", "val_fg_iou", "params", *[f"latency_{b}" for b in args.backends], *[f"on_front_{b}" for b in args.backends]]
    table = frame[columns].assign(val_fg_iou=100 * frame.val_fg_iou)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / f"{name}.csv", index=False)
    correlation = float(np.corrcoef(frame[f"latency_{first}"], frame[f"latency_{second}"])[0, 1]) if len(frame) > 2 else float("nan")
    text = "\n".join([
        f"# The front of `{study.study_name}` on two latency backends", "",
        f"{len(frame)} full-fidelity trials of `{args.study.name}`, each timed as a ratio to {study_file.cost.reference} round-robin in one run "
        f"(batch 1, {study_file.cost.size} px, {args.threads} thread(s), median of {args.repeats}) on {first} and on {second}; the front is taken "
        "over (validation fg IoU at the last rung, %, parameters, latency ratio) with each. Written by `python benchmarks/backend_front.py`.", "",
        table.to_markdown(index=False, floatfmt=".4g"), "",
        f"Front members on {first}: {int(frame[f'on_front_{first}'].sum())}; on {second}: {int(frame[f'on_front_{second}'].sum())}; "
        f"on one front only: {len(changed)} ({', '.join(f'trial {int(n)}' for n in changed.number) or 'none'}). "
        f"Pearson correlation of the two latency ratios: {correlation:.2f}.", "",
    ])
    write_results(args.out, name, text, protocol)


if __name__ == "__main__":
    main()
