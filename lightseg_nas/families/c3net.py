"""The ``c3net`` family: ExtremeC3Net's skeleton, all of it in one place.

Input-image injection at 1/2 and 1/4, a stride-2 stem, two stages at 1/4 resolution (the
first entered by a stride-2 C3 block), a coarse decoder path plus an optional full-resolution
"fine" path. Every block slot but the striding entry takes a C3 or an S2 block.

Here: the config classes and their validation, the stage channel arithmetic
(:func:`stage_out_channels`), the module, its prunable axes and read-back, and the preset
``extremec3net`` with the key rules of its released weights.
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
)
from lightseg_nas.families.blocks import (
    BN_EPS_C3_BRANCH,
    Block,
    BNPReLU,
    C3Block,
    ConvBNPReLU,
    ImagePool,
    StageBlocks,
    block_axes,
    block_config_of,
    branch_slices,
    check_block,
    input_groups,
    make_block,
    stage_axes,
    stage_blocks_of,
    upsample,
)

IMAGE_CHANNELS = 3


class C3Stage(Frozen):
    """A stage of the c3net family: an entry block (no residual) then residual blocks."""

    # Output channels of every block of the stage.
    width: Annotated[int, Field(ge=1, le=1024)]
    # blocks[0] is the entry block (changes width; strides in stage 1); the rest add their input.
    blocks: tuple[Block, ...] = Field(min_length=1, max_length=32)


def stem_out_channels(stem_width: int) -> int:
    """The stem's output concatenated with the image at 1/2."""
    return stem_width + IMAGE_CHANNELS


def stage_out_channels(index: int, width: int) -> int:
    """Channels after stage ``index``'s concatenation: [last, entry, image at 1/4] after the
    first stage, [entry, last] after the second."""
    return 2 * width + (IMAGE_CHANNELS if index == 0 else 0)


class C3NetConfig(NetworkConfig):
    """ExtremeC3Net-like network."""

    schema_version: Literal[1] = SCHEMA_VERSION
    family: Literal["c3net"] = "c3net"
    # 1 = a single foreground logit (sigmoid); 2 = background/foreground logits (softmax).
    num_classes: Literal[1, 2]
    # Channels of the stride-2 stem convolution (ExtremeC3Net's c0).
    stem_width: Annotated[int, Field(ge=1, le=1024)]
    # Exactly two stages: stage 1 (entry strides to 1/4, must be a C3 block), stage 2 (1/4).
    stages: tuple[C3Stage, C3Stage]
    # Channels of the decoder (ExtremeC3Net's c3).
    decoder_width: Annotated[int, Field(ge=1, le=1024)]
    # The residual C3 block of the full-resolution "fine" path; None drops the fine path.
    fine_block: C3Block | None

    @model_validator(mode="after")
    def _check(self) -> "C3NetConfig":
        if not isinstance(self.stages[0].blocks[0], C3Block):
            raise ValueError("stages.0.blocks.0 strides by 2 and must be a c3 block")
        in_channels = stem_out_channels(self.stem_width)
        for stage_index, stage in enumerate(self.stages):
            for block_index, block in enumerate(stage.blocks):
                where = f"stages.{stage_index}.blocks.{block_index}"
                check_block(block, in_channels if block_index == 0 else stage.width, stage.width, where)
            in_channels = stage_out_channels(stage_index, stage.width)
        if self.fine_block is not None:
            check_block(self.fine_block, self.decoder_width, self.decoder_width, "fine_block")
        return self


