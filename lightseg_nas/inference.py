"""Using a trained network: loading (a model file, or a preset with released weights),
evaluation on a split, mask prediction with a preview. ONNX export is in onnx_export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from lightseg_nas.checks import check_output_dir, check_size
from lightseg_nas.data import load_split
from lightseg_nas.data.images import display_size, read_photo, resize_linear
from lightseg_nas.data.transforms import get_preprocessing, normalize
from lightseg_nas.errors import FieldError, UserError
from lightseg_nas.families import build_model
from lightseg_nas.modelfile import atomic_write, load_model_file
from lightseg_nas.presets import get_preset, load_released_weights
from lightseg_nas.speed import place_input, place_model

__all__ = ["load_network", "recorded_size", "evaluate_network", "predict_images"]


def load_network(checkpoint: str | Path | None = None, preset: str | None = None, weights: str | Path | None = None):
    """(model in eval mode, preprocessing, record or None) from a model file or a preset + weights."""
    if (checkpoint is None) == (preset is None):
        raise FieldError(("preset", "weights"), "give either a model file (MODEL.pt) or {0} NAME {1} FILE.pth")
    if checkpoint is not None:
        model, record = load_model_file(checkpoint)
        return model.eval(), record["preprocessing"], record
    if weights is None:
        raise FieldError(("preset", "weights"), "{0} needs {1} FILE.pth (the released state_dict)")
    model = load_released_weights(build_model(get_preset(preset)), preset, weights)
    return model.eval(), get_preprocessing("released"), None


def recorded_size(record: dict | None, default: int = 224) -> tuple[int, str]:
    """The input size a model file was trained (or fine-tuned) at, and where it came from."""
    for section, key in (("metrics", "val_size"), ("training", "size")):
        value = ((record or {}).get(section) or {}).get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return check_size(value), "the model file's training size"
            except UserError:
                pass
    return default, "the default"


def recorded_split(record: dict | None, data: str | None = None, val_fraction: float | None = None, val_seed: int | None = None) -> tuple[str, float, int]:
    """(data spec, validation fraction, validation seed) to score a model file on: what is
    given, else what the file records (its training data and split), else synthetic data
    and the default split (released weights record neither)."""
    training = (record or {}).get("training") or {}
    recorded = ((record or {}).get("data") or {}).get("spec")
    if data is None:
        data = recorded if isinstance(recorded, str) and recorded else "synthetic"
    fraction = val_fraction if val_fraction is not None else training.get("val_fraction", 0.1)
    seed = val_seed if val_seed is not None else training.get("val_seed", 0)
    return data, fraction, seed


def evaluate_network(
    model, preprocessing: dict, data_spec: str, split: str, size: int, val_fraction: float, val_seed: int, progress: bool = True
) -> dict:
    from lightseg_nas.metrics import evaluate

    check_size(size, "size")
    data = load_split(data_spec, split, size, val_fraction, val_seed, progress=progress)
    metrics = evaluate(place_model(model, True), data, preprocessing, channels_last=True)  # the fast path on CPUs
    return {**metrics, "size": size, "split": split, "data": data.description, "synthetic": data.synthetic}


def _output_names(images: list[Path], out_dir: Path) -> list[tuple[Path, Path]]:
    """(mask, preview) paths of each image; refused if two images would share a name or an
    output would replace one of the inputs."""
    names, seen = [], {}
    for path in images:
        pair = (out_dir / f"{path.stem}_mask.png", out_dir / f"{path.stem}_preview.jpg")
        if path.stem in seen:
            raise FieldError("out", f"{seen[path.stem]} and {path} would both write {pair[0].name}; predict them into different {{0}} folders")
        seen[path.stem] = path
        names.append(pair)
    inputs = {p.resolve() for p in images}
    for pair in names:
        for output in pair:
            if output.resolve() in inputs:
                raise FieldError("out", f"{output}: is one of the input images; choose another {{0}}")
    return names


# The preview is written at most this long on its longer side; the mask is at full size.
PREVIEW_LONGEST = 2048


@torch.no_grad()  # not inference_mode: the layout change below must leave ordinary parameters
def predict_images(model, preprocessing: dict, images: list[Path], out_dir: Path, size: int = 224, preview: str = "blur") -> list[Path]:
    """For each image: NAME_mask.png (0/255 at the image's own displayed size, EXIF
    orientation applied) and NAME_preview.jpg (background blurred, or replaced by flat grey
    with ``preview='replace'``; at most PREVIEW_LONGEST pixels on its longer side)."""
    if preview not in ("blur", "replace"):
        raise FieldError("preview", f"{{0}} must be blur or replace, got {preview!r}")
    check_size(size, "size")
    images = [Path(p) for p in images]
    check_output_dir(out_dir)
    outputs = _output_names(images, out_dir)
    sizes = [display_size(path) for path in images]  # every image readable before anything is written
    written = []
    place_model(model.eval(), True)  # channels-last: the fast path on CPUs
    for path, (width, height), (mask_path, preview_path) in zip(images, sizes, outputs):
        picture = read_photo(path, longest=max(size, PREVIEW_LONGEST), upright=True)
        x = torch.from_numpy(resize_linear(np.array(picture), size)).permute(2, 0, 1)[None]  # as in training
        logits = model(place_input(normalize(x, preprocessing), True))
        if not torch.isfinite(logits).all():
            raise UserError(f"{path}: the network's output is not finite; nothing written for it")
        # foreground probability at the network's size, resized with PIL (uint8) to the photo's
        probability = _foreground_probability(logits)[0]
        small = Image.fromarray((probability.numpy() * 255).round().astype(np.uint8))
        mask = small.resize((width, height), Image.BILINEAR).point(lambda v: 255 if v >= 128 else 0)
        if max(picture.size) > PREVIEW_LONGEST:
            scale = PREVIEW_LONGEST / max(picture.size)
            picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))), Image.BILINEAR)
        preview_mask = mask.resize(picture.size, Image.NEAREST)
        if preview == "blur":
            background = picture.filter(ImageFilter.GaussianBlur(max(4, picture.width // 40)))
        else:
            background = Image.new("RGB", picture.size, (128, 128, 128))
        composite = Image.composite(picture, background, preview_mask)
        atomic_write(mask_path, lambda p: mask.save(p, format="PNG"))
        atomic_write(preview_path, lambda p: composite.save(p, format="JPEG", quality=90))
        written += [mask_path, preview_path]
    return written


def _foreground_probability(logits: torch.Tensor) -> torch.Tensor:
    """(N, H, W) foreground probability: sigmoid of one logit, softmax of two."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return torch.softmax(logits, dim=1)[:, 1]
