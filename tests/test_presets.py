"""Exactness: the published networks come out of the builder bit-exact."""

import numpy as np
import pytest
import torch

from lightseg_nas.cost import count_macs, count_params
from lightseg_nas.errors import UserError
from lightseg_nas.families import build_model
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


@pytest.mark.slow
def test_the_papers_protocol_reproduces_the_official_scores(official, eg1800):
    """Released weights on all 1,341 training-list images at 224x224, images and masks
    resized the OpenCV way: the official evaluation gives SINet 95.24, ExtremeC3Net 95.43
    (per-image foreground IoU, the papers' "mIoU")."""
    from lightseg_nas.data import load_split
    from lightseg_nas.data.transforms import get_preprocessing
    from lightseg_nas.metrics import evaluate
    from lightseg_nas.speed import place_model

    data = load_split(f"eg1800:{eg1800}", "trainval", 224)
    assert len(data) == 1341
    for name, file, expected in [("sinet", "SINet.pth", 95.24), ("extremec3net", "ExtremeC3.pth", 95.43)]:
        model = place_model(load_released_weights(build_model(get_preset(name)), name, official / file), True)
        fg_iou = 100 * evaluate(model, data, get_preprocessing("released"), channels_last=True)["fg_iou"]  # `eval`'s path
        assert abs(fg_iou - expected) <= 0.02, (name, fg_iou)


def test_resizing_follows_opencv():
    from lightseg_nas.data.images import resize_linear, resize_nearest

    mask = np.arange(7 * 5).reshape(7, 5)
    # INTER_NEAREST: source index floor(i * in / out), top-left aligned
    assert resize_nearest(mask, 3, 2).tolist() == [[0, 2], [10, 12], [20, 22]]
    assert resize_nearest(mask, 14, 10)[::2, ::2].tolist() == mask.tolist()
    # INTER_LINEAR, half-pixel centres, no antialiasing: halving averages 2x2 blocks exactly
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    halved = resize_linear(image, 4)
    blocks = image.reshape(4, 2, 4, 2, 3).astype(float).mean((1, 3))
    assert np.abs(halved.astype(float) - blocks).max() <= 0.5
