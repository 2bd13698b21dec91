"""Zero-cost proxies: scores of an untrained network that may predict its trained accuracy.

* ``synflow`` (Tanaka et al. 2020): absolute weights, an all-ones input, the sum of
  |theta * dR/dtheta| with R the sum of the output; reported as log10.
* ``grad_norm`` (Abdelfattah et al. 2021): the sum of the gradient norms of one real batch's loss.
* ``naswot`` (Mellor et al. 2021): log-determinant of the Hamming kernel of the binary
  activation patterns (here: the sign of every PReLU's input) over one batch.

Whether they predict anything is measured, not assumed: the report prints each proxy's
Spearman correlation with the trained validation IoU on the study itself.
"""

from __future__ import annotations

import copy
import math

import torch

from lightseg_nas.train import segmentation_loss

PROXIES = ("synflow", "grad_norm", "naswot")


def synflow(model: torch.nn.Module, size: int) -> float:
    probe = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for parameter in probe.parameters():
            parameter.abs_()
    probe.zero_grad()
    probe(torch.ones(1, 3, size, size, dtype=torch.float64)).sum().backward()
    score = sum((p * p.grad).abs().sum().item() for p in probe.parameters() if p.grad is not None)
    return math.log10(score) if score > 0 else float("-inf")


def grad_norm(model: torch.nn.Module, x: torch.Tensor, masks: torch.Tensor) -> float:
    probe = copy.deepcopy(model).train()
    probe.zero_grad()
    segmentation_loss(probe(x), masks).backward()
    return sum(p.grad.norm().item() for p in probe.parameters() if p.grad is not None)


def naswot(model: torch.nn.Module, x: torch.Tensor) -> float:
    probe = copy.deepcopy(model).train()
    codes = []

    def hook(module, inputs, output):
        codes.append((inputs[0].detach() > 0).flatten(1).double())

    handles = [m.register_forward_hook(hook) for m in probe.modules() if isinstance(m, torch.nn.PReLU)]
    try:
        with torch.no_grad():
            probe(x)
    finally:
        for handle in handles:
            handle.remove()
    c = torch.cat(codes, 1)
    kernel = c @ c.T + (1 - c) @ (1 - c).T
    sign, logdet = torch.linalg.slogdet(kernel)
    return float(logdet) if sign > 0 else float("-inf")


def compute_proxies(names, model: torch.nn.Module, x: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    scores = {}
    for name in names:
        if name == "synflow":
            scores[name] = synflow(model, x.shape[-1])
        elif name == "grad_norm":
            scores[name] = grad_norm(model, x, masks)
        elif name == "naswot":
            scores[name] = naswot(model, x)
        else:
            raise ValueError(f"unknown proxy {name!r}")
    return scores
