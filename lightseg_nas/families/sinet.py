"""The ``sinet`` family: SINet's skeleton, all of it in one place.

A stride-2 stem, two stages (at 1/4 and 1/8) each entered by an SE separable down-sampler,
and a decoder that upsamples the encoder's class logits and adds a stage-1 skip, optionally
gated by the coarse prediction's uncertainty (information blocking). Every block slot takes
an S2 or a C3 block (the ``hybrid`` space uses both).

Here: the config classes and their validation, the stage channel arithmetic
(:func:`stage_out_channels`), the module, its prunable axes and read-back, and the preset
``sinet`` with the key rules of its released weights.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from lightseg_nas.families.base import (
    SCHEMA_VERSION,
    Axis,
    Family,
    Frozen,
    NetworkConfig,
    Preset,
    Width,
    optional,
)
from lightseg_nas.families.blocks import (
    BN_EPS,
    Block,
    ConvBNPReLU,
    S2Block,
    S2Branch,
    SEDown,
    StageBlocks,
    check_block,
    input_groups,
    make_block,
    stage_axes,
    stage_blocks_of,
    upsample,
)


class SINetStage(Frozen):
    """A stage of the sinet family: an SE separable down-sampler, then S2/C3 blocks."""

    # Output channels of the stride-2 down-sampler.
    down_width: Annotated[int, Field(ge=1, le=1024)]
    # Squeeze-excite reduction of the down-sampler (hidden = channels // se_divide).
    se_divide: Annotated[int, Field(ge=1, le=16)]
    # Hidden units of that squeeze-excite when pruning left them apart from the derived count.
    se_hidden: Width | None = optional()
    # Output channels of every block of the stage.
    width: Annotated[int, Field(ge=1, le=1024)]
    # blocks[0] is the entry block (down_width -> width, no residual); the rest add their input.
    blocks: tuple[Block, ...] = Field(min_length=1, max_length=32)


def stage_out_channels(down_width: int, width: int) -> int:
    """Channels after a stage's concatenation [down-sampler output, last block]."""
    return down_width + width


class SINetConfig(NetworkConfig):
    """SINet-like network."""

    schema_version: Literal[1] = SCHEMA_VERSION
    family: Literal["sinet"] = "sinet"
    # 1 = a single foreground logit (sigmoid); 2 = background/foreground logits (softmax).
    num_classes: Literal[1, 2]
    # Channels of the stride-2 stem convolution.
    stem_width: Annotated[int, Field(ge=1, le=1024)]
    # Exactly two stages, at 1/4 and 1/8 resolution.
    stages: tuple[SINetStage, SINetStage]
    # Gate the skip connection by the coarse prediction's uncertainty (SINet's decoder).
    information_blocking: bool

    @model_validator(mode="after")
    def _check(self) -> "SINetConfig":
        down_in = self.stem_width
        for stage_index, stage in enumerate(self.stages):
            if stage.se_hidden is None and down_in // stage.se_divide < 1:
                raise ValueError(f"stages.{stage_index}.se_divide {stage.se_divide} exceeds its {down_in} channels")
            for block_index, block in enumerate(stage.blocks):
                where = f"stages.{stage_index}.blocks.{block_index}"
                check_block(block, stage.down_width if block_index == 0 else stage.width, stage.width, where)
            down_in = stage_out_channels(stage.down_width, stage.width)
        return self


