"""search.refine: the projection onto the bounded simplex (property tests), the ascent on known
functions (bounds kept exactly, never worse than the start), the sensitivity's chain rule, and
the refinement of a real search on the tiny run (real merged proxies, exact gradients, the store)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from demix.config import BoundsConfig
from demix.data_mixture import MixtureMap
from demix.errors import DemixError
from demix.sampling import resolve_bounds, sample_mixtures
from demix.search.refine import project_bounded_simplex, pull_back, refine, sensitivity

DOMAINS = ["general", "math", "code", "web"]


@st.composite
def boxes(draw):
    """A non-empty bounded simplex in 4 dimensions and a point to project."""
    k = len(DOMAINS)
    lo = np.array(draw(st.lists(st.floats(0, 0.3), min_size=k, max_size=k)))
    width = np.array(draw(st.lists(st.floats(0, 1), min_size=k, max_size=k)))
    hi = np.minimum(1.0, lo + width)
    if hi.sum() < 1:  # make it feasible: widen the upper bounds
        hi = np.minimum(1.0, hi + (1 - hi.sum()) / k + 0.05)
    if lo.sum() > 1 or hi.sum() < 1:
        lo = lo / max(1.0, lo.sum() * 1.5)
        hi = np.ones(k)
    y = np.array(draw(st.lists(st.floats(-2, 2), min_size=k, max_size=k)))
    return lo, hi, y


@settings(max_examples=200, deadline=None)
@given(boxes())
def test_projection_is_feasible_and_nearest(case):
    lo, hi, y = case
    x = project_bounded_simplex(y, lo, hi)
    # Feasible exactly (box by clipping, the sum to float rounding).
    assert np.all(x >= lo) and np.all(x <= hi) and abs(x.sum() - 1) <= 1e-12
    # The Euclidean projection onto a convex set C is characterised by (y - x) . (z - x) <= 0
    # for every z in C: checked on the vertices-ish extremes and random points of C.
    bounds = resolve_bounds(DOMAINS, BoundsConfig(lower=dict(zip(DOMAINS, lo)), upper=dict(zip(DOMAINS, hi))))
    zs = sample_mixtures(DOMAINS, 200, np.full(4, 0.25), None, bounds, np.random.default_rng(0))
    assert np.all((zs - x) @ (y - x) <= 1e-9)
    assert np.all(np.linalg.norm(zs - y, axis=1) >= np.linalg.norm(x - y) - 1e-12)
    # A feasible point is its own projection.
    z = zs[0]
    assert np.allclose(project_bounded_simplex(z, lo, hi), z, atol=1e-12)


def test_projection_refuses_an_empty_set():
    with pytest.raises(DemixError, match="empty"):
        project_bounded_simplex(np.zeros(2), np.array([0.6, 0.6]), np.ones(2))


def _mixing_bounds():
    """Components whose training mixtures mix several domains (a data share is not one component
    weight): the data-mixture bounds become linear rows on the component weights."""
    mapping = MixtureMap.from_mixtures(DOMAINS, {
        "general": {"general": 1.0},
        "math": {"general": 0.4, "math": 0.4, "code": 0.2},
        "code": {"general": 0.4, "code": 0.4, "web": 0.2},
        "web": {"general": 0.4, "web": 0.6},
    })
    bounds = resolve_bounds(DOMAINS, BoundsConfig(upper={"code": 0.2, "web": 0.25}, lower={"math": 0.05}),
                            mapping=mapping)
    assert bounds.has_rows
    return mapping, bounds


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-1, 1), min_size=4, max_size=4), st.integers(0, 50))
def test_pull_back_keeps_linear_rows(direction, seed):
    _, bounds = _mixing_bounds()
    start = sample_mixtures(DOMAINS, 1, np.full(4, 0.25), None, bounds, np.random.default_rng(seed))[0]
    y = start + np.array(direction)
    p = pull_back(start, project_bounded_simplex(y, bounds.lower, bounds.upper), bounds)
    assert bool(bounds.contains(p, tol=1e-12)[0])


def _concave(target: np.ndarray, noise: float = 0.0, seed: int = 0):
    """J(a) = -|a - target|^2 measured with optional noise, and its exact gradient."""
    rng = np.random.default_rng(seed)
    seen = []

    def measure(a):
        seen.append(a.copy())
        return float(-np.sum((a - target) ** 2) + noise * rng.standard_normal())

    def gradient(a):
        return -2 * (a - target)

    return measure, gradient, seen


@pytest.mark.parametrize("noise", [0.0, 0.01])
def test_ascent_keeps_bounds_and_never_returns_worse(noise):
    mapping, bounds = _mixing_bounds()
    start = sample_mixtures(DOMAINS, 1, np.full(4, 0.25), None, bounds, np.random.default_rng(3))[0]
    target = np.array([0.1, 0.6, 0.1, 0.2])  # outside the bounds: the optimum is on their boundary
    measure, gradient, seen = _concave(target, noise)
    result = refine(start, gradient, measure, bounds, steps=12, step_size=0.1, min_step=1e-4)
    assert np.all(bounds.contains(np.array(seen), tol=1e-12)), "a proposal left the bounds"
    assert result.best_objective >= result.start_objective
    assert [s.accepted for s in result.steps] == [
        s.objective > max([result.start_objective] + [t.objective for t in result.steps[:i] if t.accepted])
        for i, s in enumerate(result.steps)
    ]
    if noise == 0.0:
        exact = -np.sum((result.best - target) ** 2)
        assert exact > -np.sum((start - target) ** 2) + 1e-3  # it really climbed


def test_ascent_stops_stationary_at_a_bounded_optimum():
    bounds = resolve_bounds(DOMAINS, BoundsConfig(upper={"math": 0.3}))
    target = np.array([0.1, 0.7, 0.1, 0.1])  # the best feasible point has math = 0.3
    measure, gradient, _ = _concave(target)
    result = refine(np.full(4, 0.25), gradient, measure, bounds, steps=40, step_size=0.2, min_step=1e-4)
    assert result.best[1] == pytest.approx(0.3, abs=1e-3)
    assert "stationary" in result.stopped or "min_step" in result.stopped


def test_sensitivity_is_the_chain_rule_through_the_inverse_map():
    mapping = MixtureMap.standard(["general", "math"], "general", 0.5)
    a = np.array([0.4, 0.6])  # data: general 0.7, math 0.3
    g = np.array([1.0, 3.0])  # d score / d a
    out = sensitivity(a, {"math": g}, mapping)["math"]
    # +0.01 math data share = +0.02 math component weight (data[math] = 0.5 a[math]).
    assert out["math"] == pytest.approx(0.02 * (3.0 - 1.0))
    assert out["general"] == pytest.approx(-0.02 * (3.0 - 1.0))
    # At general data share 0.5 (a[general] = 0) lowering it is unreachable: null.
    edge = sensitivity(np.array([0.0, 1.0]), {"math": g}, mapping)["math"]
    assert edge["math"] is None and edge["general"] is not None


# --------------------------------------------------------------------------- a real search


@pytest.fixture(scope="module")
def refined_search(tmp_path_factory):
    from demix.search import search
    from tiny_run import build_tiny_run

    root = tmp_path_factory.mktemp("refine") / "run"
    search_section = {
        "rounds": [6, 3], "pool_size": 2000, "top_k": 50, "cv_folds": 3, "objective": "weighted",
        "bounds": {"upper": {"general": 0.8}},  # a data-share bound (a box on the general weight) off the best corner
        "refine": {"enabled": True, "steps": 4, "step_size": 0.1},
    }
    config, run = build_tiny_run(root, search=search_section)
    first = search(config, run)
    again = search(config, run)
    return config, run, first, again


def test_refinement_on_a_real_search(refined_search):
    from demix.sampling import resolve_bounds as rb
    from demix.store import Store
    from demix.training.roles import mixture_map

    config, run, first, again = refined_search
    record = json.loads(run.best_mixture.read_text())
    ref = record["refinement"]
    domains = config.data.domain_names
    mapping = mixture_map(config, run)
    bounds = rb(domains, config.search.bounds, None, None, mapping)
    steps = [np.array([s["component_weights"][d] for d in domains]) for s in ref["steps"]]
    start = np.array([ref["start"]["component_weights"][d] for d in domains])
    assert steps, "no proposal was evaluated"
    assert np.all(bounds.contains(np.array([start, *steps]), tol=1e-12))
    assert ref["measured_objective"] >= ref["start"]["measured_objective"]
    # Every proposal is in the store with the scores it was judged by (the measured objective).
    store = Store(run.store_url)
    try:
        for s, a in zip(ref["steps"], steps):
            row = store.get(dict(zip(domains, map(float, a))))
            assert row is not None and row.round is None and row.provenance["source"] == "demix search"
            assert sum(row.capabilities.values()) / len(row.capabilities) == pytest.approx(s["measured_objective"])
    finally:
        store.close()
    chosen = np.array([record["component_weights"][d] for d in domains])
    accepted = [a for s, a in zip(ref["steps"], steps) if s["accepted"]]
    if ref["chosen"] == "refined":
        assert ref["gain"] > 0 and np.allclose(chosen, accepted[-1], atol=1e-12)
    else:
        assert not accepted and np.allclose(chosen, start, atol=1e-12)
    sens = record["sensitivity"]["scores"]
    assert set(sens) == {*domains, "objective"} and all(set(v) == set(domains) for v in sens.values())
    # The CLI summary shows the outcome and one row per score.
    from demix.cli.search import refinement_table

    table = refinement_table(first.best)
    assert table is not None and table.row_count == len(sens)
    # Resumed: nothing is evaluated again, the same file comes out.
    assert again.evaluated_now == 0
    assert again.component_weights == first.component_weights
    print(f"refinement: objective {ref['start']['measured_objective']:.5f} -> {ref['measured_objective']:.5f} "
          f"({len(steps)} proposals, {ref['stopped']}); gradient {ref['gradient_seconds']:.3f} s")


def test_refine_refuses_constraints_before_evaluating(tmp_path):
    from demix.search import search
    from tiny_run import build_tiny_run

    config, run = build_tiny_run(tmp_path / "run", search={"rounds": [4], "pool_size": 500, "top_k": 10,
                                                          "constraints": ["math >= natural"],
                                                          "refine": {"enabled": True}})
    with pytest.raises(DemixError, match="not search.constraints"):
        search(config, run)
    assert not run.store_file.exists() and not run.best_mixture.exists()


def test_rank_surrogate_is_smooth_and_tracks_the_exact_rank():
    from demix.search.surrogate import RankSurrogate

    rng = np.random.default_rng(0)
    pool = rng.normal(size=(6000, 2)) * [1.0, 0.1]
    sur = RankSurrogate(pool, ["a", "b"], {"a": 0.5, "b": 0.5})
    assert sur.points.shape[0] == 4096  # a seeded subsample
    for row in ({"a": 0.3, "b": -0.05}, {"a": -1.5, "b": 0.12}):
        assert sur.smooth(row) == pytest.approx(sur.exact(row), abs=0.02)
    # The chain rule through the kernel density, against a central difference of the surrogate.
    grads = {"a": np.array([1.0, -2.0, 0.5]), "b": np.array([0.0, 0.3, -0.1])}
    at = {"a": 0.2, "b": 0.01}
    g = sur.gradient(at, grads)
    h = 1e-5
    for k in range(3):
        up = {c: at[c] + h * grads[c][k] for c in at}
        down = {c: at[c] - h * grads[c][k] for c in at}
        assert g[k] == pytest.approx((sur.smooth(up) - sur.smooth(down)) / (2 * h), rel=1e-4, abs=1e-9)


def test_rank_mean_refinement_never_returns_a_worse_measured_objective(tmp_path):
    """rank_mean is climbed along its surrogate; each proposal is judged by its exact measured
    rank_mean among the last pool's predicted capabilities, so the result is never worse."""
    from demix.objectives import rank_mean
    from demix.search import search
    from demix.search.round_files import CandidatePool
    from demix.store import Store
    from tiny_run import build_tiny_run

    config, run = build_tiny_run(tmp_path / "run", search={
        "rounds": [6, 3], "pool_size": 2000, "top_k": 50, "cv_folds": 3, "objective": "rank_mean",
        "bounds": {"upper": {"general": 0.8}}, "refine": {"enabled": True, "steps": 4, "step_size": 0.1}})
    search(config, run)
    record = json.loads(run.best_mixture.read_text())
    ref = record["refinement"]
    assert ref["objective"] == "rank_mean" and "surrogate" in ref and ref["steps"]
    assert ref["measured_objective"] >= ref["start"]["measured_objective"]
    pool = CandidatePool.read(run.round_files(1).pool)
    domains = config.data.domain_names
    w = np.full(len(pool.capabilities), 1 / len(pool.capabilities))
    with Store(run.store_url) as store:
        for s in ref["steps"]:
            row = store.get(s["component_weights"])
            x = np.array([[row.capabilities[c] for c in pool.capabilities]])
            exact = float(rank_mean(np.vstack([pool.capability_scores, x]), w)[-1])
            assert s["measured_objective"] == pytest.approx(exact, abs=1e-12)
    best = max([ref["start"]["measured_objective"]] + [s["measured_objective"] for s in ref["steps"] if s["accepted"]])
    assert ref["measured_objective"] == best
    # The chosen mixture's measured rank_mean is the one best_mixture.json's `measured` records.
    assert record["measured"]["objective"] == pytest.approx(ref["measured_objective"], abs=1e-12)
    assert set(record["sensitivity"]["scores"]) == {*domains, "objective"}


def test_a_refined_search_records_its_chosen_mixture_as_measured(refined_search):
    """The refinement measures the mixture it chooses: best_mixture.json's ``measured`` is that
    stored evaluation, beside the single fit's prediction at it."""
    config, run, first, _ = refined_search
    record = json.loads(run.best_mixture.read_text())
    m, ref = record["measured"], record["refinement"]
    assert m["source"] == "search.refine" and m["mixture_key"] == record["mixture_key"]
    assert m["objective"] == pytest.approx(ref["measured_objective"], abs=1e-12)
    predicted = record["predicted"]["capabilities"]
    assert m["predicted_objective"] == pytest.approx(np.mean([p["value"] for p in predicted.values()]), abs=1e-12)
    assert m["inside_interval"] is None and "intervals" not in record  # no ensemble in this search
