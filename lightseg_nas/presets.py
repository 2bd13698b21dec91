"""The published networks by name, and the loader for their released weights.

Each preset (its config and its key rules) is defined by its family module
(``lightseg_nas.families``); this module looks them up and loads weights. The released files are plain state_dicts whose key names follow the papers' code; the
loader renames them onto our modules and loads strictly (every key used, every shape equal).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from lightseg_nas.errors import UserError
from lightseg_nas.families import NetworkConfig, all_presets

__all__ = ["get_preset", "list_presets", "load_released_weights", "convert_released_state_dict"]


def list_presets() -> list[str]:
    return sorted(all_presets())


def get_preset(name: str) -> NetworkConfig:
    presets = all_presets()
    if name not in presets:
        raise UserError(f"unknown preset {name!r}; known presets: {', '.join(list_presets())}")
    return presets[name][1].config()


def _rename(key: str, rules) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def convert_released_state_dict(name: str, state_dict: dict) -> dict:
    """Rename a released state_dict's keys onto our module names (values untouched)."""
    rules = all_presets()[name][1].key_rules
    return {_rename(key, rules): value for key, value in state_dict.items()}


def load_released_weights(model: torch.nn.Module, name: str, path: str | Path) -> torch.nn.Module:
    """Load a released .pth into a model built from the preset ``name``; strict, all keys."""
    if name not in all_presets():
        raise UserError(f"unknown preset {name!r}; known presets: {', '.join(list_presets())}")
    path = Path(path)
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: no such weights file") from None
    except Exception as error:  # torch raises many types for a file that is not a state_dict
        raise UserError(f"{path}: not a loadable weights file ({error.__class__.__name__})") from None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise UserError(f"{path}: not a state_dict of tensors")
    converted = convert_released_state_dict(name, state_dict)
    own = model.state_dict()
    # Files saved by older torch lack some BatchNorm step counters; they do not affect
    # outputs, so those (and only those) start from our zeros.
    for key in set(own) - set(converted):
        if key.endswith("num_batches_tracked"):
            converted[key] = own[key]
    missing = sorted(set(own) - set(converted))
    unexpected = sorted(set(converted) - set(own))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise UserError(f"{path}: does not match preset {name!r} ({detail}, {len(missing)} missing, {len(unexpected)} unexpected)")
    for key, value in converted.items():
        if own[key].shape != value.shape:
            raise UserError(f"{path}: {key} has shape {tuple(value.shape)}, preset {name!r} needs {tuple(own[key].shape)}")
    from lightseg_nas.checks import check_finite_state

    check_finite_state(converted, str(path))
    model.load_state_dict(converted, strict=True)
    return model


def network_from(
    preset: str | None = None,
    config_path: str | Path | None = None,
    space: str | None = None,
    seed: int | None = None,
    num_classes: int | None = None,
) -> NetworkConfig:
    """The network a command names: exactly one of a preset name, a config file, or a space
    (+ seed), optionally with another number of output classes."""
    if sum(1 for value in (preset, config_path, space) if value) != 1:
        raise UserError("give exactly one of --preset NAME, --config FILE.json, --space NAME --seed N")
    if preset:
        config = get_preset(preset)
    elif config_path:
        from lightseg_nas.config import load_config

        config = load_config(config_path)
    else:
        import search_spaces

        config = search_spaces.sample(space, 0 if seed is None else seed)
    if num_classes is not None:
        if num_classes not in (1, 2):
            raise UserError(f"--classes must be 1 or 2, got {num_classes}")
        config = config.model_copy(update={"num_classes": num_classes})
    return config
