"""The blocks every family's slots take: their configs, their modules, and what pruning and
read-back need of them.

* ``C3Block``/``C3Module``: ExtremeC3Net's advanced concentrated-comprehensive convolution
  (reduce, G dilated depthwise branches, concatenate);
* ``S2Block``/``S2Module``: SINet's spatial squeeze module (grouped reduce, channel shuffle,
  G pooled depthwise branches, concatenate);
* the small units both skeletons use (CBR, BR, the SE down-sampler, a stage of blocks).

Numerical details (BatchNorm eps, padding, where PReLU sits) are those of the released
networks, written from docs/networks.md: the exactness tests in tests/test_presets.py hold
them in place. Modules expose the widths pruning changes as properties that read the live
layers (``out_channels``, ``reduced_width``, ``width``, ``hidden``), never stored copies.
"""

from __future__ import annotations

import itertools
import math
from typing import Annotated, Literal, Union

import torch
from pydantic import Field, model_validator
from torch import nn

from lightseg_nas.families.base import Axis, Frozen, Width, optional

# The released code uses eps=1e-3 for BatchNorm in BR/CBR units and in S2 branches, and
# PyTorch's default 1e-5 inside C3 branches and in ExtremeC3Net's coarse decoder path.
BN_EPS = 1e-3
BN_EPS_C3_BRANCH = 1e-5


# --- configs -------------------------------------------------------------------------


class C3Block(Frozen):
    """Advanced concentrated-comprehensive convolution module (ExtremeC3Net)."""

    type: Literal["c3"] = "c3"
    # One dilation rate per branch; the number of rates is the branch count.
    dilation_rates: tuple[Annotated[int, Field(ge=1, le=16)], ...] = Field(min_length=1, max_length=8)
    # Channel overrides that pruning produces (absent = derived from the block's width).
    reduced_width: Width | None = optional()
    branch_widths: tuple[Width, ...] | None = optional()

    @property
    def num_branches(self) -> int:
        return len(self.dilation_rates)


class S2Branch(Frozen):
    """One spatial-squeeze branch: average-pool, depthwise conv, pointwise conv, upsample."""

    # Depthwise kernel size; odd so that padding (k-1)/2 keeps the size.
    kernel_size: Annotated[int, Field(ge=1, le=15)]
    # Average-pooling factor applied before the depthwise conv (1 = no pooling).
    pool_size: Annotated[int, Field(ge=1, le=8)]

    @model_validator(mode="after")
    def _odd_kernel(self) -> "S2Branch":
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        return self


class S2Block(Frozen):
    """Spatial-squeeze module (SINet): grouped reduce, channel shuffle, parallel S2 branches."""

    type: Literal["s2"] = "s2"
    branches: tuple[S2Branch, ...] = Field(min_length=1, max_length=8)
    # Channel overrides that pruning produces (absent = derived from the block's width).
    reduced_width: Width | None = optional()
    branch_widths: tuple[Width, ...] | None = optional()

    @property
    def num_branches(self) -> int:
        return len(self.branches)


Block = Annotated[Union[C3Block, S2Block], Field(discriminator="type")]


def block_widths(block: C3Block | S2Block, out_channels: int) -> tuple[int, tuple[int, ...]]:
    """(reduced channels, per-branch output channels) of a block of this output width.

    Derived: reduced = width // branches, every branch outputs that, the first branch also
    the remainder. A pruned block states either or both explicitly."""
    groups = block.num_branches
    derived = out_channels // groups
    reduced = block.reduced_width if block.reduced_width is not None else derived
    if block.branch_widths is not None:
        return reduced, tuple(block.branch_widths)
    remainder = out_channels - groups * derived
    return reduced, tuple(derived + (remainder if index == 0 else 0) for index in range(groups))


def check_block(block: C3Block | S2Block, in_channels: int, out_channels: int, where: str) -> None:
    """Raise ValueError if a block cannot be built between these channel counts."""
    groups = block.num_branches
    if out_channels // groups < 1:
        raise ValueError(f"{where}: width {out_channels} is too small for {groups} branches")
    reduced, branch_widths = block_widths(block, out_channels)
    if len(branch_widths) != groups:
        raise ValueError(f"{where}: {len(branch_widths)} branch_widths for {groups} branches")
    if sum(branch_widths) != out_channels:
        raise ValueError(f"{where}: branch_widths sum to {sum(branch_widths)}, not the width {out_channels}")
    if isinstance(block, S2Block):
        # The reduce conv is grouped (groups = branch count) and is followed by a channel
        # shuffle with the same groups: both counts must divide.
        if in_channels % groups:
            raise ValueError(
                f"{where}: {groups} branches do not divide the {in_channels} input channels "
                "of the grouped reduce conv"
            )
        if reduced % groups:
            raise ValueError(
                f"{where}: {groups} branches do not divide the {reduced} reduced channels "
                f"of the grouped conv and channel shuffle"
            )
        for index, branch in enumerate(block.branches):
            if branch.pool_size > 1 and branch.kernel_size > 7:
                raise ValueError(f"{where}.branch{index}: kernel {branch.kernel_size} with pooling is too large")


