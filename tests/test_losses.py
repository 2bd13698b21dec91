"""Losses (lightseg_nas/losses.py): the Lovász hinge is the Jaccard loss's Lovász extension."""

from __future__ import annotations

import pytest
import torch

from lightseg_nas.losses import foreground_margin, lovasz_hinge, segmentation_loss


def _reference(margins: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """One image at a time, written from the paper's Algorithm 1 (no batching)."""
    losses = []
    for margin, gt in zip(margins.flatten(1), truth.flatten(1).float()):
        errors = 1 - margin * (2 * gt - 1)
        errors, order = torch.sort(errors, descending=True)
        gt = gt[order]
        grad = []
        for i in range(len(gt)):
            def jaccard_loss(k):  # Jaccard loss of the k largest errors taken as mistakes
                if k == 0:
                    return torch.tensor(0.0)
                intersection = gt.sum() - gt[:k].sum()
                union = gt.sum() + (1 - gt[:k]).sum()
                return 1 - intersection / union

            grad.append(jaccard_loss(i + 1) - jaccard_loss(i))
        losses.append((torch.relu(errors) * torch.stack(grad)).sum())
    return torch.stack(losses).mean()


def test_the_batched_hinge_equals_the_per_image_definition():
    generator = torch.Generator().manual_seed(0)
    margins = torch.randn(3, 5, 4, generator=generator)
    truth = torch.rand(3, 5, 4, generator=generator) > 0.6
    truth[2] = False  # an image without foreground
    assert torch.allclose(lovasz_hinge(margins, truth), _reference(margins, truth), atol=1e-6)


def test_at_hard_predictions_it_is_twice_the_jaccard_loss():
    # margins of +-1 make hinge errors 0 (right) or 2 (wrong); the extension is homogeneous
    generator = torch.Generator().manual_seed(1)
    truth = torch.rand(4, 8, 8, generator=generator) > 0.5
    predicted = torch.rand(4, 8, 8, generator=generator) > 0.5
    margins = predicted.float() * 2 - 1
    iou = [(p & t).sum() / (p | t).sum() for p, t in zip(predicted, truth)]
    assert lovasz_hinge(margins, truth).item() == pytest.approx(2 * (1 - torch.stack(iou).float().mean().item()), abs=1e-6)
    assert lovasz_hinge(truth.float() * 2 - 1, truth).item() == 0.0


@pytest.mark.parametrize("classes", [1, 2])
def test_losses_combine_and_train_one_or_two_logits(classes):
    logits = torch.randn(2, classes, 8, 8, requires_grad=True)
    masks = torch.rand(2, 8, 8) > 0.5
    ce, lovasz, both = (segmentation_loss(logits, masks, kind) for kind in ("ce", "lovasz", "ce+lovasz"))
    assert both.item() == pytest.approx(ce.item() + lovasz.item(), rel=1e-6)
    both.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert foreground_margin(logits).shape == (2, 8, 8)
    with pytest.raises(ValueError, match="unknown loss"):
        segmentation_loss(logits, masks, "dice")
