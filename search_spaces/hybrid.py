"""SINet's skeleton in which every block chooses a C3 module (dilation rates) or an S2
module (squeeze kernels and pooling). Neither paper has it; SINet is one of its points."""

from __future__ import annotations

import optuna

from lightseg_nas.families.sinet import SINetConfig
from search_spaces._blocks import encode_c3_or_s2, sample_c3_or_s2
from search_spaces.sinet import encode_sinet, sample_sinet


def space(trial: optuna.Trial, num_classes: int = 2) -> SINetConfig:
    return sample_sinet(trial, num_classes, sample_c3_or_s2)


def encode(config: SINetConfig) -> dict:
    return encode_sinet(config, encode_c3_or_s2)
