"""Weight-sharing supernets: train one network whose sub-networks are a space's points, then
score any sub-network in seconds with inherited weights and recalibrated batch norm.

* ``train_supernet``: the sandwich rule (each step trains the largest, the smallest and a few
  random sub-networks of the space, the others also distilled from the largest), a
  checkpoint every epoch and an exact resume, like the trainer. The result is one file,
  ``OUT/supernet.pt`` (format ``lightseg-nas-supernet``): space, classes, weights, settings,
  history.
* ``load_supernet``, ``subnet`` (a standalone network with the supernet's weights, which
  trains, prunes and exports like any other), ``recalibrate`` (batch-norm statistics of a
  sub-network from a fixed set of training images) and ``score`` (both, then validation).

The family that defines the blocks defines the elastic modules
(``lightseg_nas/families/c3net_supernet.py``); a space says which supernet holds it
(``search_spaces.SUPERNET_SPACES``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn
from lightseg_nas.progress import percent

import search_spaces
from lightseg_nas import runs
from lightseg_nas.checks import check_finite_state, load_state_file
from lightseg_nas.data import SegmentationData, load_split, split_fingerprint
from lightseg_nas.data.transforms import get_preprocessing, normalize
from lightseg_nas.distill import pixel_kd, two_class_logits
from lightseg_nas.errors import FieldError, UserError
from lightseg_nas.losses import segmentation_loss
from lightseg_nas.metrics import evaluate
from lightseg_nas.modelfile import code_version
from lightseg_nas.settings import SupernetSettings, changed_settings, missing_settings

__all__ = ["FORMAT", "train_supernet", "load_supernet", "subnet", "recalibrate", "score", "build_supernet"]

FORMAT = "lightseg-nas-supernet"
FORMAT_VERSION = 1


def build_supernet(space: str, num_classes: int) -> nn.Module:
    return search_spaces.supernet_space(space).supernet(num_classes)


def _sandwich(space: str, num_classes: int, generator: torch.Generator, count: int) -> list:
    """Largest, smallest and ``count`` random sub-networks, reproducible from the generator."""
    module = search_spaces.supernet_space(space)
    seeds = torch.randint(0, 2**31 - 1, (count,), generator=generator).tolist()
    return [module.largest(num_classes), module.smallest(num_classes)] + [search_spaces.sample(space, seed, num_classes) for seed in seeds]


@torch.no_grad()
def recalibrate(model: nn.Module, images: torch.Tensor, preprocessing: dict, batch_size: int = 32) -> nn.Module:
    """Set every batch norm's statistics to their average over ``images`` (cached, not
    augmented), then leave the model in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    model.train()
    for start in range(0, len(images), batch_size):
        model(normalize(images[start : start + batch_size], preprocessing))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    return model.eval()


def subnet(supernet: nn.Module, config) -> nn.Module:
    """The sub-network ``config`` as a standalone network (build_model's) with inherited weights."""
    try:
        return supernet.subnet(config)
    except ValueError as error:
        raise UserError(str(error)) from None


def score(supernet: nn.Module, config, recalibration: SegmentationData, val: SegmentationData, preprocessing: dict) -> dict:
    """Validation metrics of a sub-network with inherited weights and recalibrated batch norm."""
    network = subnet(supernet, config)
    recalibrate(network, recalibration.images, preprocessing)
    return evaluate(network, val, preprocessing)


def _first(data: SegmentationData, count: int) -> SegmentationData:
    return SegmentationData(data.images[:count], data.masks[:count], data.names[:count], data.description, data.synthetic)


def train_supernet(
    space: str, num_classes: int, data_spec: str, out_dir: Path, settings: SupernetSettings, resume: bool = False, progress: bool = True
) -> dict:
    """Train the space's supernet on the training split; write OUT/supernet.pt; return its record."""
    search_spaces.supernet_space(space)
    if num_classes not in (1, 2):
        raise FieldError("classes", f"{{0}} must be 1 or 2, got {num_classes}")
    out_dir = runs.check_run_folder(out_dir, resume, "supernet.pt")
    checkpoint = out_dir / runs.CHECKPOINT

    def differences(stored: dict) -> list[str]:
        """A resume continues the run its checkpoint names; a setting added after the
        checkpoint was written counts as its default there."""
        differ = changed_settings(stored, settings)
        return differ + [f"{key} {stored.get(key)!r} (now {value!r})" for key, value in (("space", space), ("num_classes", num_classes)) if stored.get(key) != value]

    if resume:  # said before any data is loaded
        runs.read_checkpoint(checkpoint, SupernetSettings, differences, "settings")
    preprocessing = get_preprocessing("default")
    train_data = load_split(data_spec, "train", settings.size, settings.val_fraction, settings.val_seed, progress)
    val_data = load_split(data_spec, "val", settings.size, settings.val_fraction, settings.val_seed, progress)
    with runs.locked_run(out_dir, resume, "supernet training", "supernet.pt"):
        state = runs.read_checkpoint(checkpoint, SupernetSettings, differences, "settings") if resume else None  # as it is now, under the lock
        return _train(space, num_classes, data_spec, out_dir, checkpoint, settings, preprocessing, train_data, val_data, state, progress)


