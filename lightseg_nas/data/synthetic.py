"""Procedural portraits with exact masks: the embedded default dataset (no download).

Each image is drawn from its own seed: a cluttered background (gradients, textured shapes,
skin-coloured distractors), then a person (head with a tilt, one of several hair styles,
neck, shoulders and torso with textured clothing, a few face details), then lighting,
blur and sensor noise. The mask is the union of head, hair, neck and body. Colour alone
does not separate person from background, and shapes vary in pose and proportion, so a
model's score here means something; it is still synthetic and is labelled so everywhere.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageFilter

SKIN_TONES = np.array([[241, 194, 167], [224, 172, 105], [198, 134, 66], [141, 85, 36], [92, 51, 23], [255, 219, 172]])
HAIR_COLOURS = np.array([[20, 15, 10], [60, 40, 25], [110, 75, 40], [200, 160, 90], [150, 60, 30], [170, 170, 170]])


def _ellipse(xx, yy, cx, cy, rx, ry, angle=0.0):
    dx, dy = xx - cx, yy - cy
    c, s = np.cos(angle), np.sin(angle)
    u, v = (dx * c + dy * s) / rx, (-dx * s + dy * c) / ry
    return u * u + v * v <= 1.0


def _rectangle(xx, yy, cx, cy, half_w, half_h, angle=0.0):
    dx, dy = xx - cx, yy - cy
    c, s = np.cos(angle), np.sin(angle)
    return (np.abs(dx * c + dy * s) <= half_w) & (np.abs(-dx * s + dy * c) <= half_h)


def _texture(rng, xx, yy, colour, where):
    """A colour field around ``colour`` (flat, stripes, checks or smooth noise), at the
    pixels ``where`` selects: (n, 3) float32. Only those pixels are computed; each value is
    what the whole field has there."""
    kind = rng.integers(4)
    other = np.clip(colour + rng.normal(0, 60, 3), 0, 255)
    if kind == 0:
        return np.broadcast_to(colour, (int(where.sum()), 3)).astype(np.float32)
    x, y = xx[where], yy[where]
    if kind == 1:
        freq, angle = rng.uniform(8, 40), rng.uniform(0, np.pi)
        t = (np.sin((x * np.cos(angle) + y * np.sin(angle)) * freq) > 0)[..., None]
    elif kind == 2:
        freq = rng.uniform(6, 20)
        t = ((np.floor(x * freq) + np.floor(y * freq)) % 2 == 0)[..., None]
    else:
        low = rng.uniform(0, 1, (6, 6)).astype(np.float32)
        size = xx.shape[0]
        t = (np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC))[..., None] / 255.0)[where]
    return (colour * (1 - t) + other * t).astype(np.float32)


def _background(rng, xx, yy):
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    t = ((xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle) + 0.7) / 1.4
    image = (a * (1 - t[..., None]) + b * t[..., None]).astype(np.float32)
    for _ in range(rng.integers(6, 18)):
        if rng.random() < 0.25:  # distractors in skin and hair colours
            colour = SKIN_TONES[rng.integers(len(SKIN_TONES))] + rng.normal(0, 10, 3)
        else:
            colour = rng.uniform(0, 255, 3)
        cx, cy = rng.uniform(-0.1, 1.1, 2)
        w, h = rng.uniform(0.03, 0.35, 2)
        angle = rng.uniform(0, np.pi)
        shape = _ellipse(xx, yy, cx, cy, w, h, angle) if rng.random() < 0.5 else _rectangle(xx, yy, cx, cy, w, h, angle)
        image[shape] = _texture(rng, xx, yy, colour, shape)
    return image


def _person(rng, xx, yy, image):
    """Draw a person onto ``image`` in place; return its mask."""
    cx = rng.uniform(0.3, 0.7)
    head_rx = rng.uniform(0.09, 0.19)
    head_ry = head_rx * rng.uniform(1.15, 1.4)
    cy = rng.uniform(0.18, 0.5)
    tilt = rng.uniform(-0.35, 0.35)
    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] + rng.normal(0, 12, 3)
    hair_colour = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))] + rng.normal(0, 10, 3)

    # body: shoulders and torso as a wide ellipse running off the bottom of the frame
    neck_bottom = cy + head_ry * rng.uniform(1.2, 1.6)
    body_rx = head_rx * rng.uniform(2.0, 3.6)
    body_ry = max(1.05 - neck_bottom, 0.2) + rng.uniform(0.1, 0.5)
    body_cx = cx + rng.uniform(-0.08, 0.08)
    body = _ellipse(xx, yy, body_cx, neck_bottom + body_ry * rng.uniform(0.85, 1.0), body_rx, body_ry, rng.uniform(-0.2, 0.2))
    neck = _rectangle(xx, yy, cx, (cy + neck_bottom) / 2 + 0.02, head_rx * rng.uniform(0.35, 0.55), (neck_bottom - cy) / 2 + 0.02, tilt / 3)
    head = _ellipse(xx, yy, cx, cy, head_rx, head_ry, tilt)

    style = rng.integers(4)  # 0 none, 1 short, 2 long, 3 bun
    hair = np.zeros_like(head)
    if style >= 1:
        hair = _ellipse(xx, yy, cx, cy - head_ry * 0.15, head_rx * 1.12, head_ry * 0.98, tilt) & ~_ellipse(
            xx, yy, cx, cy + head_ry * 0.35, head_rx * 0.95, head_ry * 0.85, tilt
        )
    if style == 2:
        length = rng.uniform(0.6, 1.6) * head_ry
        for side in (-1, 1):
            hair |= _rectangle(xx, yy, cx + side * head_rx * 0.85, cy + length / 2, head_rx * 0.3, length / 2 + head_ry * 0.3, tilt)
    if style == 3:
        hair |= _ellipse(xx, yy, cx - np.sin(tilt) * head_ry * 1.1, cy - np.cos(tilt) * head_ry * 1.05, head_rx * 0.5, head_rx * 0.45)

    image[body] = _texture(rng, xx, yy, rng.uniform(0, 255, 3), body)
    image[neck] = skin * 0.85
    shade = 1.0 + 0.35 * ((xx - cx) * np.cos(rng.uniform(0, 2 * np.pi)))[..., None]
    face = np.clip(skin * shade, 0, 255)
    image[head] = face[head]
    # eyes and mouth: small dark marks that rotate with the head
    c, s = np.cos(tilt), np.sin(tilt)
    for ex, ey, rx, ry in ((-0.38, -0.1, 0.12, 0.06), (0.38, -0.1, 0.12, 0.06), (0.0, 0.45, 0.3, 0.06)):
        px = cx + (ex * head_rx) * c - (ey * head_ry) * s
        py = cy + (ex * head_rx) * s + (ey * head_ry) * c
        image[_ellipse(xx, yy, px, py, rx * head_rx, ry * head_ry, tilt)] = skin * rng.uniform(0.2, 0.5)
    if hair.any():
        image[hair] = _texture(rng, xx, yy, hair_colour, hair)
    return head | hair | neck | body


def synthetic_portrait(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One RGB uint8 image (size, size, 3) and its 0/1 mask, fully determined by ``seed``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = _background(rng, xx, yy)
    mask = _person(rng, xx, yy, image)
    # lighting: a soft directional gradient over the whole frame
    angle = rng.uniform(0, 2 * np.pi)
    light = 1.0 + rng.uniform(0.0, 0.45) * ((xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle))
    image = np.clip(image * light[..., None] * rng.uniform(0.7, 1.2), 0, 255)
    picture = Image.fromarray(image.astype(np.uint8))
    if rng.random() < 0.6:
        picture = picture.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.6) * size / 224))
    image = np.asarray(picture).astype(np.float32) + rng.normal(0, rng.uniform(0, 12), (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8), mask.astype(np.uint8)


SPLIT_OFFSETS = {"train": 0, "val": 1_000_000, "test": 2_000_000}


@functools.lru_cache(maxsize=4)
def _drawn_split(split: str, count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    offset = SPLIT_OFFSETS[split] + seed * 10_000_000
    pairs = [synthetic_portrait(offset + index, size) for index in range(count)]
    images, masks = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    images.flags.writeable = masks.flags.writeable = False
    return images, masks


def synthetic_split(split: str, count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Disjoint seeds per split: ``val`` and ``test`` never share an image with ``train``.

    The arrays are fresh copies; the drawing is done once per process for the last few
    (split, count, size, seed) asked for (a ``final`` table scores many model files on
    one split)."""
    images, masks = _drawn_split(split, count, size, seed)
    names = [f"synthetic-{split}-{index:05d}" for index in range(count)]
    return images.copy(), masks.copy(), names
