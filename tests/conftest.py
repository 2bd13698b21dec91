from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from lightseg_nas.speed import use_threads

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
OFFICIAL = SHARED / "reference" / "official"
EG1800 = SHARED / "data" / "eg1800"

optuna.logging.set_verbosity(optuna.logging.WARNING)
use_threads(1)  # denormals flushed, as every command runs


@pytest.fixture
def official():
    if not (OFFICIAL / "reference_io.npz").exists():
        pytest.skip(f"released weights not found at {OFFICIAL} (../shared is absent on this machine)")
    return OFFICIAL


@pytest.fixture
def eg1800():
    if not (EG1800 / "eg1800_train.txt").exists():
        pytest.skip(f"EG1800 not found at {EG1800} (../shared is absent on this machine)")
    return EG1800


@pytest.fixture(scope="session")
def postgres_url():
    from tests.pgserver import available, throwaway_postgres

    reason = available()
    if reason:
        pytest.skip(reason)
    with throwaway_postgres() as url:
        yield url
