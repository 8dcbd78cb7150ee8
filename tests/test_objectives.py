"""Objectives: rank mean, weighted scores, constraints, Pareto front, top-k averaging."""

import numpy as np
import pytest

from demix.errors import DemixError
from demix.objectives import (
    feasible,
    objective_values,
    pareto_front,
    parse_constraint,
    parse_constraints,
    percentile_ranks,
    select_top_k,
)

CAPS = ["general", "math", "code"]
DOMS = ["general", "math", "code"]


def test_rank_mean_is_mean_of_percentile_ranks():
    scores = np.array([[1.0, 10.0, 5.0], [2.0, 30.0, 5.0], [3.0, 20.0, 1.0], [0.0, 0.0, 9.0]])
    ranks = percentile_ranks(scores)
    np.testing.assert_allclose(ranks[:, 0], [2 / 4, 3 / 4, 4 / 4, 1 / 4])
    np.testing.assert_allclose(ranks[:, 2], [2.5 / 4, 2.5 / 4, 1 / 4, 4 / 4])  # ties share the mean rank
    values = objective_values("rank_mean", scores, CAPS)
    np.testing.assert_allclose(values, ranks.mean(axis=1))
    # Scale-free: multiplying one capability by 1000 changes nothing.
    scaled = scores * np.array([1000.0, 1.0, 1.0])
    np.testing.assert_allclose(objective_values("rank_mean", scaled, CAPS), values)
    weighted_math = objective_values("rank_mean", scores, CAPS, {"math": 1.0})
    np.testing.assert_allclose(weighted_math, ranks[:, 1])


def test_weighted_objective_uses_raw_scores_and_user_weights():
    scores = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(objective_values("weighted", scores, CAPS, {"general": 3, "math": 1}), [0.75, 0.25])
    with pytest.raises(DemixError, match="unknown capability"):
        objective_values("weighted", scores, CAPS, {"reasoning": 1})
    with pytest.raises(DemixError, match="unknown objective"):
        objective_values("best", scores, CAPS)


def test_constraint_semantics():
    weights = np.array([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.4, 0.4, 0.2]])
    scores = np.array([[0.5, 0.30, 0.1], [0.2, 0.50, 0.6], [0.4, 0.25, 0.2]])
    baselines = {"natural": {"math": 0.3, "general": 0.0, "code": 0.0}}
    cs = parse_constraints(["math >= natural", "weight.general >= 0.3", "code<0.5"], CAPS, DOMS)
    assert [c.left for c in cs] == ["math", "weight.general", "code"]
    np.testing.assert_array_equal(feasible(cs[:1], weights, scores, CAPS, DOMS, baselines), [True, True, False])
    np.testing.assert_array_equal(feasible(cs[1:2], weights, scores, CAPS, DOMS, baselines), [True, False, True])
    np.testing.assert_array_equal(feasible(cs, weights, scores, CAPS, DOMS, baselines), [True, False, False])
    assert parse_constraint("code > 1e-2", CAPS, DOMS).right == pytest.approx(0.01)


@pytest.mark.parametrize(
    "text, match",
    [
        ("reasoning >= natural", "unknown capability 'reasoning'"),
        ("weight.web >= 0.3", "unknown domain 'web'"),
        ("math => 0.3", "cannot parse"),
        ("math >= best", "unknown value 'best'"),
    ],
)
def test_bad_constraints(text, match):
    with pytest.raises(DemixError, match=match):
        parse_constraint(text, CAPS, DOMS)


def _brute_front(s):
    keep = []
    for i in range(len(s)):
        if not any(np.all(s[j] >= s[i]) and np.any(s[j] > s[i]) for j in range(len(s)) if j != i):
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", range(5))
def test_pareto_front_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    s = np.round(rng.random((120, 3)), 1)  # coarse values: ties and duplicates included
    assert list(pareto_front(s)) == _brute_front(s)


def test_pareto_front_two_dims_by_hand():
    s = np.array([[1, 0], [0, 1], [0.5, 0.5], [0.4, 0.4], [1, 0]])
    assert list(pareto_front(s)) == [0, 1, 2, 4]


def test_select_top_k_mean_and_spread():
    w = np.array([[0.6, 0.4, 0.0], [0.2, 0.2, 0.6], [0.4, 0.4, 0.2], [0.1, 0.1, 0.8]])
    v = np.array([3.0, 1.0, 2.0, -np.inf])
    mean, spread, top = select_top_k(w, v, 2)
    assert list(top) == [0, 2]
    np.testing.assert_allclose(mean, [0.5, 0.4, 0.1])
    np.testing.assert_allclose(spread["std"], [0.1, 0.0, 0.1])
    np.testing.assert_allclose(spread["max"], [0.6, 0.4, 0.2])
    # k larger than the feasible set: infeasible rows are still never chosen.
    _, _, top = select_top_k(w, v, 10)
    assert sorted(top) == [0, 1, 2]
    with pytest.raises(DemixError, match="no candidate satisfies"):
        select_top_k(w, np.full(4, -np.inf), 2)
