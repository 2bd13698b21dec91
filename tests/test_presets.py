"""Exactness: the published networks come out of the builder bit-exact."""

import numpy as np
import pytest
import torch

from lightseg_nas.cost import count_macs, count_params
from lightseg_nas.errors import UserError
from lightseg_nas.models import build_model
from lightseg_nas.presets import get_preset, load_released_weights

RELEASED = {
    # preset: (file, reference output key, parameters)
    "extremec3net": ("ExtremeC3.pth", "extremec3_logits", 37_738),
    "sinet": ("SINet.pth", "sinet_logits", 86_910),
}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_parameter_count_matches_the_paper(name):
    assert count_params(build_model(get_preset(name))) == RELEASED[name][2]


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_weights_load_strictly_and_reproduce_reference_outputs(name, official):
    file, key, _ = RELEASED[name]
    model = load_released_weights(build_model(get_preset(name)), name, official / file).eval()
    reference = np.load(official / "reference_io.npz")
    with torch.no_grad():
        out = model(torch.from_numpy(reference["input"])).numpy()
    assert out.shape == reference[key].shape
    assert np.abs(out - reference[key]).max() < 1e-4


def test_wrong_weights_for_a_preset_are_refused(official):
    model = build_model(get_preset("sinet"))
    with pytest.raises(UserError, match="does not match preset 'sinet'"):
        load_released_weights(model, "sinet", official / "ExtremeC3.pth")


def test_not_a_weights_file_is_refused(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a loadable weights file"):
        load_released_weights(build_model(get_preset("sinet")), "sinet", path)


@pytest.mark.parametrize(
    "name,expected_millions",
    [("extremec3net", 129.0), ("sinet", 63.9)],  # the papers' convolution-only counts, 2 classes, 224x224
)
def test_convolution_only_macs_match_the_papers(name, expected_millions):
    model = build_model(get_preset(name).model_copy(update={"num_classes": 2}))
    counts = count_macs(model, 224)
    assert round(counts["conv_only"].macs / 1e6, 1) == expected_millions
    assert counts["fvcore"].uncounted == ()
    # our fvcore figure adds the operators stock fvcore skips, and thop counts BN/PReLU/pooling
    assert counts["fvcore"].macs > counts["conv_only"].macs
    assert counts["thop"].macs > counts["conv_only"].macs
