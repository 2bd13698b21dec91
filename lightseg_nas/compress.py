"""``lightseg-nas compress``: iterative prune -> fine-tune (-> distil) down to a size target.

The network is pruned in ``steps`` steps whose targets fall geometrically from its size to
the target; after each, it is fine-tuned for ``epochs_per_step`` epochs (with distillation
when a teacher is given) and validated. Each step is recorded (parameters, MACs, validation
IoU, seconds) and saved to ``OUT.partial``, so a stopped run continues with ``--resume``;
the end is an ordinary model file whose config rebuilds the pruned network, and that config
as JSON beside it (OUT with the suffix .json) for the trainer.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from lightseg_nas import prune
from lightseg_nas.checks import check_finite_state, check_output_file, file_lock, load_state_file
from lightseg_nas.config import config_from_dict, to_json
from lightseg_nas.cost import count_params
from lightseg_nas.data import load_split
from lightseg_nas.distill import Distiller, load_teacher
from lightseg_nas.errors import FieldError, UserError
from lightseg_nas.families import build_model
from lightseg_nas.metrics import evaluate
from lightseg_nas.modelfile import atomic_write_text, load_model_file, make_record, save_record
from lightseg_nas.settings import CompressSettings, LossSettings, SpeedSettings, SplitSettings, StepSettings, TrainSettings, changed_settings, parse_options, with_recipe
from lightseg_nas.speed import SPEED_FIELDS
from lightseg_nas.train import fit, resolve_device

__all__ = ["CompressSettings", "load_teacher", "check_target", "compress_to_file", "config_path", "MAC_COUNTER", "summary"]

# The MAC counter of --target-macs and of the step table: the papers' convention.
MAC_COUNTER = prune.MAC_COUNTER


def settings_from(recipe: Optional[str] = None, **values) -> CompressSettings:
    """Settings from given values (None = not given), on top of a named training recipe's
    loss, size and step values (its epochs are a training's length: --epochs-per-step is the
    fine-tuning's)."""
    values = with_recipe(recipe, values, leave_out=("epochs",))
    unknown = sorted(set(values) - set(CompressSettings.model_fields))
    if recipe is not None and unknown:  # a recipe setting the fine-tuning cannot follow: refused, not dropped
        raise FieldError("recipe", f"{{0}} {recipe!r} sets {', '.join(unknown)}, which compress's fine-tuning does not take")
    settings = parse_options(CompressSettings, values)
    if (settings.target is None) == (settings.target_percent is None):
        raise UserError("give exactly one target: a number (N) or a percentage of the current size (P%)")
    resolve_device(settings.device)
    return settings


def resolve_target(model: torch.nn.Module, settings: CompressSettings) -> CompressSettings:
    """Settings with an absolute target: a percentage becomes that share of the current cost."""
    if settings.target is not None:
        return settings
    current = prune.cost(model, settings.metric, settings.mac_size)
    return settings.model_copy(update={"target": max(1, int(current * settings.target_percent / 100))})


def check_target(model: torch.nn.Module, metric: str, target: int, mac_size: int) -> tuple[int, int]:
    """(current cost, smallest reachable cost); UserError if the target is outside them."""
    unit = "parameters" if metric == "params" else f"MACs ({MAC_COUNTER}, {mac_size}x{mac_size})"
    current = prune.cost(model, metric, mac_size)
    if target >= current:
        raise UserError(f"target {target:,} {unit} is not below the network's current {current:,}: nothing to prune")
    floor = prune.smallest(model, metric, mac_size)
    if target < floor:
        raise UserError(
            f"target {target:,} {unit} is below what this network's fixed parts need: it prunes to {floor:,} at the least"
        )
    return current, floor


def _step_targets(current: int, target: int, steps: int) -> list[int]:
    """Geometric from the current size to the target; the last one is the target itself."""
    ratio = target / current
    return [int(current * ratio ** (k / steps)) for k in range(1, steps)] + [target]


def _row(step: int, model, metric_row: dict, settings: CompressSettings, seconds: float, target: int | None) -> dict:
    return {
        "step": step,
        "target": target,
        "params": count_params(model),
        "macs": prune.cost(model, "macs", settings.mac_size),
        "val_fg_iou": metric_row["fg_iou"],
        "val_miou": metric_row["miou"],
        "val_boundary_f": metric_row["boundary_f"],
        "seconds": seconds,
    }


def _fine_tune_settings(settings: CompressSettings, preprocessing: dict, step: int) -> TrainSettings:
    shared = StepSettings.model_fields.keys() | LossSettings.model_fields.keys() | SplitSettings.model_fields.keys() | SpeedSettings.model_fields.keys()
    return TrainSettings(
        **settings.model_dump(include=shared), epochs=settings.epochs_per_step, size=settings.size, seed=settings.seed + step,
        preprocessing=preprocessing["name"], max_steps=settings.max_steps_per_step, device=settings.device,
    )


def format_row(row: dict) -> str:
    return (
        f"step {row['step']}: {row['params']:>9,} params  {row['macs'] / 1e6:8.2f}M MACs  "
        f"val fg IoU {100 * row['val_fg_iou']:6.2f}%  ({row['seconds']:.0f}s)"
    )


def compress_to_file(
    model_path: Path,
    out: Path,
    data_spec: Optional[str],
    settings: CompressSettings,
    teacher: Optional[str] = None,
    teacher_weights: Optional[Path] = None,
    resume: bool = False,
    progress: bool = True,
    on_row: Callable[[dict], None] = lambda row: None,
) -> dict:
    """Compress the model file ``model_path`` into the model file ``out``; return the record.
    ``data_spec`` None: the data the model file records."""
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    config_out = config_path(out)
    for path in (out, config_out):
        check_output_file(path)
    if partial.exists() and not resume:
        raise FieldError(("resume", "out"), f"{partial}: an unfinished compression; pass {{0}} to continue it or choose another {{1}}")
    if resume and not partial.exists():
        raise FieldError("resume", f"{partial}: nothing to resume; leave out {{0}} to start a new compression")
    model, record = load_model_file(model_path)
    if data_spec is None:  # the data the model was trained on
        recorded = (record.get("data") or {}).get("spec") if isinstance(record.get("data"), dict) else None
        data_spec = recorded if isinstance(recorded, str) and recorded else "synthetic"
    settings = resolve_target(model, settings)
    preprocessing = record["preprocessing"]
    source_config = record["config_object"]
    distiller_parts = load_teacher(teacher, teacher_weights) if teacher is not None else None
    current, floor = check_target(model, settings.metric, settings.target, settings.mac_size)
    device = resolve_device(settings.device)
    train_data = load_split(data_spec, "train", settings.size, settings.val_fraction, settings.val_seed, progress)
    val_data = load_split(data_spec, "val", settings.size, settings.val_fraction, settings.val_seed, progress)

    distiller = None
    if distiller_parts is not None:
        teacher_model, teacher_preprocessing, teacher_description = distiller_parts
        distiller = Distiller(
            teacher_model.to(device), teacher_preprocessing, preprocessing,
            settings.kd_temperature, settings.kd_weight, settings.cwd_weight,
        )

    # the lock first, then the check of what is there: a second compression into the same
    # OUT started meanwhile is refused instead of overwriting the first one's steps
    lock = out.with_name(out.name + ".lock")
    out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(file_lock(lock))
        except BlockingIOError:
            raise FieldError("out", f"{out}: another compression is writing it; wait for it or choose another {{0}}") from None
        held.callback(lock.unlink, missing_ok=True)  # removed while still held: nothing is left behind
        if out.exists() or (partial.exists() != resume):
            raise FieldError("out", f"{out}: another compression wrote here meanwhile; choose another {{0}}")
        return _compress_locked(
            model, record, model_path, out, partial, config_out, data_spec, settings, preprocessing, source_config,
            distiller, distiller_parts, current, floor, device, train_data, val_data, resume, progress, on_row,
        )


def _compress_locked(
    model, record, model_path, out, partial, config_out, data_spec, settings, preprocessing, source_config,
    distiller, distiller_parts, current, floor, device, train_data, val_data, resume, progress, on_row,
) -> dict:
    rows, histories = [], []
    if resume and partial.exists():
        state = load_state_file(partial, "partial compression")
        if state.get("source") != record["arch_id"]:
            raise UserError(f"{partial}: was written for another model; resume with the same MODEL")
        stored = state.get("settings") if isinstance(state.get("settings"), dict) else {}
        differ = changed_settings(stored, settings, ignore=SPEED_FIELDS)
        if differ:
            raise UserError(f"{partial}: was written with other settings: {', '.join(differ)}; resume with the same ones")
        try:
            model = build_model(config_from_dict(state["config"], f"{partial} (config)"))
            check_finite_state(state["state_dict"], str(partial))
            model.load_state_dict(state["state_dict"])
            rows, histories = list(state["rows"]), list(state["histories"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise UserError(f"{partial}: a damaged partial compression ({error.__class__.__name__}); delete it to start again") from None
        for row in rows:
            on_row(row)
    else:
        model.to(device)
        rows.append(_row(0, model, evaluate(model, val_data, preprocessing, device=device), settings, 0.0, None))
        on_row(rows[0])

    targets = _step_targets(current, settings.target, settings.steps)
    for step in range(len(rows), settings.steps + 1):
        started = time.perf_counter()
        model = prune.prune_to(model.cpu(), targets[step - 1], settings.metric, settings.mac_size)
        fine_tune = _fine_tune_settings(settings, preprocessing, step)
        try:
            history = fit(model, train_data, val_data, fine_tune, preprocessing, progress=progress, extra_loss=distiller)
        except FloatingPointError as error:
            kept = f"; the finished steps are kept in {partial}" if partial.exists() else ""
            raise FieldError("lr", f"fine-tuning of step {step} diverged: {error}{kept}; no model file written (try a lower {{0}})") from None
        metrics = evaluate(model, val_data, preprocessing, device=device)
        rows.append(_row(step, model.cpu(), metrics, settings, time.perf_counter() - started, targets[step - 1]))
        histories.append(history)
        save_record(
            {
                "settings": settings.model_dump(), "source": record["arch_id"], "config": model.config.model_dump(mode="json"),
                "state_dict": model.state_dict(), "rows": rows, "histories": histories,
            },
            partial,
        )
        on_row(rows[-1])

    model = model.cpu()
    final = rows[-1]
    result = make_record(
        model.config,
        model,
        preprocessing,
        # the last fine-tuning's settings: eval finds the same validation split through them
        training=_fine_tune_settings(settings, preprocessing, settings.steps).model_dump(),
        seed=settings.seed,
        data={"spec": data_spec, "train": train_data.description, "val": val_data.description, "synthetic": train_data.synthetic},
        metrics={"val_fg_iou": final["val_fg_iou"], "val_miou": final["val_miou"], "val_boundary_f": final["val_boundary_f"], "val_size": settings.size},
        compress={
            "source": str(model_path),
            "source_arch_id": record["arch_id"],
            "source_config": source_config.model_dump(mode="json"),
            "teacher": distiller_parts[2] if distiller_parts is not None else None,
            "mac_counter": MAC_COUNTER,
            "floor": floor,
            "settings": settings.model_dump(),
            "steps": rows,
        },
        history=[row for history in histories for row in history],
        train_seconds=sum(row["seconds"] for row in rows),
        threads=torch.get_num_threads(),
    )
    atomic_write_text(config_out, to_json(model.config))
    save_record(result, out)
    partial.unlink(missing_ok=True)
    return result


def config_path(out: Path) -> Path:
    """Where the pruned network's config JSON goes: beside OUT (small.pt -> small.json)."""
    return out.with_suffix(".json") if out.suffix != ".json" else out.with_name(out.name + ".config.json")


def parse_target(text: str, flag: str) -> tuple[Optional[int], Optional[float]]:
    """N (a count) or P% (a share of the current size, 0 < P < 100)."""
    import math

    try:
        if text.endswith("%"):
            percent = float(text[:-1])
            if not (math.isfinite(percent) and 0 < percent < 100):
                raise ValueError
            return None, percent
        return int(text), None
    except ValueError:
        raise UserError(f"{flag} {text!r}: give a whole number (20000) or a percentage between 0 and 100 (50%)") from None


def summary(record: dict, out: Path) -> tuple[dict, str]:
    """What ``compress`` reports of a finished model file: the --json object and the line."""
    steps = record["compress"]["steps"]
    result = {
        "model": str(out), "arch_id": record["arch_id"], "params": steps[-1]["params"], "macs": steps[-1]["macs"],
        "mac_counter": record["compress"]["mac_counter"], "steps": steps, "teacher": record["compress"]["teacher"], **record["metrics"],
        "synthetic": record["data"]["synthetic"],
    }
    line = (
        f"wrote {out}: {steps[0]['params']:,} -> {steps[-1]['params']:,} params, validation fg IoU "
        f"{100 * steps[0]['val_fg_iou']:.2f}% -> {100 * steps[-1]['val_fg_iou']:.2f}% at {record['metrics']['val_size']}px"
    )
    return result, line
