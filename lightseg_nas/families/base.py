"""What a network family is, and the small pieces every family shares.

A *family* is a macro-architecture (a skeleton) whose slots take blocks. Its module defines,
in one place: the config classes and their validation, the channel arithmetic of its
skeleton, the ``nn.Module`` built from a config, the prunable channel axes of that module and
the read-back of a (pruned) module's config, and its published presets with the rules that
rename their released weights. It then hands a :class:`Family` record to the registry in
``lightseg_nas.families``; nothing else in the package names a family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Callable

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

SCHEMA_VERSION = 1

__all__ = ["SCHEMA_VERSION", "Frozen", "NetworkConfig", "Width", "optional", "Axis", "Preset", "Family"]


class Frozen(BaseModel):
    # extra="forbid": an unknown key in a config file is an error, not silently dropped.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class NetworkConfig(Frozen):
    """Base of every family's top-level config (fields: ``schema_version``, ``family``,
    ``num_classes`` and the family's own). It declares no field itself, so each family keeps
    its own field order in the JSON it writes."""


Width = Annotated[int, Field(ge=1, le=1024)]


def optional():
    """An optional field left out of the JSON when absent, so configs written before it
    existed keep their text and their arch_id."""
    return Field(None, exclude_if=lambda value: value is None)


@dataclass
class Axis:
    """One prunable channel dimension, named by a root module whose output spans it."""

    name: str
    root: str
    # Grouped convs read the axis in this many equal chunks: prune the same positions of each.
    multiple: int = 1
    # (start, stop) slices of the root's channels that must each keep one channel.
    guards: list[tuple[int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class Preset:
    """A published network: its config, and the regex rules (pattern, replacement) that
    rename its released state_dict's keys onto our module names."""

    config: Callable[[], NetworkConfig]
    key_rules: tuple = ()


@dataclass(frozen=True)
class Family:
    name: str
    config_class: type[NetworkConfig]
    # config -> module; the module keeps ``config`` as an attribute
    model_class: type[nn.Module]
    # module -> every prunable Axis
    axes: Callable[[nn.Module], list[Axis]]
    # module -> (input axis, stage axis, input width -> entry block input width) for entry
    # blocks that do not add their input (pruning must keep those widths apart)
    untied_pairs: Callable[[nn.Module], list[tuple[str, str, Callable[[int], int]]]]
    # (pruned) module -> the config that rebuilds it
    config_of: Callable[[nn.Module], NetworkConfig]
    presets: dict[str, Preset] = field(default_factory=dict)
