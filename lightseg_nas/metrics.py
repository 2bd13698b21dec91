"""Segmentation metrics, and ``evaluate`` (a network on a cached split): one implementation
for training, evaluation and search.

* ``fg_iou``: foreground IoU of each image, averaged over images, at the evaluation size
  (224x224 by default). This is what the papers call "mIoU".
* ``miou``: dataset-level IoU of background and of foreground (intersections and unions
  summed over all pixels of all images), averaged over the two classes.
* ``boundary_f``: boundary F-score per image, averaged: boundary pixels of prediction and
  ground truth match within ``tolerance`` pixels (precision, recall, harmonic mean).

All figures are fractions in [0, 1]; the CLI and reports print them as percentages.
"""

from __future__ import annotations

import torch

from lightseg_nas.data import SegmentationData
from lightseg_nas.data.transforms import normalize
from lightseg_nas.speed import flush_denormals, place_input

__all__ = ["SegmentationMeter", "predict_foreground", "evaluate"]


def predict_foreground(logits: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) logits -> (N, H, W) bool foreground; C=1 is a logit, C=2 a softmax pair."""
    if logits.shape[1] == 1:
        return logits[:, 0] > 0
    if logits.shape[1] == 2:  # argmax(1) == 1, without argmax's slow reduction over 2 channels
        background, person = logits[:, 0], logits[:, 1]
        return (person > background) | (person.isnan() & ~background.isnan())  # argmax takes the first NaN
    return logits.argmax(1) == 1


def _window_any(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """(N, H, W) bool: any pixel set within the (2r+1)x(2r+1) square around each pixel, the
    square cut at the image's edges. The same as a max pool with that kernel (which pads
    with -inf), as shifted ORs along rows, then columns, on bool maps rather than float max
    pools (benchmarks/metric_cost.py times both)."""
    rows = mask.clone()
    for shift in range(1, min(radius, mask.shape[1] - 1) + 1):
        rows[:, shift:] |= mask[:, :-shift]
        rows[:, :-shift] |= mask[:, shift:]
    out = rows.clone()
    for shift in range(1, min(radius, mask.shape[2] - 1) + 1):
        out[:, :, shift:] |= rows[:, :, :-shift]
        out[:, :, :-shift] |= rows[:, :, shift:]
    return out


def _boundary(mask: torch.Tensor) -> torch.Tensor:
    """Pixels of a (N, H, W) bool mask whose 3x3 neighbourhood (cut at the image's edges)
    holds both classes."""
    return _window_any(mask, 1) & _window_any(~mask, 1)


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    return _window_any(mask, radius)


class SegmentationMeter:
    def __init__(self, tolerance: int = 2):
        self.tolerance = tolerance
        self.fg_ious: list[torch.Tensor] = []
        self.boundary_fs: list[torch.Tensor] = []
        self.intersection = torch.zeros(2, dtype=torch.float64)
        self.union = torch.zeros(2, dtype=torch.float64)

    @torch.no_grad()
    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """prediction, target: (N, H, W) bool (or 0/1) foreground maps of the same size."""
        prediction, target = prediction.bool().cpu(), target.bool().cpu()
        inter = (prediction & target).flatten(1).sum(1).double()
        union = (prediction | target).flatten(1).sum(1).double()
        # An image with no person in either map is a perfect prediction.
        self.fg_ious.append(torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter)))
        for cls, (p, t) in enumerate(((~prediction, ~target), (prediction, target))):
            self.intersection[cls] += (p & t).sum().double()
            self.union[cls] += (p | t).sum().double()
        pb, tb = _boundary(prediction), _boundary(target)
        precision_hits = (pb & _dilate(tb, self.tolerance)).flatten(1).sum(1).double()
        recall_hits = (tb & _dilate(pb, self.tolerance)).flatten(1).sum(1).double()
        p_count, t_count = pb.flatten(1).sum(1).double(), tb.flatten(1).sum(1).double()
        precision = torch.where(p_count > 0, precision_hits / p_count.clamp(min=1), (t_count == 0).double())
        recall = torch.where(t_count > 0, recall_hits / t_count.clamp(min=1), (p_count == 0).double())
        f = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), torch.zeros_like(precision))
        self.boundary_fs.append(f)

    def compute(self) -> dict:
        if not self.fg_ious:
            raise ValueError("no images were scored")
        fg = torch.cat(self.fg_ious)
        class_iou = self.intersection / self.union.clamp(min=1)
        return {
            "fg_iou": float(fg.mean()),
            "miou": float(class_iou.mean()),
            "boundary_f": float(torch.cat(self.boundary_fs).mean()),
            "n_images": int(fg.numel()),
        }


@torch.inference_mode()
def evaluate(model: torch.nn.Module, data: SegmentationData, preprocessing: dict, batch_size: int = 32, device=None, channels_last: bool = False) -> dict:
    """Metrics of ``model`` on ``data`` at the data's cached size (eval mode, no augmentation);
    ``channels_last``: inputs in the layout of a model placed channels-last."""
    flush_denormals()
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    meter = SegmentationMeter()
    for start in range(0, len(data), batch_size):
        x = place_input(normalize(data.images[start : start + batch_size].to(device), preprocessing), channels_last)
        meter.update(predict_foreground(model(x)), data.masks[start : start + batch_size])
    model.train(was_training)
    return meter.compute()
