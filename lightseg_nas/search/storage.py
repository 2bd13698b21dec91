"""Optuna storages: which URLs work, how they are opened, locked and printed.

URL forms (parsed with SQLAlchemy's ``make_url``):

* ``sqlite:///relative/or/absolute.db`` (one process at a time; a lock file beside it);
* ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB`` and ``postgres://...``: opened with
  psycopg 3, the driver this package installs (``postgresql+psycopg://`` is the same);
  ``postgresql+psycopg2://`` works where the user installed psycopg2 themselves;
* ``memory`` (tests and benchmarks: nothing is kept).

Passwords are never printed: every URL that reaches a terminal, a report or an error line
goes through :func:`redact`. A PostgreSQL server that accepts connections and never answers
cannot hang a worker: connecting gives up after ``connect_timeout`` seconds (default 10,
or ``?connect_timeout=N`` in the URL) and a statement after ``statement_timeout``.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from lightseg_nas.checks import file_lock
from lightseg_nas.errors import UserError
from lightseg_nas.search.record import TrialRecord

__all__ = ["normalize", "redact", "sqlite_path", "make_storage", "sqlite_lock", "fail_dead_trials", "CONNECT_TIMEOUT_S", "STATEMENT_TIMEOUT_MS"]

CONNECT_TIMEOUT_S = 10
STATEMENT_TIMEOUT_MS = 120_000
POSTGRES_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}


def _parse(url: str):
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except (ArgumentError, ValueError):
        raise UserError(f"storage {redact(url)!r} is not a storage URL (sqlite:///FILE.db or postgresql://USER@HOST/DB)") from None


def redact(url: str) -> str:
    """The URL with any password replaced by ***; text that is not a URL is returned as is,
    less anything between ':' and '@' (the place a password would be)."""
    if url == "memory":
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        import re

        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


def normalize(url: str) -> str:
    """The URL SQLAlchemy should open: ``postgresql://`` and ``postgres://`` name psycopg 3."""
    if url == "memory":
        return url
    parsed = _parse(url)
    if parsed.drivername in POSTGRES_DRIVERS:
        parsed = parsed.set(drivername=POSTGRES_DRIVERS[parsed.drivername])
    if not (parsed.drivername.startswith("postgresql") or parsed.drivername.startswith("sqlite")):
        raise UserError(f"storage {redact(url)!r}: only sqlite:/// and postgresql:// storages are supported")
    return parsed.render_as_string(hide_password=False)


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL, else None."""
    if url == "memory":
        return None
    parsed = _parse(url)
    if not parsed.drivername.startswith("sqlite"):
        return None
    if not parsed.database or parsed.database == ":memory:":
        raise UserError(f"storage {url!r}: a SQLite storage needs a file: sqlite:///PATH.db")
    return Path(parsed.database)


def _engine_kwargs(url: str) -> dict:
    parsed = _parse(url)
    if parsed.drivername.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    connect_args = {}
    if "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    if "options" not in parsed.query:
        connect_args["options"] = f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"
    # TCP keep-alives: a server that vanishes mid-query is noticed instead of waited for
    connect_args.update(keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3)
    return {"connect_args": connect_args, "pool_pre_ping": True}


def make_storage(url: str, heartbeat_s: int = 30, grace_s: int = 120) -> optuna.storages.BaseStorage:
    """Open (creating its tables if needed) the storage at ``url``; one line on failure."""
    if url == "memory":
        return optuna.storages.InMemoryStorage()
    opened = normalize(url)
    database = sqlite_path(url)
    if database is not None and not database.parent.is_dir():
        raise UserError(f"storage {url!r}: folder {database.parent} does not exist")
    # Two processes creating Optuna's tables in one new SQLite file race (alembic's version
    # row): table creation is serialised by a flock on the database's folder, so no file is
    # left beside the database (the database file itself carries the single-writer lock).
    creating = file_lock(database.parent, blocking=True) if database is not None else contextlib.nullcontext()
    try:
        with creating, warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # Heartbeats let a crashed worker's trial be detected as stale and retried.
            return optuna.storages.RDBStorage(
                opened,
                engine_kwargs=_engine_kwargs(url),
                heartbeat_interval=heartbeat_s,
                grace_period=grace_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
            )
    except KeyboardInterrupt:
        raise
    except Exception as error:  # sqlalchemy and the drivers raise many types for a bad or unreachable URL
        raise UserError(f"storage {redact(url)!r} cannot be opened: {_first_line(error, url)}") from None


def _first_line(error: BaseException, url: str) -> str:
    text = str(error).strip()
    first = text.splitlines()[0][:200] if text else error.__class__.__name__
    parsed = _parse(url)
    if parsed.password:
        first = first.replace(str(parsed.password), "***")
    return first


@contextlib.contextmanager
def sqlite_lock(url: str):
    """One process at a time on a SQLite study: several writers on one SQLite file lock
    each other out under load. Several workers share a study through PostgreSQL.

    The lock is taken before the storage is opened, so while it is held no other process
    can be running a trial of this file."""
    database = sqlite_path(url)
    if database is None:
        yield
        return
    if not database.parent.is_dir():
        raise UserError(f"storage {url!r}: folder {database.parent} does not exist")
    created = not database.exists()
    with contextlib.ExitStack() as held:
        if created:
            # a run refused before it wrote anything leaves no empty database behind
            held.callback(lambda: database.exists() and database.stat().st_size == 0 and database.unlink())
        try:
            # a flock on the database file (created empty if new: SQLite takes an empty file as
            # a new database); SQLite's own locks are POSIX record locks, which flock leaves alone
            held.enter_context(file_lock(database))
        except BlockingIOError:
            raise UserError(
                f"another search is running on {database}; SQLite serves one worker at a time: "
                "for several workers use PostgreSQL (--storage postgresql://USER@HOST/DB)"
            ) from None
        yield


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Fail and re-queue every RUNNING trial at once. Only valid while the SQLite lock is
    held: then no live process can own a running trial (its worker was killed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        died = TrialRecord(outcome="worker_died", reason="failed: its worker died (found running when the study was reopened)")
        for key, value in died.to_attrs({"outcome", "reason"}).items():
            study._storage.set_trial_user_attr(trial._trial_id, key, value)
        if study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
            failed.append(trial.number)
            callback(study, study._storage.get_trial(trial._trial_id))
    return failed
