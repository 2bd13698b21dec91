"""Elastic versions of the blocks of lightseg_nas/families/blocks.py, for weight-sharing
supernets: each holds the largest block of its slot and runs (or copies out) any smaller one.

Conventions every elastic module follows: widths are the first channels of a layer; a
block's branches each write their own slice of one shared output space (branch i of a
block with branch widths w takes rows [w_0 + ... + w_(i-1), + w_i) of its pointwise conv);
an input that is a concatenation arrives with ``in_idx``, the supernet channels its parts
sit at; kernels of a smaller size are the centre of the largest; batch norm uses batch
statistics while training (none are kept) and its stored ones in eval mode. ``copy_into``
fills the standalone module of the same block (blocks.py) with exactly these weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightseg_nas.families.blocks import BN_EPS, BN_EPS_C3_BRANCH, C3Block, S2Block, block_widths, channel_shuffle

__all__ = ["bn", "copy_bn", "parts", "ElasticBR", "ElasticC3Branch", "ElasticC3Block", "ElasticS2Branch", "ElasticS2Block", "ElasticSEDown", "ElasticSlot"]


def bn(x: torch.Tensor, norm: nn.BatchNorm2d, idx) -> torch.Tensor:
    """BatchNorm over the channels ``idx`` of ``norm``: batch statistics while training (none
    are kept), the stored ones in eval mode."""
    if norm.training:
        return F.batch_norm(x, None, None, norm.weight[idx], norm.bias[idx], True, 0.0, norm.eps)
    return F.batch_norm(x, norm.running_mean[idx], norm.running_var[idx], norm.weight[idx], norm.bias[idx], False, 0.0, norm.eps)


def copy_bn(target: nn.BatchNorm2d, source: nn.BatchNorm2d, idx) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(target, name).data.copy_(getattr(source, name).data[idx])


def parts(*parts: tuple[int, int]) -> torch.Tensor:
    """Supernet channel indices of a concatenation: (offset, count) of each part."""
    return torch.cat([torch.arange(offset, offset + count) for offset, count in parts])


class ElasticC3Branch(nn.Module):
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
            x = F.prelu(bn(x, self.bn1, r), self.act.weight[r])
            x = F.conv2d(x, horizontal[r], padding=(0, rate - 1), groups=reduced)
            x = bn(x, self.bn2, r)
        x = F.conv2d(x, self.depthwise.weight[r], padding=rate, dilation=rate, groups=reduced)
        return F.conv2d(x, self.pointwise.weight[rows, r])

    def copy_into(self, branch: nn.Module, reduced: int, rate: int, rows: slice) -> None:
        """Fill a standalone C3Branch (lightseg_nas.families.blocks) of this rate."""
        r = slice(0, reduced)
        layers = list(branch.layers)
        if rate > 1:
            vertical, horizontal = self._crop(rate)
            layers[0].weight.data.copy_(vertical[r])
            copy_bn(layers[1], self.bn1, r)
            layers[2].weight.data.copy_(self.act.weight[r])
            layers[3].weight.data.copy_(horizontal[r])
            copy_bn(layers[4], self.bn2, r)
        layers[-2].weight.data.copy_(self.depthwise.weight[r])
        layers[-1].weight.data.copy_(self.pointwise.weight[rows, r])


class ElasticC3Block(nn.Module):
    """A C3 block slot: reduce conv, up to ``max_branches`` branches, BR."""

    def __init__(self, in_channels: int, width: int, max_branches: int, max_rate: int, stride: int = 1):
        super().__init__()
        self.stride = stride
        kernel = 3 if stride == 2 else 1
        self.reduce = nn.Conv2d(in_channels, width, kernel, stride, (kernel - 1) // 2, bias=False)
        self.branches = nn.ModuleList(ElasticC3Branch(width, width, max_rate) for _ in range(max_branches))
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
        return F.prelu(bn(out, self.bn, w), self.act.weight[w])

    def copy_into(self, module: nn.Module, in_idx: torch.Tensor, block: C3Block, width: int) -> None:
        """Fill a standalone C3Module (lightseg_nas.families.blocks)."""
        reduced, plan = self._plan(block, width)
        module.reduce.weight.data.copy_(self.reduce.weight[:reduced][:, in_idx])
        for branch, target, (rate, rows) in zip(self.branches, module.branches, plan):
            branch.copy_into(target, reduced, rate, rows)
        w = slice(0, width)
        copy_bn(module.norm.bn, self.bn, w)
        module.norm.act.weight.data.copy_(self.act.weight[w])


class ElasticBR(nn.Module):
    def __init__(self, channels: int, eps: float = BN_EPS):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=eps)
        self.act = nn.PReLU(channels)

    def forward(self, x, idx):
        return F.prelu(bn(x, self.bn, idx), self.act.weight[idx])

    def copy_into(self, module: nn.Module, idx) -> None:
        copy_bn(module.bn, self.bn, idx)
        module.act.weight.data.copy_(self.act.weight[idx])




class ElasticS2Branch(nn.Module):
    """A spatial-squeeze branch of any kernel up to ``max_kernel`` (the centre of the
    largest) and any pooling (no weights)."""

    def __init__(self, channels: int, width: int, max_kernel: int):
        super().__init__()
        self.k = max_kernel
        self.depthwise = nn.Conv2d(channels, channels, max_kernel, groups=channels, bias=False)
        self.depthwise_bn = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.act = nn.PReLU(channels)
        self.pointwise = nn.Conv2d(channels, width, 1, bias=False)
        self.bn = nn.BatchNorm2d(width, eps=BN_EPS)

    def _kernel(self, kernel: int) -> torch.Tensor:
        start = (self.k - kernel) // 2
        return self.depthwise.weight[:, :, start : start + kernel, start : start + kernel]

    def forward(self, x: torch.Tensor, reduced: int, kernel: int, pool: int, rows: slice) -> torch.Tensor:
        r = slice(0, reduced)
        if pool > 1:
            x = F.avg_pool2d(x, pool, pool)
        y = F.conv2d(x, self._kernel(kernel)[r], padding=(kernel - 1) // 2, groups=reduced)
        y = F.prelu(bn(y, self.depthwise_bn, r), self.act.weight[r])
        y = F.conv2d(y, self.pointwise.weight[rows, r])
        if pool > 1:
            y = F.interpolate(y, scale_factor=pool, mode="bilinear", align_corners=True)
        return bn(y, self.bn, rows)

    def copy_into(self, branch: nn.Module, reduced: int, kernel: int, rows: slice) -> None:
        """Fill a standalone S2SqueezeBranch (lightseg_nas.families.blocks)."""
        r = slice(0, reduced)
        branch.depthwise.weight.data.copy_(self._kernel(kernel)[r])
        copy_bn(branch.depthwise_bn, self.depthwise_bn, r)
        branch.act.weight.data.copy_(self.act.weight[r])
        branch.pointwise.weight.data.copy_(self.pointwise.weight[rows, r])
        copy_bn(branch.bn, self.bn, rows)


class ElasticS2Block(nn.Module):
    """An S2 block slot: the grouped reduce conv held dense (each group count takes its
    block-diagonal part), channel shuffle, up to ``max_branches`` branches, BR."""

    def __init__(self, in_channels: int, width: int, max_branches: int, max_kernel: int):
        super().__init__()
        self.reduce = nn.Parameter(torch.empty(width, in_channels))
        nn.init.kaiming_uniform_(self.reduce, a=5**0.5)
        self.branches = nn.ModuleList(ElasticS2Branch(width, width, max_kernel) for _ in range(max_branches))
        self.bn = nn.BatchNorm2d(width, eps=BN_EPS)
        self.act = nn.PReLU(width)

    def _reduce_weight(self, in_idx: torch.Tensor, reduced: int, groups: int) -> torch.Tensor:
        """(reduced, inputs / groups, 1, 1): output o of group g reads that group's inputs."""
        group_of = torch.arange(reduced) // (reduced // groups)
        columns = in_idx.view(groups, -1)[group_of]
        return self.reduce[:reduced].gather(1, columns)[:, :, None, None]

    def _plan(self, block: S2Block, width: int):
        reduced, widths = block_widths(block, width)
        offsets = [sum(widths[:i]) for i in range(len(widths))]
        return reduced, [(b, slice(offset, offset + w)) for b, offset, w in zip(block.branches, offsets, widths)]

    def forward(self, x: torch.Tensor, in_idx: torch.Tensor, block: S2Block, width: int, add: bool) -> torch.Tensor:
        groups = block.num_branches
        reduced, plan = self._plan(block, width)
        y = channel_shuffle(F.conv2d(x, self._reduce_weight(in_idx, reduced, groups), groups=groups), groups)
        out = torch.cat([branch(y, reduced, b.kernel_size, b.pool_size, rows) for branch, (b, rows) in zip(self.branches, plan)], 1)
        if add:
            out = out + x
        w = slice(0, width)
        return F.prelu(bn(out, self.bn, w), self.act.weight[w])

    def copy_into(self, module: nn.Module, in_idx: torch.Tensor, block: S2Block, width: int) -> None:
        """Fill a standalone S2Module (lightseg_nas.families.blocks)."""
        reduced, plan = self._plan(block, width)
        module.reduce.weight.data.copy_(self._reduce_weight(in_idx, reduced, block.num_branches))
        for branch, target, (b, rows) in zip(self.branches, module.branches, plan):
            branch.copy_into(target, reduced, b.kernel_size, rows)
        w = slice(0, width)
        copy_bn(module.norm.bn, self.bn, w)
        module.norm.act.weight.data.copy_(self.act.weight[w])


