"""Does multi-fidelity pay? The same study run twice for the same CPU time, with rung
promotion on and off; compares the hypervolume of the full-fidelity fronts reached, and
the trials per CPU-hour.

    python benchmarks/multifidelity.py [STUDY] [--budget-s 300] [--seeds 0]

Both arms use one process with the same threads, sampler and seed, in memory. The budget is
this process's CPU time (a trial that starts before the budget is spent runs to its end),
so other work on the machine does not tilt the comparison. Hypervolume
is computed in the same normalised objectives for both arms: 1 - validation fg IoU, and
each cost divided by its largest value seen in either arm; reference point 1.1.
Writes benchmarks/results/multifidelity.md and .csv.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lightseg_nas.search import load_study_file, run_search, trials_dataframe
from lightseg_nas.search.pareto import hypervolume
from lightseg_nas.search.report import COST_COLUMNS

REPO = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", nargs="?", type=Path, default=REPO / "studies" / "quickstart.toml")
    parser.add_argument("--budget-s", type=float, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    base = load_study_file(args.study)
    frames = []
    for seed in args.seeds:
        for enabled in (True, False):
            study_file = base.model_copy(
                update={
                    "study": base.study.model_copy(update={"seed": seed, "n_trials": 10_000, "name": f"mf-{enabled}-{seed}"}),
                    "fidelity": base.fidelity.model_copy(update={"enabled": enabled}),
                }
            )
            started = time.process_time()
            study = run_search(study_file, storage="memory", progress=False, cpu_budget_s=args.budget_s)
            cpu_s = time.process_time() - started
            frame = trials_dataframe(study).assign(multi_fidelity=enabled, seed=seed, cpu_s=cpu_s)
            frames.append(frame)
            print(f"seed {seed} multi-fidelity {enabled}: {len(frame)} trials, {int(frame.full_fidelity.sum())} at full fidelity, {cpu_s:.0f} CPU-s", flush=True)
    trials = pd.concat(frames, ignore_index=True)
    costs = [COST_COLUMNS[o] for o in base.objectives.minimize]
    scale = {c: float(trials[c].max()) for c in costs}
    rows = []
    for (seed, enabled), group in trials.groupby(["seed", "multi_fidelity"]):
        front = group[(group.state == "COMPLETE") & group.full_fidelity & group.duplicate_of.isna()]
        points = np.column_stack([1 - front.val_fg_iou.to_numpy(float)] + [front[c].to_numpy(float) / scale[c] for c in costs])
        volume = hypervolume(points, 1.1)
        cpu_hours = group.cpu_s.iloc[0] / 3600
        rows.append(
            {
                "seed": seed,
                "multi_fidelity": enabled,
                "trials": len(group),
                "trained_trials": int(((group.state == "COMPLETE") & group.duplicate_of.isna()).sum()),
                "full_fidelity_trials": int(group.full_fidelity.sum()),
                "best_val_fg_iou": round(100 * float(front.val_fg_iou.max()), 2) if len(front) else None,
                "hypervolume": round(volume, 4),
                "trials_per_cpu_hour": round(len(group) / cpu_hours, 1),
            }
        )
    table = pd.DataFrame(rows)
    OUT.mkdir(parents=True, exist_ok=True)
    trials.to_csv(OUT / "multifidelity_trials.csv", index=False)
    (OUT / "multifidelity.md").write_text(
        f"# Multi-fidelity against full fidelity at the same CPU time\n\n"
        f"Study `{args.study.name}` (space {base.study.space}, data `{base.data.spec}`, rungs "
        f"{[(r.size, r.epochs) for r in base.fidelity.rungs]}, reduction factor {base.fidelity.reduction_factor}), "
        f"{args.budget_s:.0f} CPU-seconds budget per arm, {torch.get_num_threads()} threads, sampler {base.study.sampler}.\n"
        f"Hypervolume over the full-fidelity front in normalised objectives (1 - val fg IoU, costs / largest seen), "
        f"reference point 1.1; CPU time is the process's.\n\n" + table.to_markdown(index=False) + "\n"
    )
    print(table.to_markdown(index=False))


if __name__ == "__main__":
    main()
