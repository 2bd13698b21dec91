"""Every cost figure of the project: parameters, MACs by named counter, measured latency.

Each figure names its counter and lists what that counter left uncounted:

* ``conv_only``: multiply-accumulates of Conv2d layers alone (forward hooks). The papers'
  convention ("0.128G" ExtremeC3Net, "0.064G" SINet). Leaves out everything else.
* ``fvcore``: fvcore's FlopCountAnalysis (one count per multiply-accumulate for conv and
  linear, per element for BatchNorm, 4 per output element for bilinear upsampling) plus the
  handlers below for what stock fvcore skips: PReLU, average pooling, means, elementwise
  add/mul/sub/max, sigmoid and softmax, each counted once per element they touch.
* ``thop``: thop's module hooks, a cross-check. Functional operations (the torch.cat,
  +, * and channel shuffles in forward methods) are invisible to it.

Latency is measured, never estimated: batch 1, fixed thread count, warm-up, then the median
and quartiles of repeated runs. Several models are timed round-robin in one run so their
ratio is not skewed by drift of the machine. Backends: ``torch`` (eager, NCHW),
``torch-channels-last`` (eager, weights and input NHWC) and ``onnxruntime`` (the exported
graph, intra-op threads = the thread count, inter-op 1); every figure records its backend.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lightseg_nas.speed import place_input, place_model

__all__ = ["MacCount", "count_params", "count_macs", "MAC_COUNTERS", "measure_latency", "LatencyResult", "LATENCY_BACKENDS"]


@dataclass(frozen=True)
class MacCount:
    counter: str
    macs: int
    # Operators or module types present in the network that this counter did not count.
    uncounted: tuple[str, ...] = field(default_factory=tuple)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _example(size: int | tuple[int, int]) -> torch.Tensor:
    height, width = (size, size) if isinstance(size, int) else size
    return torch.zeros(1, 3, height, width)


def _count_conv_only(model: nn.Module, x: torch.Tensor) -> MacCount:
    total = 0

    def hook(module: nn.Conv2d, inputs, output):
        nonlocal total
        kernel = module.kernel_size[0] * module.kernel_size[1]
        total += output.numel() // output.shape[0] * (module.in_channels // module.groups) * kernel

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    other = sorted({type(m).__name__ for m in _leaves(model) if not isinstance(m, nn.Conv2d)})
    return MacCount("conv_only", total, tuple(other) + ("functional ops",))


def _leaves(model: nn.Module) -> list[nn.Module]:
    """Modules that compute something (nn.Identity computes nothing, so it is never 'uncounted')."""
    return [m for m in model.modules() if not list(m.children()) and not isinstance(m, nn.Identity)]


def _numel(value) -> int:
    from fvcore.nn.jit_handles import get_shape

    shape = get_shape(value)
    count = 1
    for dim in shape or ():
        count *= dim
    return count


def _per_output_element(inputs, outputs) -> int:
    return _numel(outputs[0])


def _per_input_element(inputs, outputs) -> int:
    return _numel(inputs[0])


# What stock fvcore reports as unsupported in our networks, and how we count it.
_FVCORE_EXTRA_HANDLES = {
    "aten::prelu": _per_output_element,
    "aten::add": _per_output_element,
    "aten::add_": _per_output_element,
    "aten::mul": _per_output_element,
    "aten::rsub": _per_output_element,
    "aten::sub": _per_output_element,
    "aten::maximum": _per_output_element,
    "aten::sigmoid": _per_output_element,
    "aten::softmax": _per_output_element,
    "aten::avg_pool2d": _per_input_element,
    "aten::mean": _per_input_element,
}


def _count_fvcore(model: nn.Module, x: torch.Tensor) -> MacCount:
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, x).set_op_handle(**_FVCORE_EXTRA_HANDLES)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python values
        total = analysis.total()
    return MacCount("fvcore", int(total), tuple(sorted(analysis.unsupported_ops())))


def _count_thop(model: nn.Module, x: torch.Tensor) -> MacCount:
    import thop
    from thop.profile import register_hooks

    from lightseg_nas.families.blocks import GroupedConv2d, ImagePool

    # Our subclasses of torch layers are counted as the layers they are (thop keys on the exact type).
    custom_ops = {GroupedConv2d: register_hooks[nn.Conv2d], ImagePool: register_hooks[nn.AvgPool2d]}
    # thop attaches counting buffers to the modules it visits: work on a copy.
    probe = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # thop's own deprecation notices
        macs, _ = thop.profile(probe, inputs=(x,), custom_ops=custom_ops, verbose=False)
    leaves = {type(m) for m in _leaves(model)}
    uncounted = sorted(t.__name__ for t in leaves if t not in register_hooks and t not in custom_ops)
    return MacCount("thop", int(macs), tuple(uncounted) + ("functional ops",))


MAC_COUNTERS = {"fvcore": _count_fvcore, "conv_only": _count_conv_only, "thop": _count_thop}


def count_macs(model: nn.Module, size: int | tuple[int, int] = 224, counters=tuple(MAC_COUNTERS)) -> dict[str, MacCount]:
    """MACs of one image at ``size`` by each named counter, the model in eval mode."""
    was_training = model.training
    model.eval()
    try:
        return {name: MAC_COUNTERS[name](model, _example(size)) for name in counters}
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class LatencyResult:
    backend: str
    median_ms: float
    p25_ms: float
    p75_ms: float
    repeats: int
    threads: int
    size: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


LATENCY_BACKENDS = ("torch", "torch-channels-last", "onnxruntime")


def _torch_runner(model: nn.Module, x: torch.Tensor, channels_last: bool = False):
    model = model.eval()
    if channels_last:
        model, x = place_model(copy.deepcopy(model), True), place_input(x, True)

    def run():
        with torch.inference_mode():
            model(x)

    return run


def _onnxruntime_runner(model: nn.Module, x: torch.Tensor, threads: int, folder: Path):
    import onnxruntime

    path = folder / f"model{id(model)}.onnx"
    from lightseg_nas.onnx_export import export_onnx

    export_onnx(model.eval(), x, path)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


def measure_latency(
    models: dict[str, nn.Module],
    size: int = 224,
    threads: int = 1,
    warmup: int = 5,
    repeats: int = 30,
    backend: str = "torch",
) -> dict[str, LatencyResult]:
    """Time several models round-robin in one run (so their ratios are fair), batch 1."""
    if backend not in LATENCY_BACKENDS:
        raise ValueError(f"unknown latency backend {backend!r}")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    x = _example(size)
    try:
        with tempfile.TemporaryDirectory() as folder:
            if backend.startswith("torch"):
                runners = {name: _torch_runner(model, x, backend == "torch-channels-last") for name, model in models.items()}
            else:
                runners = {name: _onnxruntime_runner(model, x, threads, Path(folder)) for name, model in models.items()}
            for run in runners.values():
                for _ in range(warmup):
                    run()
            times = {name: [] for name in runners}
            for _ in range(repeats):
                for name, run in runners.items():
                    start = time.perf_counter()
                    run()
                    times[name].append((time.perf_counter() - start) * 1000)
    finally:
        torch.set_num_threads(previous_threads)
    results = {}
    for name, values in times.items():
        q1, median, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
        results[name] = LatencyResult(backend, median, q1, q3, repeats, threads, size)
    return results
