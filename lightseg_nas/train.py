"""The trainer: any config (or preset) into a trained, evaluated model file.

Adam with a per-step schedule, a loss of lightseg_nas/losses.py, settings of
lightseg_nas/settings.py (optionally a named recipe), augmentation on cached batches,
validation every epoch (``metrics.evaluate``) on a
split carved from the training list, a checkpoint every epoch, and a resume that continues
exactly: each epoch's shuffling and augmentation come from a generator seeded by
(seed, epoch), so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import torch

from lightseg_nas import runs
from lightseg_nas.checks import check_finite_state, check_run_state, load_state_file
from lightseg_nas.data import SegmentationData, load_split
from lightseg_nas.data.transforms import augment, get_preprocessing, normalize
from lightseg_nas.distill import Distiller, load_teacher
from lightseg_nas.errors import FieldError, UserError
from lightseg_nas.families import build_model
from lightseg_nas.losses import segmentation_loss
from lightseg_nas.metrics import evaluate
from lightseg_nas.modelfile import make_record
from lightseg_nas.settings import TrainSettings, changed_settings, parse_options, with_recipe
from lightseg_nas.speed import SPEED_FIELDS, compiled, flush_denormals, place_model, use_compile

__all__ = ["TrainSettings", "settings_from", "fit", "images_per_s", "train_to_file", "resolve_device", "segmentation_loss", "summary"]


def settings_from(recipe: Optional[str] = None, **values) -> TrainSettings:
    """Settings from given values (None = not given), on top of a named recipe's values."""
    settings = parse_options(TrainSettings, with_recipe(recipe, values))
    resolve_device(settings.device)
    if settings.encoder_epochs >= settings.epochs:
        raise FieldError(("encoder_epochs", "epochs"), f"{{0}} ({settings.encoder_epochs}) must be fewer than {{1}} ({settings.epochs})")
    return settings


# Settings that change how fast a run goes, or only name its values, not what it computes:
# a finished run is reused for a protocol when every other setting matches.
NOT_PROTOCOL = (*SPEED_FIELDS, "device", "recipe")


def protocol_differences(model_file: Path, settings: TrainSettings, config=None) -> list[str]:
    """How a finished model file's training differs from ``settings`` (and, with ``config``,
    whether it holds another network): empty when it may be reused for this protocol."""
    from lightseg_nas.config import arch_id
    from lightseg_nas.modelfile import load_record

    record = load_record(model_file)
    differ = changed_settings(record.get("training") or {}, settings, ignore=NOT_PROTOCOL)
    if config is not None and record.get("arch_id") != arch_id(config):
        differ.append("arch_id")
    return differ


def check_run_folder(out_dir: Path, resume: bool) -> Path:
    """A run folder that a new training may use or, with ``resume``, continue (runs.py)."""
    return runs.check_run_folder(out_dir, resume, "model.pt")


