"""The official recipe's pieces as trainer options: the boundary-band Lovász term and the
strong affine augmentation (rotation 45 degrees, scale 0.5-1.5, grey borders)."""

import pytest
import torch

from lightseg_nas.data.transforms import augment
from lightseg_nas.losses import band_lovasz_hinge, boundary_band, segmentation_loss
from lightseg_nas.settings import changed_settings, missing_settings
from lightseg_nas.train import TrainSettings, settings_from


def square_mask(size=32, low=8, high=24):
    mask = torch.zeros(1, size, size, dtype=torch.uint8)
    mask[:, low:high, low:high] = 1
    return mask


def test_the_band_is_the_pixels_near_the_boundary():
    band = boundary_band(square_mask(), 5)
    assert band[0, 16, 16].item() is False and band[0, 0, 0].item() is False  # deep inside, far outside
    assert [bool(band[0, row, 16]) for row in range(4, 12)] == [False, False, True, True, True, True, False, False]  # 2 out, 2 in
    assert not boundary_band(torch.zeros(1, 16, 16, dtype=torch.uint8), 5).any()  # no foreground, no band


def test_the_band_is_dilation_minus_erosion_on_any_mask_size_and_width():
    """The window sums give the morphological band itself (max pools, padding outside the image
    ignored), at image borders and for all-foreground or all-background masks too."""
    generator = torch.Generator().manual_seed(0)
    for case in range(150):
        n, height, width = 1 + case % 3, *(int(x) for x in torch.randint(3, 60, (2,), generator=generator))
        kernel = 2 * int(torch.randint(0, 12, (1,), generator=generator)) + 1
        masks = (torch.rand(n, height, width, generator=generator) < torch.rand(1, generator=generator)).to(torch.uint8)
        if case % 5 == 0:
            masks[:] = case % 2
        m, pad = masks[:, None].float(), kernel // 2
        morphological = (torch.nn.functional.max_pool2d(m, kernel, 1, pad) + torch.nn.functional.max_pool2d(1 - m, kernel, 1, pad) - 1)[:, 0] > 0
        assert torch.equal(boundary_band(masks, kernel), morphological), (case, n, height, width, kernel)


def test_the_band_term_is_zero_for_a_confident_right_answer_and_has_a_gradient():
    mask = square_mask()
    right = (mask.float() * 2 - 1)[:, None] * 10
    assert band_lovasz_hinge(right[:, 0], mask, 15).item() == pytest.approx(0.0)
    logits = torch.zeros(1, 1, 32, 32, requires_grad=True)
    loss = segmentation_loss(logits, mask, "lovasz", edge_weight=0.5, edge_band=15)
    assert loss.item() > segmentation_loss(logits, mask, "lovasz").item()
    loss.backward()
    assert logits.grad.abs().sum() > 0
    empty = torch.zeros(2, 16, 16, dtype=torch.uint8)  # no image with a band: the term adds nothing
    assert segmentation_loss(torch.zeros(2, 1, 16, 16), empty, "ce", 0.5, 5) == pytest.approx(segmentation_loss(torch.zeros(2, 1, 16, 16), empty, "ce"))


def test_official_affine_warps_harder_and_pads_grey():
    images = torch.full((8, 3, 64, 64), 200, dtype=torch.uint8)
    masks = torch.ones(8, 64, 64, dtype=torch.uint8)
    x, y = augment(images, masks, torch.Generator().manual_seed(0), "official")
    assert x.shape == (8, 3, 64, 64) and set(y.unique().tolist()) <= {0, 1}
    assert (y == 0).any()  # zoomed out or shifted: background outside the photo, not a reflected person
    x_default, y_default = augment(images, masks, torch.Generator().manual_seed(0), "default")
    assert (y_default == 1).all()  # reflected borders keep the mask whole
    again = augment(images, masks, torch.Generator().manual_seed(0), "official")
    assert torch.equal(again[0], x) and torch.equal(again[1], y)


def test_the_new_settings_resume_old_checkpoints_and_are_recorded():
    settings = settings_from(edge_weight=0.5, affine="official")
    assert settings.edge_band == 15 and settings.affine == "official"
    old = {k: v for k, v in TrainSettings().model_dump().items() if k not in ("edge_weight", "edge_band", "affine")}
    assert missing_settings(old, TrainSettings) == [] and changed_settings(old, TrainSettings()) == []
    assert changed_settings(old, settings) == ["edge_weight 0.0 (now 0.5)", "affine 'default' (now 'official')"]
