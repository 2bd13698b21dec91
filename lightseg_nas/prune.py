"""Structured channel pruning of our networks, with Torch-Pruning's DepGraph as the engine.

Out of the box, Torch-Pruning's automatic groups go wrong on both published networks (see
docs/networks.md): the pooled input image has no layer upstream to say it carries 3
channels, and a residual stage whose blocks concatenate branches of different widths, some
read by grouped convolutions, splits into per-slice groups whose indices leave the grouped
convs uneven. Here the network's family (``lightseg_nas.families``) names its *axes* instead:
every channel dimension that can shrink (the stem, each stage's width, each down-sampler, each C3 block's reduced width,
each squeeze-excite's hidden units), by one module whose output spans it whole (the first
block's BatchNorm for a residual stage). For each axis DepGraph builds the coupled group from
that root, Torch-Pruning's importance scores it, and we pick indices under two structural
rules DepGraph does not know:

* ``multiple``: where grouped convs read the axis, the same relative positions go from every
  one of ``multiple`` equal chunks, so each conv group loses the same input columns (what
  Torch-Pruning's grouped-conv pruning function assumes);
* ``guards``: each branch of each block keeps at least one channel, each axis at least two.

Classes are never pruned (classifier convs are no axis); the grouped reduce conv of S2
blocks keeps its width (its output passes through a channel shuffle). The pruned network is
read back as a config of the same schema (its family's ``config_of``), so ``build_model(config_of(m))``
with ``m.state_dict()`` is the pruned network.
"""

from __future__ import annotations

import copy
import math

import torch
import torch_pruning as tp
from torch import nn

from lightseg_nas.cost import count_macs, count_params
from lightseg_nas.errors import UserError
from lightseg_nas.families import config_of, family_of
from lightseg_nas.families.base import Axis
from lightseg_nas.settings import INPUT_MULTIPLE
from lightseg_nas.families.blocks import GroupedConv2d, ImagePool

__all__ = ["Axis", "MAC_COUNTER", "cost", "axes_of", "config_of", "plan", "apply_plan", "prune_to", "prune_ratio", "smallest", "example_input"]


class _ImagePoolPruner(tp.pruner.BasePruningFunc):
    """The pooled image always has its 3 channels: say so, and never prune them."""

    TARGET_MODULES = ImagePool

    def prune_out_channels(self, layer: nn.Module, idxs) -> nn.Module:
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.channels

    get_in_channels = get_out_channels


class _GroupedConvPruner(tp.pruner.function.ConvPruner):
    """An ordinary conv pruner (inputs and outputs apart) even when groups == outputs."""

    TARGET_MODULES = GroupedConv2d


_CUSTOM = {ImagePool: _ImagePoolPruner(), GroupedConv2d: _GroupedConvPruner()}
_ROOT_FN = {
    nn.Conv2d: tp.prune_conv_out_channels,
    nn.BatchNorm2d: tp.prune_batchnorm_out_channels,
    nn.Linear: tp.prune_linear_out_channels,
}


def example_input(size: int = INPUT_MULTIPLE) -> torch.Tensor:
    # The smallest input the networks take: the traced graph does not depend on the size,
    # and tracing at 32 px builds it in about half the time of 64 px.
    # requires_grad: the pooled image then enters the traced graph (no layer precedes it).
    return torch.randn(1, 3, size, size, requires_grad=True)


def _graph(model: nn.Module) -> tp.DependencyGraph:
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():  # DepGraph traces through autograd
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_input(), customized_pruners=_CUSTOM)
    finally:
        model.train(was_training)


def axes_of(model: nn.Module) -> list[Axis]:
    """Every prunable axis of a network built by ``build_model`` (its family names them)."""
    return family_of(model).axes(model)


def _root_fn(module: nn.Module):
    for kind, fn in _ROOT_FN.items():
        if isinstance(module, kind):
            return fn
    raise TypeError(f"no pruning function for {type(module).__name__}")


def _importance(model: nn.Module, axes: list[Axis]) -> dict[str, torch.Tensor]:
    """Torch-Pruning's group magnitude importance of every channel of every axis."""
    graph = _graph(model)
    scorer = tp.importance.GroupMagnitudeImportance(p=2)
    scores = {}
    for axis in axes:
        root = model.get_submodule(axis.root)
        fn = _root_fn(root)
        channels = graph.get_out_channels(root)
        group = graph.get_pruning_group(root, fn, list(range(channels)))
        scores[axis.name] = scorer(group).detach().float()
    return scores


def _position_scores(axis: Axis, score: torch.Tensor) -> tuple[int, torch.Tensor]:
    """(chunk length, summed score of each position within the axis's equal chunks)."""
    chunk = score.numel() // axis.multiple
    return chunk, score.view(axis.multiple, chunk).sum(0)


