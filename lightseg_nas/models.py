"""``build_model(config)``: the only way to make a network of our spaces."""

from __future__ import annotations

import torch
from torch import nn

from lightseg_nas.blocks import (
    BN_EPS,
    BN_EPS_C3_BRANCH,
    BNPReLU,
    ConvBNPReLU,
    ImagePool,
    SEDown,
    make_block,
    upsample,
)
from lightseg_nas.config import C3NetConfig, SINetConfig

__all__ = ["build_model", "C3Net", "SINet", "INPUT_MULTIPLE"]

# Input height and width must be multiples of this: the deepest map is at 1/8 and S2
# branches pool it by up to 4, and every skip concatenation must line up exactly.
INPUT_MULTIPLE = 32


class StageBlocks(nn.Module):
    def __init__(self, blocks: list[nn.Module], norm_channels: int):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.norm = BNPReLU(norm_channels)

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (entry block output, last block output)."""
        entry = self.blocks[0](x)
        y = entry
        for block in self.blocks[1:]:
            y = block(y)
        return entry, y


class C3Net(nn.Module):
    """ExtremeC3Net's skeleton: image injection at 1/2 and 1/4, coarse + fine decoder."""

    def __init__(self, config: C3NetConfig):
        super().__init__()
        self.config = config
        c0 = config.stem_width
        # two pooling modules, not one called twice: a module used twice confuses tracers (DepGraph)
        self.pool_half = ImagePool()
        self.pool_quarter = ImagePool()
        self.stem = ConvBNPReLU(3, c0, 3, 2)
        self.stem_norm = BNPReLU(c0 + 3)
        stages = []
        in_channels = c0 + 3
        for index, stage in enumerate(config.stages):
            blocks = [
                make_block(block, in_channels if i == 0 else stage.width, stage.width, 2 if (index == 0 and i == 0) else 1)
                for i, block in enumerate(stage.blocks)
            ]
            norm_channels = 2 * stage.width + (3 if index == 0 else 0)
            stages.append(StageBlocks(blocks, norm_channels))
            in_channels = norm_channels
        self.stages = nn.ModuleList(stages)
        c3 = config.decoder_width
        self.coarse = nn.Sequential(
            nn.Conv2d(in_channels, c3, 1, bias=False), nn.BatchNorm2d(c3, eps=BN_EPS_C3_BRANCH), upsample(2)
        )
        if config.fine_block is not None:
            self.fine_conv = nn.Conv2d(3, c3, 3, 2, 1, bias=False)
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
            in_channels = stage.down_width + stage.width
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
            # Pass detail only where the coarse prediction is unsure.
            if coarse.shape[1] == 1:
                probability = torch.sigmoid(coarse)
                confidence = torch.maximum(probability, 1 - probability)
            else:
                confidence = torch.softmax(coarse, 1).max(1, keepdim=True)[0]
            detail = detail * (1 - confidence)
        y = self.dec_bn2(self.dec_upsample2(detail + coarse))
        return self.head_conv(self.head_upsample(y))


def build_model(config: C3NetConfig | SINetConfig) -> nn.Module:
    if isinstance(config, C3NetConfig):
        return C3Net(config)
    if isinstance(config, SINetConfig):
        return SINet(config)
    raise TypeError(f"not a network config: {type(config).__name__}")