# --- modules -------------------------------------------------------------------------


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

    @property
    def out_channels(self) -> int:
        return self.layers[-1].out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class _BranchedModule(nn.Module):
    """What C3 and S2 modules share: a reduce conv, branches concatenated, (+input), BR."""

    @property
    def reduced_width(self) -> int:
        return self.reduce.out_channels

    @property
    def branch_widths(self) -> tuple[int, ...]:
        return tuple(branch.out_channels for branch in self.branches)

    @property
    def width(self) -> int:
        return self.norm.bn.num_features


class C3Module(_BranchedModule):
    """Advanced C3 module: reduce to width // G, G dilated branches, concat, (+input), BR."""

    # How many equal chunks grouped convs of this block read its input in (none are grouped).
    input_groups = 1

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


class S2SqueezeBranch(nn.Module):
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

    @property
    def out_channels(self) -> int:
        return self.pointwise.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.depthwise_bn(self.depthwise(self.pool(x))))
        return self.bn(self.upsample(self.pointwise(y)))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width).transpose(1, 2).contiguous()
    return x.view(batch, channels, height, width)


class S2Module(_BranchedModule):
    """S2 module: grouped 1x1 reduce, channel shuffle, G squeeze branches, concat, (+input), BR."""

    def __init__(self, in_channels: int, out_channels: int, block: S2Block, add: bool = False):
        super().__init__()
        groups = block.num_branches
        reduced, branch_widths = block_widths(block, out_channels)
        self.groups = groups
        self.reduce = GroupedConv2d(in_channels, reduced, 1, groups=groups, bias=False)
        self.branches = nn.ModuleList(
            S2SqueezeBranch(reduced, width, branch.kernel_size, branch.pool_size)
            for width, branch in zip(branch_widths, block.branches)
        )
        self.add = add
        self.norm = BNPReLU(out_channels)

    @property
    def input_groups(self) -> int:
        return self.groups

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

    @property
    def hidden(self) -> int | None:
        """Hidden units (None: a single layer, nothing hidden to prune)."""
        return self.layers[0].out_features if len(self.layers) == 4 else None

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

    @property
    def width(self) -> int:
        return self.pointwise.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.pointwise(self.se(self.depthwise(x)))))


class StageBlocks(nn.Module):
    """A stage: an entry block then residual blocks, and the BR after its concatenation."""

    def __init__(self, blocks: list[nn.Module], norm_channels: int):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.norm = BNPReLU(norm_channels)

    @property
    def width(self) -> int:
        return self.blocks[0].width

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (entry block output, last block output)."""
        entry = self.blocks[0](x)
        y = entry
        for block in self.blocks[1:]:
            y = block(y)
        return entry, y


# --- what pruning and read-back need ----------------------------------------------------


def branch_slices(block: nn.Module) -> list[tuple[int, int]]:
    """(start, stop) of each branch's channels in a block's concatenated output."""
    edges = [0, *itertools.accumulate(block.branch_widths)]
    return list(zip(edges[:-1], edges[1:]))


def input_groups(blocks) -> int:
    """Equal chunks in which the grouped convs of these blocks read their common input."""
    return math.lcm(*(block.input_groups for block in blocks))


def block_axes(prefix: str, block: nn.Module) -> list[Axis]:
    if isinstance(block, C3Module):
        return [Axis(f"{prefix}.reduced", f"{prefix}.reduce")]
    return []  # an S2 reduce output passes a channel shuffle: it keeps its width


def stage_axes(prefix: str, stage: StageBlocks, root: str | None = None) -> list[Axis]:
    """The stage width (all blocks share it through the residual adds) and reduced widths.

    ``root``: a module upstream whose output is the stage's residual stream too (an entry
    block that adds its input ties the stage's input channels to its width)."""
    blocks = list(stage.blocks)
    guards = [slice_ for block in blocks for slice_ in branch_slices(block)]
    readers = blocks if root is not None else blocks[1:]
    axes = [Axis(f"{prefix}.width", root or f"{prefix}.blocks.0.norm.bn", input_groups(readers), guards)]
    for index, block in enumerate(blocks):
        axes += block_axes(f"{prefix}.blocks.{index}", block)
    return axes


def block_config_of(module: nn.Module, block: C3Block | S2Block, width: int) -> C3Block | S2Block:
    """The config of a (pruned) block module: overrides only where widths left the derived ones."""
    plain = block.model_copy(update={"reduced_width": None, "branch_widths": None})
    derived_reduced, derived_widths = block_widths(plain, width)
    return block.model_copy(
        update={
            "reduced_width": None if module.reduced_width == derived_reduced else module.reduced_width,
            "branch_widths": None if module.branch_widths == derived_widths else module.branch_widths,
        }
    )


def stage_blocks_of(stage: StageBlocks, blocks, width: int) -> tuple:
    return tuple(block_config_of(module, block, width) for module, block in zip(stage.blocks, blocks))
