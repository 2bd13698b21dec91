"""Small EG1800-like folders written by the tests, in both public layouts."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
from PIL import Image

from lightseg_nas.data.synthetic import synthetic_portrait


def write_dataset(root: Path, layout: str, count: int = 10, mask_scale: int = 255) -> Path:
    """count portraits of varied sizes (one grayscale), listed in eg1800_train/test.txt."""
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(count):
        image, mask = synthetic_portrait(index, 64)
        width, height = (48 + 8 * (index % 3), 64)
        picture = Image.fromarray(image).resize((width, height))
        if index == 1:
            picture = picture.convert("L")
        label = Image.fromarray((mask * mask_scale).astype(np.uint8)).resize((width, height), Image.NEAREST)
        stem = f"{index + 1:05d}"
        if layout == "extportraitseg":
            (root / "images_data_crop").mkdir(exist_ok=True)
            (root / "GT_png").mkdir(exist_ok=True)
            picture.save(root / "images_data_crop" / f"{stem}.jpg", quality=90)
            label.save(root / "GT_png" / f"{stem}_mask.png")
            names.append(stem)
        else:
            (root / "Images").mkdir(exist_ok=True)
            (root / "Labels").mkdir(exist_ok=True)
            picture.save(root / "Images" / f"{stem}.png")
            label.save(root / "Labels" / f"{stem}.png")
            names.append(f"{stem}.png")
    (root / "eg1800_train.txt").write_text("\n".join(names[: count - 2]) + "\n")
    (root / "eg1800_test.txt").write_text("\n".join(names[count - 2 :]) + "\n")
    return root


@contextlib.contextmanager
def stopping_after_one_epoch():
    """While held, every training (train.fit) stops with KeyboardInterrupt right after its
    first epoch's checkpoint, as a stop by hand would."""
    import lightseg_nas.train as train_module

    real = train_module.fit

    def stopped(*args, **kwargs):
        def stop(row):
            raise KeyboardInterrupt

        return real(*args, **{**kwargs, "on_epoch": stop})

    train_module.fit = stopped
    try:
        yield
    finally:
        train_module.fit = real
