import json

import pytest

from lightseg_nas.config import arch_id, canonical_json, config_from_dict, config_from_json, to_json
from lightseg_nas.errors import UserError
from lightseg_nas.families.blocks import C3Block, S2Block, S2Branch
from lightseg_nas.presets import get_preset, list_presets


@pytest.mark.parametrize("name", list_presets())
def test_json_round_trip_and_id(name):
    config = get_preset(name)
    again = config_from_json(to_json(config))
    assert again == config
    assert canonical_json(again) == canonical_json(config)
    assert arch_id(again) == arch_id(config)
    assert len(arch_id(config)) == 12


def test_ids_differ_between_architectures():
    sinet = get_preset("sinet")
    assert arch_id(sinet) != arch_id(sinet.model_copy(update={"information_blocking": False}))
    assert arch_id(sinet) != arch_id(get_preset("extremec3net"))


def _mutated(name, mutate):
    data = json.loads(to_json(get_preset(name)))
    mutate(data)
    return data


BAD = {
    "even kernel": ("sinet", lambda d: d["stages"][0]["blocks"][0]["branches"][0].update(kernel_size=4), "kernel_size must be odd"),
    "dilation below 1": ("extremec3net", lambda d: d["stages"][1]["blocks"][2].update(dilation_rates=[0, 2, 3]), "greater than or equal to 1"),
    "zero width": ("extremec3net", lambda d: d["stages"][0].update(width=0), "greater than or equal to 1"),
    "branches vs grouped conv": ("sinet", lambda d: d["stages"][1].update(width=90), "do not divide"),
    "too many branches for width": ("extremec3net", lambda d: d.update(decoder_width=2), "too small for 3 branches"),
    "unknown key": ("sinet", lambda d: d.update(colour="red"), "Extra inputs are not permitted"),
    "wrong schema version": ("sinet", lambda d: d.update(schema_version=7), "schema_version 7 is not supported"),
    "unknown family": ("sinet", lambda d: d.update(family="unet"), "family must be one of"),
    "three stages": ("sinet", lambda d: d["stages"].append(d["stages"][0]), "stages"),
    "strided s2 entry": (
        "extremec3net",
        lambda d: d["stages"][0]["blocks"].__setitem__(0, {"type": "s2", "branches": [{"kernel_size": 3, "pool_size": 1}]}),
        "must be a c3 block",
    ),
    "three classes": ("sinet", lambda d: d.update(num_classes=3), "num_classes"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_configs_fail_with_one_located_line(case):
    name, mutate, expected = BAD[case]
    with pytest.raises(UserError) as info:
        config_from_dict(_mutated(name, mutate), "net.json")
    message = str(info.value)
    assert message.startswith("net.json: ")
    assert expected in message
    assert "\n" not in message


def test_not_json_is_a_user_error():
    with pytest.raises(UserError, match="not valid JSON"):
        config_from_json("{", "x.json")


def test_blocks_are_frozen_and_typed():
    block = C3Block(dilation_rates=(1, 2))
    with pytest.raises(Exception):
        block.dilation_rates = (3,)
    assert S2Block(branches=(S2Branch(kernel_size=3, pool_size=2),)).num_branches == 1