def _train(space, num_classes, data_spec, out_dir, checkpoint, settings, preprocessing, train_data, val_data, state, progress) -> dict:
    torch.manual_seed(settings.seed)
    supernet = build_supernet(space, num_classes)
    module = search_spaces.supernet_space(space)
    ends = {"largest": module.largest(num_classes), "smallest": module.smallest(num_classes)}
    recalibration = _first(train_data, settings.recalibration_images)

    def sandwich_step(x, masks, generator, epoch):
        """The largest, the smallest and random sub-networks, each a backward pass; all
        but the largest also distilled from it (in place)."""
        teacher, total = None, 0.0
        for config in _sandwich(space, num_classes, generator, settings.random_subnets):
            logits = supernet(x, config)
            loss = segmentation_loss(logits, masks, settings.loss, settings.edge_weight, settings.edge_band)
            if teacher is None:
                teacher = two_class_logits(logits.detach())
            elif settings.kd_weight > 0:
                loss = loss + settings.kd_weight * pixel_kd(two_class_logits(logits), teacher, settings.kd_temperature)
            if not torch.isfinite(loss):
                return loss
            loss.backward()
            total += loss.item()
        return torch.tensor(total, dtype=torch.float64)

    def validate(epoch):
        return {f"val_{name}_{k}": v for name, config in ends.items() for k, v in score(supernet, config, recalibration, val_data, preprocessing).items()}

    try:
        history = runs.train_epochs(
            supernet, train_data, settings, preprocessing, sandwich_step, validate, state=state, checkpoint=checkpoint,
            stored_settings=settings.model_dump() | {"space": space, "num_classes": num_classes},
            describe=lambda row: f"validation fg IoU {percent(row['val_largest_fg_iou'])} (largest), {percent(row['val_smallest_fg_iou'])} (smallest)",
            postfix=lambda row: {"largest": percent(row["val_largest_fg_iou"]), "smallest": percent(row["val_smallest_fg_iou"])},
            desc=f"supernet {space}", label="supernet ", progress=progress,
        )
    except FloatingPointError as error:
        raise UserError(f"supernet training diverged: {error}; try a lower --lr") from None
    check_finite_state(supernet.state_dict(), "the trained supernet")
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "space": space,
        "num_classes": num_classes,
        "state_dict": supernet.state_dict(),
        "preprocessing": preprocessing,
        "settings": settings.model_dump(),
        "seed": settings.seed,
        "data": {
            "spec": data_spec, "train": train_data.description, "val": val_data.description, "synthetic": train_data.synthetic,
            "fingerprint": split_fingerprint(data_spec, settings.val_fraction, settings.val_seed),
        },
        "history": history,
        "metrics": {k: v for k, v in (history[-1].items() if history else {}) if k.startswith("val_")} | {"val_size": settings.size},
        "train_seconds": sum(row["seconds"] for row in history),
        "code_version": code_version(),
    }
    return runs.finish(record, out_dir, "supernet.pt")


# what a supernet checkpoint holds
CHECKPOINT_PARTS = runs.CHECKPOINT_PARTS


def load_supernet(path: str | Path) -> tuple[nn.Module, dict]:
    """(supernet in eval mode, its record) from OUT/supernet.pt, or one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such supernet file")
    record = load_state_file(path, "supernet file", hint="")
    if record.get("format") != FORMAT or record.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: not a supernet file of this version (format {record.get('format')!r} {record.get('format_version')!r})")
    parts = {"settings": dict, "data": dict, "state_dict": dict, "space": str, "num_classes": int, "history": list}
    for key, kind in parts.items():
        if not isinstance(record.get(key), kind):
            raise UserError(f"{path}: a damaged supernet file: {key} is {'missing' if key not in record else 'a ' + type(record[key]).__name__}, not a {kind.__name__}")
    missing = missing_settings(record["settings"], SupernetSettings)
    if missing:
        raise UserError(f"{path}: a damaged supernet file: settings lack {', '.join(repr(m) for m in missing)}")
    if not record["state_dict"]:
        raise UserError(f"{path}: a damaged supernet file: state_dict is empty")
    try:
        SupernetSettings(**record["settings"])
        if not isinstance(record["data"]["spec"], str) or not isinstance(record["state_dict"], dict) or record["num_classes"] not in (1, 2):
            raise TypeError
        if not isinstance(record["space"], str) or record["space"] not in search_spaces.SUPERNET_SPACES:
            raise TypeError
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: a damaged supernet file (its space, classes, settings, data or weights are missing or wrong)") from None
    supernet = build_supernet(record["space"], record["num_classes"])
    check_finite_state(record["state_dict"], str(path))
    try:
        supernet.load_state_dict(record["state_dict"], strict=True)
    except (RuntimeError, KeyError) as error:
        raise UserError(f"{path}: its weights do not fit the {record.get('space')!r} supernet ({str(error).splitlines()[0][:150]})") from None
    return supernet.eval(), record


def recalibration_split(record: dict, data_spec: Optional[str] = None) -> tuple[SegmentationData, SegmentationData]:
    """(recalibration images, validation split) at the supernet's training size, from the
    supernet's own data unless ``data_spec`` says otherwise."""
    settings = SupernetSettings(**record["settings"])
    spec = data_spec or record["data"]["spec"]
    train = load_split(spec, "train", settings.size, settings.val_fraction, settings.val_seed, progress=False)
    val = load_split(spec, "val", settings.size, settings.val_fraction, settings.val_seed, progress=False)
    return _first(train, settings.recalibration_images), val
