"""The run layer: what every resumable training does around its steps, in one place.

A run lives in a folder: ``checkpoint.pt`` after every epoch, its product (``model.pt``,
``supernet.pt``) written atomically at the end, when the checkpoint goes. This module owns

- the output checks (:func:`check_run_folder`: a finished product, an unfinished run, or
  nothing to resume) and the folder lock with the same checks made again under it
  (:func:`locked_run`: another run may have started or finished meanwhile);
- reading a checkpoint: loaded with ``weights_only=True``, its parts checked, its settings
  compared with the run's (:func:`read_checkpoint`);
- the one epoch loop (:func:`train_epochs`), which takes a step function: the trainer's
  step (``train.fit``, also used by search trials and ``compress``'s fine-tuning) and the
  supernet's sandwich step share seeding, shuffling, the data pipeline, the schedule,
  stops, timing, validation, progress and checkpoints;
- the atomic finish (:func:`finish`).
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from lightseg_nas.checks import check_output_dir, check_run_state, folder_lock, load_state_file, non_finite_tensors
from lightseg_nas.errors import FieldError, UserError, stop_requested
from lightseg_nas.modelfile import save_record

__all__ = ["CHECKPOINT", "CHECKPOINT_PARTS", "check_run_folder", "locked_run", "read_checkpoint", "lr_factor", "epoch_generator", "train_epochs", "finish"]

CHECKPOINT = "checkpoint.pt"
# what every training checkpoint holds, besides what a run adds (its network, its data)
CHECKPOINT_PARTS = {"model": dict, "optimizer": dict, "scheduler": dict, "history": list, "settings": dict}


def check_run_folder(out_dir: Path, resume: bool, product: str = "model.pt") -> Path:
    """A run folder that a new run may use (nothing finished or unfinished there) or, with
    ``resume``, one that holds an unfinished run."""
    out_dir = check_output_dir(Path(out_dir))
    checkpoint = out_dir / CHECKPOINT
    if (out_dir / product).exists() and not checkpoint.exists():
        raise FieldError("out", f"{out_dir}: already holds a finished {product}; choose another {{0}}")
    if checkpoint.exists() and not resume:
        raise FieldError(("resume", "out"), f"{out_dir}: holds an unfinished run; pass {{0}} to continue it or choose another {{1}}")
    if resume and not checkpoint.exists():
        raise FieldError("resume", f"{out_dir}: nothing to resume (no {CHECKPOINT}); leave out {{0}} to start a new run")
    return out_dir


@contextlib.contextmanager
def locked_run(out_dir: Path, resume: bool, what: str, product: str = "model.pt") -> Iterator[Path]:
    """Hold the run folder's lock; the folder's state is checked again under it, since
    another run may have written there between the first check and the lock."""
    out_dir = Path(out_dir)
    with folder_lock(out_dir, what):
        checkpoint = out_dir / CHECKPOINT
        if ((out_dir / product).exists() and not checkpoint.exists()) or (checkpoint.exists() and not resume) or (resume and not checkpoint.exists()):
            raise FieldError("out", f"{out_dir}: another {what} wrote here meanwhile; choose another {{0}}")
        yield out_dir


def read_checkpoint(path: Path, settings_class, differences: Callable[[dict], list[str]], what: str = "training settings") -> dict:
    """The checkpoint's state, checked part by part (one line naming the damage), and its
    stored settings compared with the run's: ``differences(stored)`` lists what differs."""
    state = load_state_file(path, "checkpoint")
    check_run_state(state, path, "checkpoint", CHECKPOINT_PARTS, settings_class)
    differ = differences(state["settings"])
    if differ:
        raise UserError(f"{path}: was written with other {what}: {', '.join(differ)}; resume with the same ones")
    return state


