"""SINet's skeleton with every S2 module's branch count, squeeze kernels and pooling free.

Holds SINet exactly (see ``encode``). Widths step by 16 and down-sampler widths by 4 so
that every branch count in {1, 2, 4} divides the grouped reduce conv and channel shuffle.
"""

from __future__ import annotations

from typing import Callable

import optuna

from lightseg_nas.families.blocks import S2Block, S2Branch
from lightseg_nas.families.sinet import SINetConfig, SINetStage
from search_spaces._blocks import KERNEL_SIZES, POOL_SIZES, S2_BRANCH_COUNTS, encode_s2, sample_s2

# name: (low, high, step); SINet is stem 12, downs 16/48, widths 48/96, depths 1/7.
WIDTHS = {
    "stem": (8, 24, 4),
    "stage1.down": (8, 48, 4),
    "stage1": (16, 96, 16),
    "stage2.down": (16, 96, 16),
    "stage2": (32, 160, 16),
}
DEPTHS = {"stage1": (0, 4), "stage2": (0, 10)}  # residual blocks after the entry block
SE_DIVIDES = [1, 2, 4]


def _suggest_width(trial: optuna.Trial, name: str, key: str) -> int:
    low, high, step = WIDTHS[key]
    return trial.suggest_int(name, low, high, step=step)


def sample_sinet(trial: optuna.Trial, num_classes: int, sample_block: Callable) -> SINetConfig:
    """The SINet skeleton with blocks drawn by ``sample_block(trial, prefix)``."""
    stem = _suggest_width(trial, "stem.width", "stem")
    stages = []
    for stage in ("stage1", "stage2"):
        down = _suggest_width(trial, f"{stage}.down_width", f"{stage}.down")
        divide = trial.suggest_categorical(f"{stage}.se_divide", SE_DIVIDES)
        width = _suggest_width(trial, f"{stage}.width", stage)
        depth = trial.suggest_int(f"{stage}.depth", *DEPTHS[stage])
        blocks = tuple(sample_block(trial, f"{stage}.block{b}") for b in range(depth + 1))
        stages.append(SINetStage(down_width=down, se_divide=divide, width=width, blocks=blocks))
    blocking = trial.suggest_categorical("decoder.information_blocking", [True, False])
    return SINetConfig(num_classes=num_classes, stem_width=stem, stages=tuple(stages), information_blocking=blocking)


def encode_sinet(config: SINetConfig, encode_block: Callable) -> dict:
    params = {"stem.width": config.stem_width}
    for stage_name, stage in zip(("stage1", "stage2"), config.stages):
        params[f"{stage_name}.down_width"] = stage.down_width
        params[f"{stage_name}.se_divide"] = stage.se_divide
        params[f"{stage_name}.width"] = stage.width
        params[f"{stage_name}.depth"] = len(stage.blocks) - 1
        for b, block in enumerate(stage.blocks):
            params.update(encode_block(f"{stage_name}.block{b}", block))
    params["decoder.information_blocking"] = config.information_blocking
    return params


def space(trial: optuna.Trial, num_classes: int = 2) -> SINetConfig:
    return sample_sinet(trial, num_classes, sample_s2)


def encode(config: SINetConfig) -> dict:
    return encode_sinet(config, encode_s2)


S2_LIMITS = {"branches": max(S2_BRANCH_COUNTS), "max_kernel": max(KERNEL_SIZES), "max_pool": max(POOL_SIZES)}


def _largest_block():
    return S2Block(branches=(S2Branch(kernel_size=max(KERNEL_SIZES), pool_size=1),) * max(S2_BRANCH_COUNTS))


def largest(num_classes: int = 2) -> SINetConfig:
    """Every width and depth at its maximum, every slot the largest S2 block, full squeeze-excite."""
    from lightseg_nas.families.sinet_supernet import largest_of

    downs = (WIDTHS["stage1.down"][1], WIDTHS["stage2.down"][1])
    widths = (WIDTHS["stage1"][1], WIDTHS["stage2"][1])
    depths = (DEPTHS["stage1"][1] + 1, DEPTHS["stage2"][1] + 1)
    return largest_of(WIDTHS["stem"][1], downs, widths, depths, _largest_block(), num_classes)


def smallest(num_classes: int = 2) -> SINetConfig:
    """Every width at its minimum, one block of one 3 x 3 branch per stage, the smallest
    squeeze-excite, no information blocking."""
    block = S2Block(branches=(S2Branch(kernel_size=min(KERNEL_SIZES), pool_size=1),))
    stages = tuple(
        SINetStage(down_width=WIDTHS[f"{stage}.down"][0], se_divide=max(SE_DIVIDES), width=WIDTHS[stage][0], blocks=(block,)) for stage in ("stage1", "stage2")
    )
    return SINetConfig(num_classes=num_classes, stem_width=WIDTHS["stem"][0], stages=stages, information_blocking=False)


def supernet(num_classes: int = 2):
    """The weight-sharing supernet that holds every network of this space."""
    from lightseg_nas.families.sinet_supernet import SINetSupernet

    return SINetSupernet(largest(num_classes), c3=None, s2=S2_LIMITS)