def block_information(coarse: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
    """SINet's information blocking: pass detail only where the coarse prediction is unsure."""
    if coarse.shape[1] == 1:
        probability = torch.sigmoid(coarse)
        confidence = torch.maximum(probability, 1 - probability)
    else:
        confidence = torch.softmax(coarse, 1).max(1, keepdim=True)[0]
    return detail * (1 - confidence)


class SINet(nn.Module):
    """SINet's skeleton: SE down-samplers, two stages, (information-blocking) decoder."""

    def __init__(self, config: SINetConfig):
        super().__init__()
        self.config = config
        classes = config.num_classes
        self.stem = ConvBNPReLU(3, config.stem_width, 3, 2)
        downs, stages = [], []
        in_channels = config.stem_width
        for stage in config.stages:
            downs.append(SEDown(in_channels, stage.down_width, stage.se_divide, stage.se_hidden))
            blocks = [
                make_block(block, stage.down_width if i == 0 else stage.width, stage.width)
                for i, block in enumerate(stage.blocks)
            ]
            in_channels = stage_out_channels(stage.down_width, stage.width)
            stages.append(StageBlocks(blocks, in_channels))
        self.downs = nn.ModuleList(downs)
        self.stages = nn.ModuleList(stages)
        self.enc_head = nn.Conv2d(in_channels, classes, 1, bias=False)
        self.dec_upsample1 = upsample(2)
        self.dec_bn1 = nn.BatchNorm2d(classes, eps=BN_EPS)
        self.skip = ConvBNPReLU(config.stages[0].width, classes, 1)
        self.dec_upsample2 = upsample(2)
        self.dec_bn2 = nn.BatchNorm2d(classes, eps=BN_EPS)
        self.head_upsample = upsample(2)
        self.head_conv = nn.Conv2d(classes, classes, 3, 1, 1, bias=False)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1/8-resolution class logits, stage-1 features for the decoder's skip)."""
        y = self.stem(x)
        skip = None
        for down, stage in zip(self.downs, self.stages):
            d = down(y)
            _, last = stage.run(d)
            skip = last if skip is None else skip
            y = stage.norm(torch.cat([d, last], 1))
        return self.enc_head(y), skip

    def forward_encoder(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's own 1/8-resolution logits: the encoder-first training stage."""
        return self._encode(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        encoded, skip = self._encode(x)
        coarse = self.dec_bn1(self.dec_upsample1(encoded))
        detail = self.skip(skip)
        if self.config.information_blocking:
            detail = block_information(coarse, detail)
        y = self.dec_bn2(self.dec_upsample2(detail + coarse))
        return self.head_conv(self.head_upsample(y))


def axes(model: SINet) -> list[Axis]:
    found = [Axis("stem", "stem.conv")]
    for index, (down, stage) in enumerate(zip(model.downs, model.stages)):
        if down.se.hidden is not None:
            found.append(Axis(f"downs.{index}.se.hidden", f"downs.{index}.se.layers.0"))
        if stage.blocks[0].add:  # down_width == width: one dimension
            found += stage_axes(f"stages.{index}", stage, root=f"downs.{index}.pointwise")
        else:
            found.append(Axis(f"downs.{index}.width", f"downs.{index}.pointwise", input_groups(stage.blocks[:1])))
            found += stage_axes(f"stages.{index}", stage)
    return found


def untied_pairs(model: SINet):
    return [
        (f"downs.{i}.width", f"stages.{i}.width", lambda width: width)
        for i, stage in enumerate(model.stages)
        if not stage.blocks[0].add
    ]


def config_of(model: SINet) -> SINetConfig:
    config = model.config
    stages = []
    in_channels = model.stem.conv.out_channels
    for down, module, stage in zip(model.downs, model.stages, config.stages):
        hidden = down.se.hidden
        if hidden is not None and hidden == in_channels // stage.se_divide:
            hidden = None
        update = {"down_width": down.width, "se_hidden": hidden, "width": module.width, "blocks": stage_blocks_of(module, stage.blocks, module.width)}
        stages.append(stage.model_copy(update=update))
        in_channels = stage_out_channels(down.width, module.width)
    data = config.model_copy(update={"stem_width": model.stem.conv.out_channels, "stages": tuple(stages)})
    # model_copy skips validation: validate the result as a fresh config.
    return SINetConfig.model_validate(data.model_dump())


# SINet's released branch table: the 10 S2 modules in order, each as (kernel, pool) pairs.
_SINET_BRANCHES = (
    ((3, 1), (5, 1)), ((3, 1), (3, 1)),
    ((3, 1), (5, 1)), ((3, 1), (3, 1)), ((5, 1), (3, 2)), ((5, 2), (3, 4)),
    ((3, 1), (3, 1)), ((5, 1), (5, 1)), ((3, 2), (3, 4)), ((3, 1), (5, 2)),
)  # fmt: skip


def _s2(pairs) -> S2Block:
    return S2Block(branches=tuple(S2Branch(kernel_size=k, pool_size=a) for k, a in pairs))


def sinet() -> SINetConfig:
    return SINetConfig(
        num_classes=2,
        stem_width=12,
        stages=(
            SINetStage(down_width=16, se_divide=1, width=48, blocks=tuple(_s2(p) for p in _SINET_BRANCHES[:2])),
            SINetStage(down_width=48, se_divide=2, width=96, blocks=tuple(_s2(p) for p in _SINET_BRANCHES[2:])),
        ),
        information_blocking=True,
    )


# The released state_dict's key names (the papers' code) onto ours.
SINET_KEY_RULES = (
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
)

FAMILY = Family(
    name="sinet",
    config_class=SINetConfig,
    model_class=SINet,
    axes=axes,
    untied_pairs=untied_pairs,
    config_of=config_of,
    presets={"sinet": Preset(sinet, SINET_KEY_RULES)},
)
