"""The ``lightseg-nas`` command. Each command parses options and calls one library function.

A mistake in the user's input ends with one line on stderr and exit code 2 (no traceback).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from lightseg_nas.commandline import (
    OneLineErrors, SettingsOptions, check_int, print_json, refuse_kd_without_teacher, say, set_threads, user_errors, with_settings,
)
from lightseg_nas.errors import UserError, install_stop_handlers
from lightseg_nas.progress import lines_to_stderr
from lightseg_nas.settings import COMPILE_AUTO_STEPS, INPUT_MULTIPLE, RECIPES, CompressSettings, SupernetSettings, TrainSettings, default_text

__all__ = ["app", "main"]

app = typer.Typer(
    cls=OneLineErrors,
    help="Architecture search and compression for lightweight portrait segmentation "
    "(ExtremeC3Net / SINet search spaces on EG1800).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from lightseg_nas.modelfile import code_version

        typer.echo(f"lightseg-nas {code_version()}")
        raise typer.Exit()


@app.callback()
def _group(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Architecture search and compression for lightweight portrait segmentation."""


class Backend(str, Enum):  # cost.LATENCY_BACKENDS, listed here to keep --help free of torch (tested equal)
    torch = "torch"
    torch_channels_last = "torch-channels-last"
    onnxruntime = "onnxruntime"


class Preview(str, Enum):
    blur = "blur"
    replace = "replace"



PresetOption = typer.Option(None, "--preset", help="A published network: extremec3net or sinet.")
ConfigOption = typer.Option(None, "--config", help="A network config JSON file (as written by export).")
SpaceOption = typer.Option(None, "--space", help="Sample a random network of this search space (with --seed).")
SeedOption = typer.Option(0, "--seed", help="Seed of the --space sample.")
ClassesOption = typer.Option(None, "--classes", help="Override the number of output classes (1 logit or 2 softmax).")