def resume_defaults(out_dir: Path) -> tuple[Optional[object], Optional[str], dict]:
    """(network config, data spec, settings) recorded in OUT/checkpoint.pt, for a
    ``--resume`` that repeats none of the options; Nones and {} where there is none."""
    from lightseg_nas.config import config_from_dict

    checkpoint = Path(out_dir) / "checkpoint.pt"
    if not checkpoint.is_file():
        return None, None, {}
    state = load_state_file(checkpoint, "checkpoint")
    check_run_state(state, checkpoint, "checkpoint", CHECKPOINT_PARTS, TrainSettings)
    settings = state["settings"]
    config = state.get("config")
    config = config_from_dict(config, f"{checkpoint} (config)") if isinstance(config, dict) else None
    data = state.get("data_spec") if isinstance(state.get("data_spec"), str) else None
    return config, data, settings


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FieldError("device", f"{{0}}: unknown device {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise FieldError("device", f"{{0}}: {name!r} cannot train or run networks here; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FieldError("device", "{0} cuda was asked for but no CUDA device is available")
    return device


def prepare_batch(data: SegmentationData, index: torch.Tensor, settings: TrainSettings, preprocessing: dict, generator: torch.Generator, device):
    """The data pipeline of one training step: gather from the cache, augment, normalise."""
    images, masks = data.images[index], data.masks[index]
    if settings.augment:
        images, masks = augment(images, masks, generator, getattr(settings, "affine", "default"))
    return normalize(images.to(device), preprocessing), masks.to(device)


def fit(
    model: torch.nn.Module,
    train_data: SegmentationData,
    val_data: SegmentationData,
    settings: TrainSettings,
    preprocessing: dict,
    checkpoint: Optional[Path] = None,
    resume: bool = False,
    progress: bool = True,
    checkpoint_extra: Optional[dict] = None,
    extra_loss: Optional[Callable] = None,
    on_epoch: Optional[Callable[[dict], None]] = None,
) -> list[dict]:
    """Train in place; return the per-epoch history (loss, validation metrics, seconds).

    ``extra_loss(x, logits, masks)`` adds a term (distillation). ``on_epoch(row)`` sees each
    epoch's row (the search uses it to stop a trial). With ``checkpoint``, state is saved
    after every epoch, and ``resume`` continues from it. The loop is the run layer's
    (runs.train_epochs); this is the trainer's step.
    """
    from lightseg_nas.progress import percent

    flush_denormals()
    device = resolve_device(settings.device)
    model.to(device).train()
    state = None
    if resume and checkpoint is not None and checkpoint.exists():
        state = runs.read_checkpoint(checkpoint, TrainSettings, lambda stored: changed_settings(stored, settings, ignore=SPEED_FIELDS))
    start_epoch = len(state["history"]) if state is not None else 0
    steps_per_epoch = math.ceil(len(train_data) / settings.batch_size)
    # The fast path: weights (and so Adam's state, made like them) and inputs channels-last,
    # optionally the compiled forward; the model is handed back in the default layout.
    place_model(model, settings.channels_last)
    planned = (settings.epochs - start_epoch) * steps_per_epoch
    if settings.max_steps is not None:
        planned = min(planned, max(0, settings.max_steps - start_epoch * steps_per_epoch))
    compiling = use_compile(settings.compile, planned, device)
    forward = compiled(model, compiling)

    def step(x, masks, generator, epoch):
        encoder_only = epoch < settings.encoder_epochs
        logits = model.forward_encoder(x) if encoder_only else forward(x)
        loss = segmentation_loss(logits, masks, settings.loss, settings.edge_weight, settings.edge_band)
        if extra_loss is not None and not encoder_only:
            loss = loss + extra_loss(x, logits, masks)
        loss.backward()  # a non-finite loss is refused by the loop before Adam steps
        return loss

    try:
        return runs.train_epochs(
            model, train_data, settings, preprocessing, step,
            lambda epoch: evaluate(model, val_data, preprocessing, device=device, channels_last=settings.channels_last),
            device=device, channels_last=settings.channels_last, state=state, checkpoint=checkpoint, checkpoint_extra=checkpoint_extra,
            describe=lambda row: f"validation fg IoU {percent(row['val_fg_iou'])}", postfix=lambda row: {"val_fg_iou": percent(row["val_fg_iou"])},
            row_extra=lambda epoch: {"stage": "encoder" if epoch < settings.encoder_epochs else "full", "compiled": compiling},
            progress=progress, on_epoch=on_epoch,
        )
    finally:
        place_model(model, False)


def images_per_s(history: list[dict]) -> Optional[float]:
    """Training images per second of a run: its timed steps (no validation, no start-up)."""
    images = sum(row.get("timed_images") or 0 for row in history)
    seconds = sum(row.get("timed_s") or 0.0 for row in history)
    return images / seconds if seconds > 0 else None


CHECKPOINT_PARTS = runs.CHECKPOINT_PARTS


def diverged_message(error: FloatingPointError, checkpoint: Optional[Path]) -> str:
    kept = f"; the last good checkpoint is kept in {checkpoint}" if checkpoint is not None and checkpoint.exists() else ""
    return f"training diverged: {error}{kept}; no model file written (try a lower learning rate)"


def train_to_file(
    config,
    data_spec: str,
    out_dir: Path,
    settings: TrainSettings,
    resume: bool = False,
    progress: bool = True,
    init_state: Optional[dict] = None,
    teacher_weights: Optional[Path] = None,
    on_epoch: Optional[Callable[[dict], None]] = None,
) -> dict:
    """Load data, train ``config`` and write ``out_dir/model.pt``; return the record.
    ``on_epoch(row)`` sees each epoch's history row.

    With ``settings.teacher`` (a model file, or a preset with ``teacher_weights``), the loss
    adds distillation from it, and the record names the teacher.

    ``out_dir/checkpoint.pt`` holds the resumable state; ``out_dir/model.pt`` is written
    (atomically) only when training ends.
    """
    out_dir = check_run_folder(out_dir, resume)
    checkpoint = out_dir / "checkpoint.pt"
    preprocessing = get_preprocessing(settings.preprocessing)
    device = resolve_device(settings.device)
    distiller, teacher = None, None
    if settings.teacher is not None:
        teacher_model, teacher_preprocessing, teacher = load_teacher(settings.teacher, teacher_weights)
        distiller = Distiller(
            teacher_model.to(device), teacher_preprocessing, preprocessing, settings.kd_temperature, settings.kd_weight, settings.cwd_weight
        )
    elif teacher_weights is not None:
        raise FieldError(("teacher_weights", "teacher"), "{0} goes with {1} PRESET")
    if resume:  # said before any data is loaded
        runs.read_checkpoint(checkpoint, TrainSettings, lambda stored: changed_settings(stored, settings, ignore=SPEED_FIELDS))
    train_data = load_split(data_spec, "train", settings.size, settings.val_fraction, settings.val_seed, progress)
    val_data = load_split(data_spec, "val", settings.size, settings.val_fraction, settings.val_seed, progress)
    # The folder is locked only once the inputs are known good (a refused run leaves nothing).
    with runs.locked_run(out_dir, resume, "training run"):
        return _train_locked(
            config, data_spec, out_dir, checkpoint, settings, preprocessing, resume, progress, init_state, train_data, val_data, distiller, teacher, on_epoch
        )


def _train_locked(
    config, data_spec, out_dir, checkpoint, settings, preprocessing, resume, progress, init_state, train_data, val_data, distiller, teacher, on_epoch=None
) -> dict:
    torch.manual_seed(settings.seed)
    model = build_model(config)
    if init_state is not None:
        model.load_state_dict(init_state)
    try:
        # the checkpoint names its network and data too: --resume needs nothing repeated
        extra = {"config": config.model_dump(mode="json"), "data_spec": data_spec}
        history = fit(model, train_data, val_data, settings, preprocessing, checkpoint, resume, progress, extra_loss=distiller, checkpoint_extra=extra, on_epoch=on_epoch)
    except FloatingPointError as error:
        raise UserError(diverged_message(error, checkpoint)) from None
    check_finite_state(model.state_dict(), "the trained network")
    record = make_record(
        config,
        model.cpu(),
        preprocessing,
        training=settings.model_dump(),
        seed=settings.seed,
        data={"spec": data_spec, "train": train_data.description, "val": val_data.description, "synthetic": train_data.synthetic},
        metrics={k: v for k, v in (history[-1].items() if history else {}) if k.startswith("val_")} | {"val_size": settings.size},
        history=history,
        # summed over epochs, so a run resumed after a stop still reports all of its time
        train_seconds=sum(row["seconds"] for row in history),
        images_per_s=images_per_s(history),
        # what taught this network besides the labels (None: the labels alone)
        teacher=teacher,
        # the CPU threads of the process that finished it (CPU-minutes = train_seconds x threads)
        threads=torch.get_num_threads(),
    )
    return runs.finish(record, out_dir, "model.pt")


def summary(record: dict, model_file: Path) -> tuple[dict, str]:
    """What ``train`` reports of a finished model file: the --json object and the line."""
    metrics = {
        **record["metrics"], "model": str(model_file), "arch_id": record["arch_id"], "synthetic": record["data"]["synthetic"],
        "images_per_s": record["images_per_s"], "train_seconds": record["train_seconds"], "teacher": record["teacher"],
    }
    label = " (synthetic data)" if metrics["synthetic"] else ""
    speed = f", {metrics['images_per_s']:.1f} training images/s" if metrics["images_per_s"] else ""
    return metrics, f"wrote {model_file}: validation fg IoU {100 * metrics.get('val_fg_iou', 0):.2f}% at {metrics['val_size']}px{label}{speed}"
