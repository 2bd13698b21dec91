"""How a network runs fast on CPUs: memory format and torch.compile, in one place.

Training, validation, compression and search trials all go through ``fit`` and
``evaluate``, which take their path from here. ``benchmarks/throughput.py`` measures every
path against eager NCHW side by side (``benchmarks/results/throughput.md``); the defaults
are what it found fastest on 2 CPU cores:

- ``channels_last``: weights and inputs in NHWC. oneDNN's convolutions (grouped and
  depthwise ones above all) run without the layout reorders NCHW costs them. On by default.
- ``compile``: ``torch.compile`` (Inductor) of the training forward and backward. It costs
  compile time once per network and input shape, so it is off by default and
  worth it only for long runs of one network (``train --compile``).

Neither changes what is computed, only the order of floating-point operations: results
agree with eager NCHW within float tolerance, not bit for bit. A run repeated (or resumed)
on the same path is bit-identical on the CPU.
"""

from __future__ import annotations

import torch

__all__ = ["memory_format", "place_model", "place_input", "compiled"]


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def place_model(model: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    """The model's 4-d weights in the chosen layout (in place; returns the model)."""
    return model.to(memory_format=memory_format(channels_last))


def place_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=memory_format(channels_last)) if x.dim() == 4 else x


def channels_last_model(model: torch.nn.Module) -> bool:
    """Whether the model's convolution weights are stored channels-last."""
    for parameter in model.parameters():
        if parameter.dim() == 4 and parameter.shape[1] > 1 and parameter.shape[2] * parameter.shape[3] > 1:
            return parameter.is_contiguous(memory_format=torch.channels_last) and not parameter.is_contiguous()
    return False


def compiled(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``torch.compile(model)`` (sharing its parameters) or the model itself.

    ``dynamic=False``: every input shape (another size, an epoch's partial last batch) gets a
    static graph of its own; shape-generic graphs of channels-last convolutions fail to
    compile in Inductor (torch 2.13) and are slower where they do."""
    if not enabled:
        return model
    return torch.compile(model, dynamic=False)