def _select(axis: Axis, score: torch.Tensor, keep_fraction: float) -> list[int]:
    """Indices to prune: whole positions of the axis's equal chunks, guards respected."""
    chunk, position_score = _position_scores(axis, score)
    order = torch.argsort(position_score, descending=True, stable=True).tolist()
    # At least two channels: Torch-Pruning reads a one-parameter PReLU as shared, not per channel.
    least = min(chunk, max(1, math.ceil(2 / axis.multiple)))
    keep = set(order[: max(least, round(chunk * keep_fraction))])

    def kept(position):
        return [c * chunk + position for c in range(axis.multiple)]

    for start, stop in axis.guards:
        if not any(start <= index < stop for position in keep for index in kept(position)):
            best = next(p for p in order if any(start <= i < stop for i in kept(p)))
            keep.add(best)
    return sorted(index for position in range(chunk) if position not in keep for index in kept(position))


def _apply(model: nn.Module, plan: dict[str, list[int]], axes: list[Axis]) -> None:
    # One graph for every axis: Torch-Pruning's concatenation pruner keeps the concatenated
    # widths it maps indices through up to date as earlier axes shrink (a fresh graph per
    # axis gave the same weights on 114 networks of every space, in five times the time).
    graph = _graph(model)
    for axis in axes:
        idxs = plan[axis.name]
        if not idxs:
            continue
        root = model.get_submodule(axis.root)
        graph.get_pruning_group(root, _root_fn(root), idxs).prune()


def plan(model: nn.Module, keep_fraction: float, scores: dict | None = None) -> dict[str, list[int]]:
    """Channels to prune on each axis to keep about ``keep_fraction`` of every axis."""
    axes = axes_of(model)
    scores = scores if scores is not None else _importance(model, axes)
    pruning = {axis.name: _select(axis, scores[axis.name], keep_fraction) for axis in axes}
    # Whether a block adds its input follows from its widths: an entry block whose input and
    # output widths pruning made equal would add its input once rebuilt. Keep one more
    # position of one of the two axes instead.
    by_name = {axis.name: axis for axis in axes}
    for left, right, tie in _untied_pairs(model):
        if left not in pruning or right not in pruning:
            continue
        kept = {name: scores[name].numel() - len(pruning[name]) for name in (left, right)}
        if tie(kept[left]) == kept[right]:
            name = right if pruning[right] else left
            pruning[name] = _unprune_one(by_name[name], pruning[name], scores[name])
    return pruning


def _untied_pairs(model: nn.Module):
    """(input axis, stage axis, input width -> entry block input) for entries that do not add."""
    return family_of(model).untied_pairs(model)


def _unprune_one(axis: Axis, idxs: list[int], score: torch.Tensor) -> list[int]:
    chunk, position_score = _position_scores(axis, score)
    positions = sorted({index % chunk for index in idxs}, key=lambda p: -float(position_score[p]))
    if not positions:
        return idxs
    return [index for index in idxs if index % chunk != positions[0]]


def apply_plan(model: nn.Module, pruning: dict[str, list[int]]) -> nn.Module:
    """Prune a copy of ``model`` as planned; its ``config`` is the config that rebuilds it."""
    pruned = copy.deepcopy(model)
    _apply(pruned, pruning, axes_of(model))
    pruned.config = config_of(pruned)
    return pruned


def prune_ratio(model: nn.Module, keep_fraction: float, scores: dict | None = None) -> nn.Module:
    """A pruned copy keeping about ``keep_fraction`` of every axis (never fewer than the rules need)."""
    return apply_plan(model, plan(model, keep_fraction, scores))


# MACs are counted as the papers did: convolutions alone.
MAC_COUNTER = "conv_only"


def cost(model: nn.Module, metric: str, size: int) -> int:
    """Parameters, or MACs of one size x size image by the conv_only counter."""
    if metric == "params":
        return count_params(model)
    return count_macs(model, size, counters=(MAC_COUNTER,))[MAC_COUNTER].macs


def smallest(model: nn.Module, metric: str = "params", size: int = 224) -> int:
    """Cost of the network pruned as far as the rules allow: the floor of any target."""
    return cost(prune_ratio(model, 0.0), metric, size)


def prune_to(model: nn.Module, target: int, metric: str = "params", size: int = 224, tolerance: float = 0.002) -> nn.Module:
    """The largest uniform pruning whose ``metric`` is at or under ``target`` (bisection).

    Channels are whole, so neighbouring keep fractions often plan the same channels: each
    distinct plan is pruned and costed once."""
    axes = axes_of(model)
    scores = _importance(model, axes)
    tried: dict[tuple, tuple[nn.Module, int]] = {}

    def probe(keep_fraction: float) -> tuple[nn.Module, int]:
        chosen = plan(model, keep_fraction, scores)
        key = tuple((name, tuple(chosen[name])) for name in sorted(chosen))
        if key not in tried:
            network = apply_plan(model, chosen)
            tried[key] = (network, cost(network, metric, size))
        return tried[key]

    low, high = 0.0, 1.0  # keep fractions: low meets the target, high does not
    best, floor = probe(low)
    if floor > target:
        raise UserError(f"target {target:,} {metric} is below what this network's fixed parts need")
    while high - low > tolerance:
        middle = (low + high) / 2
        candidate, value = probe(middle)
        if value <= target:
            low, best = middle, candidate
        else:
            high = middle
    return best
