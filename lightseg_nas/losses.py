"""Training losses for 1-logit (sigmoid) and 2-logit (softmax) segmentation networks.

* ``ce``: binary cross-entropy on one logit, softmax cross-entropy on two;
* ``lovasz``: the Lovász hinge (Berman et al., CVPR 2018, "The Lovász-Softmax loss"), a
  convex surrogate of each image's foreground Jaccard loss, on the foreground margin (the
  logit of one, the foreground minus background logit of two), averaged over images; the
  papers' released networks were trained with a Lovász loss;
* ``ce+lovasz``: their sum;
* and, with ``edge_weight`` above 0, that weight times a Lovász hinge over a band around each
  mask's boundary (``edge_band`` pixels wide), the official recipe's edge term.

Logits of another size than the masks are resized (bilinear) to the masks first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightseg_nas.settings import LOSSES

__all__ = ["LOSSES", "segmentation_loss", "lovasz_hinge", "band_lovasz_hinge", "boundary_band", "foreground_margin"]


def foreground_margin(logits: torch.Tensor) -> torch.Tensor:
    """(N, H, W): positive where the network predicts foreground."""
    return logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]


def lovasz_hinge(margins: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-image Lovász hinge of margins (N, ...) against binary masks (N, ...), averaged."""
    margins = margins.flatten(1)
    truth = masks.flatten(1).to(margins.dtype)
    errors = 1 - margins * (2 * truth - 1)
    errors, order = torch.sort(errors, dim=1, descending=True)
    truth = torch.gather(truth, 1, order)
    # gradient of the Jaccard loss's Lovász extension at the sorted errors
    total = truth.sum(1, keepdim=True)
    intersection = total - truth.cumsum(1)
    union = total + (1 - truth).cumsum(1)
    jaccard = 1 - intersection / union
    jaccard = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], 1)
    return (F.relu(errors) * jaccard).sum(1).mean()


def boundary_band(masks: torch.Tensor, width: int) -> torch.Tensor:
    """(N, H, W) bool: pixels within a ``width`` x ``width`` square of the mask's boundary
    (dilation minus erosion, as the official recipe's morphological band)."""
    # A pixel is in the band where its window (clipped to the image) holds both foreground and
    # background: window sums by two 1-D box filters (exact in float32 for 0/1 masks), 7x
    # faster on one thread at 224 than the 2-D max pools of dilation and erosion.
    m = masks[:, None].float()
    pad = width // 2

    def window_sum(x):
        x = F.avg_pool2d(x, (1, width), stride=1, padding=(0, pad), divisor_override=1)
        return F.avg_pool2d(x, (width, 1), stride=1, padding=(pad, 0), divisor_override=1)

    total, valid = window_sum(m), window_sum(torch.ones_like(m[:1]))
    return ((total > 0) & (total < valid))[:, 0]


def band_lovasz_hinge(margins: torch.Tensor, masks: torch.Tensor, width: int) -> torch.Tensor:
    """The Lovász hinge of each image over its boundary band only, averaged over the images
    that have one (an image without foreground or background has no band)."""
    band = boundary_band(masks, width)
    terms = [lovasz_hinge(margins[i][band[i]][None], masks[i][band[i]][None]) for i in range(len(margins)) if band[i].any()]
    return torch.stack(terms).mean() if terms else margins.sum() * 0


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor, loss: str = "ce", edge_weight: float = 0.0, edge_band: int = 15) -> torch.Tensor:
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}")
    if logits.shape[-2:] != masks.shape[-2:]:
        logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    total = 0
    if loss in ("ce", "ce+lovasz"):
        if logits.shape[1] == 1:
            total = F.binary_cross_entropy_with_logits(logits[:, 0], masks.float())
        else:
            total = F.cross_entropy(logits, masks.long())
    if loss in ("lovasz", "ce+lovasz"):
        total = total + lovasz_hinge(foreground_margin(logits), masks)
    if edge_weight > 0:
        total = total + edge_weight * band_lovasz_hinge(foreground_margin(logits), masks, edge_band)
    return total
