"""Structured pruning (lightseg_nas/prune.py): every network of our spaces prunes, the result
is the network its config builds, and pruning removes exactly the planned channels."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import search_spaces
from lightseg_nas import prune
from lightseg_nas.config import config_from_json, to_json
from lightseg_nas.cost import count_params
from lightseg_nas.families import build_model
from lightseg_nas.presets import get_preset

SAMPLES = 20


def _zeroed(model: nn.Module, pruning: dict[str, list[int]]) -> nn.Module:
    """The unpruned network with every planned channel silenced at the layers that produce it.

    A correct pruning gives the same outputs: a silenced channel is 0 everywhere, so the
    weights that read it contribute nothing, and pruning removes exactly those weights."""
    reference = copy.deepcopy(model)
    graph = prune._graph(reference)
    for axis in prune.axes_of(reference):
        idxs = pruning[axis.name]
        if not idxs:
            continue
        root = reference.get_submodule(axis.root)
        group = graph.get_pruning_group(root, prune._root_fn(root), idxs)
        for dep, item_idxs in group.items:
            layer = dep.target.module
            if not graph.is_out_channel_pruning_fn(dep.handler) or not isinstance(layer, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
                continue
            rows = torch.tensor([int(getattr(i, "idx", i)) for i in item_idxs])
            with torch.no_grad():
                layer.weight[rows] = 0
                if layer.bias is not None:
                    layer.bias[rows] = 0
    return reference


def _check(config, keep_fraction: float = 0.5) -> None:
    torch.manual_seed(0)
    model = build_model(config).eval()
    # Trained-looking statistics, so that BatchNorm is not the identity.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.bias.data.uniform_(-0.5, 0.5)
    pruning = prune.plan(model, keep_fraction)
    pruned = prune.apply_plan(model, pruning).eval()
    assert count_params(pruned) < count_params(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        out = pruned(x)
        # exactly the planned channels went: the silenced network computes the same
        assert torch.allclose(out, _zeroed(model, pruning)(x), atol=1e-4, rtol=1e-4)
    assert out.shape == expected.shape
    # the pruned network is a config: JSON round trip, rebuild, same weights, same outputs
    rebuilt_config = config_from_json(to_json(pruned.config))
    assert rebuilt_config == pruned.config
    rebuilt = build_model(rebuilt_config).eval()
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), out)


@pytest.mark.parametrize("name", ["extremec3net", "sinet"])
def test_presets_prune_by_half(name):
    _check(get_preset(name))


@pytest.mark.slow
@pytest.mark.parametrize("space", search_spaces.list_spaces())
def test_space_samples_prune_by_half(space):
    for seed in range(SAMPLES):
        _check(search_spaces.sample(space, seed))


def test_unpruned_config_reads_back_unchanged():
    for name in ("extremec3net", "sinet"):
        config = get_preset(name)
        assert prune.config_of(build_model(config)) == config
        assert "branch_widths" not in to_json(config) and "se_hidden" not in to_json(config)


def test_prune_to_meets_a_parameter_target_and_refuses_an_impossible_one():
    model = build_model(get_preset("sinet"))
    pruned = prune.prune_to(model, 37_738)
    assert 0.95 * 37_738 <= count_params(pruned) <= 37_738
    floor = prune.smallest(model)
    with pytest.raises(Exception, match="fixed parts"):
        prune.prune_to(model, floor - 1)


def test_counters_count_the_layer_subclasses_pruning_needs():
    from lightseg_nas.cost import count_macs

    for name in ("extremec3net", "sinet"):
        counts = count_macs(build_model(get_preset(name)), 64)
        assert counts["thop"].uncounted == ("functional ops",)
        assert counts["fvcore"].uncounted == ()


def test_prune_to_meets_a_mac_target():
    from lightseg_nas.cost import count_macs

    model = build_model(get_preset("extremec3net"))
    full = count_macs(model, 64, counters=("conv_only",))["conv_only"].macs
    pruned = prune.prune_to(model, full // 3, metric="macs", size=64)
    macs = count_macs(pruned, 64, counters=("conv_only",))["conv_only"].macs
    assert 0.9 * (full // 3) <= macs <= full // 3
