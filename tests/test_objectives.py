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
    assert cs[1].on_data and not cs[1].on_component and cs[1].domain == "general" and cs[0].domain is None
    np.testing.assert_array_equal(feasible(cs[:1], weights, scores, CAPS, DOMS, baselines), [True, True, False])
    # Without a map (the identity) the data mixture is the component weights.
    np.testing.assert_array_equal(feasible(cs[1:2], weights, scores, CAPS, DOMS, baselines), [True, False, True])
    np.testing.assert_array_equal(feasible(cs, weights, scores, CAPS, DOMS, baselines), [True, False, False])
    assert parse_constraint("code > 1e-2", CAPS, DOMS).right == pytest.approx(0.01)


def test_weight_reads_the_data_mixture_and_component_the_component_weight():
    """On a known pool with the standard recipe (general share 0.5): data[general] = 0.5 + 0.5 a_g,
    data[d] = 0.5 a_d."""
    from demix.data_mixture import MixtureMap

    mapping = MixtureMap.standard(DOMS, "general", 0.5)
    pool = np.array([[0.2, 0.6, 0.2], [0.5, 0.1, 0.4], [0.0, 0.3, 0.7], [0.8, 0.2, 0.0]])
    # data mixtures:  general 0.6, 0.75, 0.5, 0.9; math 0.3, 0.05, 0.15, 0.1; code 0.1, 0.2, 0.35, 0.0
    scores = np.zeros((4, 3))

    def ok(*texts, baselines=None):
        return feasible(parse_constraints(list(texts), CAPS, DOMS), pool, scores, CAPS, DOMS, baselines, mapping).tolist()

    assert ok("weight.general >= 0.6") == [True, True, False, True]
    assert ok("component.general >= 0.6") == [False, False, False, True]
    assert ok("weight.math > 0.12") == [True, False, True, False]
    assert ok("component.math > 0.12") == [True, False, True, True]
    assert ok("weight.code <= 0.2", "component.code >= 0.2") == [True, True, False, False]
    # natural / uniform compare with the baseline's data mixture (weight.) or component weights (component.).
    natural = {"natural": {"weight.general": 0.6, "component.general": 0.2, "math": 0.0}}
    assert ok("weight.general > natural", baselines=natural) == [False, True, False, True]
    assert ok("component.general > natural", baselines=natural) == [False, True, False, True]
    assert ok("component.general <= natural", baselines=natural) == [True, False, True, False]
    with pytest.raises(DemixError, match="mapping is for domains"):
        feasible([], pool, scores, CAPS, DOMS, None, MixtureMap.standard(["general", "math"], "general", 0.5))


@pytest.mark.parametrize(
    "text, match",
    [
        ("reasoning >= natural", "unknown capability 'reasoning'"),
        ("weight.web >= 0.3", "unknown domain 'web'"),
        ("component.web >= 0.3", "unknown domain 'web'"),
        ("math => 0.3", "cannot parse"),
        ("math >= best", "unknown value 'best'"),
    ],
)
def test_bad_constraints(text, match):
    with pytest.raises(DemixError, match=match) as err:
        parse_constraint(text, CAPS, DOMS)
    if "best" not in text:  # every error about the left side names both forms
        assert "weight." in err.value.fix and "component." in err.value.fix, err.value.fix


def test_which_constraints_read_the_data_mixture():
    from demix.objectives import reads_data_mixture

    assert [reads_data_mixture(t) for t in ("weight.math <= 0.2", "component.math <= 0.2", "math >= natural",
                                            "component.code >= uniform", "code >= 0.4", "garbage")] == [
        True, False, True, True, False, True]


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
