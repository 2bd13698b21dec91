"""Reading photos and masks from disk, whatever their mode, size or orientation.

* 16-bit and 32-bit grayscale photos are scaled to 8 bits (PIL's ``convert("RGB")`` clips
  them to white);
* a mask with an alpha channel whose colour is flat carries the person in its alpha;
* a file whose header claims more than ``MAX_PIXELS`` pixels is refused before decoding
  (decompression bombs);
* ``longest`` decodes JPEGs at a reduced scale (PIL's draft mode), so a 10000x10000 photo
  that the network sees at 224x224 is never held at full size;
* photos given to ``predict`` are turned upright by their EXIF orientation, so the mask
  matches the photo as it is displayed. Dataset images are read as stored: their masks are
  aligned with the stored pixels.

Resizing to the network's square input follows the papers' official code, which used
OpenCV, in training, evaluation and prediction alike: images with OpenCV's ``INTER_LINEAR``
(half-pixel centres, two taps, no antialiasing; ``resize_linear``), masks with OpenCV's
``INTER_NEAREST`` (source pixel floor(i * in / out), top-left aligned; ``resize_nearest``).
PIL's filters differ on both counts (antialiased bilinear, centre-sampled nearest); with
them the released ExtremeC3Net scores 0.2 points lower on masks it learned the OpenCV way
(docs/networks.md).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from lightseg_nas.errors import UserError

__all__ = ["MAX_PIXELS", "read_photo", "read_mask", "display_size", "resize_linear", "resize_nearest"]

MAX_PIXELS = 150_000_000  # about 12,000 x 12,000; far beyond any camera photo


def _open(path: Path, what: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not an {what}") from None
    except Image.DecompressionBombError:
        raise UserError(f"{path}: {what} is too large to decode safely (over {MAX_PIXELS:,} pixels)") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise UserError(f"{path}: unreadable {what} ({error.__class__.__name__})") from None
    if image.width * image.height > MAX_PIXELS:
        image.close()
        raise UserError(f"{path}: {what} is {image.width}x{image.height}, too large to decode safely (over {MAX_PIXELS:,} pixels)")
    return image


def _load(image: Image.Image, path: Path, what: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UserError(f"{path}: unreadable {what} ({error.__class__.__name__})") from None


def _to_8bit(image: Image.Image) -> Image.Image:
    """Photos of 16-bit or 32-bit (or float) samples, scaled to 0..255 rather than clipped."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            top = 65535.0
        elif image.mode == "F":
            top = 1.0 if values.max(initial=0) <= 1.0 else 255.0
        else:  # 32-bit integers: 16-bit content is the common case (PNG 16-bit loads as I)
            top = 65535.0 if values.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8), mode="L")
    return image


def read_photo(path: Path, longest: int | None = None, upright: bool = False) -> Image.Image:
    """An RGB image. ``longest``: decode JPEGs at a reduced scale with the longer side still
    at least this long. ``upright``: apply the EXIF orientation."""
    path = Path(path)
    with _open(path, "image") as image:
        if longest is not None and image.format == "JPEG":
            scale = max(image.size) / max(1, longest)
            if scale >= 2:
                image.draft("RGB", (max(1, int(image.width / scale)), max(1, int(image.height / scale))))
        _load(image, path, "image")
        result = ImageOps.exif_transpose(image) if upright else image
        result = _to_8bit(result)
        return result.convert("RGB")


def display_size(path: Path) -> tuple[int, int]:
    """(width, height) of a photo as displayed (its EXIF orientation applied)."""
    with _open(Path(path), "image") as image:
        orientation = image.getexif().get(0x0112, 1)
        return (image.height, image.width) if orientation in (5, 6, 7, 8) else image.size


def read_mask(path: Path) -> np.ndarray:
    """A mask as uint8 0..255 (H, W). 16-bit masks are scaled to 8 bits; a mask with alpha
    whose colour is flat is its alpha channel, thresholded at half."""
    path = Path(path)
    with _open(path, "mask") as mask:
        _load(mask, path, "mask")
        if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
            rgba = mask.convert("RGBA")
            colour = np.asarray(rgba.convert("RGB").convert("L"))
            alpha = np.asarray(rgba)[..., 3]
            if colour.min() == colour.max() and alpha.min() != alpha.max():
                return np.where(alpha >= 128, 255, 0).astype(np.uint8)
            return colour
        if mask.mode.startswith("I;16") or mask.mode == "I":
            values = np.asarray(mask, dtype=np.int64)
            if values.max(initial=0) > 255:
                values = values // 257
            return values.clip(0, 255).astype(np.uint8)
        if mask.mode == "F":
            values = np.asarray(mask, dtype=np.float64)
            return np.clip(np.rint(values * (255 if values.max(initial=0) <= 1 else 1)), 0, 255).astype(np.uint8)
        return np.asarray(mask if mask.mode in ("L", "P", "1") else mask.convert("L")).astype(np.uint8)


def resize_linear(image: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3) uint8 as OpenCV's INTER_LINEAR computes it in
    floating point (the official code resized the float image), rounded to uint8."""
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None]  # a writable float copy
    y = F.interpolate(x, size=(height, width or height), mode="bilinear", align_corners=False, antialias=False)
    return y[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def resize_nearest(mask: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
    """(H, W) -> (height, width) as OpenCV's INTER_NEAREST picks pixels: floor(i * scale)
    with scale = 1 / (out / in) in double precision, clipped to the last pixel."""
    width = width or height
    rows = np.minimum(np.floor(np.arange(height) * (1.0 / (height / mask.shape[0]))).astype(np.int64), mask.shape[0] - 1)
    cols = np.minimum(np.floor(np.arange(width) * (1.0 / (width / mask.shape[1]))).astype(np.int64), mask.shape[1] - 1)
    return mask[rows][:, cols]
