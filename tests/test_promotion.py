"""Multi-objective successive halving: who goes on to the next rung (search/fidelity.py).

Rows are (-accuracy, cost, ...) of every finisher of one rung; every column is minimised."""

import numpy as np
import pytest

from lightseg_nas.search.fidelity import is_promoted, places_ahead, promotion_order
from lightseg_nas.search.pareto import hypervolume, non_dominated_ranks


def test_the_front_comes_first_and_the_rule_promotes_the_best_share():
    losses = np.array([[0.1, 5], [0.2, 3], [0.3, 1], [0.25, 4], [0.4, 6]])
    assert non_dominated_ranks(losses).tolist() == [0, 0, 0, 1, 2]
    assert set(promotion_order(losses)[:3].tolist()) == {0, 1, 2}
    # 5 // 2 = 2 places: two of the three front members (the one adding least volume stays)
    promoted = [is_promoted(i, losses, 2) for i in range(5)]
    assert sum(promoted) == 2 and not any(promoted[3:])
    assert is_promoted(0, losses[:1], 3)  # alone at a rung: best so far, goes on


def test_a_newcomer_that_dominates_an_earlier_finisher_is_ranked_above_it():
    rng = np.random.default_rng(0)
    for _ in range(200):
        losses = rng.random((int(rng.integers(2, 30)), 3))
        ahead = places_ahead(losses)
        dominates = np.all(losses[:, None] <= losses[None], axis=2) & np.any(losses[:, None] < losses[None], axis=2)
        for winner, loser in zip(*np.nonzero(dominates)):
            assert ahead[winner] < ahead[loser]


def test_a_dominating_newcomer_is_promoted_over_three_objectives():
    # the quickstart's case: earlier finishers that are all extremes of some objective, and
    # a newcomer that beats the enqueued baseline (row 0) on every objective
    earlier = np.array([[-0.504, 87e3, 1.19], [-0.40, 30e3, 0.60], [-0.45, 120e3, 0.20], [-0.30, 10e3, 0.90], [-0.20, 60e3, 1.50]])
    newcomer = np.array([[-0.549, 55e3, 0.30]])
    losses = np.vstack([earlier, newcomer])
    assert is_promoted(len(losses) - 1, losses, 3)


def test_the_order_of_finishers_does_not_change_who_is_promoted():
    rng = np.random.default_rng(1)
    for _ in range(100):
        n = int(rng.integers(1, 25))
        losses = rng.random((n, 3)).round(1)  # rounding makes ties and duplicates common
        permutation = rng.permutation(n)
        before = [is_promoted(i, losses, 3) for i in range(n)]
        after = [is_promoted(int(np.flatnonzero(permutation == i)[0]), losses[permutation], 3) for i in range(n)]
        assert before == after


def test_ties_go_to_the_candidate():
    # three identical finishers and one place: none of them is behind the others
    losses = np.array([[0.5, 1.0, 1.0]] * 3)
    assert all(is_promoted(i, losses, 3) for i in range(3))
    # a newcomer equal to an earlier, promoted finisher is promoted too
    losses = np.array([[0.2, 2.0], [0.9, 9.0], [0.8, 8.0], [0.2, 2.0]])
    assert is_promoted(0, losses, 3) and is_promoted(3, losses, 3)


@pytest.mark.parametrize("objectives", [2, 3])
@pytest.mark.parametrize("arrivals", [16, 40, 120])
def test_the_promoted_share_of_a_random_study_is_about_one_over_the_reduction_factor(objectives, arrivals):
    # asynchronous: each arrival is judged against the finishers before it and itself; with
    # exchangeable arrivals the k-th goes on with probability floor(k / 3) / k, about 1/3
    rng = np.random.default_rng(2)
    expected = sum(max(1, k // 3) / k for k in range(1, arrivals + 1))
    counts = []
    for _ in range(20):
        losses = rng.random((arrivals, objectives))
        counts.append(sum(is_promoted(k - 1, losses[:k], 3) for k in range(1, arrivals + 1)))
    assert abs(np.mean(counts) - expected) < 0.15 * expected + 0.5, (np.mean(counts), expected)


def test_hypervolume_of_known_sets():
    assert hypervolume(np.zeros((0, 2))) == 0.0
    assert hypervolume(np.array([[0.1, 0.1]]), 1.1) == pytest.approx(1.0)
    assert hypervolume(np.array([[0.0, 0.5], [0.5, 0.0]]), 1.0) == pytest.approx(0.75)
    assert hypervolume(np.array([[2.0, 0.0]]), 1.0) == 0.0  # beyond the reference: nothing