class C3Net(nn.Module):
    """ExtremeC3Net's skeleton: image injection at 1/2 and 1/4, coarse + fine decoder."""

    def __init__(self, config: C3NetConfig):
        super().__init__()
        self.config = config
        c0 = config.stem_width
        # two pooling modules, not one called twice: a module used twice confuses tracers (DepGraph)
        self.pool_half = ImagePool()
        self.pool_quarter = ImagePool()
        self.stem = ConvBNPReLU(IMAGE_CHANNELS, c0, 3, 2)
        self.stem_norm = BNPReLU(stem_out_channels(c0))
        stages = []
        in_channels = stem_out_channels(c0)
        for index, stage in enumerate(config.stages):
            blocks = [
                make_block(block, in_channels if i == 0 else stage.width, stage.width, 2 if (index == 0 and i == 0) else 1)
                for i, block in enumerate(stage.blocks)
            ]
            in_channels = stage_out_channels(index, stage.width)
            stages.append(StageBlocks(blocks, in_channels))
        self.stages = nn.ModuleList(stages)
        c3 = config.decoder_width
        self.coarse = nn.Sequential(
            nn.Conv2d(in_channels, c3, 1, bias=False), nn.BatchNorm2d(c3, eps=BN_EPS_C3_BRANCH), upsample(2)
        )
        if config.fine_block is not None:
            self.fine_conv = nn.Conv2d(IMAGE_CHANNELS, c3, 3, 2, 1, bias=False)
            self.fine_block = make_block(config.fine_block, c3, c3)
        self.head_norm = BNPReLU(c3)
        self.head_upsample = upsample(2)
        self.head_conv = nn.Conv2d(c3, config.num_classes, 1, bias=False)

    def _coarse(self, x: torch.Tensor) -> torch.Tensor:
        image_half = self.pool_half(x)
        image_quarter = self.pool_quarter(image_half)
        y = self.stem_norm(torch.cat([self.stem(x), image_half], 1))
        entry, last = self.stages[0].run(y)
        y = self.stages[0].norm(torch.cat([last, entry, image_quarter], 1))
        entry, last = self.stages[1].run(y)
        y = self.stages[1].norm(torch.cat([entry, last], 1))
        return self.coarse(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._coarse(x)
        if self.config.fine_block is not None:
            y = y + self.fine_block(self.fine_conv(x))
        return self.head_conv(self.head_upsample(self.head_norm(y)))

    def forward_encoder(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the coarse path alone (no fine path): the encoder-first training stage."""
        return self.head_conv(self.head_upsample(self.head_norm(self._coarse(x))))


def axes(model: C3Net) -> list[Axis]:
    found = [Axis("stem", "stem.conv")]
    if model.stages[1].blocks[0].add:
        # Stage 2's width equals stage 1's concatenation [last, entry, image] and adds it:
        # the two widths are one dimension, image channels included. Both stay.
        for index, stage in enumerate(model.stages):
            for block_index, block in enumerate(stage.blocks):
                found += block_axes(f"stages.{index}.blocks.{block_index}", block)
    else:
        for index, stage in enumerate(model.stages):
            found += stage_axes(f"stages.{index}", stage)
    fine = [model.fine_block] if model.config.fine_block is not None else []
    guards = [slice_ for block in fine for slice_ in branch_slices(block)]
    found.append(Axis("decoder", "coarse.0", input_groups(fine), guards))
    for block in fine:
        found += block_axes("fine_block", block)
    return found


def untied_pairs(model: C3Net):
    if model.stages[1].blocks[0].add:
        return []
    return [("stages.0.width", "stages.1.width", lambda width: stage_out_channels(0, width))]


def config_of(model: C3Net) -> C3NetConfig:
    config = model.config
    stages = tuple(
        stage.model_copy(update={"width": module.width, "blocks": stage_blocks_of(module, stage.blocks, module.width)})
        for module, stage in zip(model.stages, config.stages)
    )
    decoder = model.coarse[0].out_channels
    fine = block_config_of(model.fine_block, config.fine_block, decoder) if config.fine_block is not None else None
    data = config.model_copy(update={"stem_width": model.stem.conv.out_channels, "stages": stages, "decoder_width": decoder, "fine_block": fine})
    # model_copy skips validation: validate the result as a fresh config.
    return C3NetConfig.model_validate(data.model_dump())


def extremec3net() -> C3NetConfig:
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


# The released state_dict's key names (the papers' code) onto ours.
C3_BLOCK_KEY_RULES = (
    (r"\.c1\.conv\.", ".reduce."),
    (r"\.d(\d+)\.conv\.", lambda m: f".branches.{int(m.group(1)) - 1}.layers."),
    (r"\.bn\.bn\.", ".norm.bn."),
    (r"\.bn\.act\.", ".norm.act."),
)
EXTREMEC3NET_KEY_RULES = (
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
) + C3_BLOCK_KEY_RULES

FAMILY = Family(
    name="c3net",
    config_class=C3NetConfig,
    model_class=C3Net,
    axes=axes,
    untied_pairs=untied_pairs,
    config_of=config_of,
    presets={"extremec3net": Preset(extremec3net, EXTREMEC3NET_KEY_RULES)},
)
