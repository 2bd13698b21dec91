"""The network families and their registry: one module per family, one record each.

``build_model``, config parsing (``lightseg_nas.config``), pruning (``lightseg_nas.prune``),
read-back and presets dispatch on ``config.family`` through :data:`FAMILIES`. Adding a family
is adding one module that ends in a :class:`~lightseg_nas.families.base.Family` record and
registering it here (or, from outside the package, with :func:`register`).
"""

from __future__ import annotations

from torch import nn

from lightseg_nas.errors import UserError
from lightseg_nas.families import c3net, sinet
from lightseg_nas.families.base import Axis, Family, NetworkConfig, Preset

__all__ = ["FAMILIES", "Family", "Axis", "Preset", "NetworkConfig", "register", "get_family", "family_of", "build_model", "config_of", "all_presets"]

FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    clashes = set(family.presets) & set(all_presets())
    if family.name in FAMILIES or clashes:
        raise ValueError(f"family {family.name!r} or its presets {sorted(clashes)} are already registered")
    FAMILIES[family.name] = family
    return family


def get_family(name: object) -> Family:
    if name not in FAMILIES:
        raise UserError(f"family must be one of {sorted(FAMILIES)}, got {name!r}")
    return FAMILIES[name]


def family_of(item: NetworkConfig | nn.Module) -> Family:
    """The family of a config, or of a module built from one."""
    config = item if isinstance(item, NetworkConfig) else getattr(item, "config", None)
    if not isinstance(config, NetworkConfig) or getattr(config, "family", None) not in FAMILIES:
        raise TypeError(f"not a network of ours: {type(item).__name__}")
    return FAMILIES[config.family]


def build_model(config: NetworkConfig) -> nn.Module:
    """The only way to make a network of our spaces."""
    return family_of(config).model_class(config)


def config_of(model: nn.Module) -> NetworkConfig:
    """The config that builds this (possibly pruned) network, read from its live layers."""
    return family_of(model).config_of(model)


def all_presets() -> dict[str, tuple[Family, Preset]]:
    return {name: (family, preset) for family in FAMILIES.values() for name, preset in family.presets.items()}


register(c3net.FAMILY)
register(sinet.FAMILY)
