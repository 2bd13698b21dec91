"""ExtremeC3Net's skeleton with every C3 module's dilation rates and branch count free.

Holds ExtremeC3Net exactly (see ``encode``), networks several times smaller (narrow, one
block per stage, one branch) and somewhat larger (wider, deeper, four branches).
"""

from __future__ import annotations

import optuna

from lightseg_nas.families.blocks import C3Block
from lightseg_nas.families.c3net import C3NetConfig, C3Stage
from search_spaces._blocks import DILATION_RATES, MAX_C3_BRANCHES, encode_c3, sample_c3

# name: (low, high, step); ExtremeC3Net is stem 24, widths 48/56, depths 1/5, decoder 24.
WIDTHS = {"stem": (8, 40, 4), "stage1": (16, 96, 8), "stage2": (16, 112, 8), "decoder": (8, 48, 4)}
DEPTHS = {"stage1": (0, 4), "stage2": (0, 8)}  # residual blocks after the entry block


def space(trial: optuna.Trial, num_classes: int = 1) -> C3NetConfig:
    stem = trial.suggest_int("stem.width", *WIDTHS["stem"][:2], step=WIDTHS["stem"][2])
    stages = []
    for stage in ("stage1", "stage2"):
        width = trial.suggest_int(f"{stage}.width", *WIDTHS[stage][:2], step=WIDTHS[stage][2])
        depth = trial.suggest_int(f"{stage}.depth", *DEPTHS[stage])
        blocks = tuple(sample_c3(trial, f"{stage}.block{b}") for b in range(depth + 1))
        stages.append(C3Stage(width=width, blocks=blocks))
    decoder = trial.suggest_int("decoder.width", *WIDTHS["decoder"][:2], step=WIDTHS["decoder"][2])
    fine = trial.suggest_categorical("decoder.fine", [True, False])
    return C3NetConfig(
        num_classes=num_classes,
        stem_width=stem,
        stages=tuple(stages),
        decoder_width=decoder,
        fine_block=sample_c3(trial, "decoder.fine_block") if fine else None,
    )


def encode(config: C3NetConfig) -> dict:
    params = {"stem.width": config.stem_width}
    for stage_name, stage in zip(("stage1", "stage2"), config.stages):
        params[f"{stage_name}.width"] = stage.width
        params[f"{stage_name}.depth"] = len(stage.blocks) - 1
        for b, block in enumerate(stage.blocks):
            params.update(encode_c3(f"{stage_name}.block{b}", block))
    params["decoder.width"] = config.decoder_width
    params["decoder.fine"] = config.fine_block is not None
    if config.fine_block is not None:
        params.update(encode_c3("decoder.fine_block", config.fine_block))
    return params


def largest(num_classes: int = 1) -> C3NetConfig:
    """Every width, depth and branch count at its maximum, every rate at the largest."""
    from lightseg_nas.families.c3net_supernet import largest_of

    widths = (WIDTHS["stage1"][1], WIDTHS["stage2"][1])
    depths = (DEPTHS["stage1"][1] + 1, DEPTHS["stage2"][1] + 1)
    return largest_of(WIDTHS["stem"][1], widths, depths, WIDTHS["decoder"][1], MAX_C3_BRANCHES, DILATION_RATES[1], num_classes)


def smallest(num_classes: int = 1) -> C3NetConfig:
    """Every width at its minimum, one block per stage, one branch of rate 1, no fine path."""
    block = C3Block(dilation_rates=(DILATION_RATES[0],))
    stages = tuple(C3Stage(width=WIDTHS[stage][0], blocks=(block,)) for stage in ("stage1", "stage2"))
    return C3NetConfig(num_classes=num_classes, stem_width=WIDTHS["stem"][0], stages=stages, decoder_width=WIDTHS["decoder"][0], fine_block=None)


def supernet(num_classes: int = 1):
    """The weight-sharing supernet that holds every network of this space."""
    from lightseg_nas.families.c3net_supernet import C3NetSupernet

    return C3NetSupernet(largest(num_classes), DILATION_RATES[1])
