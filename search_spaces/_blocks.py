"""Parameter naming shared by every space.

Names are hierarchical and stable (``stage2.block3.c3.branch1.rate``), and a name always has
the same distribution, so one study can mix trials and ``FixedTrial(trial.params)`` replays.
Each sampler has an encoder, its inverse: config -> params.
"""

from __future__ import annotations

import optuna

from lightseg_nas.families.blocks import C3Block, S2Block, S2Branch

MAX_C3_BRANCHES = 4
DILATION_RATES = (1, 8)  # inclusive range
S2_BRANCH_COUNTS = [1, 2, 4]  # 3 would need widths divisible by 9 (grouped reduce + shuffle)
KERNEL_SIZES = [3, 5, 7]
POOL_SIZES = [1, 2, 4]


def sample_c3(trial: optuna.Trial, prefix: str) -> C3Block:
    branches = trial.suggest_int(f"{prefix}.c3.branches", 1, MAX_C3_BRANCHES)
    rates = tuple(trial.suggest_int(f"{prefix}.c3.branch{i}.rate", *DILATION_RATES) for i in range(branches))
    return C3Block(dilation_rates=rates)


def encode_c3(prefix: str, block: C3Block) -> dict:
    params = {f"{prefix}.c3.branches": block.num_branches}
    params.update({f"{prefix}.c3.branch{i}.rate": rate for i, rate in enumerate(block.dilation_rates)})
    return params


def sample_s2(trial: optuna.Trial, prefix: str) -> S2Block:
    branches = trial.suggest_categorical(f"{prefix}.s2.branches", S2_BRANCH_COUNTS)
    return S2Block(
        branches=tuple(
            S2Branch(
                kernel_size=trial.suggest_categorical(f"{prefix}.s2.branch{i}.kernel_size", KERNEL_SIZES),
                pool_size=trial.suggest_categorical(f"{prefix}.s2.branch{i}.pool_size", POOL_SIZES),
            )
            for i in range(branches)
        )
    )


def encode_s2(prefix: str, block: S2Block) -> dict:
    params = {f"{prefix}.s2.branches": block.num_branches}
    for i, branch in enumerate(block.branches):
        params[f"{prefix}.s2.branch{i}.kernel_size"] = branch.kernel_size
        params[f"{prefix}.s2.branch{i}.pool_size"] = branch.pool_size
    return params


def sample_c3_or_s2(trial: optuna.Trial, prefix: str) -> C3Block | S2Block:
    kind = trial.suggest_categorical(f"{prefix}.type", ["c3", "s2"])
    return sample_c3(trial, prefix) if kind == "c3" else sample_s2(trial, prefix)


def encode_c3_or_s2(prefix: str, block: C3Block | S2Block) -> dict:
    if isinstance(block, C3Block):
        return {f"{prefix}.type": "c3", **encode_c3(prefix, block)}
    return {f"{prefix}.type": "s2", **encode_s2(prefix, block)}
