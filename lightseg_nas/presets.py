"""The published networks as configs, and the loader for their released weights.

The released files are plain state_dicts whose key names follow the papers' code; the
loader renames them onto our modules and loads strictly (every key used, every shape equal).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from lightseg_nas.config import C3Block, C3NetConfig, C3Stage, S2Block, S2Branch, SINetConfig, SINetStage
from lightseg_nas.errors import UserError

__all__ = ["PRESETS", "get_preset", "list_presets", "load_released_weights", "convert_released_state_dict"]


def _extremec3net() -> C3NetConfig:
    return C3NetConfig(
        num_classes=1,
        stem_width=24,
        stages=(
            C3Stage(width=48, blocks=(C3Block(dilation_rates=(1, 2, 3)), C3Block(dilation_rates=(1, 3, 4)))),
            C3Stage(
                width=56,
                blocks=(C3Block(dilation_rates=(1, 3, 5)),) + (C3Block(dilation_rates=(2, 4, 8)),) * 5,
            ),
        ),
        decoder_width=24,
        fine_block=C3Block(dilation_rates=(2, 4, 8)),
    )


# SINet's released branch table: the 10 S2 modules in order, each as (kernel, pool) pairs.
_SINET_BRANCHES = (
    ((3, 1), (5, 1)), ((3, 1), (3, 1)),
    ((3, 1), (5, 1)), ((3, 1), (3, 1)), ((5, 1), (3, 2)), ((5, 2), (3, 4)),
    ((3, 1), (3, 1)), ((5, 1), (5, 1)), ((3, 2), (3, 4)), ((3, 1), (5, 2)),
)  # fmt: skip


def _s2(pairs) -> S2Block:
    return S2Block(branches=tuple(S2Branch(kernel_size=k, pool_size=a) for k, a in pairs))


def _sinet() -> SINetConfig:
    return SINetConfig(
        num_classes=2,
        stem_width=12,
        stages=(
            SINetStage(down_width=16, se_divide=1, width=48, blocks=tuple(_s2(p) for p in _SINET_BRANCHES[:2])),
            SINetStage(down_width=48, se_divide=2, width=96, blocks=tuple(_s2(p) for p in _SINET_BRANCHES[2:])),
        ),
        information_blocking=True,
    )


# name -> (config factory, rules that rename the released state_dict's keys onto ours)
_C3_BLOCK_RULES = [
    (r"\.c1\.conv\.", ".reduce."),
    (r"\.d(\d+)\.conv\.", lambda m: f".branches.{int(m.group(1)) - 1}.layers."),
    (r"\.bn\.bn\.", ".norm.bn."),
    (r"\.bn\.act\.", ".norm.act."),
]
_EXTREMEC3_RULES = [
    (r"^encoder\.level1\.", "stem."),
    (r"^encoder\.b1\.", "stem_norm."),
    # The stride-2 entry module names its final BN/PReLU bn/act instead of bn.bn/bn.act.
    (r"^encoder\.level2_0\.bn\.", "stages.0.blocks.0.norm.bn."),
    (r"^encoder\.level2_0\.act\.", "stages.0.blocks.0.norm.act."),
    (r"^encoder\.level2_0\.", "stages.0.blocks.0."),
    (r"^encoder\.level2\.(\d+)\.", lambda m: f"stages.0.blocks.{int(m.group(1)) + 1}."),
    (r"^encoder\.b2\.", "stages.0.norm."),
    (r"^encoder\.level3_0\.", "stages.1.blocks.0."),
    (r"^encoder\.level3\.(\d+)\.", lambda m: f"stages.1.blocks.{int(m.group(1)) + 1}."),
    (r"^encoder\.b3\.", "stages.1.norm."),
    (r"^upsample\.", "coarse."),
    (r"^Fine\.0\.conv\.", "fine_conv."),
    (r"^Fine\.1\.", "fine_block."),
    (r"^classifier\.0\.", "head_norm."),
    (r"^classifier\.2\.", "head_conv."),
] + _C3_BLOCK_RULES
_SINET_RULES = [
    (r"^encoder\.level1\.", "stem."),
    (r"^encoder\.level2_0\.", "downs.0."),
    (r"^encoder\.level2\.", "stages.0.blocks."),
    (r"^encoder\.BR2\.", "stages.0.norm."),
    (r"^encoder\.level3_0\.", "downs.1."),
    (r"^encoder\.level3\.", "stages.1.blocks."),
    (r"^encoder\.BR3\.", "stages.1.norm."),
    (r"^encoder\.classifier\.conv\.", "enc_head."),
    (r"^bn_3\.", "dec_bn1."),
    (r"^level2_C\.", "skip."),
    (r"^bn_2\.", "dec_bn2."),
    (r"^classifier\.1\.", "head_conv."),
    # inside the SE down-samplers
    (r"^(downs\.\d+)\.conv\.0\.", r"\1.depthwise."),
    (r"^(downs\.\d+)\.conv\.1\.dense\.", r"\1.se.layers."),
    (r"^(downs\.\d+)\.conv\.2\.", r"\1.pointwise."),
    # inside S2 modules
    (r"\.c1\.conv\.", ".reduce."),
    (r"\.d(\d+)\.conv\.0\.", lambda m: f".branches.{int(m.group(1)) - 1}.depthwise."),
    (r"\.d(\d+)\.conv\.1\.", lambda m: f".branches.{int(m.group(1)) - 1}.depthwise_bn."),
    (r"\.d(\d+)\.act_conv1x1\.0\.", lambda m: f".branches.{int(m.group(1)) - 1}.act."),
    (r"\.d(\d+)\.act_conv1x1\.1\.", lambda m: f".branches.{int(m.group(1)) - 1}.pointwise."),
    (r"\.d(\d+)\.bn\.", lambda m: f".branches.{int(m.group(1)) - 1}.bn."),
    (r"\.BR\.", ".norm."),
]

PRESETS = {
    "extremec3net": (_extremec3net, _EXTREMEC3_RULES),
    "sinet": (_sinet, _SINET_RULES),
}


def list_presets() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> C3NetConfig | SINetConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; known presets: {', '.join(list_presets())}")
    return PRESETS[name][0]()


def _rename(key: str, rules) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def convert_released_state_dict(name: str, state_dict: dict) -> dict:
    """Rename a released state_dict's keys onto our module names (values untouched)."""
    rules = PRESETS[name][1]
    return {_rename(key, rules): value for key, value in state_dict.items()}


def load_released_weights(model: torch.nn.Module, name: str, path: str | Path) -> torch.nn.Module:
    """Load a released .pth into a model built from the preset ``name``; strict, all keys."""
    if name not in PRESETS:
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
