"""Resolve "which network" from the CLI's options, and the cost report of one network."""

from __future__ import annotations

from pathlib import Path

from lightseg_nas.config import C3NetConfig, SINetConfig, arch_id, load_config
from lightseg_nas.cost import count_macs, count_params, measure_latency
from lightseg_nas.errors import UserError
from lightseg_nas.models import INPUT_MULTIPLE, build_model
from lightseg_nas.presets import get_preset


def resolve_config(
    preset: str | None = None,
    config_path: str | Path | None = None,
    space: str | None = None,
    seed: int | None = None,
    num_classes: int | None = None,
) -> C3NetConfig | SINetConfig:
    """Exactly one of a preset name, a config file, or a space (+ seed) names the network."""
    given = [name for name, value in (("--preset", preset), ("--config", config_path), ("--space", space)) if value]
    if len(given) != 1:
        raise UserError("give exactly one of --preset NAME, --config FILE.json, --space NAME --seed N")
    if preset:
        config = get_preset(preset)
    elif config_path:
        config = load_config(config_path)
    else:
        import search_spaces

        config = search_spaces.sample(space, 0 if seed is None else seed)
    if num_classes is not None:
        if num_classes not in (1, 2):
            raise UserError(f"--classes must be 1 or 2, got {num_classes}")
        config = config.model_copy(update={"num_classes": num_classes})
    return config


def check_size(size: int) -> None:
    if size < INPUT_MULTIPLE or size % INPUT_MULTIPLE:
        raise UserError(f"--size must be a positive multiple of {INPUT_MULTIPLE}, got {size}")


def cost_report(
    config: C3NetConfig | SINetConfig,
    size: int = 224,
    threads: int = 1,
    repeats: int = 30,
    backend: str = "torch",
    reference: str | None = "sinet",
) -> dict:
    """Params, MACs by counter (with what each left uncounted) and measured latency.

    With ``reference``, that preset is timed in the same run and the latency is also given
    as a ratio to it: absolute times on a shared CPU are noisy, ratios are not.
    """
    check_size(size)
    if threads < 1 or repeats < 1:
        raise UserError("--threads and --repeats must be at least 1")
    model = build_model(config)
    macs = count_macs(model, size)
    models = {"candidate": model}
    if reference:
        models["reference"] = build_model(get_preset(reference).model_copy(update={"num_classes": config.num_classes}))
    latency = measure_latency(models, size=size, threads=threads, repeats=repeats, backend=backend)
    report = {
        "arch_id": arch_id(config),
        "family": config.family,
        "num_classes": config.num_classes,
        "size": size,
        "params": count_params(model),
        "macs": {name: count.macs for name, count in macs.items()},
        "macs_uncounted": {name: list(count.uncounted) for name, count in macs.items()},
        "latency_ms": latency["candidate"].median_ms,
        "latency": latency["candidate"].as_dict(),
    }
    if reference:
        report["latency_reference"] = {"name": reference, **latency["reference"].as_dict()}
        report["latency_ratio"] = latency["candidate"].median_ms / latency["reference"].median_ms
    return report
