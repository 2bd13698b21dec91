"""Checks shared by every command: the limits of user values, non-finite numbers, output
paths, run-folder locks and safe loading of our own state files.

Each check raises :class:`UserError` with one line that names the field or file, before any
work is done, so that a mistake never costs a training run and never leaves a file behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import tempfile
from pathlib import Path
from typing import Iterable

import torch

from lightseg_nas.errors import FieldError, UserError
from lightseg_nas.settings import INPUT_MULTIPLE, MAX_SIZE, SEED_MAX, InputSize, Seed

__all__ = [
    "INPUT_MULTIPLE", "MAX_SIZE", "SEED_MAX", "Seed", "InputSize", "check_size", "check_finite_number",
    "non_finite_tensors", "check_finite_state", "reject_bools", "check_output_file", "check_output_dir",
    "file_lock", "folder_lock", "load_state_file", "check_run_state", "usable_cores",
]



def check_size(size: int, name: str = "size") -> int:
    if isinstance(size, bool) or not isinstance(size, int) or not INPUT_MULTIPLE <= size <= MAX_SIZE or size % INPUT_MULTIPLE:
        raise FieldError(name, f"{{0}} must be a multiple of {INPUT_MULTIPLE} from {INPUT_MULTIPLE} to {MAX_SIZE}, got {size}")
    return size


def check_finite_number(value: float | None, name: str, minimum: float | None = None, strictly: bool = False) -> None:
    """None passes; nan and +-inf never do; ``minimum`` bounds from below."""
    if value is None:
        return
    if not math.isfinite(value):
        raise FieldError(name, f"{{0}} must be a finite number, got {value}")
    if minimum is not None and (value <= minimum if strictly else value < minimum):
        raise FieldError(name, f"{{0}} must be {'above' if strictly else 'at least'} {minimum:g}, got {value:g}")


def non_finite_tensors(state: dict) -> list[str]:
    """Keys of floating-point tensors that hold nan or inf."""
    return [key for key, value in state.items() if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all()]


def check_finite_state(state: dict, source: str) -> None:
    bad = non_finite_tensors(state)
    if bad:
        raise UserError(f"{source}: holds non-finite weights (nan or inf in {bad[0]}{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}); refused")


def reject_bools(data: object, allowed: Iterable[str], where: str = "") -> None:
    """JSON and TOML ``true``/``false`` are Python bools, which are ints: refuse them anywhere
    but in the keys named in ``allowed`` (the boolean fields), so ``width = true`` is an error
    rather than a width of 1."""
    allowed = set(allowed)

    def walk(value, path, key):
        if isinstance(value, bool):
            if key not in allowed:
                raise UserError(f"{where}{path or '(top level)'}: expected a number or text, got a boolean ({str(value).lower()})")
        elif isinstance(value, dict):
            for name, item in value.items():
                walk(item, f"{path}.{name}" if path else str(name), name)
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                walk(item, f"{path}.{index}", key)

    walk(data, "", None)


def _existing_ancestor(path: Path) -> Path:
    for candidate in [path, *path.parents]:
        if candidate.exists():
            return candidate
    return Path.cwd()


def writable(folder: Path) -> bool:
    """Whether a file can be created in ``folder``, found by trying (an unnamed temporary
    file, gone at once): permission bits say yes to root even on a read-only mount."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _check_parent_chain(path: Path, flag: str) -> None:
    ancestor = _existing_ancestor(path.parent if path.parent != path else path)
    if not ancestor.is_dir():
        raise FieldError(flag, f"{{0}} {path}: {ancestor} is a file, not a folder")
    if not writable(ancestor):
        raise FieldError(flag, f"{{0}} {path}: {ancestor} is not writable")


def check_output_file(path: Path, flag: str = "out", overwrite: bool = False) -> Path:
    """A file we are about to write: not a folder, under folders we can create and write."""
    path = Path(path)
    if path.is_dir():
        raise FieldError(flag, f"{{0}} {path}: is a folder; give a file name")
    if path.exists() and not overwrite:
        raise FieldError(flag, f"{path}: already exists; choose another {{0}}")
    _check_parent_chain(path, flag)
    return path


def check_output_dir(path: Path, flag: str = "out") -> Path:
    """A folder we are about to write into: a folder or nothing yet, creatable, writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FieldError(flag, f"{{0}} {path}: is a file, not a folder")
    if path.is_dir():
        if not writable(path):
            raise FieldError(flag, f"{{0}} {path}: is not writable")
    else:
        _check_parent_chain(path, flag)
    return path


@contextlib.contextmanager
def file_lock(path: Path, blocking: bool = False):
    """Hold an exclusive flock on ``path`` (a folder, or a file created if needed) for the
    duration; without ``blocking``, BlockingIOError when another process holds it."""
    path = Path(path)
    descriptor = os.open(path, os.O_RDONLY) if path.is_dir() else os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        try:
            yield
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def folder_lock(folder: Path, what: str):
    """Hold ``folder/.lock`` for the duration: a second run on the same folder is refused
    instead of racing the first one and losing a result."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(file_lock(folder / ".lock"))
        except BlockingIOError:
            raise FieldError("out", f"{folder}: another {what} is running in this folder; wait for it or choose another {{0}}") from None
        try:
            yield
        except BaseException:
            # a run that failed before it wrote anything leaves no folder it made behind
            if created and [p.name for p in folder.iterdir()] == [".lock"]:
                (folder / ".lock").unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise


def load_state_file(path: Path, what: str, unreadable: str | None = None, hint: str = "; delete it to start again") -> dict:
    """A file of ours (model file, checkpoint, partial compression) loaded with
    weights_only=True, or one line saying why not."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        text = str(error)
        if "Weights only load failed" in text or "Unsupported global" in text:
            raise UserError(f"{path}: refused: the {what} holds pickled code, not plain data (loaded with weights_only=True)") from None
        raise UserError(f"{path}: {unreadable or f'not a readable {what}'} ({error.__class__.__name__}){hint}") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a {what} of lightseg-nas{hint}")
    return state


def check_run_state(state: dict, path: Path, what: str, parts: dict[str, type], settings_class=None) -> None:
    """A checkpoint's parts have the types a resume needs, its weights are there and finite,
    and its settings table is whole; else one line naming the file and the part."""
    from lightseg_nas.settings import missing_settings

    hint = "; delete it to start again"
    for key, kind in parts.items():
        if key not in state:
            raise UserError(f"{path}: a damaged {what}: it has no {key!r}{hint}")
        if not isinstance(state[key], kind):
            raise UserError(f"{path}: a damaged {what}: {key} is a {type(state[key]).__name__}, not a {kind.__name__}{hint}")
    for key in ("model", "optimizer"):
        if key in parts and not state[key]:
            raise UserError(f"{path}: a damaged {what}: {key} is empty{hint}")
    if "model" in parts:
        if not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state["model"].items()):
            raise UserError(f"{path}: a damaged {what}: model is not a mapping of names to tensors{hint}")
        bad = non_finite_tensors(state["model"])
        if bad:
            raise UserError(f"{path}: a damaged {what}: model holds non-finite weights (nan or inf in {bad[0]}){hint}")
    if "history" in parts and not all(isinstance(row, dict) for row in state["history"]):
        raise UserError(f"{path}: a damaged {what}: history is not a list of epoch tables{hint}")
    if settings_class is not None and "settings" in parts:
        missing = missing_settings(state["settings"], settings_class)
        if missing:
            raise UserError(f"{path}: a damaged {what}: settings lack {', '.join(repr(m) for m in missing)}{hint}")


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a
    container's limit), not the machine's count that ``os.cpu_count()`` gives."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)
