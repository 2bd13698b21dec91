"""Network configs as files: parsing, validation, canonical JSON and the architecture id.

A network is a frozen, nested, typed config (network -> stages -> blocks -> branches) whose
class belongs to its family (``lightseg_nas.families``: ``c3net``, ExtremeC3Net's skeleton;
``sinet``, SINet's). Every block slot takes either module type (``C3Block`` with dilation
rates, ``S2Block`` with squeeze kernels and pooling), so a "hybrid" network is just a config
with mixed blocks.

Configs validate themselves on construction, round-trip exactly through JSON, and have an id
that is a short hash of their canonical JSON (used to skip duplicates and to name files).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import ValidationError

from lightseg_nas.errors import UserError
from lightseg_nas.families import FAMILIES, NetworkConfig
from lightseg_nas.families.base import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "NetworkConfig", "config_from_dict", "config_from_json", "load_config", "canonical_json", "to_json", "arch_id"]


def _first_error(error: ValidationError) -> str:
    item = error.errors()[0]
    location = ".".join(str(part) for part in item["loc"]) or "(top level)"
    message = item["msg"].removeprefix("Value error, ")
    return f"{location}: {message}"


def config_from_dict(data: object, source: str = "config") -> NetworkConfig:
    """Validate a plain dict into a network config, or raise UserError with one line."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a JSON object, got {type(data).__name__}")
    from lightseg_nas.checks import reject_bools
    from lightseg_nas.settings import bool_fields

    reject_bools(data, set().union(*(bool_fields(family.config_class) for family in FAMILIES.values())), f"{source}: ")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise UserError(f"{source}: schema_version {version!r} is not supported (this version reads {SCHEMA_VERSION})")
    family = data.get("family")
    if not isinstance(family, str) or family not in FAMILIES:
        raise UserError(f"{source}: family must be one of {sorted(FAMILIES)}, got {family!r}")
    try:
        return FAMILIES[family].config_class.model_validate(data)
    except ValidationError as error:
        raise UserError(f"{source}: {_first_error(error)}") from None


def config_from_json(text: str, source: str = "config") -> NetworkConfig:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{source}: not valid JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
    except RecursionError:
        raise UserError(f"{source}: nested too deeply to be a network config") from None
    except ValueError as error:  # an integer of more digits than Python converts (4,300)
        raise UserError(f"{source}: {too_many_digits(error)}") from None
    return config_from_dict(data, source)


def too_many_digits(error: ValueError) -> str:
    """The one line for a number too long to read (Python refuses integers of over 4,300
    digits); other ValueErrors as they are."""
    text = str(error)
    if "integer string conversion" in text:
        return "holds a number with too many digits to be a setting"
    return text.splitlines()[0][:200]


def load_config(path: str | Path) -> NetworkConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: cannot read config ({error.__class__.__name__}: {error})") from None
    return config_from_json(text, str(path))


def canonical_json(config: NetworkConfig) -> str:
    """Sorted keys, no whitespace: equal configs give byte-equal text."""
    return json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def to_json(config: NetworkConfig) -> str:
    """Human-readable JSON (what config files and exports contain)."""
    return json.dumps(config.model_dump(mode="json"), indent=2) + "\n"


def arch_id(config: NetworkConfig) -> str:
    """Short stable hash of the canonical JSON: same architecture, same id."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:12]
