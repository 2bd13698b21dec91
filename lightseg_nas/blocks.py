"""Building blocks of both families, written from docs/networks.md.

Numerical details (BatchNorm eps, padding, where PReLU sits) are those of the released
networks: the exactness tests in tests/test_presets.py hold them in place.
"""

from __future__ import annotations

import torch
from torch import nn

from lightseg_nas.config import C3Block, S2Block, block_widths

# The released code uses eps=1e-3 for BatchNorm in BR/CBR units and in S2 branches, and
# PyTorch's default 1e-5 inside C3 branches and in ExtremeC3Net's coarse decoder path.
BN_EPS = 1e-3
BN_EPS_C3_BRANCH = 1e-5


def upsample(scale: int) -> nn.Module:
    # Bilinear with align_corners=True is what nn.UpsamplingBilinear2d did in the papers' code.
    return nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=True)


class ImagePool(nn.AvgPool2d):
    """Average-pooling of the input image for ExtremeC3Net's image injection.

    A type of its own so that tools that trace channels (Torch-Pruning's DepGraph) can be
    told it always carries the image's 3 channels: nothing upstream of it says so."""

    channels = 3

    def __init__(self):
        super().__init__(2, 2)


class GroupedConv2d(nn.Conv2d):
    """The S2 module's grouped 1x1 reduce conv, as a type of its own.

    With as many groups as outputs it looks depthwise to tools that only compare counts
    (Torch-Pruning then ties its inputs to its outputs); its inputs and outputs are separate
    channel dimensions."""


class BNPReLU(nn.Module):
    """BR: BatchNorm then a per-channel PReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class ConvBNPReLU(nn.Module):
    """CBR: bias-free conv with 'same' padding, BatchNorm, PReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class C3Branch(nn.Module):
    """One C3 branch: a dilated depthwise 3x3 then a pointwise conv.

    For dilation d > 1 a "concentrated" factorised depthwise pair (m x 1, 1 x m with
    m = 2d - 1) precedes the dilated conv, so the module also sees the dense neighbourhood
    the dilation skips.
    """

    def __init__(self, in_channels: int, out_channels: int, dilation: int):
        super().__init__()
        if dilation == 1:
            layers = [
                nn.Conv2d(in_channels, in_channels, 3, 1, 1, groups=in_channels, bias=False),
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
            ]
        else:
            m = 2 * dilation - 1
            layers = [
                nn.Conv2d(in_channels, in_channels, (m, 1), 1, (dilation - 1, 0), groups=in_channels, bias=False),
                nn.BatchNorm2d(in_channels, eps=BN_EPS_C3_BRANCH),
                nn.PReLU(in_channels),
                nn.Conv2d(in_channels, in_channels, (1, m), 1, (0, dilation - 1), groups=in_channels, bias=False),
                nn.BatchNorm2d(in_channels, eps=BN_EPS_C3_BRANCH),
                nn.Conv2d(in_channels, in_channels, 3, 1, dilation, dilation=dilation, groups=in_channels, bias=False),
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
            ]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class C3Module(nn.Module):
    """Advanced C3 module: reduce to width // G, G dilated branches, concat, (+input), BR."""

    def __init__(self, in_channels: int, out_channels: int, block: C3Block, stride: int = 1, add: bool = False):
        super().__init__()
        reduced, branch_widths = block_widths(block, out_channels)
        # The stride-2 variant reduces with a 3x3 conv; the others with a 1x1.
        kernel = 3 if stride == 2 else 1
        self.reduce = nn.Conv2d(in_channels, reduced, kernel, stride, (kernel - 1) // 2, bias=False)
        self.branches = nn.ModuleList(
            C3Branch(reduced, width, rate) for width, rate in zip(branch_widths, block.dilation_rates)
        )
        self.add = add
        self.norm = BNPReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.reduce(x)
        out = torch.cat([branch(reduced) for branch in self.branches], 1)
        if self.add:
            out = out + x
        return self.norm(out)


class S2Branch(nn.Module):
    """Spatial squeeze branch: avg-pool by a, depthwise k x k, BN, PReLU, pointwise, upsample, BN."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, pool_size: int):
        super().__init__()
        self.pool = nn.AvgPool2d(pool_size, pool_size) if pool_size > 1 else nn.Identity()
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, kernel_size, 1, (kernel_size - 1) // 2, groups=in_channels, bias=False
        )
        self.depthwise_bn = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.act = nn.PReLU(in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.upsample = upsample(pool_size) if pool_size > 1 else nn.Identity()
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.depthwise_bn(self.depthwise(self.pool(x))))
        return self.bn(self.upsample(self.pointwise(y)))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width).transpose(1, 2).contiguous()
    return x.view(batch, channels, height, width)


class S2Module(nn.Module):
    """S2 module: grouped 1x1 reduce, channel shuffle, G squeeze branches, concat, (+input), BR."""

    def __init__(self, in_channels: int, out_channels: int, block: S2Block, add: bool = False):
        super().__init__()
        groups = block.num_branches
        reduced, branch_widths = block_widths(block, out_channels)
        self.groups = groups
        self.reduce = GroupedConv2d(in_channels, reduced, 1, groups=groups, bias=False)
        self.branches = nn.ModuleList(
            S2Branch(reduced, width, branch.kernel_size, branch.pool_size)
            for width, branch in zip(branch_widths, block.branches)
        )
        self.add = add
        self.norm = BNPReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = channel_shuffle(self.reduce(x), self.groups)
        out = torch.cat([branch(reduced) for branch in self.branches], 1)
        if self.add:
            out = out + x
        return self.norm(out)


def make_block(block: C3Block | S2Block, in_channels: int, out_channels: int, stride: int = 1) -> nn.Module:
    """A block adds its input exactly when it keeps the width and the resolution."""
    add = in_channels == out_channels and stride == 1
    if isinstance(block, C3Block):
        return C3Module(in_channels, out_channels, block, stride=stride, add=add)
    if stride != 1:
        raise ValueError("S2 blocks do not stride")
    return S2Module(in_channels, out_channels, block, add=add)


class SqueezeExcite(nn.Module):
    """SINet's squeeze-excite: global average, FC(+PReLU) layers, scale the map (no sigmoid)."""

    def __init__(self, channels: int, divide: int, hidden: int | None = None):
        super().__init__()
        if divide > 1:
            hidden = hidden if hidden is not None else channels // divide
            layers = [nn.Linear(channels, hidden), nn.PReLU(hidden), nn.Linear(hidden, channels), nn.PReLU(channels)]
        else:
            layers = [nn.Linear(channels, channels), nn.PReLU(channels)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.layers(x.mean((2, 3)))
        return x * weights[:, :, None, None]


class SEDown(nn.Module):
    """SE separable down-sampler: depthwise 3x3 stride 2, squeeze-excite, pointwise, BN, PReLU."""

    def __init__(self, in_channels: int, out_channels: int, divide: int, se_hidden: int | None = None):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False)
        self.se = SqueezeExcite(in_channels, divide, se_hidden)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.pointwise(self.se(self.depthwise(x)))))
