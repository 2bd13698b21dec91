"""The weight-sharing supernet of the ``sinet`` family: every sub-network of a largest SINet
skeleton whose slots take S2 blocks (the ``sinet`` space) or C3 and S2 blocks (``hybrid``).

Elastic: stem, down-sampler and stage widths (first channels), depths (first blocks), each
slot's block type (a slot holds an elastic C3 and an elastic S2 block), branch counts,
S2 kernels (centres of the largest) and pooling, C3 dilation rates, the squeeze-excite
(a full layer for reduction 1, the first units of one hidden layer otherwise) and the
information-blocking switch. The conventions are those of ``elastic_blocks.py``; as for
``c3net_supernet.py``, ``subnet(config)`` is a standalone ``SINet`` that computes exactly what
``forward(x, config)`` computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightseg_nas.families.blocks import BN_EPS, C3Block, upsample
from lightseg_nas.families.elastic_blocks import ElasticBR, ElasticSEDown, ElasticSlot, bn, copy_bn, parts
from lightseg_nas.families.sinet import SINet, SINetConfig, block_information

__all__ = ["SINetSupernet"]


class SINetSupernet(nn.Module):
    """Sub-networks of ``largest`` with blocks of the given types: ``c3`` and ``s2`` are
    None or dicts of their limits (c3: branches, max_rate; s2: branches, max_kernel,
    max_pool)."""

    def __init__(self, largest: SINetConfig, c3: dict | None, s2: dict | None):
        super().__init__()
        self.largest, self.c3, self.s2 = largest, c3, s2
        classes = largest.num_classes
        self.stem = nn.Conv2d(3, largest.stem_width, 3, 2, 1, bias=False)
        self.stem_br = ElasticBR(largest.stem_width)
        downs, stages, norms = [], [], []
        in_channels = largest.stem_width
        for stage in largest.stages:
            downs.append(ElasticSEDown(in_channels, stage.down_width, in_channels // 2))
            stages.append(
                nn.ModuleList(ElasticSlot(stage.down_width if i == 0 else stage.width, stage.width, c3, s2) for i in range(len(stage.blocks)))
            )
            in_channels = stage.down_width + stage.width
            norms.append(ElasticBR(in_channels))
        self.downs, self.stages, self.norms = nn.ModuleList(downs), nn.ModuleList(stages), nn.ModuleList(norms)
        self.enc_head = nn.Conv2d(in_channels, classes, 1, bias=False)
        self.dec_bn1 = nn.BatchNorm2d(classes, eps=BN_EPS)
        self.skip = nn.Conv2d(largest.stages[0].width, classes, 1, bias=False)
        self.skip_br = ElasticBR(classes)
        self.dec_bn2 = nn.BatchNorm2d(classes, eps=BN_EPS)
        self.head_conv = nn.Conv2d(classes, classes, 3, 1, 1, bias=False)
        self.up = upsample(2)

    def fits(self, config: SINetConfig) -> str | None:
        """Why ``config`` is not a sub-network of this supernet (None: it is)."""
        top = self.largest
        if not isinstance(config, SINetConfig):
            return f"a {config.family} network, not sinet"
        if config.num_classes != top.num_classes:
            return f"{config.num_classes} classes, the supernet has {top.num_classes}"
        if config.stem_width > top.stem_width:
            return "wider than the supernet"
        for stage, limit in zip(config.stages, top.stages):
            if stage.down_width > limit.down_width or stage.width > limit.width or len(stage.blocks) > len(limit.blocks):
                return "a stage wider or deeper than the supernet's"
            if stage.se_hidden is not None:
                return "pruned channel overrides"
            for block in stage.blocks:
                if block.reduced_width is not None or block.branch_widths is not None:
                    return "pruned channel overrides"
                if isinstance(block, C3Block):
                    if self.c3 is None:
                        return "a C3 block (this supernet holds S2 blocks)"
                    if block.num_branches > self.c3["branches"] or max(block.dilation_rates) > self.c3["max_rate"]:
                        return "more branches or a larger dilation rate than the supernet's"
                else:
                    if self.s2 is None:
                        return "an S2 block (this supernet holds C3 blocks)"
                    if block.num_branches > self.s2["branches"]:
                        return "more branches than the supernet's"
                    if any(b.kernel_size > self.s2["max_kernel"] or b.pool_size > self.s2["max_pool"] for b in block.branches):
                        return "a larger kernel or pooling than the supernet's"
        return None

    def _check(self, config) -> None:
        reason = self.fits(config)
        if reason is not None:
            raise ValueError(f"not a sub-network of this supernet: {reason}")

    def _maps(self, config: SINetConfig) -> list[torch.Tensor]:
        """Supernet channels of each down-sampler's input: the stem, then [down, last] of stage 1."""
        top = self.largest
        first = config.stages[0]
        return [torch.arange(config.stem_width), parts((0, first.down_width), (top.stages[0].down_width, first.width))]

    @staticmethod
    def _hidden(stage, in_channels: int) -> int | None:
        return None if stage.se_divide == 1 else in_channels // stage.se_divide

    def forward(self, x: torch.Tensor, config: SINetConfig, encoder_only: bool = False) -> torch.Tensor:
        self._check(config)
        maps = self._maps(config)
        top = self.largest
        c0 = slice(0, config.stem_width)
        y = self.stem_br(F.conv2d(x, self.stem.weight[c0], stride=2, padding=1), c0)
        skip = None
        for index, (stage, down, slots, norm) in enumerate(zip(config.stages, self.downs, self.stages, self.norms)):
            d = down(y, maps[index], self._hidden(stage, len(maps[index])), stage.down_width)
            own = torch.arange(stage.width)
            last = slots[0](d, torch.arange(stage.down_width), stage.blocks[0], stage.width, add=stage.down_width == stage.width)
            for block, slot in zip(stage.blocks[1:], slots[1:]):
                last = slot(last, own, block, stage.width, add=True)
            skip = last if skip is None else skip
            out_idx = parts((0, stage.down_width), (top.stages[index].down_width, stage.width))
            y = norm(torch.cat([d, last], 1), out_idx)
        encoded = F.conv2d(y, self.enc_head.weight[:, out_idx])
        if encoder_only:
            return encoded
        classes = slice(0, config.num_classes)
        coarse = bn(self.up(encoded), self.dec_bn1, classes)
        w0 = config.stages[0].width
        detail = self.skip_br(F.conv2d(skip, self.skip.weight[:, :w0]), classes)
        if config.information_blocking:
            detail = block_information(coarse, detail)
        y = bn(self.up(detail + coarse), self.dec_bn2, classes)
        return F.conv2d(self.up(y), self.head_conv.weight, padding=1)

    @torch.no_grad()
    def subnet(self, config: SINetConfig) -> SINet:
        """The sub-network ``config`` as a standalone SINet with the supernet's weights."""
        self._check(config)
        net = SINet(config)
        maps = self._maps(config)
        top = self.largest
        c0 = slice(0, config.stem_width)
        net.stem.conv.weight.data.copy_(self.stem.weight[c0])
        self.stem_br.copy_into(net.stem, c0)
        for index, (stage, down, slots, norm, target_down, target) in enumerate(zip(config.stages, self.downs, self.stages, self.norms, net.downs, net.stages)):
            down.copy_into(target_down, maps[index], self._hidden(stage, len(maps[index])), stage.down_width)
            own = torch.arange(stage.width)
            for i, (block, slot, module) in enumerate(zip(stage.blocks, slots, target.blocks)):
                slot.copy_into(module, torch.arange(stage.down_width) if i == 0 else own, block, stage.width)
            out_idx = parts((0, stage.down_width), (top.stages[index].down_width, stage.width))
            norm.copy_into(target.norm, out_idx)
        net.enc_head.weight.data.copy_(self.enc_head.weight[:, out_idx])
        classes = slice(0, config.num_classes)
        copy_bn(net.dec_bn1, self.dec_bn1, classes)
        net.skip.conv.weight.data.copy_(self.skip.weight[:, : config.stages[0].width])
        self.skip_br.copy_into(net.skip, classes)
        copy_bn(net.dec_bn2, self.dec_bn2, classes)
        net.head_conv.weight.data.copy_(self.head_conv.weight)
        return net


def largest_of(stem: int, downs: tuple[int, int], widths: tuple[int, int], depths: tuple[int, int], block, num_classes: int) -> SINetConfig:
    """The largest config of a space: every width and depth at its maximum, each slot ``block``,
    full squeeze-excite, information blocking on."""
    from lightseg_nas.families.sinet import SINetStage

    stages = tuple(SINetStage(down_width=d, se_divide=1, width=w, blocks=(block,) * n) for d, w, n in zip(downs, widths, depths))
    return SINetConfig(num_classes=num_classes, stem_width=stem, stages=stages, information_blocking=True)

