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
