"""The benchmark scripts still import against the package (they are run by hand, for hours,
so a stale import would otherwise show only then) and explain themselves."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_a_benchmark_script_imports_and_has_a_usage_docstring(path):
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the scripts run only under __main__
    assert callable(getattr(module, "main", None)), f"{path.name} has no main()"
    assert module.__doc__ and f"benchmarks/{path.name}" in module.__doc__, f"{path.name}: its docstring should say how to run it"


def _load(name):
    path = next(p for p in BENCHMARKS if p.stem == name)
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_audit_shards_split_the_chosen_networks_exactly_once_with_balanced_cost():
    import pandas as pd

    audit = _load("fidelity_audit")
    chosen = pd.DataFrame({"number": range(9), "latency_ratio": [3.0, 1.0, 2.0, 2.5, 1.5, None, 0.5, 2.0, 1.0]}, index=[4, 8, 1, 0, 7, 3, 2, 6, 5])
    parts = [audit.shard(chosen, f"{k}/3") for k in (1, 2, 3)]
    assert sorted(n for part in parts for n in part.number) == list(range(9))
    loads = [part.latency_ratio.fillna(chosen.latency_ratio.median()).sum() for part in parts]
    assert max(loads) - min(loads) <= 1.0  # greedy longest-first: within the smallest item's cost of even
    with pytest.raises(SystemExit):
        audit.shard(chosen, "4/3")