@app.command()
@user_errors
def measure(
    preset: Optional[str] = PresetOption,
    config: Optional[Path] = ConfigOption,
    space: Optional[str] = SpaceOption,
    seed: int = SeedOption,
    classes: Optional[int] = ClassesOption,
    size: int = typer.Option(224, help=f"Input height and width (a multiple of {INPUT_MULTIPLE})."),
    threads: int = typer.Option(1, help="CPU threads for the latency measurement."),
    repeats: int = typer.Option(30, help="Timed runs after warm-up (median and quartiles are reported)."),
    backend: Backend = typer.Option(Backend.torch, help="Latency backend: torch (eager NCHW), torch-channels-last (eager NHWC) or onnxruntime."),
    reference: str = typer.Option("sinet", help="Preset timed in the same run for a latency ratio; 'none' to skip."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (params, macs, latency_ms, ...)."),
):
    """Parameters, MACs (by counter, with what each left out) and measured CPU latency of one network."""
    from lightseg_nas.checks import SEED_MAX, check_size
    from lightseg_nas.measure import cost_report

    check_size(size, "--size")
    check_int(threads, "--threads", 1, 1024)
    check_int(repeats, "--repeats", 1, 100_000)
    check_int(seed, "--seed", 0, SEED_MAX)
    backend = backend.value
    from lightseg_nas.presets import network_from

    network = network_from(preset, config, space, seed, classes)
    report = cost_report(network, size, threads, repeats, backend, None if reference == "none" else reference)
    if as_json:
        print_json(report)
        return
    from lightseg_nas.measure import describe

    typer.echo("\n".join(describe(report, network.family, size, backend, threads, repeats, reference)))


SizeOption = typer.Option(None, "--size", help=f"Input height and width, a multiple of {INPUT_MULTIPLE}.", show_default="the size the model was trained at; 224 for released weights")
ThreadsOption = typer.Option(None, "--threads", help="CPU threads.", show_default="the cores this process may use")
DataOption = typer.Option("synthetic", "--data", help="Dataset: eg1800:PATH (either public layout) or synthetic[:count=N,seed=S].")
# eval and compress: the data the model file was trained on, unless --data says otherwise
ModelDataOption = typer.Option(
    None, "--data", help="Dataset: eg1800:PATH (either public layout) or synthetic[:count=N,seed=S].",
    show_default="the data the model file records (synthetic for released weights)",
)


ValFractionOption = typer.Option(None, "--val-fraction", help="Fraction of the training list carved out as 'val'.", show_default=f"{default_text(TrainSettings, 'val_fraction')}, or the model file's")
ValSeedOption = typer.Option(None, "--val-seed", help="Seed that picks the validation images.", show_default=f"{default_text(TrainSettings, 'val_seed')}, or the model file's")

TRAIN_SETTINGS = (
    "epochs", "batch_size", "lr", "weight_decay", "schedule", "loss", "edge_weight", "edge_band", "affine", "size", "seed", "augment",
    "val_fraction", "val_seed", "encoder_epochs", "preprocessing", "max_steps", "device",
)
DISTILL_SETTINGS = ("kd_weight", "kd_temperature", "cwd_weight")
SPEED_SETTINGS = ("channels_last", "compile")
SPEED_DEFAULTS = {"compile": f"automatic: on for runs of {COMPILE_AUTO_STEPS:,} steps or more"}


@app.command()
@user_errors
@with_settings
def train(
    config: Optional[Path] = typer.Argument(None, help="Network config JSON (from export); or use --preset."),
    preset: Optional[str] = PresetOption,
    data: Optional[str] = typer.Option(None, "--data", help="Dataset: eg1800:PATH (either public layout) or synthetic[:count=N,seed=S].", show_default="synthetic; with --resume, the checkpoint's"),
    out: Path = typer.Option(..., "--out", help="Run folder: model.pt at the end, checkpoint.pt after each epoch."),
    classes: Optional[int] = ClassesOption,
    recipe: Optional[str] = typer.Option(None, "--recipe", help=f"Start from a named training recipe ({', '.join(sorted(RECIPES))}; see docs/usage.md); options given here override its values."),
    settings: dict = SettingsOptions(TrainSettings, TRAIN_SETTINGS, show_default={"augment": False}),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Distil from this model file, or from a preset (extremec3net, sinet) with --teacher-weights."),
    teacher_weights: Optional[Path] = typer.Option(None, "--teacher-weights", help="The released state_dict of a preset --teacher."),
    distill: dict = SettingsOptions(TrainSettings, DISTILL_SETTINGS),
    speed: dict = SettingsOptions(TrainSettings, SPEED_SETTINGS, show_default=SPEED_DEFAULTS),
    resume: bool = typer.Option(False, "--resume", help="Continue the unfinished run in --out from its last epoch."),
    threads: Optional[int] = ThreadsOption,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print the final metrics as JSON."),
):
    """Train a config (or a preset) and write one self-contained model file, OUT/model.pt.

    With --teacher, the loss adds pixel-wise and channel-wise distillation from that network
    (the model file records the teacher)."""
    from lightseg_nas.train import settings_from, train_to_file

    from lightseg_nas.train import check_run_folder, resume_defaults

    lines_to_stderr(as_json)
    if resume:
        check_run_folder(out, resume)  # a finished run, or nothing to resume: said first
    # --resume: the network, data and settings the checkpoint records, unless given here
    stored_config, stored_data, stored = resume_defaults(out) if resume else (None, None, {})
    if stored_config is not None and preset is None and config is None:
        network = stored_config if classes is None else stored_config.model_copy(update={"num_classes": classes})
    else:
        from lightseg_nas.presets import network_from

        network = network_from(preset, config, None, None, classes)
    given = {**settings, **distill, **speed, "teacher": teacher}
    stored_recipe = stored.pop("recipe", None)
    refuse_kd_without_teacher(teacher or stored.get("teacher"), **distill)
    settings = settings_from(recipe=recipe or stored_recipe, **{**stored, **{k: v for k, v in given.items() if v is not None}})
    data = data or stored_data or "synthetic"
    set_threads(threads)
    record = train_to_file(network, data, out, settings, resume=resume, progress=progress, teacher_weights=teacher_weights)
    from lightseg_nas.train import summary

    metrics, line = summary(record, out / "model.pt")
    print_json(metrics) if as_json else typer.echo(line)


SUPERNET_SETTINGS = (
    "epochs", "batch_size", "lr", "weight_decay", "loss", "size", "seed", "augment", "random_subnets", "kd_weight", "kd_temperature",
    "recalibration_images", "val_fraction", "val_seed", "max_steps",
)


@app.command("supernet")
@user_errors
@with_settings
def supernet_command(
    space: str = typer.Option(..., "--space", help="The search space whose networks the supernet holds: extremec3, sinet or hybrid."),
    data: str = DataOption,
    out: Path = typer.Option(..., "--out", help="Run folder: supernet.pt at the end, checkpoint.pt after each epoch."),
    classes: int = typer.Option(1, "--classes", help="Output classes of every sub-network (1 logit or 2 softmax)."),
    settings: dict = SettingsOptions(SupernetSettings, SUPERNET_SETTINGS, help={"loss": "ce, lovasz or ce+lovasz."}, show_default={"augment": False}),
    resume: bool = typer.Option(False, "--resume", help="Continue the unfinished run in --out from its last epoch."),
    threads: Optional[int] = ThreadsOption,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print the final metrics as JSON."),
):
    """Train a weight-sharing supernet of a search space (sandwich rule, in-place distillation).

    Any network of the space is then scored in seconds with the supernet's weights and
    recalibrated batch norm: a study chooses it with [fidelity] mode = "supernet"."""
    from lightseg_nas.settings import parse_options
    from lightseg_nas.supernet import train_supernet
    lines_to_stderr(as_json)

    settings = parse_options(SupernetSettings, settings)
    set_threads(threads)
    record = train_supernet(space, classes, data, out, settings, resume=resume, progress=progress)
    summary = {**record["metrics"], "supernet": str(out / "supernet.pt"), "space": space, "train_seconds": record["train_seconds"], "synthetic": record["data"]["synthetic"]}
    if as_json:
        print_json(summary)
    else:
        typer.echo(
            f"wrote {out / 'supernet.pt'}: validation fg IoU with inherited weights {100 * summary.get('val_largest_fg_iou', 0):.2f}% (largest) "
            f"and {100 * summary.get('val_smallest_fg_iou', 0):.2f}% (smallest) at {summary['val_size']}px"
        )


@app.command("eval")
@user_errors
def eval_command(
    model_file: Optional[Path] = typer.Argument(None, metavar="[MODEL]", help="A model file written by train or compress (or use --preset with --weights)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="The model file, as an option (same as MODEL)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="A published network, with --weights."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="The released state_dict for --preset."),
    data: Optional[str] = ModelDataOption,
    split: str = typer.Option("val", help="train, val (carved from the training list), trainval, test, ..."),
    size: Optional[int] = SizeOption,
    val_fraction: Optional[float] = ValFractionOption,
    val_seed: Optional[int] = ValSeedOption,
    threads: Optional[int] = ThreadsOption,
    as_json: bool = typer.Option(False, "--json", help="Print fg_iou, miou, boundary_f, n_images, size, ... as JSON."),
):
    """Score a network: per-image foreground IoU (the papers' "mIoU"), mean IoU, boundary F."""
    from lightseg_nas.inference import evaluate_network, load_network, recorded_size, recorded_split

    if model_file is not None and checkpoint is not None:
        raise UserError("give the model file once: MODEL or --checkpoint MODEL")
    set_threads(threads)
    model, preprocessing, record = load_network(model_file or checkpoint, preset, weights)
    data, fraction, carve_seed = recorded_split(record, data, val_fraction, val_seed)
    size, source = (size, "--size") if size is not None else recorded_size(record)
    metrics = evaluate_network(model, preprocessing, data, split, size, fraction, carve_seed)
    if as_json:
        print_json({**metrics, "size_source": source})
        return
    typer.echo(f"{metrics['data']}, {metrics['n_images']} images at {size}x{size} ({source})")
    typer.echo(f"fg_iou      {100 * metrics['fg_iou']:.2f}%  (foreground IoU per image, averaged: the papers' mIoU)")
    typer.echo(f"miou        {100 * metrics['miou']:.2f}%  (background and foreground IoU over the whole set, averaged)")
    typer.echo(f"boundary_f  {100 * metrics['boundary_f']:.2f}%  (boundary F-score, 2-pixel tolerance)")


@app.command()
@user_errors
def predict(
    arguments: list[Path] = typer.Argument(..., metavar="[MODEL] IMAGE...", help="A model file written by train or compress (or use --preset with --weights), then images of any size."),
    preset: Optional[str] = typer.Option(None, "--preset", help="A published network, with --weights (instead of MODEL)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="The released state_dict for --preset."),
    out: Path = typer.Option(..., "--out", help="Folder for NAME_mask.png and NAME_preview.jpg."),
    size: Optional[int] = SizeOption,
    preview: Preview = typer.Option(Preview.blur, help="Blur or replace the background in the preview."),
    threads: Optional[int] = ThreadsOption,
):
    """Write each image's mask and a preview with the background blurred or replaced."""
    from lightseg_nas.inference import load_network, predict_images, recorded_size

    model_file, images = (None, arguments) if preset is not None else (arguments[0], arguments[1:])
    if not images:
        raise UserError("give the images to segment after MODEL (or use --preset NAME --weights FILE IMAGE...)")
    set_threads(threads)
    model, preprocessing, record = load_network(model_file, preset, weights)
    size, source = (size, "--size") if size is not None else recorded_size(record)
    written = predict_images(model, preprocessing, images, out, size, preview.value)
    typer.echo(f"wrote {len(written)} files to {out} (network input {size}x{size}: {source})")


@app.command()
@user_errors
def onnx(
    model_file: Path = typer.Argument(..., metavar="MODEL", help="A model file written by train or compress."),
    out: Path = typer.Option(..., "--out", help="The .onnx file to write."),
    size: Optional[int] = SizeOption,
    tolerance: float = typer.Option(1e-4, help="Largest allowed |ONNX Runtime - PyTorch| on the logits."),
    threads: Optional[int] = ThreadsOption,
):
    """Export a model file to ONNX, checked against PyTorch with ONNX Runtime before it is kept."""
    from lightseg_nas.inference import load_network, recorded_size
    from lightseg_nas.onnx_export import export_onnx_checked

    set_threads(threads)
    model, _, record = load_network(model_file)
    size, source = (size, "--size") if size is not None else recorded_size(record)
    difference = export_onnx_checked(model, out, size, tolerance)
    typer.echo(f"wrote {out}: max |onnxruntime - torch| = {difference:.2e} on a {size}x{size} input ({source})")


COMPRESS_SETTINGS = ("steps", "epochs_per_step", "lr", "batch_size", "loss", "edge_weight", "edge_band", "size", "mac_size", "seed", "val_fraction", "val_seed")


@app.command()
@user_errors
@with_settings
def compress(
    model_file: Path = typer.Argument(..., metavar="MODEL", help="A model file written by train (or compress)."),
    target_params: Optional[str] = typer.Option(None, "--target-params", metavar="N|P%", help="Prune until at most N parameters, or P percent of the current count (50%)."),
    target_macs: Optional[str] = typer.Option(None, "--target-macs", metavar="N|P%", help="Prune until at most N MACs (conv_only counter, at --mac-size), or P percent of the current count."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Distil from this model file, or from a preset (extremec3net, sinet) with --teacher-weights."),
    teacher_weights: Optional[Path] = typer.Option(None, "--teacher-weights", help="The released state_dict of a preset --teacher."),
    data: Optional[str] = ModelDataOption,
    out: Path = typer.Option(..., "--out", help="The model file to write (OUT.partial holds the finished steps meanwhile)."),
    recipe: Optional[str] = typer.Option(
        None, "--recipe", help=f"Fine-tune with a named training recipe's loss, size and step settings ({', '.join(sorted(RECIPES))}; not its epochs: --epochs-per-step); options given here override them."
    ),
    settings: dict = SettingsOptions(CompressSettings, COMPRESS_SETTINGS, help={"lr": "Adam learning rate of the fine-tuning (warm-up then cosine, per step)."}),
    distill: dict = SettingsOptions(CompressSettings, DISTILL_SETTINGS, help={"kd_weight": "Weight of pixel-wise distillation.", "kd_temperature": "Distillation temperature.", "cwd_weight": "Weight of channel-wise distillation."}),
    run: dict = SettingsOptions(CompressSettings, ("max_steps_per_step", "device")),
    speed: dict = SettingsOptions(CompressSettings, SPEED_SETTINGS, show_default=SPEED_DEFAULTS),
    resume: bool = typer.Option(False, "--resume", help="Continue from the steps saved in OUT.partial."),
    threads: Optional[int] = ThreadsOption,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print the step table and final metrics as JSON."),
):
    """Shrink a trained network to a parameter or MAC target: prune (Torch-Pruning), fine-tune, distil.

    Prints one line per step (parameters, MACs, validation fg IoU) and writes a normal model
    file whose config rebuilds the pruned network (export it, train it, eval it, onnx it).
    """
    from lightseg_nas.compress import compress_to_file, format_row, parse_target, settings_from, summary
    lines_to_stderr(as_json)

    refuse_kd_without_teacher(teacher, **distill)
    if (target_params is None) == (target_macs is None):
        raise UserError("give exactly one of --target-params N or --target-macs N")
    flag, text = ("--target-params", target_params) if target_params is not None else ("--target-macs", target_macs)
    target, percent = parse_target(text, flag)
    settings = settings_from(recipe, metric="params" if target_params is not None else "macs", target=target, target_percent=percent, **settings, **distill, **run, **speed)
    set_threads(threads)
    on_row = (lambda row: None) if as_json else (lambda row: typer.echo(format_row(row), err=progress))
    record = compress_to_file(model_file, out, data, settings, teacher, teacher_weights, resume, progress, on_row)
    result, line = summary(record, out)
    print_json(result) if as_json else typer.echo(line)


StudyArgument = typer.Argument(Path("studies/quickstart.toml"), metavar="STUDY", help="A study file (TOML); see studies/.")
StorageOption = typer.Option(None, "--storage", help="Optuna storage URL: sqlite:///FILE.db or postgresql://USER[:PASSWORD]@HOST[:PORT]/DB.", show_default="a SQLite file beside the study file")
StudyNameOption = typer.Option(None, "--study-name", help="Study name in the storage.", show_default="the study file's name")


def _print_report(report, folder: Path) -> None:
    typer.echo(f"report: {folder / 'summary.md'} (Pareto plots, hypervolume, trials.csv)")
    if report.note:
        typer.echo(report.note)


@app.command()
@user_errors
def search(
    study: Path = StudyArgument,
    n_trials: Optional[int] = typer.Option(None, "--n-trials", help="Finished trials the study should hold.", show_default="the study file's"),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Stop starting trials after this many seconds."),
    storage: Optional[str] = StorageOption,
    study_name: Optional[str] = StudyNameOption,
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (with --workers: for each worker).", show_default="the cores this process may use, shared out among workers"),
    workers: int = typer.Option(1, "--workers", help="Worker processes on this machine sharing the study (needs --storage postgresql://...)."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write the report folder when the search stops."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
):
    """Run (or continue) a multi-objective architecture search described by a study file.

    Re-running the same command continues the same study; finished trials are kept.
    """
    from lightseg_nas.checks import check_finite_number
    from lightseg_nas.search import load_study_file, run_search, write_report
    from lightseg_nas.search.study_file import derived_folder

    check_int(n_trials, "--n-trials", 1, 1_000_000)
    check_int(workers, "--workers", 1, 256)
    check_int(threads, "--threads", 1, 1024)
    check_finite_number(timeout, "--timeout", minimum=0, strictly=True)
    if workers == 1:
        set_threads(threads)
    study_file = load_study_file(study)
    folder = derived_folder(study_file, "report", study_name)
    if report:
        from lightseg_nas.search.report import check_report_folder

        check_report_folder(folder)
    try:
        if workers > 1:
            from lightseg_nas.search.runner import run_workers

            result = run_workers(study_file, workers, n_trials, timeout, storage, study_name, progress, threads)
        else:
            result = run_search(study_file, n_trials, timeout, storage, study_name, progress)
    except KeyboardInterrupt:
        say("interrupted: the running trial is marked failed, the study is consistent; run the same command to continue")
        raise typer.Exit(130) from None
    from lightseg_nas.search.storage import redact

    typer.echo(f"study {result.study_name!r}: {len(result.trials)} trials in {redact(study_file.storage_url(storage))}")
    if report:
        _print_report(write_report(result, folder, study_file=study_file), folder)


@app.command("report")
@user_errors
def report_command(
    study: Path = StudyArgument,
    storage: Optional[str] = StorageOption,
    study_name: Optional[str] = StudyNameOption,
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder.", show_default="STUDY-NAME-report beside the study file"),
    png: bool = typer.Option(True, "--png/--no-png", help="Also write PNG images (needs kaleido and chromium)."),
):
    """Write Pareto fronts (HTML, PNG), hypervolume over trials, trials.csv and summary.md."""
    from lightseg_nas.search import load_study_file, open_study, write_report
    from lightseg_nas.search.study_file import derived_folder
    from lightseg_nas.search.report import check_report_folder

    study_file = load_study_file(study, needs_data=False)
    folder = check_report_folder(out or derived_folder(study_file, "report", study_name))
    result = open_study(study_file, storage, study_name, create=False)
    _print_report(write_report(result, folder, png=png, study_file=study_file), folder)


@app.command()
@user_errors
def export(
    study: Path = StudyArgument,
    trial: Optional[int] = typer.Option(None, "--trial", help="Export this trial's config."),
    best_under_params: Optional[int] = typer.Option(None, "--best-under-params", help="The most accurate full-fidelity trial with at most N parameters."),
    front: bool = typer.Option(False, "--front", help="Every trial on the full-fidelity Pareto front."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for ARCH_ID.json files.", show_default="STUDY-NAME-export beside the study file"),
    storage: Optional[str] = StorageOption,
    study_name: Optional[str] = StudyNameOption,
):
    """Write chosen architectures as config files that lightseg-nas train takes as they are."""
    from lightseg_nas.checks import check_output_dir
    from lightseg_nas.search import choose_trials, export_trials, load_study_file, open_study
    from lightseg_nas.search.export import fidelity_note
    from lightseg_nas.search.study_file import derived_folder

    study_file = load_study_file(study, needs_data=False)
    folder = check_output_dir(out or derived_folder(study_file, "export", study_name))
    result = open_study(study_file, storage, study_name, create=False)
    numbers = choose_trials(result, trial, best_under_params, front)
    for number, path in zip(numbers, export_trials(result, numbers, folder)):
        typer.echo(f"trial {number} -> {path}")
    if trial is not None and (note := fidelity_note(result, trial)):
        typer.echo(note)


@app.command()
@user_errors
def final(
    study: Path = typer.Argument(..., metavar="STUDY", help="A study file (TOML) whose search has run."),
    front: bool = typer.Option(False, "--front", help="Train the study's full-fidelity front (searched members)."),
    top: Optional[int] = typer.Option(None, "--top", help="With --front: only K members, spread over the parameter range."),
    trial: list[int] = typer.Option([], "--trial", help="Train this trial's network (repeatable)."),
    arch: list[str] = typer.Option([], "--arch", help="Train the trial network with this arch id (repeatable)."),
    best_under_params: Optional[int] = typer.Option(None, "--best-under-params", help="Train the most accurate full-fidelity trial with at most N parameters."),
    baselines: str = typer.Option("extremec3net,sinet", "--baselines", help="Published networks trained alike for comparison, comma-separated; 'none' for none."),
    seeds: str = typer.Option("0", "--seeds", help="Seeds, comma-separated (0,1): every network is trained once per seed."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help=f"Training recipe ({', '.join(sorted(RECIPES))}).", show_default="the study's final_recipe"),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Also train each chosen network distilled from this teacher (a preset with --teacher-weights, or a model file); named NAME-kd."),
    teacher_weights: Optional[Path] = typer.Option(None, "--teacher-weights", help="The released state_dict of a preset --teacher."),
    runs: Path = typer.Option(Path("runs/final"), "--runs", help="Run folders (checkpoints; STUDY-NAME/NAME-seedS inside)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder of the kept model files and the table.", show_default="STEM-final beside the study file"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop each training after this many steps (smoke tests; never replaces a real model file)."),
    table: bool = typer.Option(True, "--table/--no-table", help="Score every model file of the final folder and write results.md/.csv and plots (times latency: run it on an idle machine)."),
    png: bool = typer.Option(True, "--png/--no-png", help="Also write the plots as PNG (needs kaleido and chromium)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (with --workers: for each worker).", show_default="the cores this process may use, shared out among workers"),
    workers: int = typer.Option(1, "--workers", help="Worker processes training side by side, each taking the next untrained run."),
    storage: Optional[str] = typer.Option(None, "--storage", help="The study's Optuna storage URL. With postgresql://..., the runs are queued in that database: the same command on other machines trains the next waiting run, and every machine's table fetches them all.", show_default="the study file's: a SQLite file beside it"),
    study_name: Optional[str] = StudyNameOption,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print the per-network table as JSON."),
    also: list[Path] = typer.Option([], "--also", help="Also score the model files of this folder (another final folder) in the table, timed side by side with the rest; the recipe column says what each was trained with (repeatable)."),
):
    """Train a study's chosen networks with its final recipe, per seed, and compare them in one table.

    Resumable: the same command continues stopped trainings and reuses finished ones (after
    checking their protocol). Writes STEM-final/NAME.pt per network and seed, results.md,
    results.csv and final_params / final_latency plots."""
    from lightseg_nas.search.final import parse_seeds, run_final

    lines_to_stderr(as_json)
    for value, flag, high in ((top, "--top", 10_000), (max_steps, "--max-steps", 10**9), (workers, "--workers", 256), (threads, "--threads", 1024)):
        check_int(value, flag, 1, high)
    set_threads(threads)
    outcome = run_final(
        study, front, top, tuple(trial), tuple(arch), best_under_params, () if baselines == "none" else tuple(n for n in baselines.split(",") if n),
        parse_seeds(seeds), recipe, teacher, teacher_weights, runs, out, max_steps, table, png, workers, threads, progress,
        on_run=lambda line: typer.echo(line, err=as_json), storage=storage, study_name=study_name, also=tuple(also),
    )
    if outcome is None:
        return
    folder, frame, by_model, lines = outcome
    if as_json:
        print_json({"models": frame.to_dict(orient="records"), "networks": by_model.to_dict(orient="records"), "comparisons": lines})
        return
    typer.echo(f"wrote {folder / 'results.md'} ({len(frame)} model files of {len(by_model)} networks)")
    for line in lines:
        typer.echo(line)


def main() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # progress bars and trial reasons report trials
    install_stop_handlers()
    app()


if __name__ == "__main__":
    main()
