"""Search throughput against worker processes on one machine, one study in PostgreSQL.

    python benchmarks/scaleout.py [--workers 1 2 4] [--trials 24]

Tiny real trials (synthetic data, 32/64 px, one epoch a rung) so that scheduling and storage
costs are visible. Also measures the storage overhead per trial: the same search with
training replaced by nothing (sample the space, record attributes, count parameters), in
PostgreSQL and in SQLite, one worker. Starts a throwaway PostgreSQL 15 server (see
tests/pgserver.py). Writes benchmarks/results/scaleout.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.pgserver import available, throwaway_postgres  # noqa: E402
from tests.test_search import write_study  # noqa: E402

OUT = Path(__file__).parent / "results"


def storage_overhead_ms(study_path: Path, storage: str, trials: int) -> float:
    """Milliseconds per trial of a search whose trials do everything but train."""
    import lightseg_nas.search.objective as objective
    from lightseg_nas.search import load_study_file, run_search

    real_fit = objective.fit
    objective.fit = lambda *args, **kwargs: [{"val_fg_iou": 0.5}]
    try:
        started = time.perf_counter()
        run_search(load_study_file(study_path), trials, None, storage, f"overhead-{time.time_ns()}", progress=False)
        return 1000 * (time.perf_counter() - started) / trials
    finally:
        objective.fit = real_fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--trials", type=int, default=24)
    args = parser.parse_args()
    reason = available()
    if reason:
        print(f"skipped: {reason}")
        return
    folder = Path(tempfile.mkdtemp(prefix="lightseg-scaleout-"))
    study = write_study(folder, fidelity="false")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rows = []
    with throwaway_postgres() as url:
        for workers in args.workers:
            name = f"throughput-{workers}"
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "lightseg_nas.cli", "search", str(study), "--storage", url, "--study-name", name,
                 "--n-trials", str(args.trials), "--no-progress", "--no-report", *(["--workers", str(workers)] if workers > 1 else ["--threads", str(os.cpu_count())])],
                env=env, check=True, capture_output=True,
            )
            seconds = time.perf_counter() - started
            trials = optuna.load_study(study_name=name, storage=url).trials
            rows.append({"workers": workers, "threads_per_worker": max(1, (os.cpu_count() or 1) // workers), "trials": len(trials), "wall_s": round(seconds, 1), "trials_per_minute": round(60 * args.trials / seconds, 1)})
            print(rows[-1], flush=True)
        overhead = {"postgresql": storage_overhead_ms(study, url, 20), "sqlite": storage_overhead_ms(study, f"sqlite:///{folder / 'overhead.db'}", 20)}
    table = pd.DataFrame(rows)
    table["speedup_vs_1"] = (table.trials_per_minute / table.trials_per_minute.iloc[0]).round(2)
    text = (
        f"# Search throughput against workers ({os.cpu_count()} cores, PostgreSQL 15, tiny synthetic trials)\n\n"
        f"Each row: `lightseg-nas search --workers N --n-trials {args.trials}` into a fresh study, wall time including "
        "process start-up (a worker imports torch and decodes its data once).\n\n"
        + table.to_markdown(index=False)
        + "\n\nStorage and bookkeeping overhead per trial (everything but training: sampling, attributes, "
        f"parameter count, storage round trips), one worker, 20 trials: PostgreSQL {overhead['postgresql']:.0f} ms, "
        f"SQLite {overhead['sqlite']:.0f} ms.\n"
    )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "scaleout.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
