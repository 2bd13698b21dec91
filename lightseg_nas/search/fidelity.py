"""Asynchronous successive halving for a multi-objective study.

Optuna's pruners rank trials by one intermediate value, and ``Trial.report`` raises in
multi-objective studies. Here a candidate that finishes a rung is compared with every
candidate that finished the same rung so far, on (accuracy at that rung, costs), and goes on
to the next rung if it is among the best max(1, n // reduction_factor) of the n, as in
asynchronous successive halving (ASHA) and its multi-objective form (MO-ASHA, Schmucker et
al. 2021).

"Best" is an order over the finishers that does not depend on when they finished:

1. non-dominated rank (moocore's ``pareto_rank``): a candidate that dominates another is
   always ranked above it;
2. within one front, the hypervolume that the point alone adds to its front (moocore's
   ``hv_contributions``), with every objective scaled to [0, 1] over the rung's finishers
   and the reference point just beyond the worst of each. Unlike NSGA-II's crowding
   distance, which gives every extreme of every objective the same infinite value (with three
   objectives most of a front), it separates almost every pair of points.

The candidate's place is the number of finishers strictly ahead of it in that order: equals
do not push it down, so ties go to the candidate, as ASHA promotes a newcomer that matches
the k-th best. Which of several equal earlier finishers went on is therefore never decided by
trial number.
"""

from __future__ import annotations

import numpy as np

from lightseg_nas.search.pareto import front_contributions, non_dominated_ranks

def places_ahead(losses: np.ndarray) -> np.ndarray:
    """For each row, how many rows are strictly better: a lower rank, or the same rank and a
    larger contribution to that front (up to floating-point noise)."""
    ranks = non_dominated_ranks(losses)
    contribution = front_contributions(losses)
    tolerance = 1e-12 * max(1.0, float(np.max(contribution, initial=0.0)))
    better_rank = ranks[None, :] < ranks[:, None]
    better_within = (ranks[None, :] == ranks[:, None]) & (contribution[None, :] > contribution[:, None] + tolerance)
    return (better_rank | better_within).sum(axis=1)


def promotion_order(losses: np.ndarray) -> np.ndarray:
    """Indices from most to least deserving (equals in input order; the rule itself never
    uses that order: see ``is_promoted``)."""
    return np.argsort(places_ahead(losses), kind="stable")


def is_promoted(candidate: int, losses: np.ndarray, reduction_factor: int) -> bool:
    """Whether row ``candidate`` of ``losses`` (all finishers of one rung, the candidate
    included) goes on: fewer than max(1, n // reduction_factor) finishers are ahead of it."""
    losses = np.asarray(losses, dtype=float)
    places = max(1, len(losses) // reduction_factor)
    return bool(places_ahead(losses)[candidate] < places)
