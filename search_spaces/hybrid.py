"""SINet's skeleton in which every block chooses a C3 module (dilation rates) or an S2
module (squeeze kernels and pooling). Neither paper has it; SINet is one of its points."""

from __future__ import annotations

import optuna

from lightseg_nas.families.sinet import SINetConfig
from search_spaces import sinet
from search_spaces._blocks import DILATION_RATES, MAX_C3_BRANCHES, encode_c3_or_s2, sample_c3_or_s2
from search_spaces.sinet import encode_sinet, sample_sinet


def space(trial: optuna.Trial, num_classes: int = 2) -> SINetConfig:
    return sample_sinet(trial, num_classes, sample_c3_or_s2)


def encode(config: SINetConfig) -> dict:
    return encode_sinet(config, encode_c3_or_s2)


def largest(num_classes: int = 2) -> SINetConfig:
    """As the sinet space's largest network (every slot the largest S2 block)."""
    return sinet.largest(num_classes)


def smallest(num_classes: int = 2) -> SINetConfig:
    return sinet.smallest(num_classes)


def supernet(num_classes: int = 2):
    """The weight-sharing supernet of this space: every slot holds a C3 and an S2 block."""
    from lightseg_nas.families.sinet_supernet import SINetSupernet

    c3 = {"branches": MAX_C3_BRANCHES, "max_rate": DILATION_RATES[1]}
    return SINetSupernet(sinet.largest(num_classes), c3=c3, s2=sinet.S2_LIMITS)
