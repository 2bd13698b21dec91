"""Using a trained network: evaluation, mask prediction with a preview, ONNX export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter, UnidentifiedImageError

from lightseg_nas.data import load_split
from lightseg_nas.data.transforms import get_preprocessing, normalize
from lightseg_nas.errors import UserError
from lightseg_nas.metrics import predict_foreground
from lightseg_nas.modelfile import atomic_write, load_model_file
from lightseg_nas.models import INPUT_MULTIPLE, build_model
from lightseg_nas.presets import get_preset, load_released_weights

__all__ = ["load_network", "evaluate_network", "predict_images", "export_onnx_checked"]


def load_network(checkpoint: str | Path | None = None, preset: str | None = None, weights: str | Path | None = None):
    """(model in eval mode, preprocessing, record or None) from a model file or a preset + weights."""
    if (checkpoint is None) == (preset is None):
        raise UserError("give either --checkpoint MODEL.pt or --preset NAME --weights FILE.pth")
    if checkpoint is not None:
        model, record = load_model_file(checkpoint)
        return model.eval(), record["preprocessing"], record
    if weights is None:
        raise UserError("--preset needs --weights FILE.pth (the released state_dict)")
    model = load_released_weights(build_model(get_preset(preset)), preset, weights)
    return model.eval(), get_preprocessing("released"), None


def evaluate_network(
    model, preprocessing: dict, data_spec: str, split: str, size: int, val_fraction: float, val_seed: int, progress: bool = True
) -> dict:
    from lightseg_nas.train import evaluate

    if size % INPUT_MULTIPLE:
        raise UserError(f"--size must be a multiple of {INPUT_MULTIPLE}, got {size}")
    data = load_split(data_spec, split, size, val_fraction, val_seed, progress=progress)
    metrics = evaluate(model, data, preprocessing)
    return {**metrics, "size": size, "split": split, "data": data.description, "synthetic": data.synthetic}


def _read_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"{path}: no such image") from None
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"{path}: unreadable image ({error.__class__.__name__})") from None


@torch.no_grad()
def predict_images(model, preprocessing: dict, images: list[Path], out_dir: Path, size: int = 224, preview: str = "blur") -> list[Path]:
    """For each image: NAME_mask.png (0/255 at the image's own size) and NAME_preview.jpg
    (background blurred, or replaced by flat grey with ``preview='replace'``)."""
    if preview not in ("blur", "replace"):
        raise UserError(f"--preview must be blur or replace, got {preview!r}")
    pictures = [(Path(p), _read_image(Path(p))) for p in images]  # all readable before writing anything
    written = []
    for path, picture in pictures:
        x = torch.from_numpy(np.array(picture.resize((size, size), Image.BILINEAR))).permute(2, 0, 1)[None]
        logits = model(normalize(x, preprocessing))
        logits = F.interpolate(logits, size=(picture.height, picture.width), mode="bilinear", align_corners=False)
        mask = predict_foreground(logits)[0].numpy()
        rgb = np.asarray(picture).astype(np.float32)
        if preview == "blur":
            background = np.asarray(picture.filter(ImageFilter.GaussianBlur(max(4, picture.width // 40)))).astype(np.float32)
        else:
            background = np.full_like(rgb, 128.0)
        composite = np.where(mask[..., None], rgb, background).astype(np.uint8)
        mask_path = out_dir / f"{path.stem}_mask.png"
        preview_path = out_dir / f"{path.stem}_preview.jpg"
        atomic_write(mask_path, lambda p: Image.fromarray((mask * 255).astype(np.uint8)).save(p, format="PNG"))
        atomic_write(preview_path, lambda p: Image.fromarray(composite).save(p, format="JPEG", quality=90))
        written += [mask_path, preview_path]
    return written


def export_onnx_checked(model, out: Path, size: int = 224, tolerance: float = 1e-4) -> float:
    """Export, run the file in ONNX Runtime against PyTorch, and keep it only if the largest
    absolute difference of the logits stays within ``tolerance``; return that difference."""
    import onnxruntime

    from lightseg_nas.cost import export_onnx

    if size % INPUT_MULTIPLE:
        raise UserError(f"--size must be a multiple of {INPUT_MULTIPLE}, got {size}")
    example = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(example).numpy()
    difference = {}

    def write(path: Path) -> None:
        export_onnx(model, example, path)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: example.numpy()})[0]
        difference["max"] = float(np.abs(got - expected).max())
        if difference["max"] > tolerance:
            raise UserError(f"{out}: ONNX Runtime differs from PyTorch by {difference['max']:.2e} (> {tolerance:g}); not written")

    atomic_write(out, write)
    return difference["max"]
