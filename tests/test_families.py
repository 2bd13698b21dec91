"""Network families: one module each, found through one registry. A third family defined
here, in the test, goes through config files, presets, building, pruning, read-back and the
trainer without any other module of the package knowing it exists."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Annotated, Literal

import pytest
import torch
from pydantic import Field
from torch import nn

from lightseg_nas import families, prune
from lightseg_nas.config import arch_id, config_from_dict, config_from_json, to_json
from lightseg_nas.errors import UserError
from lightseg_nas.families.base import SCHEMA_VERSION, Axis, Family, NetworkConfig, Preset
from lightseg_nas.families.blocks import (
    Block,
    C3Block,
    ConvBNPReLU,
    S2Block,
    S2Branch,
    StageBlocks,
    block_axes,
    block_config_of,
    branch_slices,
    check_block,
    input_groups,
    make_block,
    upsample,
)
from lightseg_nas.presets import get_preset, list_presets

STUDY_DB = Path(__file__).resolve().parents[1] / "studies" / "eg1800_extremec3.db"


class TinyConfig(NetworkConfig):
    """A stem and one residual block: the smallest skeleton with a block slot."""

    schema_version: Literal[1] = SCHEMA_VERSION
    family: Literal["tiny"] = "tiny"
    num_classes: Literal[1, 2]
    width: Annotated[int, Field(ge=2, le=256)]
    block: Block
    upsampled: bool = True

    def model_post_init(self, _):
        try:
            check_block(self.block, self.width, self.width, "block")
        except ValueError as error:
            raise ValueError(str(error)) from None


class Tiny(nn.Module):
    def __init__(self, config: TinyConfig):
        super().__init__()
        self.config = config
        self.stem = ConvBNPReLU(3, config.width, 3, 2)
        self.stage = StageBlocks([make_block(config.block, config.width, config.width)], config.width)
        self.head = nn.Conv2d(config.width, config.num_classes, 1, bias=False)
        self.up = upsample(2)

    def forward(self, x):
        _, y = self.stage.run(self.stem(x))
        return self.up(self.head(self.stage.norm(y)))

    forward_encoder = forward


def tiny_axes(model: Tiny) -> list[Axis]:
    # the block adds its input: the stem's width and the block's are one dimension
    block = model.stage.blocks[0]
    return [Axis("width", "stem.conv", input_groups([block]), branch_slices(block)), *block_axes("stage.blocks.0", block)]


def tiny_config_of(model: Tiny) -> TinyConfig:
    width = model.stem.conv.out_channels
    block = block_config_of(model.stage.blocks[0], model.config.block, width)
    return TinyConfig.model_validate(model.config.model_copy(update={"width": width, "block": block}).model_dump())


TINY = Family(
    name="tiny",
    config_class=TinyConfig,
    model_class=Tiny,
    axes=tiny_axes,
    untied_pairs=lambda model: [],
    config_of=tiny_config_of,
    presets={"tiny-net": Preset(lambda: TinyConfig(num_classes=1, width=16, block=C3Block(dilation_rates=(1, 2))))},
)


@pytest.fixture
def tiny_family(monkeypatch):
    monkeypatch.setattr(families, "FAMILIES", dict(families.FAMILIES))
    import lightseg_nas.config as config_module

    monkeypatch.setattr(config_module, "FAMILIES", families.FAMILIES)
    families.register(TINY)
    return TINY


def test_the_published_networks_come_from_their_family_modules():
    assert sorted(families.FAMILIES) == ["c3net", "sinet"]
    assert list_presets() == ["extremec3net", "sinet"]
    for name in list_presets():
        config = get_preset(name)
        family = families.family_of(config)
        assert name in family.presets and isinstance(config, family.config_class)
        model = families.build_model(config)
        assert isinstance(model, family.model_class) and families.family_of(model) is family
        assert families.config_of(model) == config


def test_a_family_defined_outside_the_package_works_end_to_end(tiny_family, tmp_path):
    config = TinyConfig(num_classes=2, width=16, block=S2Block(branches=(S2Branch(kernel_size=3, pool_size=1), S2Branch(kernel_size=5, pool_size=2))))
    # config files: parse, validate, round-trip, id
    again = config_from_json(to_json(config))
    assert again == config and arch_id(again) == arch_id(config)
    with pytest.raises(UserError, match="block"):
        config_from_dict({**json.loads(to_json(config)), "width": 15})  # 2 branches do not divide 15
    with pytest.raises(UserError, match="family must be one of"):
        config_from_dict({**json.loads(to_json(config)), "family": "nope"})
    # presets
    assert "tiny-net" in list_presets() and get_preset("tiny-net").family == "tiny"
    # building
    model = families.build_model(config).eval()
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 2, 32, 32)
    # pruning and read-back: the pruned network is the one its config builds
    pruned = prune.prune_ratio(model, 0.5).eval()
    assert pruned.config.width < config.width
    rebuilt = families.build_model(pruned.config).eval()
    rebuilt.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x), pruned(x))
    # the trainer and the model file
    from lightseg_nas.inference import load_network
    from lightseg_nas.train import settings_from, train_to_file

    settings = settings_from(epochs=1, size=32, batch_size=4, max_steps=2, augment=False)
    train_to_file(get_preset("tiny-net"), "synthetic:count=8", tmp_path / "run", settings, progress=False)
    network, _, record = load_network(tmp_path / "run" / "model.pt")
    assert record["config"]["family"] == "tiny" and isinstance(network, Tiny)


def test_a_family_or_preset_name_is_registered_once(tiny_family):
    with pytest.raises(ValueError, match="already registered"):
        families.register(tiny_family)
    with pytest.raises(ValueError, match="already registered"):
        families.register(Family("other", TinyConfig, Tiny, tiny_axes, lambda m: [], tiny_config_of, presets={"sinet": TINY.presets["tiny-net"]}))


def test_no_stored_architecture_changes_its_id():
    """Every trial of the committed study keeps the arch_id it was stored with."""
    if not STUDY_DB.exists():
        pytest.skip(f"{STUDY_DB} is not in this checkout")
    with sqlite3.connect(f"file:{STUDY_DB}?mode=ro", uri=True) as db:
        stored = dict(db.execute("select trial_id, value_json from trial_user_attributes where key = 'arch_id'").fetchall())
        configs = dict(db.execute("select trial_id, value_json from trial_user_attributes where key = 'config'").fetchall())
    assert len(stored) >= 40 and set(stored) == set(configs)
    for trial_id, config_json in configs.items():
        config = config_from_dict(json.loads(json.loads(config_json)) if isinstance(json.loads(config_json), str) else json.loads(config_json))
        assert arch_id(config) == json.loads(stored[trial_id])
