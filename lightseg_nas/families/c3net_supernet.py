"""The weight-sharing supernet of the ``c3net`` family (C3 blocks in every slot).

One network holds every sub-network of a space of ``c3net`` configs up to a largest one:

* widths (stem, stages, decoder): the first k channels of every layer;
* depths: the first k blocks of each stage;
* branch counts: the first k branches of each block; every branch writes its slice of one
  shared output space, so channel j of a block's output is channel j of the supernet's;
* dilation rates: one branch holds the largest concentrated pair (m x 1 and 1 x m with
  m = 2 d_max - 1) and one 3 x 3 depthwise kernel; rate d takes the centre m = 2 d - 1 of
  the pair and the 3 x 3 kernel at dilation d (rate 1: the 3 x 3 kernel alone).

Concatenated maps (the stem with the image, a stage's [last, entry, image]) keep each part
at a fixed offset of the supernet's channels, so a narrower part never shifts another.
``forward(x, config)`` runs a sub-network inside the supernet; ``subnet(config)`` returns the
same sub-network as a standalone ``C3Net`` (``build_model(config)`` with the weights copied),
which computes exactly what ``forward(x, config)`` computes and then trains, prunes and
exports like any network. Batch-norm statistics are not kept while the supernet trains (each
step sees other widths); a sub-network's are recalibrated after extraction
(``lightseg_nas.supernet.recalibrate``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightseg_nas.families.blocks import BN_EPS_C3_BRANCH, C3Block, ImagePool, upsample
from lightseg_nas.families.c3net import IMAGE_CHANNELS, C3Net, C3NetConfig, C3Stage
from lightseg_nas.families.elastic_blocks import ElasticBR, ElasticC3Block, bn, copy_bn, parts

__all__ = ["C3NetSupernet"]


def fits(config: C3NetConfig, largest: C3NetConfig, max_rate: int) -> str | None:
    """Why ``config`` is not a sub-network of the supernet of ``largest`` (None: it is)."""
    if not isinstance(config, C3NetConfig):
        return f"a {config.family} network, not c3net"
    if config.num_classes != largest.num_classes:
        return f"{config.num_classes} classes, the supernet has {largest.num_classes}"
    if config.stem_width > largest.stem_width or config.decoder_width > largest.decoder_width:
        return "wider than the supernet"
    blocks = [block for stage in config.stages for block in stage.blocks] + ([config.fine_block] if config.fine_block else [])
    for stage, top in zip(config.stages, largest.stages):
        if stage.width > top.width or len(stage.blocks) > len(top.blocks):
            return "a stage wider or deeper than the supernet's"
    if config.fine_block is not None and largest.fine_block is None:
        return "a fine path the supernet lacks"
    if 2 * config.stages[0].width + IMAGE_CHANNELS == config.stages[1].width:
        return "a second stage whose entry block adds its input (2 x width + 3 channels wide)"
    max_branches = max(b.num_branches for stage in largest.stages for b in stage.blocks)
    for block in blocks:
        if not isinstance(block, C3Block):
            return "an S2 block (this supernet holds C3 blocks)"
        if block.reduced_width is not None or block.branch_widths is not None:
            return "pruned channel overrides"
        if block.num_branches > max_branches or max(block.dilation_rates) > max_rate:
            return "more branches or a larger dilation rate than the supernet's"
    return None


class C3NetSupernet(nn.Module):
    """Every ``c3net`` sub-network of ``largest`` (widths, depths, branch counts) with C3
    blocks of dilation rates up to ``max_rate``."""

    def __init__(self, largest: C3NetConfig, max_rate: int):
        super().__init__()
        self.largest, self.max_rate = largest, max_rate
        c0, (s1, s2), c3 = largest.stem_width, largest.stages, largest.decoder_width
        branches = max(b.num_branches for stage in largest.stages for b in stage.blocks)
        self.pool_half, self.pool_quarter = ImagePool(), ImagePool()
        self.stem = nn.Conv2d(IMAGE_CHANNELS, c0, 3, 2, 1, bias=False)
        self.stem_br = ElasticBR(c0)
        self.stem_norm = ElasticBR(c0 + IMAGE_CHANNELS)
        inputs = (c0 + IMAGE_CHANNELS, 2 * s1.width + IMAGE_CHANNELS)
        self.stages = nn.ModuleList(
            nn.ModuleList(
                ElasticC3Block(inputs[index] if i == 0 else stage.width, stage.width, branches, max_rate, 2 if (index == 0 and i == 0) else 1)
                for i in range(len(stage.blocks))
            )
            for index, stage in enumerate((s1, s2))
        )
        self.stage_norms = nn.ModuleList([ElasticBR(2 * s1.width + IMAGE_CHANNELS), ElasticBR(2 * s2.width)])
        self.coarse = nn.Conv2d(2 * s2.width, c3, 1, bias=False)
        self.coarse_bn = nn.BatchNorm2d(c3, eps=BN_EPS_C3_BRANCH)
        self.fine_conv = nn.Conv2d(IMAGE_CHANNELS, c3, 3, 2, 1, bias=False)
        self.fine_block = ElasticC3Block(c3, c3, branches, max_rate)
        self.head_norm = ElasticBR(c3)
        self.head_conv = nn.Conv2d(c3, largest.num_classes, 1, bias=False)
        self.up = upsample(2)

    # channel indices, in the supernet, of each concatenation of a sub-network
    def _maps(self, config: C3NetConfig) -> dict[str, torch.Tensor]:
        top = self.largest
        c0, (w1, w2) = config.stem_width, (s.width for s in config.stages)
        m1, m2 = (s.width for s in top.stages)
        return {
            "stem": parts((0, c0), (top.stem_width, IMAGE_CHANNELS)),
            "stage0": parts((0, w1), (m1, w1), (2 * m1, IMAGE_CHANNELS)),
            "stage1": parts((0, w2), (m2, w2)),
        }

    def _check(self, config: C3NetConfig) -> None:
        reason = fits(config, self.largest, self.max_rate)
        if reason is not None:
            raise ValueError(f"not a sub-network of this supernet: {reason}")

    def forward(self, x: torch.Tensor, config: C3NetConfig, encoder_only: bool = False) -> torch.Tensor:
        self._check(config)
        maps = self._maps(config)
        c0 = slice(0, config.stem_width)
        image_half = self.pool_half(x)
        image_quarter = self.pool_quarter(image_half)
        stem = self.stem_br(F.conv2d(x, self.stem.weight[c0], stride=2, padding=1), c0)
        y = self.stem_norm(torch.cat([stem, image_half], 1), maps["stem"])
        in_idx = maps["stem"]
        for index, (stage, blocks) in enumerate(zip(config.stages, self.stages)):
            entry = blocks[0](y, in_idx, stage.blocks[0], stage.width, add=False)
            last = entry
            own = torch.arange(stage.width)
            for block, slot in zip(stage.blocks[1:], blocks[1:]):
                last = slot(last, own, block, stage.width, add=True)
            parts = [last, entry, image_quarter] if index == 0 else [entry, last]
            in_idx = maps[f"stage{index}"]
            y = self.stage_norms[index](torch.cat(parts, 1), in_idx)
        c3 = slice(0, config.decoder_width)
        y = self.up(bn(F.conv2d(y, self.coarse.weight[c3][:, in_idx]), self.coarse_bn, c3))
        if config.fine_block is not None and not encoder_only:
            fine = F.conv2d(x, self.fine_conv.weight[c3], stride=2, padding=1)
            y = y + self.fine_block(fine, torch.arange(config.decoder_width), config.fine_block, config.decoder_width, add=True)
        return F.conv2d(self.up(self.head_norm(y, c3)), self.head_conv.weight[:, c3])

    @torch.no_grad()
    def subnet(self, config: C3NetConfig) -> C3Net:
        """The sub-network ``config`` as a standalone C3Net with the supernet's weights."""
        self._check(config)
        net = C3Net(config)
        maps = self._maps(config)
        c0 = slice(0, config.stem_width)
        net.stem.conv.weight.data.copy_(self.stem.weight[c0])
        self.stem_br.copy_into(net.stem, c0)  # CBR: its bn and act
        self.stem_norm.copy_into(net.stem_norm, maps["stem"])
        in_idx = maps["stem"]
        for index, (stage, slots, module) in enumerate(zip(config.stages, self.stages, net.stages)):
            own = torch.arange(stage.width)
            for i, (block, slot, target) in enumerate(zip(stage.blocks, slots, module.blocks)):
                slot.copy_into(target, in_idx if i == 0 else own, block, stage.width)
            in_idx = maps[f"stage{index}"]
            self.stage_norms[index].copy_into(module.norm, in_idx)
        c3 = slice(0, config.decoder_width)
        net.coarse[0].weight.data.copy_(self.coarse.weight[c3][:, in_idx])
        copy_bn(net.coarse[1], self.coarse_bn, c3)
        if config.fine_block is not None:
            net.fine_conv.weight.data.copy_(self.fine_conv.weight[c3])
            self.fine_block.copy_into(net.fine_block, torch.arange(config.decoder_width), config.fine_block, config.decoder_width)
        self.head_norm.copy_into(net.head_norm, c3)
        net.head_conv.weight.data.copy_(self.head_conv.weight[:, c3])
        return net


def largest_of(stem: int, widths: tuple[int, int], depths: tuple[int, int], decoder: int, branches: int, max_rate: int, num_classes: int) -> C3NetConfig:
    """The largest config of a space: every width, depth and branch at its maximum."""
    block = C3Block(dilation_rates=(max_rate,) * branches)
    stages = tuple(C3Stage(width=w, blocks=(block,) * d) for w, d in zip(widths, depths))
    return C3NetConfig(num_classes=num_classes, stem_width=stem, stages=stages, decoder_width=decoder, fine_block=block)
