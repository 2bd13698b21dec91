"""The battery every registered space runs: adding a space adds its tests."""


import optuna
import pytest
import torch

import search_spaces
from lightseg_nas.config import arch_id, config_from_json, to_json
from lightseg_nas.cost import count_macs, count_params
from lightseg_nas.families import build_model
from lightseg_nas.presets import get_preset

SEEDS = [0, 1, 2, 3]
CASES = [(space, seed) for space in search_spaces.list_spaces() for seed in SEEDS]


@pytest.mark.parametrize("space,seed", CASES)
def test_space_sample_builds_trains_round_trips_and_replays(space, seed):
    num_classes = 1 + seed % 2  # both heads for every space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    trial = study.ask()
    config = search_spaces.get_space(space)(trial, num_classes=num_classes)

    # replay from the recorded params alone
    replayed = search_spaces.get_space(space)(optuna.trial.FixedTrial(trial.params), num_classes=num_classes)
    assert replayed == config
    assert search_spaces.encode(space, config) == trial.params

    assert config_from_json(to_json(config)) == config

    torch.manual_seed(seed)
    model = build_model(config)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, num_classes, 64, 64)
    out.square().mean().backward()
    assert torch.isfinite(out).all()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)

    fvcore = count_macs(model, 64, counters=["fvcore"])["fvcore"]
    assert fvcore.uncounted == ()
    assert fvcore.macs > 0 and count_params(model) > 0


@pytest.mark.parametrize("space", search_spaces.list_spaces())
def test_space_holds_its_published_networks_exactly(space):
    for preset in search_spaces.space_presets(space):
        config = get_preset(preset)
        params = search_spaces.encode(space, config)
        replayed = search_spaces.get_space(space)(optuna.trial.FixedTrial(params), num_classes=config.num_classes)
        assert replayed == config
        assert arch_id(replayed) == arch_id(config)


@pytest.mark.parametrize("space", search_spaces.list_spaces())
def test_space_reaches_far_smaller_and_larger_networks(space):
    sizes = [count_params(build_model(search_spaces.sample(space, seed))) for seed in range(40)]
    reference = max(count_params(build_model(get_preset(p))) for p in search_spaces.space_presets(space))
    assert min(sizes) < reference / 2
    assert max(sizes) > reference


def test_sampling_is_deterministic_by_seed():
    for space in search_spaces.list_spaces():
        assert search_spaces.sample(space, 11) == search_spaces.sample(space, 11)
    assert not all(search_spaces.sample("sinet", s) == search_spaces.sample("sinet", 0) for s in range(1, 4))


def test_unknown_space_lists_known_ones():
    from lightseg_nas.errors import UserError

    with pytest.raises(UserError, match="known spaces: extremec3, hybrid, sinet"):
        search_spaces.get_space("mobilenet")
