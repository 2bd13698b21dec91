"""The cost report of one network: parameters, MACs by counter, measured latency."""

from __future__ import annotations

from lightseg_nas.checks import check_size
from lightseg_nas.config import arch_id
from lightseg_nas.cost import count_macs, count_params, measure_latency
from lightseg_nas.errors import FieldError
from lightseg_nas.families import NetworkConfig, build_model
from lightseg_nas.presets import get_preset


def cost_report(
    config: NetworkConfig,
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
    check_size(size, "size")
    if threads < 1 or repeats < 1:
        raise FieldError(("threads", "repeats"), "{0} and {1} must be at least 1")
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


def describe(report: dict, family: str, size: int, backend: str, threads: int, repeats: int, reference) -> list[str]:
    """``measure``'s lines: parameters, MACs by counter with what each left out, latency."""
    lines = [f"network     {family} arch {report['arch_id']}, {report['num_classes']} class(es), {size}x{size}", f"params      {report['params']:,}"]
    for counter, value in report["macs"].items():
        left_out = ", ".join(report["macs_uncounted"][counter]) or "nothing"
        lines.append(f"MACs        {value / 1e6:9.2f}M  by {counter:<9} (uncounted: {left_out})")
    latency = report["latency"]
    lines.append(
        f"latency     {latency['median_ms']:.2f} ms median (IQR {latency['p25_ms']:.2f}-{latency['p75_ms']:.2f}), "
        f"{backend}, {threads} thread(s), batch 1, {repeats} runs"
    )
    if "latency_ratio" in report:
        lines.append(f"            {report['latency_ratio']:.2f}x the latency of {reference} timed in the same run")
    return lines
