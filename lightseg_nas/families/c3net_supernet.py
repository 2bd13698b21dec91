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

from lightseg_nas.families.blocks import BN_EPS, BN_EPS_C3_BRANCH, C3Block, ImagePool, block_widths, upsample
from lightseg_nas.families.c3net import IMAGE_CHANNELS, C3Net, C3NetConfig, C3Stage

__all__ = ["C3NetSupernet"]


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d, idx) -> torch.Tensor:
    """BatchNorm over the channels ``idx`` of ``bn``: batch statistics while training (none
    are kept), the stored ones in eval mode."""
    if bn.training:
        return F.batch_norm(x, None, None, bn.weight[idx], bn.bias[idx], True, 0.0, bn.eps)
    return F.batch_norm(x, bn.running_mean[idx], bn.running_var[idx], bn.weight[idx], bn.bias[idx], False, 0.0, bn.eps)


def _copy_bn(target: nn.BatchNorm2d, source: nn.BatchNorm2d, idx) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(target, name).data.copy_(getattr(source, name).data[idx])


def _parts(*parts: tuple[int, int]) -> torch.Tensor:
    """Supernet channel indices of a concatenation: (offset, count) of each part."""
    return torch.cat([torch.arange(offset, offset + count) for offset, count in parts])


class _Branch(nn.Module):
    def __init__(self, channels: int, width: int, max_rate: int):
        super().__init__()
        self.m = 2 * max_rate - 1
        self.vertical = nn.Conv2d(channels, channels, (self.m, 1), groups=channels, bias=False)
        self.bn1 = nn.BatchNorm2d(channels, eps=BN_EPS_C3_BRANCH)
        self.act = nn.PReLU(channels)
        self.horizontal = nn.Conv2d(channels, channels, (1, self.m), groups=channels, bias=False)
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPS_C3_BRANCH)
        self.depthwise = nn.Conv2d(channels, channels, 3, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, width, 1, bias=False)

    def _crop(self, rate: int) -> tuple[torch.Tensor, torch.Tensor]:
        m, start = 2 * rate - 1, (self.m - (2 * rate - 1)) // 2
        return self.vertical.weight[:, :, start : start + m, :], self.horizontal.weight[:, :, :, start : start + m]

    def forward(self, x: torch.Tensor, reduced: int, rate: int, rows: slice) -> torch.Tensor:
        r = slice(0, reduced)
        if rate > 1:
            vertical, horizontal = self._crop(rate)
            x = F.conv2d(x, vertical[r], padding=(rate - 1, 0), groups=reduced)
            x = F.prelu(_bn(x, self.bn1, r), self.act.weight[r])
            x = F.conv2d(x, horizontal[r], padding=(0, rate - 1), groups=reduced)
            x = _bn(x, self.bn2, r)
        x = F.conv2d(x, self.depthwise.weight[r], padding=rate, dilation=rate, groups=reduced)
        return F.conv2d(x, self.pointwise.weight[rows, r])

    def copy_into(self, branch: nn.Module, reduced: int, rate: int, rows: slice) -> None:
        """Fill a standalone C3Branch (lightseg_nas.families.blocks) of this rate."""
        r = slice(0, reduced)
        layers = list(branch.layers)
        if rate > 1:
            vertical, horizontal = self._crop(rate)
            layers[0].weight.data.copy_(vertical[r])
            _copy_bn(layers[1], self.bn1, r)
            layers[2].weight.data.copy_(self.act.weight[r])
            layers[3].weight.data.copy_(horizontal[r])
            _copy_bn(layers[4], self.bn2, r)
        layers[-2].weight.data.copy_(self.depthwise.weight[r])
        layers[-1].weight.data.copy_(self.pointwise.weight[rows, r])


