"""The architecture description: the one contract between search, training, cost and export.

A network is a frozen, nested, typed config: network -> stages -> blocks -> branches.
Two macro-architectures ("families") exist, each the skeleton of a published network:

* ``c3net``: ExtremeC3Net's skeleton (input-image injection, two stages at 1/4 resolution,
  a coarse path plus an optional fine path in the decoder);
* ``sinet``: SINet's skeleton (SE separable down-samplers, two stages at 1/4 and 1/8,
  an optional information-blocking decoder).

Every block slot takes either module type (``C3Block`` with dilation rates, ``S2Block`` with
squeeze kernels and pooling), so a "hybrid" network is just a config with mixed blocks.

Configs validate themselves on construction, round-trip exactly through JSON, and have an id
that is a short hash of their canonical JSON (used to skip duplicates and to name files).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lightseg_nas.errors import UserError

SCHEMA_VERSION = 1

__all__ = [
    "SCHEMA_VERSION",
    "C3Block",
    "S2Branch",
    "S2Block",
    "Block",
    "C3Stage",
    "SINetStage",
    "C3NetConfig",
    "SINetConfig",
    "NetworkConfig",
    "block_widths",
    "config_from_dict",
    "config_from_json",
    "load_config",
    "arch_id",
]


class _Frozen(BaseModel):
    # extra="forbid": an unknown key in a config file is an error, not silently dropped.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


_Width = Annotated[int, Field(ge=1, le=1024)]
# Optional fields are left out of the JSON when absent, so configs written before they
# existed keep their text and their arch_id.
def _optional():
    return Field(None, exclude_if=lambda value: value is None)


def block_widths(block: "C3Block | S2Block", out_channels: int) -> tuple[int, tuple[int, ...]]:
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


class C3Block(_Frozen):
    """Advanced concentrated-comprehensive convolution module (ExtremeC3Net)."""

    type: Literal["c3"] = "c3"
    # One dilation rate per branch; the number of rates is the branch count.
    dilation_rates: tuple[Annotated[int, Field(ge=1, le=16)], ...] = Field(min_length=1, max_length=8)
    # Channel overrides that pruning produces (absent = derived from the block's width).
    reduced_width: _Width | None = _optional()
    branch_widths: tuple[_Width, ...] | None = _optional()

    @property
    def num_branches(self) -> int:
        return len(self.dilation_rates)


class S2Branch(_Frozen):
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


class S2Block(_Frozen):
    """Spatial-squeeze module (SINet): grouped reduce, channel shuffle, parallel S2 branches."""

    type: Literal["s2"] = "s2"
    branches: tuple[S2Branch, ...] = Field(min_length=1, max_length=8)
    # Channel overrides that pruning produces (absent = derived from the block's width).
    reduced_width: _Width | None = _optional()
    branch_widths: tuple[_Width, ...] | None = _optional()

    @property
    def num_branches(self) -> int:
        return len(self.branches)


Block = Annotated[Union[C3Block, S2Block], Field(discriminator="type")]


class C3Stage(_Frozen):
    """A stage of the c3net family: an entry block (no residual) then residual blocks."""

    # Output channels of every block of the stage.
    width: Annotated[int, Field(ge=1, le=1024)]
    # blocks[0] is the entry block (changes width; strides in stage 1); the rest add their input.
    blocks: tuple[Block, ...] = Field(min_length=1, max_length=32)


class SINetStage(_Frozen):
    """A stage of the sinet family: an SE separable down-sampler, then S2/C3 blocks."""

    # Output channels of the stride-2 down-sampler.
    down_width: Annotated[int, Field(ge=1, le=1024)]
    # Squeeze-excite reduction of the down-sampler (hidden = channels // se_divide).
    se_divide: Annotated[int, Field(ge=1, le=16)]
    # Hidden units of that squeeze-excite when pruning left them apart from the derived count.
    se_hidden: _Width | None = _optional()
    # Output channels of every block of the stage.
    width: Annotated[int, Field(ge=1, le=1024)]
    # blocks[0] is the entry block (down_width -> width, no residual); the rest add their input.
    blocks: tuple[Block, ...] = Field(min_length=1, max_length=32)


def _check_block(block: C3Block | S2Block, in_channels: int, out_channels: int, where: str) -> None:
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


class C3NetConfig(_Frozen):
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
        in_channels = self.stem_width + 3
        for stage_index, stage in enumerate(self.stages):
            for block_index, block in enumerate(stage.blocks):
                where = f"stages.{stage_index}.blocks.{block_index}"
                _check_block(block, in_channels if block_index == 0 else stage.width, stage.width, where)
            # Stage outputs are concatenations: [last, entry, image/4] then [entry, last].
            in_channels = 2 * stage.width + 3
        if self.fine_block is not None:
            _check_block(self.fine_block, self.decoder_width, self.decoder_width, "fine_block")
        return self


class SINetConfig(_Frozen):
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
                _check_block(block, stage.down_width if block_index == 0 else stage.width, stage.width, where)
            down_in = stage.down_width + stage.width
        return self


NetworkConfig = Annotated[Union[C3NetConfig, SINetConfig], Field(discriminator="family")]


def _first_error(error: ValidationError) -> str:
    item = error.errors()[0]
    location = ".".join(str(part) for part in item["loc"]) or "(top level)"
    message = item["msg"].removeprefix("Value error, ")
    return f"{location}: {message}"


def config_from_dict(data: object, source: str = "config") -> C3NetConfig | SINetConfig:
    """Validate a plain dict into a network config, or raise UserError with one line."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a JSON object, got {type(data).__name__}")
    from lightseg_nas.checks import reject_bools

    reject_bools(data, {"information_blocking"}, f"{source}: ")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise UserError(f"{source}: schema_version {version!r} is not supported (this version reads {SCHEMA_VERSION})")
    family = data.get("family")
    classes = {"c3net": C3NetConfig, "sinet": SINetConfig}
    if family not in classes:
        raise UserError(f"{source}: family must be one of {sorted(classes)}, got {family!r}")
    try:
        return classes[family].model_validate(data)
    except ValidationError as error:
        raise UserError(f"{source}: {_first_error(error)}") from None


def config_from_json(text: str, source: str = "config") -> C3NetConfig | SINetConfig:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{source}: not valid JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
    except RecursionError:
        raise UserError(f"{source}: nested too deeply to be a network config") from None
    return config_from_dict(data, source)


def load_config(path: str | Path) -> C3NetConfig | SINetConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: cannot read config ({error.__class__.__name__}: {error})") from None
    return config_from_json(text, str(path))


def canonical_json(config: C3NetConfig | SINetConfig) -> str:
    """Sorted keys, no whitespace: equal configs give byte-equal text."""
    return json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def to_json(config: C3NetConfig | SINetConfig) -> str:
    """Human-readable JSON (what config files and exports contain)."""
    return json.dumps(config.model_dump(mode="json"), indent=2) + "\n"


def arch_id(config: C3NetConfig | SINetConfig) -> str:
    """Short stable hash of the canonical JSON: same architecture, same id."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:12]
