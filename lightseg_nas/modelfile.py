"""Model files: one file that rebuilds its network (nanoGPT-style) and loads safely.

A model file is a plain dict of tensors, strings and numbers, so it loads with
``torch.load(..., weights_only=True)``: a pickle that would run code is refused. It holds
the config that built the network, its state_dict, the preprocessing its inputs need, the
training settings and seed, the metrics and the per-epoch history.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lightseg_nas.checks import check_finite_state, load_state_file
from lightseg_nas.config import arch_id, config_from_dict
from lightseg_nas.errors import UserError
from lightseg_nas.families import build_model

FORMAT = "lightseg-nas-model"
FORMAT_VERSION = 1

__all__ = ["FORMAT", "make_record", "save_record", "load_record", "load_model_file", "atomic_write", "code_version"]


def code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lightseg-nas")
    except PackageNotFoundError:
        return "unknown"


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write through a temporary file in the same folder, then rename: a crash leaves the
    old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temporary))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def make_record(config, model: torch.nn.Module, preprocessing: dict, **extra) -> dict:
    """The model file's content; refused if any weight is nan or inf (never written)."""
    check_finite_state(model.state_dict(), "the network to save")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.model_dump(mode="json"),
        "arch_id": arch_id(config),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "preprocessing": preprocessing,
        "code_version": code_version(),
        **extra,
    }


def save_record(record: dict, path: str | Path) -> Path:
    return atomic_write(path, lambda p: torch.save(record, p))


def load_record(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such model file")
    record = load_state_file(path, "model file", unreadable="not a model file", hint="")
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise UserError(f"{path}: not a lightseg-nas model file (no '{FORMAT}' format tag)")
    if record.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: model file format version {record.get('format_version')!r} is not supported")
    for key in ("arch_id", "config", "state_dict", "preprocessing"):
        if key not in record:
            raise UserError(f"{path}: model file lacks {key!r}")
    if not isinstance(record["arch_id"], str):
        raise UserError(f"{path}: arch_id must be text, got {type(record['arch_id']).__name__}")
    if not isinstance(record["preprocessing"], dict):
        raise UserError(f"{path}: preprocessing must be a mapping, got {type(record['preprocessing']).__name__}")
    _check_fields(path, record)
    return record


class _Preprocessing(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    name: Literal["default", "released"]  # data.transforms.PREPROCESSING
    channel_order: Literal["rgb", "bgr"]
    mean: tuple[Annotated[float, Field(ge=-1e4, le=1e4)], Annotated[float, Field(ge=-1e4, le=1e4)], Annotated[float, Field(ge=-1e4, le=1e4)]]
    std: tuple[Annotated[float, Field(gt=1e-6, le=1e4)], Annotated[float, Field(gt=1e-6, le=1e4)], Annotated[float, Field(gt=1e-6, le=1e4)]]
    scale: Annotated[float, Field(gt=0, le=1e4)]


def _check_fields(path: Path, record: dict) -> None:
    """The fields that commands read have the types they need (a tampered or foreign file
    ends in one line here, not in a traceback later)."""
    try:
        _Preprocessing.model_validate(record["preprocessing"])
    except ValidationError as error:
        item = error.errors()[0]
        where = ".".join(map(str, item["loc"]))
        raise UserError(f"{path}: preprocessing{'.' + where if where else ''}: {item['msg']}") from None
    if not isinstance(record["state_dict"], dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in record["state_dict"].items()):
        raise UserError(f"{path}: state_dict is not a mapping of names to tensors")
    for key in ("training", "metrics", "data", "compress"):
        if record.get(key) is not None and not isinstance(record[key], dict):
            raise UserError(f"{path}: {key} must be a mapping, got {type(record[key]).__name__}")
    training = record.get("training") or {}
    for key in ("size", "val_seed"):
        value = training.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise UserError(f"{path}: training.{key} must be an integer, got {value!r}")
    fraction = training.get("val_fraction")
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1):
        raise UserError(f"{path}: training.val_fraction must be a number in (0, 1), got {fraction!r}")


def load_model_file(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild the network from the file's own config and load its weights strictly."""
    record = load_record(path)
    config = config_from_dict(record["config"], f"{path} (config)")
    check_finite_state(record["state_dict"], str(path))
    model = build_model(config)
    try:
        model.load_state_dict(record["state_dict"], strict=True)
    except (RuntimeError, TypeError, AttributeError) as error:
        first = str(error).strip().splitlines()[0][:200]
        raise UserError(f"{path}: weights do not match the file's config ({first})") from None
    record["config_object"] = config
    return model, record
