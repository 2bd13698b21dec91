"""How a network runs fast on CPUs: denormal floats, memory format and torch.compile, in
one place.

Training, validation, compression and search trials all go through ``fit`` and
``evaluate``, which take their path from here. ``benchmarks/throughput.py`` measures every
path against eager NCHW side by side (``benchmarks/results/throughput.md``); the defaults
are what it found fastest on 2 CPU cores:

- ``channels_last``: weights and inputs in NHWC. oneDNN's convolutions (grouped and
  depthwise ones above all) run without the layout reorders NCHW costs them. On by default.
- ``compile``: ``torch.compile`` (Inductor) of the training forward and backward. It costs
  about a minute of compiling per network and input shape (two shapes per run: the full
  batch and an epoch's partial last batch), and saves 0.09-0.15 s per step at 160 px, so
  it pays only on long runs: automatic mode compiles runs of at least
  ``COMPILE_AUTO_STEPS`` steps on a CPU with a C++ compiler (Inductor needs one). Search
  trials and compression steps are far shorter and stay eager; ``train`` with its default
  30 epochs on EG1800 (2,280 steps at batch 16) compiles.
- ``flush_denormals``: denormal floats (below 1.2e-38) read and written as zero (the CPU's
  flush-to-zero / denormals-are-zero modes). Trained weights can drive activations and
  gradients into that range, where x86 arithmetic is many times slower: the released SINet
  and ExtremeC3Net weights evaluate 3.4x and 2.8x faster (NCHW) on EG1800 with it
  (``benchmarks/results/denormals.md``). The mode belongs to each CPU thread and a thread
  inherits it when it is created, so ``use_threads`` sets it before torch's thread pool
  grows; ``fit`` and ``evaluate`` set it again in the calling thread. On by default,
  everywhere the package computes.

Memory format and compiling change only the order of floating-point operations, and
flushing changes only values below 1.2e-38: results agree with eager NCHW within float
tolerance, not bit for bit. A run repeated (or resumed) on the same path is bit-identical
on the CPU.
"""

from __future__ import annotations

import shutil

import torch

from lightseg_nas.errors import FieldError
from lightseg_nas.settings import COMPILE_AUTO_STEPS, SpeedSettings

__all__ = ["flush_denormals", "use_threads", "memory_format", "place_model", "place_input", "compiled", "use_compile", "COMPILE_AUTO_STEPS", "SpeedSettings", "SPEED_FIELDS"]

# COMPILE_AUTO_STEPS (lightseg_nas/settings.py): runs of at least that many training steps
# compile in automatic mode. Measured break-even (benchmarks/results/throughput.md, trainer
# at 160 px on EG1800, two compiled shapes): about 950 steps for ExtremeC3Net and 1,700 for
# SINet; the threshold of 2,000 is above both.


# A resume may change these (they choose how fast a run goes, not what it computes).
SPEED_FIELDS = tuple(SpeedSettings.model_fields)


def flush_denormals() -> None:
    """Denormal floats as zero in this thread and in every thread it creates from now on."""
    torch.set_flush_denormal(True)


def use_threads(threads: int) -> None:
    """``threads`` intra-op CPU threads, denormals flushed in each (set before the pool
    grows, so that new pool threads inherit the mode)."""
    flush_denormals()
    torch.set_num_threads(threads)


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def place_model(model: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    """The model's 4-d weights in the chosen layout (in place; returns the model)."""
    return model.to(memory_format=memory_format(channels_last))


def place_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=memory_format(channels_last)) if x.dim() == 4 else x


def _compiler() -> str | None:
    return next((name for name in ("c++", "g++", "clang++") if shutil.which(name)), None)


def use_compile(choice: bool | None, planned_steps: int, device: torch.device | str = "cpu") -> bool:
    """Whether to compile: the explicit choice, or (None) the automatic rule above. An
    explicit choice on a CPU without a C++ compiler is refused (Inductor would fail)."""
    on_cpu = torch.device(device).type == "cpu"
    if choice is None:
        return planned_steps >= COMPILE_AUTO_STEPS and (not on_cpu or _compiler() is not None)
    if choice and on_cpu and _compiler() is None:
        raise FieldError("compile", "{0} needs a C++ compiler on the CPU (torch.compile's Inductor); install g++ or leave out {0}")
    return choice


def compiled(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``torch.compile(model)`` (sharing its parameters) or the model itself.

    ``dynamic=False``: every input shape (another size, an epoch's partial last batch) gets a
    static graph of its own; shape-generic graphs of channels-last convolutions fail to
    compile in Inductor (torch 2.13) and are slower where they do."""
    if not enabled:
        return model
    return torch.compile(model, dynamic=False)