class _Block(nn.Module):
    """A C3 block slot: reduce conv, up to ``max_branches`` branches, BR."""

    def __init__(self, in_channels: int, width: int, max_branches: int, max_rate: int, stride: int = 1):
        super().__init__()
        self.stride = stride
        kernel = 3 if stride == 2 else 1
        self.reduce = nn.Conv2d(in_channels, width, kernel, stride, (kernel - 1) // 2, bias=False)
        self.branches = nn.ModuleList(_Branch(width, width, max_rate) for _ in range(max_branches))
        self.bn = nn.BatchNorm2d(width, eps=BN_EPS)
        self.act = nn.PReLU(width)

    def _plan(self, block: C3Block, width: int):
        reduced, widths = block_widths(block, width)
        offsets = [sum(widths[:i]) for i in range(len(widths))]
        return reduced, [(rate, slice(offset, offset + w)) for rate, offset, w in zip(block.dilation_rates, offsets, widths)]

    def forward(self, x: torch.Tensor, in_idx: torch.Tensor, block: C3Block, width: int, add: bool) -> torch.Tensor:
        reduced, plan = self._plan(block, width)
        y = F.conv2d(x, self.reduce.weight[:reduced][:, in_idx], stride=self.stride, padding=self.reduce.padding)
        out = torch.cat([branch(y, reduced, rate, rows) for branch, (rate, rows) in zip(self.branches, plan)], 1)
        if add:
            out = out + x
        w = slice(0, width)
        return F.prelu(_bn(out, self.bn, w), self.act.weight[w])

    def copy_into(self, module: nn.Module, in_idx: torch.Tensor, block: C3Block, width: int) -> None:
        """Fill a standalone C3Module (lightseg_nas.families.blocks)."""
        reduced, plan = self._plan(block, width)
        module.reduce.weight.data.copy_(self.reduce.weight[:reduced][:, in_idx])
        for branch, target, (rate, rows) in zip(self.branches, module.branches, plan):
            branch.copy_into(target, reduced, rate, rows)
        w = slice(0, width)
        _copy_bn(module.norm.bn, self.bn, w)
        module.norm.act.weight.data.copy_(self.act.weight[w])


class _BR(nn.Module):
    def __init__(self, channels: int, eps: float = BN_EPS):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=eps)
        self.act = nn.PReLU(channels)

    def forward(self, x, idx):
        return F.prelu(_bn(x, self.bn, idx), self.act.weight[idx])

    def copy_into(self, module: nn.Module, idx) -> None:
        _copy_bn(module.bn, self.bn, idx)
        module.act.weight.data.copy_(self.act.weight[idx])


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
        self.stem_br = _BR(c0)
        self.stem_norm = _BR(c0 + IMAGE_CHANNELS)
        inputs = (c0 + IMAGE_CHANNELS, 2 * s1.width + IMAGE_CHANNELS)
        self.stages = nn.ModuleList(
            nn.ModuleList(
                _Block(inputs[index] if i == 0 else stage.width, stage.width, branches, max_rate, 2 if (index == 0 and i == 0) else 1)
                for i in range(len(stage.blocks))
            )
            for index, stage in enumerate((s1, s2))
        )
        self.stage_norms = nn.ModuleList([_BR(2 * s1.width + IMAGE_CHANNELS), _BR(2 * s2.width)])
        self.coarse = nn.Conv2d(2 * s2.width, c3, 1, bias=False)
        self.coarse_bn = nn.BatchNorm2d(c3, eps=BN_EPS_C3_BRANCH)
        self.fine_conv = nn.Conv2d(IMAGE_CHANNELS, c3, 3, 2, 1, bias=False)
        self.fine_block = _Block(c3, c3, branches, max_rate)
        self.head_norm = _BR(c3)
        self.head_conv = nn.Conv2d(c3, largest.num_classes, 1, bias=False)
        self.up = upsample(2)

    # channel indices, in the supernet, of each concatenation of a sub-network
    def _maps(self, config: C3NetConfig) -> dict[str, torch.Tensor]:
        top = self.largest
        c0, (w1, w2) = config.stem_width, (s.width for s in config.stages)
        m1, m2 = (s.width for s in top.stages)
        return {
            "stem": _parts((0, c0), (top.stem_width, IMAGE_CHANNELS)),
            "stage0": _parts((0, w1), (m1, w1), (2 * m1, IMAGE_CHANNELS)),
            "stage1": _parts((0, w2), (m2, w2)),
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
        y = self.up(_bn(F.conv2d(y, self.coarse.weight[c3][:, in_idx]), self.coarse_bn, c3))
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
        _copy_bn(net.coarse[1], self.coarse_bn, c3)
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
