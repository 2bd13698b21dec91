"""ONNX export: a fixed-shape graph, and the checked export the ``onnx`` command writes (run
in ONNX Runtime against PyTorch, kept only within tolerance)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lightseg_nas.checks import check_finite_number, check_output_file, check_size
from lightseg_nas.errors import UserError
from lightseg_nas.modelfile import atomic_write

__all__ = ["export_onnx", "export_onnx_checked"]


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Export with a fixed input shape (what a phone or browser runtime gets)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=["image"], output_names=["logits"], dynamo=False)


def export_onnx_checked(model, out: Path, size: int = 224, tolerance: float = 1e-4) -> float:
    """Export, run the file in ONNX Runtime against PyTorch, and keep it only if the largest
    absolute difference of the logits stays within ``tolerance``; return that difference."""
    import onnxruntime

    check_size(size, "size")
    check_finite_number(tolerance, "tolerance", minimum=0)
    check_output_file(out, overwrite=True)
    example = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(example).numpy()
    if not np.isfinite(expected).all():
        raise UserError("the network's output is not finite on a test input; not exported")
    difference = {}

    def write(path: Path) -> None:
        export_onnx(model, example, path)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: example.numpy()})[0]
        difference["max"] = float(np.abs(got - expected).max())
        if not difference["max"] <= tolerance:  # nan never passes
            raise UserError(f"{out}: ONNX Runtime differs from PyTorch by {difference['max']:.2e} (> {tolerance:g}); not written")

    atomic_write(out, write)
    return difference["max"]
