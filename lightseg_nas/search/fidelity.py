"""Successive halving for a multi-objective study.

Optuna's pruners rank trials by one intermediate value, and ``Trial.report`` raises in
multi-objective studies. Here a candidate that finishes a rung is compared with every
candidate that finished the same rung so far, on (accuracy at that rung, costs): they are
ordered by non-dominated rank, then by crowding distance (NSGA-II's order, which keeps the
front spread out rather than only its most accurate end). The candidate goes on to the next
rung if it is among the first max(1, n // reduction_factor) of the n, as Optuna's
SuccessiveHalvingPruner does for one objective.
"""

from __future__ import annotations

import numpy as np


def non_dominated_ranks(losses: np.ndarray) -> np.ndarray:
    """Rank 0 = the front; every objective is minimised. O(n^2) per front; n is small."""
    n = len(losses)
    ranks = np.full(n, -1)
    remaining = np.arange(n)
    rank = 0
    while remaining.size:
        sub = losses[remaining]
        dominated = np.array(
            [np.any(np.all(sub <= sub[i], axis=1) & np.any(sub < sub[i], axis=1)) for i in range(len(sub))]
        )
        ranks[remaining[~dominated]] = rank
        remaining = remaining[dominated]
        rank += 1
    return ranks


def crowding_distances(losses: np.ndarray) -> np.ndarray:
    n, m = losses.shape
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(m):
        order = np.argsort(losses[:, j], kind="stable")
        spread = losses[order[-1], j] - losses[order[0], j]
        distance[order[0]] = distance[order[-1]] = np.inf
        if spread > 0:
            distance[order[1:-1]] += (losses[order[2:], j] - losses[order[:-2], j]) / spread
    return distance


def promotion_order(losses: np.ndarray) -> np.ndarray:
    """Indices from most to least deserving: by front, then by crowding within a front."""
    ranks = non_dominated_ranks(losses)
    crowding = np.zeros(len(losses))
    for rank in np.unique(ranks):
        members = np.flatnonzero(ranks == rank)
        crowding[members] = crowding_distances(losses[members])
    return np.lexsort((-crowding, ranks))


def is_promoted(candidate: int, losses: np.ndarray, reduction_factor: int) -> bool:
    """Whether row ``candidate`` of ``losses`` (all finishers of one rung) goes on."""
    places = max(1, len(losses) // reduction_factor)
    return bool(candidate in promotion_order(losses)[:places])