class ElasticSlot(nn.Module):
    """A block slot that takes a C3 or an S2 block (the hybrid space); either part may be
    absent (None) when the space never puts that type there."""

    def __init__(self, in_channels: int, width: int, c3: dict | None, s2: dict | None, stride: int = 1):
        super().__init__()
        self.c3 = ElasticC3Block(in_channels, width, c3["branches"], c3["max_rate"], stride) if c3 else None
        self.s2 = ElasticS2Block(in_channels, width, s2["branches"], s2["max_kernel"]) if s2 else None

    def _part(self, block):
        part = self.c3 if isinstance(block, C3Block) else self.s2
        if part is None:
            raise ValueError(f"this slot holds no {block.type} block")
        return part

    def forward(self, x, in_idx, block, width, add):
        return self._part(block)(x, in_idx, block, width, add)

    def copy_into(self, module, in_idx, block, width):
        self._part(block).copy_into(module, in_idx, block, width)


class ElasticSEDown(nn.Module):
    """SINet's SE separable down-sampler with any input and output width and any SE
    reduction: a single full layer (reduction 1) or a hidden layer of any width."""

    def __init__(self, in_channels: int, width: int, max_hidden: int):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False)
        self.full = nn.Linear(in_channels, in_channels)
        self.full_act = nn.PReLU(in_channels)
        self.down = nn.Linear(in_channels, max_hidden)
        self.down_act = nn.PReLU(max_hidden)
        self.up = nn.Linear(max_hidden, in_channels)
        self.up_act = nn.PReLU(in_channels)
        self.pointwise = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn = nn.BatchNorm2d(width, eps=BN_EPS)
        self.act = nn.PReLU(width)

    def _layers(self, in_idx: torch.Tensor, hidden: int | None):
        """[(weight, bias, prelu weight)] of the squeeze-excite's layers."""
        if hidden is None:
            return [(self.full.weight[in_idx][:, in_idx], self.full.bias[in_idx], self.full_act.weight[in_idx])]
        h = slice(0, hidden)
        return [
            (self.down.weight[h][:, in_idx], self.down.bias[h], self.down_act.weight[h]),
            (self.up.weight[in_idx][:, h], self.up.bias[in_idx], self.up_act.weight[in_idx]),
        ]

    def forward(self, x: torch.Tensor, in_idx: torch.Tensor, hidden: int | None, width: int) -> torch.Tensor:
        y = F.conv2d(x, self.depthwise.weight[in_idx], stride=2, padding=1, groups=len(in_idx))
        weights = y.mean((2, 3))
        for weight, bias, slope in self._layers(in_idx, hidden):
            weights = F.prelu(F.linear(weights, weight, bias), slope)
        y = y * weights[:, :, None, None]
        w = slice(0, width)
        y = F.conv2d(y, self.pointwise.weight[w][:, in_idx])
        return F.prelu(bn(y, self.bn, w), self.act.weight[w])

    def copy_into(self, module: nn.Module, in_idx: torch.Tensor, hidden: int | None, width: int) -> None:
        """Fill a standalone SEDown (lightseg_nas.families.blocks)."""
        module.depthwise.weight.data.copy_(self.depthwise.weight[in_idx])
        linears = [layer for layer in module.se.layers if isinstance(layer, nn.Linear)]
        prelus = [layer for layer in module.se.layers if isinstance(layer, nn.PReLU)]
        for (weight, bias, slope), linear, prelu in zip(self._layers(in_idx, hidden), linears, prelus):
            linear.weight.data.copy_(weight)
            linear.bias.data.copy_(bias)
            prelu.weight.data.copy_(slope)
        w = slice(0, width)
        module.pointwise.weight.data.copy_(self.pointwise.weight[w][:, in_idx])
        copy_bn(module.bn, self.bn, w)
        module.act.weight.data.copy_(self.act.weight[w])
