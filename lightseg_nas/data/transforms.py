"""Preprocessing (stored with every model) and batched augmentation on cached tensors.

Augmentation runs on whole uint8 batches with torch ops (one affine warp for scale, crop,
rotation and flip; colour jitter; blur; noise), so CPU epochs are not bound by per-image
Python work or JPEG decoding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lightseg_nas.errors import UserError

# EG1800 per-channel statistics, in R, G, B order.
_EG1800_MEAN_RGB = (132.35703, 115.69884, 107.304565)
_EG1800_STD_RGB = (68.29726, 65.1337, 63.97182)

PREPROCESSING = {
    # What the released ExtremeC3Net and SINet weights expect: BGR, per-channel mean/std,
    # and then a further division by 255 (a quirk of the papers' code, kept exactly).
    "released": {"channel_order": "bgr", "mean": _EG1800_MEAN_RGB[::-1], "std": _EG1800_STD_RGB[::-1], "scale": 1 / 255},
    # Our default for training from scratch: RGB, the same statistics, unit-variance inputs.
    "default": {"channel_order": "rgb", "mean": _EG1800_MEAN_RGB, "std": _EG1800_STD_RGB, "scale": 1.0},
}


def get_preprocessing(name: str) -> dict:
    if name not in PREPROCESSING:
        raise UserError(f"unknown preprocessing {name!r}; known: {', '.join(sorted(PREPROCESSING))}")
    return {"name": name, **{k: list(v) if isinstance(v, tuple) else v for k, v in PREPROCESSING[name].items()}}


def normalize(images: torch.Tensor, preprocessing: dict) -> torch.Tensor:
    """uint8 RGB (N, 3, H, W) -> the float input a model was trained with."""
    x = images.float()
    if preprocessing["channel_order"] == "bgr":
        x = x.flip(1)
    mean = torch.tensor(preprocessing["mean"], dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing["std"], dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std * preprocessing["scale"]


def denormalize(x: torch.Tensor, preprocessing: dict) -> torch.Tensor:
    """The inverse of ``normalize``: float RGB in [0, 255] (to feed a network another recipe)."""
    mean = torch.tensor(preprocessing["mean"], dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing["std"], dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    images = x / preprocessing["scale"] * std + mean
    return images.flip(1) if preprocessing["channel_order"] == "bgr" else images


def _gaussian_kernel(sigma: float, device) -> torch.Tensor:
    radius = max(1, int(math.ceil(2 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()


# The random affine warp: (largest rotation in degrees, scale range, largest shift as a share
# of the half side, border); "official" is the released networks' training recipe
# (rotation 45, scale 0.5-1.5, shift up to 56 of 224 pixels, grey padding).
AFFINE = {
    "default": (15.0, (0.75, 1.25), 0.15, "reflection"),
    "official": (45.0, (0.5, 1.5), 0.5, "grey"),
}


def augment(
    images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator, affine: str = "default"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random scale/crop, flip, small rotation, colour, blur and noise, as in the papers.

    Takes uint8 images (N, 3, H, W) and masks (N, H, W); returns float images in [0, 255]
    and 0/1 masks of the same size. All randomness comes from ``generator``.
    """
    n = images.shape[0]
    device = images.device

    def uniform(low, high, shape=(n,)):
        return torch.rand(shape, generator=generator).to(device) * (high - low) + low

    rotation, (low, high), largest_shift, border = AFFINE[affine]
    scale = uniform(low, high)  # <1 zooms in (a crop), >1 zooms out
    angle = uniform(-rotation, rotation) * math.pi / 180
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).to(device)
    shift = uniform(-largest_shift, largest_shift, (n, 2))
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    if border == "grey":  # outside the photo: grey (128) pixels and background
        x = F.grid_sample(images.float() - 128, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 128
        y = F.grid_sample(masks[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0]
    else:
        x = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        y = F.grid_sample(masks[:, None].float(), grid, mode="nearest", padding_mode="reflection", align_corners=False)[:, 0]

    # colour: brightness, contrast, saturation
    gray = x.mean(1, keepdim=True)
    saturation = uniform(0.6, 1.4).view(n, 1, 1, 1)
    x = gray + (x - gray) * saturation
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * uniform(0.7, 1.3).view(n, 1, 1, 1) + mean
    x = x * uniform(0.7, 1.3).view(n, 1, 1, 1)

    # blur a random third of the batch
    blurred = torch.rand(n, generator=generator) < 0.33
    if blurred.any():
        k = _gaussian_kernel(float(uniform(0.5, 1.5, (1,))), device)
        sub = x[blurred.to(device)]
        c = sub.shape[1]
        pad = len(k) // 2
        sub = F.conv2d(F.pad(sub, (pad, pad, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        sub = F.conv2d(F.pad(sub, (0, 0, pad, pad), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
        x[blurred.to(device)] = sub
    noise = torch.randn(x.shape, generator=generator).to(device) * uniform(0, 6).view(n, 1, 1, 1)
    return (x + noise).clamp(0, 255), y.round().to(torch.uint8)
