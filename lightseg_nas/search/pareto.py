"""Pareto ranks and hypervolumes, computed by moocore (a kept, public library) in one place:
promotion, the report and the benchmarks all call these. Every objective is minimised."""

from __future__ import annotations

import moocore
import numpy as np

# the reference point of the within-front hypervolume, in objectives scaled to [0, 1]:
# slightly beyond the worst finisher, so the worst point of an objective still adds volume
REFERENCE = 1.1


def non_dominated_ranks(losses: np.ndarray) -> np.ndarray:
    """Rank 0 = the front; every objective is minimised; duplicated points share a rank."""
    losses = np.asarray(losses, dtype=float)
    if len(losses) == 0:
        return np.zeros(0, dtype=int)
    return np.asarray(moocore.pareto_rank(losses), dtype=int)  # 0 = not dominated


def scaled(losses: np.ndarray) -> np.ndarray:
    low, high = losses.min(axis=0), losses.max(axis=0)
    spread = np.where(high > low, high - low, 1.0)
    return (losses - low) / spread


def front_contributions(losses: np.ndarray) -> np.ndarray:
    """For each row, the hypervolume it alone adds to the points of its own front (scaled
    objectives). Equal points get equal contributions: each is counted as if it were the
    only copy, so a duplicate is not zeroed by its twin."""
    losses = np.asarray(losses, dtype=float)
    scaled_losses = scaled(losses)
    ranks = non_dominated_ranks(losses)
    contribution = np.zeros(len(losses))
    reference = np.full(losses.shape[1], REFERENCE)
    for rank in np.unique(ranks):
        members = np.flatnonzero(ranks == rank)
        unique, inverse = np.unique(scaled_losses[members], axis=0, return_inverse=True)
        if len(unique) == 1:
            values = np.array([np.prod(reference - unique[0])])
        else:
            values = np.asarray(moocore.hv_contributions(unique, ref=reference), dtype=float)
        contribution[members] = values[np.asarray(inverse).reshape(-1)]
    return contribution



def hypervolume(points: np.ndarray, reference: float | np.ndarray = REFERENCE) -> float:
    """Hypervolume dominated by ``points`` up to ``reference`` (a number for every objective,
    or one per objective); points that do not dominate the reference add nothing."""
    points = np.asarray(points, dtype=float)
    if points.size == 0:
        return 0.0
    points = points.reshape(len(points), -1)
    reference = np.broadcast_to(np.asarray(reference, dtype=float), (points.shape[1],))
    inside = np.all(points < reference, axis=1)
    if not inside.any():
        return 0.0
    return float(moocore.hypervolume(points[inside], ref=reference))
