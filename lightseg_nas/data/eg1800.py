"""EG1800 in either public layout, read once into a resized in-memory cache.

Layouts (detected from the folder):

* ExtPortraitSeg: ``images_data_crop/NNNNN.jpg``, ``GT_png/NNNNN_mask.png``,
  ``eg1800_<split>.txt`` listing ``NNNNN``;
* PortraitNet: ``Images/NNNNN.png``, ``Labels/NNNNN.png``, ``eg1800_<split>.txt``
  listing ``NNNNN.png``.

Splits come from the list files. ``val`` is carved deterministically out of the training list
(seed and fraction recorded); ``train`` is then the rest of it, so nothing trains on ``val``.
``trainval`` is the whole training list. Images and masks are resized to the square input
the way the papers' OpenCV code does it (``data/images.py``: bilinear without antialiasing,
top-left nearest masks), for training and evaluation alike.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lightseg_nas.data.images import read_mask, read_photo, resize_linear, resize_nearest
from lightseg_nas.errors import DatasetMissing, UserError

CARVED_SPLITS = ("train", "val")


@dataclass(frozen=True)
class Sample:
    name: str
    image: Path
    mask: Path


def _layout(root: Path) -> str:
    if (root / "images_data_crop").is_dir():
        return "extportraitseg"
    if (root / "Images").is_dir():
        return "portraitnet"
    raise UserError(f"{root}: not an EG1800 folder (expected images_data_crop/ + GT_png/, or Images/ + Labels/)")


def _read_list(root: Path, split: str) -> list[str]:
    path = root / f"eg1800_{split}.txt"
    if not path.is_file():
        known = sorted(p.stem.removeprefix("eg1800_") for p in root.glob("eg1800_*.txt"))
        raise UserError(f"{path}: no such split list (lists here: {', '.join(known) or 'none'})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not a UTF-8 text file (byte {error.start})") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read the split list ({error.__class__.__name__})") from None
    # a name listed twice is one image (scored once, trained once per epoch)
    names = list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))
    if not names:
        raise UserError(f"{path}: the split is empty")
    return names


def _samples(root: Path, names: list[str]) -> list[Sample]:
    layout = _layout(root)
    samples = []
    for name in names:
        _check_name(root, name)
        stem = Path(name).stem
        if layout == "extportraitseg":
            image, mask = root / "images_data_crop" / f"{stem}.jpg", root / "GT_png" / f"{stem}_mask.png"
        else:
            image, mask = root / "Images" / name, root / "Labels" / name
        if not image.is_file():
            raise UserError(f"{image}: image listed in the split is missing (its mask: {mask})")
        if not mask.is_file():
            raise UserError(f"{mask}: mask missing for image {image}")
        samples.append(Sample(stem, image, mask))
    return samples


def _check_name(root: Path, name: str) -> None:
    """A list entry names a file inside the dataset folder: no absolute paths, no '..',
    no folders, nothing that a symlink-free resolution puts outside ``root``."""
    candidate = Path(name)
    if candidate.is_absolute() or ".." in candidate.parts or len(candidate.parts) != 1 or "\x00" in name:
        raise UserError(f"{root}: list entry {name!r} is not a plain file name inside the dataset folder")


def split_names(root: Path, split: str, val_fraction: float, val_seed: int) -> list[str]:
    """Names of one split; ``train``/``val`` are carved from ``eg1800_train.txt`` by seed."""
    if split == "trainval":
        return _read_list(root, "train")
    if split not in CARVED_SPLITS:
        return _read_list(root, split)
    names = _read_list(root, "train")
    if not 0 < val_fraction < 1:
        raise UserError(f"validation fraction must be in (0, 1), got {val_fraction}")
    shuffled = sorted(names)
    random.Random(val_seed).shuffle(shuffled)
    count = max(1, round(len(shuffled) * val_fraction))
    val = set(shuffled[:count])
    chosen = [n for n in names if (n in val) == (split == "val")]
    if not chosen:
        raise UserError(f"{root}: split {split!r} is empty after carving {count} validation images")
    return chosen


def _load_pair(sample: Sample, size: int) -> tuple[np.ndarray, np.ndarray]:
    image = read_photo(sample.image)  # grayscale and 16-bit photos become 8-bit RGB
    mask = read_mask(sample.mask)
    if mask.shape != (image.height, image.width):
        raise UserError(
            f"{sample.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is {image.width}x{image.height}"
        )
    values = np.unique(mask)
    if not set(values.tolist()) <= {0, 1, 255}:
        bad = [v for v in values.tolist() if v not in (0, 1, 255)][:3]
        raise UserError(f"{sample.mask}: mask has values other than 0/1/255 (for example {bad})")
    # The papers train and score at a square size, ignoring the aspect ratio, resized the
    # way their OpenCV code resizes (images/resize_linear, resize_nearest).
    return resize_linear(np.asarray(image), size), resize_nearest((mask > 0).astype(np.uint8), size)


def load_eg1800(root: Path, split: str, size: int, val_fraction: float, val_seed: int, progress: bool = False):
    """Decode and resize one split: uint8 images (N, H, W, 3), 0/1 masks (N, H, W), names."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetMissing(f"{root}: no such dataset folder")
    samples = _samples(root, split_names(root, split, val_fraction, val_seed))
    iterator = samples
    if progress:
        from tqdm import tqdm

        iterator = tqdm(samples, desc=f"decoding eg1800/{split}", unit="img", leave=False, disable=None)
    pairs = [_load_pair(sample, size) for sample in iterator]
    images = np.stack([p[0] for p in pairs])
    masks = np.stack([p[1] for p in pairs])
    return images, masks, [s.name for s in samples]