def lr_factor(settings, step: int, steps_per_epoch: int) -> float:
    """Learning-rate factor of a step: linear warm-up over the first epoch, then cosine,
    poly or constant."""
    total = settings.epochs * steps_per_epoch
    warmup = steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if settings.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if settings.schedule == "poly":
        return (1 - progress) ** 0.9
    return 1.0


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Each epoch's shuffling and augmentation (and sampled sub-networks) come from (seed,
    epoch), so a resumed run sees the same batches as an uninterrupted one."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def train_epochs(
    module: torch.nn.Module,
    train_data,
    settings,
    preprocessing: dict,
    step: Callable[[torch.Tensor, torch.Tensor, torch.Generator, int], torch.Tensor],
    validate: Callable[[int], dict],
    *,
    device="cpu",
    channels_last: bool = False,
    state: Optional[dict] = None,
    checkpoint: Optional[Path] = None,
    checkpoint_extra: Optional[dict] = None,
    stored_settings: Optional[dict] = None,
    describe: Callable[[dict], str] = lambda row: "",
    postfix: Callable[[dict], dict] = lambda row: {},
    desc: str = "training",
    label: str = "",
    row_extra: Callable[[int], dict] = lambda epoch: {},
    progress: bool = True,
    on_epoch: Optional[Callable[[dict], None]] = None,
) -> list[dict]:
    """Train ``module`` in place for ``settings.epochs`` epochs (or ``settings.max_steps``
    steps); return the per-epoch history.

    ``step(x, masks, generator, epoch)`` computes the batch's loss and its gradients (one
    or several backward passes) and returns the loss; the loop zeroes the gradients before
    it and steps Adam and the schedule after it, refusing a non-finite loss before any
    update (FloatingPointError; its gradients are never applied). ``validate(epoch)`` gives the epoch's metrics (keys
    without the ``val_`` prefix go in as they are). With ``state`` (a checkpoint read by
    :func:`read_checkpoint`) the run continues from it; with ``checkpoint``, the state is
    saved after every epoch (the settings as ``stored_settings``, default the settings').
    """
    from tqdm import tqdm

    from lightseg_nas.progress import log_line
    from lightseg_nas.speed import place_input
    from lightseg_nas.train import prepare_batch

    optimizer = torch.optim.Adam(module.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(train_data) / settings.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda index: lr_factor(settings, index, steps_per_epoch))
    history: list[dict] = []
    if state is not None:
        try:
            module.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            history = list(state["history"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise UserError(f"{checkpoint}: a damaged checkpoint ({error.__class__.__name__}); delete it to start again") from None
        module.to(device)
    start_epoch = len(history)
    index = start_epoch * steps_per_epoch
    first_step = True  # carries one-time start-up (compilation, allocator warm-up): timed apart
    epochs = tqdm(range(start_epoch, settings.epochs), desc=desc, unit="epoch", disable=None if progress else True, initial=start_epoch, total=settings.epochs)
    for epoch in epochs:
        generator = epoch_generator(settings.seed, epoch)
        order = torch.randperm(len(train_data), generator=generator)
        started, total_loss, batches = time.perf_counter(), 0.0, 0
        timed_images, timed_s, startup_s = 0, 0.0, 0.0
        module.train()
        for first in range(0, len(order), settings.batch_size):
            if settings.max_steps is not None and index >= settings.max_steps:
                break
            stop_requested()  # Ctrl-C or SIGTERM whose exception a finalizer dropped
            step_started = time.perf_counter()
            x, masks = prepare_batch(train_data, order[first : first + settings.batch_size], settings, preprocessing, generator, device)
            x = place_input(x, channels_last)
            optimizer.zero_grad(set_to_none=True)
            value = step(x, masks, generator, epoch).item()  # one synchronisation per step
            if not math.isfinite(value):
                raise FloatingPointError(f"loss became {value} at epoch {epoch}, step {index}")
            optimizer.step()
            scheduler.step()
            total_loss += value
            batches += 1
            index += 1
            if first_step:
                startup_s, first_step = time.perf_counter() - step_started, False
            else:
                timed_images += len(x)
                timed_s += time.perf_counter() - step_started
        if batches == 0:
            break
        bad = non_finite_tensors(module.state_dict())
        if bad:
            raise FloatingPointError(f"weights became non-finite ({bad[0]}) in epoch {epoch + 1}")
        metrics = validate(epoch)
        row = {
            "epoch": epoch + 1, "loss": total_loss / batches, "seconds": time.perf_counter() - started, **row_extra(epoch),
            # training steps only: no validation, no data loading, no first step of the run
            "images_per_s": timed_images / timed_s if timed_s > 0 else None,
            "timed_images": timed_images, "timed_s": timed_s, "startup_s": startup_s,
            **{key if key.startswith("val_") else f"val_{key}": value for key, value in metrics.items()},
        }
        history.append(row)
        epochs.set_postfix(loss=f"{row['loss']:.3f}", **postfix(row))
        log_line(progress, f"{label}epoch {epoch + 1}/{settings.epochs}: loss {row['loss']:.3f}, {describe(row)}, {row['seconds']:.0f}s")
        if checkpoint is not None:
            save_record(
                {
                    "model": module.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "history": history,
                    "settings": stored_settings if stored_settings is not None else settings.model_dump(), **(checkpoint_extra or {}),
                },
                checkpoint,
            )
        if on_epoch is not None:
            on_epoch(row)
    return history


def finish(record: dict, out_dir: Path, product: str = "model.pt") -> dict:
    """Write the run's product atomically, then drop its checkpoint: a crash in between
    leaves a finished product beside a checkpoint, which a rerun reports."""
    out_dir = Path(out_dir)
    save_record(record, out_dir / product)
    (out_dir / CHECKPOINT).unlink(missing_ok=True)
    return record
