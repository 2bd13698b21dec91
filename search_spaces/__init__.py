"""Search spaces: pure functions from an Optuna trial to a network config.

A space builds no module, reads no file and keeps no state, so ``FixedTrial(params)``
replays any trial, and ``encode(space, config)`` gives the params that replay a config
(how the published networks are enqueued as baseline trials).
"""

from __future__ import annotations

from typing import Callable

import optuna

from lightseg_nas.errors import UserError
from lightseg_nas.families import NetworkConfig
from search_spaces import extremec3, hybrid, sinet

__all__ = ["SPACES", "get_space", "list_spaces", "encode", "sample", "space_presets", "smallest", "SUPERNET_SPACES", "supernet_space"]

# name -> (trial -> config, config -> params, published networks that are points of it)
SPACES: dict[str, tuple[Callable, Callable, tuple[str, ...]]] = {
    "extremec3": (extremec3.space, extremec3.encode, ("extremec3net",)),
    "sinet": (sinet.space, sinet.encode, ("sinet",)),
    "hybrid": (hybrid.space, hybrid.encode, ("sinet",)),
}


# spaces with a weight-sharing supernet: name -> module with largest(), smallest(), supernet()
SUPERNET_SPACES = {"extremec3": extremec3, "sinet": sinet, "hybrid": hybrid}


def supernet_space(name: str):
    """The module of a space that has a supernet, or UserError."""
    get_space(name)
    if name not in SUPERNET_SPACES:
        raise UserError(f"space {name!r} has no supernet yet; spaces with one: {', '.join(sorted(SUPERNET_SPACES))}")
    return SUPERNET_SPACES[name]


def list_spaces() -> list[str]:
    return sorted(SPACES)


def get_space(name: str) -> Callable[..., NetworkConfig]:
    if name not in SPACES:
        raise UserError(f"unknown search space {name!r}; known spaces: {', '.join(list_spaces())}")
    return SPACES[name][0]


def encode(name: str, config: NetworkConfig) -> dict:
    """Params that make space ``name`` produce ``config`` (KeyError-free inverse)."""
    get_space(name)
    return SPACES[name][1](config)


def space_presets(name: str) -> tuple[str, ...]:
    get_space(name)
    return SPACES[name][2]


def sample(name: str, seed: int, num_classes: int | None = None) -> NetworkConfig:
    """One random config of a space, reproducible by seed (no study needed)."""
    space = get_space(name)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()
    finally:
        optuna.logging.set_verbosity(verbosity)
    return space(trial) if num_classes is None else space(trial, num_classes=num_classes)


class _CheapestTrial:
    """Answers every suggestion with the option that needs the fewest weights: narrowest,
    shallowest, rate 1, kernel 3, no pooling, optional parts off. Branch counts and block
    types are set by the caller (more branches can mean fewer weights)."""

    def __init__(self, branches: str, block_type: str):
        self.branches, self.block_type = branches, block_type
        self.params: dict = {}

    def suggest_int(self, name, low, high, step=1, log=False):
        value = (high if self.branches == "max" else low) if name.endswith(".branches") else low
        self.params[name] = value
        return value

    def suggest_categorical(self, name, choices):
        if name.endswith(".branches"):
            value = max(choices) if self.branches == "max" else min(choices)
        elif name.endswith(".type"):
            value = self.block_type
        elif name.endswith("se_divide"):
            value = max(choices)
        elif all(isinstance(c, bool) for c in choices):
            value = False
        else:
            value = min(choices)
        self.params[name] = value
        return value


def smallest(name: str, num_classes: int):
    """The space's network with the fewest parameters (a lower bound for budgets)."""
    from lightseg_nas.cost import count_params
    from lightseg_nas.families import build_model

    space = get_space(name)
    candidates = [space(_CheapestTrial(b, t), num_classes=num_classes) for b in ("max", "min") for t in ("c3", "s2")]
    return min(candidates, key=lambda config: count_params(build_model(config)))
