"""Gradient refinement of the chosen mixture (``search.refine``) and per-domain sensitivity.

After the last round the chosen component weights (the top-k mean) are refined by projected
gradient ascent of the objective (``weighted``: ``J(a) = sum_c w_c capability_c(a)``;
``rank_mean`` through a smooth surrogate, below), with exact gradients through the merge
(:mod:`demix.evaluation.gradient`: ``dJ/da_i = <grad J, delta_i>``).

The method, step by step (``s`` the step length, ``search.refine.step_size`` at the start):

1. The start (the top-k mean) is evaluated like any proxy (through the store) and its measured
   objective ``J_0`` recorded: the refined mixture is compared with what the start *measures*,
   never with what the predictor says.
2. At the current mixture ``x``: the gradient ``g`` of the objective, made tangent to the simplex
   (``g - mean(g)``: on the simplex only directions summing to 0 exist), and normalised: the
   proposal is ``y = x + s * g / |g|`` (a step of Euclidean length ``s`` in component weights:
   scale-free, whatever the units of the capabilities).
3. ``y`` is projected onto the bounded simplex ``{sum a = 1, lower <= a <= upper}``
   (:func:`project_bounded_simplex`, the exact Euclidean projection). Where the data-mixture
   bounds add linear rows, the step is then pulled back along the segment from ``x`` (feasible)
   to the projection until every row holds (:func:`pull_back`): bounds hold exactly either way.
4. The proposal is evaluated through the store (committed before anything else, as every proxy)
   and accepted only when its measured objective is higher than the current one; otherwise the
   step length is halved (the gradient at ``x`` is reused: it has not changed).

Stopping rule: after ``search.refine.steps`` proposals are evaluated, or when the step length
falls below ``search.refine.min_step``, or when the projected move is shorter than ``min_step``
(the mixture is stationary on the bounded simplex), whichever comes first. The result is never
worse, by measurement, than the start: the chosen mixture is replaced only by an accepted step.

The ``rank_mean`` objective (percentile ranks within a pool) is piecewise constant in ``a``, so
it is refined through a smooth surrogate (:class:`demix.search.surrogate.RankSurrogate`): each capability's empirical
CDF over the last pool's predicted scores is replaced by a Gaussian-kernel CDF ``F_c`` (Silverman
bandwidth), and the ascent direction is the gradient of ``sum_c w_c F_c(capability_c(a))``,
``sum_c w_c f_c(capability_c(a)) d capability_c / d a`` (``f_c`` the kernel density). What a
proposal is judged by stays exact: its *measured* ``rank_mean``, the percentile ranks of its
measured capabilities among the pool's predicted ones (the row appended to the pool, as
:mod:`demix.search.chosen` computes a measured ``rank_mean``). So the result is never worse, by
that measurement, than the start. Capabilities made of lm-eval benchmarks (accuracies) are not
differentiated: refinement refuses an objective that gives one positive weight.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from demix.config import RunConfig
from demix.data_mixture import MixtureMap
from demix.errors import DemixError
from demix.sampling import Bounds

log = logging.getLogger("demix.search")

#: The change of data share the sensitivity is reported for (+1 percentage point).
SENSITIVITY_STEP = 0.01


# --------------------------------------------------------------------------- projection


def project_bounded_simplex(y: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """The Euclidean projection of ``y`` onto ``{x : sum x = 1, lower <= x <= upper}``.

    KKT: ``x_i = clip(y_i - tau, lower_i, upper_i)`` for the one ``tau`` at which the sum is 1.
    The sum is piecewise linear and non-increasing in ``tau`` with breakpoints
    ``y_i - upper_i`` and ``y_i - lower_i``; the segment holding 1 is found over the sorted
    breakpoints and ``tau`` solved on it exactly (no iteration). Raises DemixError when the set
    is empty (``sum lower > 1`` or ``sum upper < 1``).
    """
    y, lo, hi = (np.asarray(v, dtype=np.float64) for v in (y, lower, upper))
    if lo.sum() > 1 + 1e-12 or hi.sum() < 1 - 1e-12 or np.any(lo > hi):
        raise DemixError(f"the bounded simplex is empty (lower sums to {lo.sum():.6g}, upper to {hi.sum():.6g})",
                         "widen search.bounds")

    def total(tau: float) -> float:
        return float(np.clip(y - tau, lo, hi).sum())

    points = np.unique(np.concatenate([y - hi, y - lo]))
    sums = np.array([total(t) for t in points])  # non-increasing along points
    # The first breakpoint whose sum is <= 1; tau lies between it and the one before.
    idx = int(np.searchsorted(-sums, -1.0, side="left"))
    if idx == 0:
        tau = float(points[0])
    elif idx == len(points):
        tau = float(points[-1])
    else:
        t0, t1, s0, s1 = points[idx - 1], points[idx], sums[idx - 1], sums[idx]
        tau = float(t0 + (s0 - 1.0) * (t1 - t0) / (s0 - s1)) if s0 != s1 else float(t1)
    x = np.clip(y - tau, lo, hi)
    # Remove the last ~1e-16 of rounding from the sum on a coordinate strictly inside its box.
    free = np.flatnonzero((x > lo) & (x < hi))
    if free.size:
        i = free[np.argmax(np.minimum(x[free] - lo[free], hi[free] - x[free]))]
        x[i] = np.clip(x[i] + (1.0 - x.sum()), lo[i], hi[i])
    return x


def pull_back(start: np.ndarray, target: np.ndarray, bounds: Bounds) -> np.ndarray:
    """The point of the segment ``start -> target`` farthest from ``start`` at which every
    linear row of ``bounds`` holds (``start`` must hold them; ``target`` is in the box and sums
    to 1, so every point of the segment is). Without rows: ``target``."""
    if not bounds.has_rows:
        return target
    assert bounds.space is not None
    rows, r_lo, r_hi = bounds.space.rows, bounds.space.row_lower, bounds.space.row_upper
    v0, v1 = rows @ start, rows @ target
    t = 1.0
    for a, b, lo, hi in zip(v0, v1, r_lo, r_hi):
        # a + t (b - a) must stay in [lo, hi]; a is inside.
        if b > hi:
            t = min(t, (hi - a) / (b - a))
        elif b < lo:
            t = min(t, (lo - a) / (b - a))
    t = max(0.0, t)
    return start + t * (target - start)


# --------------------------------------------------------------------------- checks


def check_refine(config: RunConfig) -> None:
    """Refuse, before anything is evaluated, a ``search.refine`` that cannot run:
    ``search.constraints`` are set (refinement keeps bounds, not constraints on capabilities),
    the merge is not linear, or a capability with positive weight holds an lm-eval benchmark.
    (``rank_mean`` is refined through its smooth surrogate, :mod:`demix.search.surrogate`.)"""
    s = config.search
    if not s.refine.enabled:
        return
    off = "or turn it off (search.refine.enabled: false)"
    if s.constraints:
        raise DemixError(
            "search.refine keeps search.bounds exactly but not search.constraints",
            f"express the constraints as search.bounds, remove them, {off}",
        )
    if config.merge.method != "linear":
        raise DemixError(
            f"search.refine needs merge.method 'linear' ('{config.merge.method}' is not affine in the component weights)",
            f"set merge.method: linear, {off}",
        )
    from demix.evaluation.benchmarks import resolve_benchmarks, resolve_capabilities
    from demix.objectives import capability_weights

    benchmarks = resolve_benchmarks(config)
    caps = resolve_capabilities(config, benchmarks)
    weights = dict(zip([c.name for c in caps], capability_weights([c.name for c in caps], s.capability_weights)))
    kinds = {b.name: b.evaluator for b in benchmarks}
    bad = [c.name for c in caps if weights[c.name] > 0 and any(kinds[n] != "heldout_loss" and w > 0
                                                               for n, w in c.weights.items())]
    if bad:
        raise DemixError(
            f"search.refine differentiates held-out losses only; capability(ies) {bad} hold lm-eval benchmarks",
            f"give them weight 0 in search.capability_weights, {off}",
        )


# --------------------------------------------------------------------------- the ascent


@dataclass
class RefineStep:
    """One evaluated proposal."""

    component_weights: np.ndarray
    objective: float
    """Measured objective of the proposal's proxy."""
    step_size: float
    accepted: bool


@dataclass
class RefineResult:
    start: np.ndarray
    start_objective: float
    best: np.ndarray
    best_objective: float
    steps: list[RefineStep] = field(default_factory=list)
    stopped: str = ""
    """Why the ascent stopped (the stopping rule that fired)."""
    gradients: int = 0
    """Gradient computations (one forward and backward pass per held-out domain each)."""


Gradient = Callable[[np.ndarray], np.ndarray]
Measure = Callable[[np.ndarray], float]


def refine(
    start: np.ndarray, gradient: Gradient, measure: Measure, bounds: Bounds, steps: int, step_size: float, min_step: float,
) -> RefineResult:
    """Projected gradient ascent from ``start`` (the algorithm of the module docstring).

    ``gradient(a)`` is dJ/da (K,), ``measure(a)`` the measured objective of a's proxy (it
    evaluates and stores it). Every proposal lies in ``bounds`` exactly; the result's ``best`` is
    ``start`` unless a proposal measured strictly better.
    """
    x = np.asarray(start, dtype=np.float64)
    if not bool(bounds.contains(x)[0]):
        raise DemixError("the mixture to refine lies outside search.bounds", "report this as a demix bug")
    jx = measure(x)
    out = RefineResult(x.copy(), jx, x.copy(), jx)
    s = float(step_size)
    g: np.ndarray | None = None
    while True:
        if len(out.steps) >= steps:
            out.stopped = f"{steps} proposals evaluated (search.refine.steps)"
            break
        if s < min_step:
            out.stopped = f"step length {s:.3g} below search.refine.min_step"
            break
        if g is None:
            g = np.asarray(gradient(x), dtype=np.float64)
            out.gradients += 1
            g = g - g.mean()
        norm = float(np.linalg.norm(g))
        if norm == 0.0 or not np.isfinite(norm):
            out.stopped = "zero gradient on the simplex"
            break
        p = pull_back(x, project_bounded_simplex(x + s * g / norm, bounds.lower, bounds.upper), bounds)
        if float(np.linalg.norm(p - x)) < min_step:
            out.stopped = "stationary on the bounded simplex (the projected step is shorter than min_step)"
            break
        jp = measure(p)
        better = jp > jx
        out.steps.append(RefineStep(p.copy(), jp, s, better))
        if better:
            x, jx, g = p, jp, None
        else:
            s /= 2
    out.best, out.best_objective = x, jx
    return out


# --------------------------------------------------------------------------- sensitivity


def sensitivity(
    weights: np.ndarray, gradients: Mapping[str, np.ndarray], mapping: MixtureMap, per: float = SENSITIVITY_STEP
) -> dict[str, dict[str, float | None]]:
    """{name: {domain: change of the score per +``per`` of the domain's DATA share}}.

    The move in the data mixture adds ``per`` to the domain and takes it from the others in
    proportion to their shares (the mixture still sums to 1); the component weights that stand
    for it are ``data @ M^-1`` (chain rule through the inverse map), and the change is
    ``gradient @ (delta a)`` (first order). None where the move leaves the reachable data
    mixtures (a component weight would go below 0, e.g. the general share below the components'
    general share) or where ``M`` is singular (two components trained on one mixture)."""
    a = np.asarray(weights, dtype=np.float64)
    data = mapping.to_data(a)
    try:
        inv = np.linalg.inv(mapping.matrix)
    except np.linalg.LinAlgError:
        inv = None
    moves: dict[str, np.ndarray | None] = {}
    for j, d in enumerate(mapping.domains):
        rest = 1.0 - data[j]
        if inv is None or rest <= 0:
            moves[d] = None
            continue
        dd = -per * data / rest
        dd[j] = per
        da = dd @ inv
        moves[d] = None if np.any(a + da < -1e-12) else da
    return {
        name: {d: (None if da is None else float(np.asarray(g) @ da)) for d, da in moves.items()}
        for name, g in gradients.items()
    }


# --------------------------------------------------------------------------- the search's refinement


def objective_of(capabilities: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """The weighted objective of measured capability scores."""
    return float(sum(w * float(capabilities[c]) for c, w in weights.items() if w > 0))


def run_refinement(
    config: RunConfig,
    start: np.ndarray,
    bounds: Bounds,
    mapping: MixtureMap,
    gradients: Callable[[dict[str, float]], Any],
    evaluate: Callable[[list[dict[str, float]]], None],
    lookup: Callable[[dict[str, float]], Any],
    capabilities: Sequence[str],
    pool: tuple[np.ndarray, Sequence[str]] | None = None,
) -> tuple[RefineResult, dict[str, Any]]:
    """Refine the search's chosen mixture; returns the ascent and the record for
    ``best_mixture.json`` (``refinement`` and ``sensitivity`` at the mixture finally chosen).

    ``gradients(mixture)`` is a :class:`demix.evaluation.gradient.ScoreGradient` of the mixture's
    proxy; ``evaluate(mixtures)`` evaluates and commits them to the store (skipping stored ones);
    ``lookup(mixture)`` is the stored evaluation (``.capabilities``). ``pool``: the last round's
    predicted capabilities (n, C) and their names, which ``rank_mean`` is measured against (and
    its surrogate built on); needed for ``rank_mean`` only."""
    from demix.objectives import capability_weights
    from demix.search.surrogate import RankSurrogate

    s = config.search
    r = s.refine
    domains = config.data.domain_names
    cw = dict(zip(capabilities, map(float, capability_weights(capabilities, s.capability_weights))))
    surrogate: RankSurrogate | None = None
    if s.objective == "rank_mean":
        if pool is None:
            raise DemixError("refining the rank_mean objective needs the last round's pool", "report this as a demix bug")
        names = list(pool[1])
        pool_w = dict(zip(names, map(float, capability_weights(names, s.capability_weights))))
        surrogate = RankSurrogate(pool[0], names, pool_w, s.seed)
    cache: dict[bytes, Any] = {}

    def as_mixture(a: np.ndarray) -> dict[str, float]:
        return dict(zip(domains, map(float, a)))

    def grad_of(a: np.ndarray) -> Any:
        key = a.tobytes()
        if key not in cache:
            cache[key] = gradients(as_mixture(a))
        return cache[key]

    def objective_gradient(g: Any) -> np.ndarray:
        if surrogate is not None:
            return surrogate.gradient(g.capability_scores, g.capabilities)
        return sum((w * np.asarray(g.capabilities[c]) for c, w in cw.items() if w > 0), np.zeros(len(domains)))

    def gradient(a: np.ndarray) -> np.ndarray:
        return objective_gradient(grad_of(a))

    measured: dict[bytes, dict[str, float]] = {}

    def measure(a: np.ndarray) -> float:
        m = as_mixture(a)
        evaluate([m])
        row = lookup(m)
        if row is None:
            raise DemixError("a refined mixture was evaluated but is not in the store", "run the search again")
        measured[a.tobytes()] = dict(row.capabilities)
        return surrogate.exact(row.capabilities) if surrogate is not None else objective_of(row.capabilities, cw)

    result = refine(start, gradient, measure, bounds, r.steps, r.step_size, r.min_step)
    at = grad_of(result.best)
    cap_grads = {c: np.asarray(v) for c, v in at.capabilities.items()}
    obj_grad = objective_gradient(at)  # rank_mean: the surrogate's (the exact objective has none)
    sens = sensitivity(result.best, {**cap_grads, "objective": obj_grad}, mapping)
    record = {
        "refinement": {
            "objective": s.objective,
            **({"surrogate": (
                "rank_mean: ascent along the gradient of sum_c w_c F_c(capability_c), F_c a Gaussian-kernel CDF of "
                "the last pool's predicted capability c; each proposal judged by its exact measured rank_mean "
                "(percentile ranks of its measured capabilities among the pool's predictions)"
            )} if surrogate is not None else {}),
            "capability_weights": cw,
            "start": {
                "component_weights": as_mixture(result.start),
                "data_mixture": mapping.data_of(as_mixture(result.start)),
                "measured_objective": result.start_objective,
                "measured_capabilities": measured.get(result.start.tobytes()),
            },
            "steps": [
                {"component_weights": as_mixture(st.component_weights), "measured_objective": st.objective,
                 "step_size": st.step_size, "accepted": st.accepted}
                for st in result.steps
            ],
            "chosen": "refined" if result.best_objective > result.start_objective else "start",
            "measured_objective": result.best_objective,
            "gain": result.best_objective - result.start_objective,
            "stopped": result.stopped,
            "gradients": result.gradients,
            "gradient_seconds": float(at.seconds),
            "settings": r.model_dump(mode="json"),
        },
        "sensitivity": {
            "per": SENSITIVITY_STEP,
            "meaning": (
                "change of each capability score (and of the objective) when the domain's data share rises by 0.01, "
                "the other shares shrinking in proportion; first order, from exact gradients through the merge; "
                "null where the move leaves the reachable data mixtures"
            ),
            "at": "chosen mixture",
            "scores": sens,
        },
    }
    return result, record


def _gradient_source(config: RunConfig, run: Any, executor: Any) -> tuple[Any, Any]:
    """The proxy builder and evaluator to differentiate with: the local executor's resident ones
    when it scores merged proxies in this process, else ones built here on
    ``evaluation.device`` (a Ray search: the driver computes the gradients)."""
    from demix.executors.scorers import MergedProxyScorer

    scorer = getattr(executor, "scorer", None)
    if not isinstance(scorer, MergedProxyScorer):
        scorer = MergedProxyScorer(config, run, config.evaluation.device)
    scorer.setup()
    return scorer.builder, scorer.evaluator


def refine_best(
    config: RunConfig,
    run: Any,
    rounds: Any,
    best: Any,
    executor: Any,
    token_counts: Mapping[str, float] | None,
    documents: Mapping[str, int] | None,
    fingerprint: str | None,
    mapping: MixtureMap,
) -> Any:
    """The search's :class:`~demix.search.files.BestMixture` after ``search.refine``: the refined
    mixture's record when a step measured better than the start, else the start's; both carry
    ``refinement`` and ``sensitivity``. ``rounds`` is the search's round state (its store,
    bounds, last fit and ranking; refinement proposals are evaluated with its ``evaluate``, as
    the rounds' mixtures are, outside every round's plan)."""
    from dataclasses import replace

    from demix.evaluation.gradient import score_gradients
    from demix.search.best import best_mixture

    builder, evaluator = _gradient_source(config, run, executor)
    capabilities = [c.name for c in evaluator.capabilities]

    def gradients(m: dict[str, float]) -> Any:
        return score_gradients(builder, evaluator, m)

    def evaluate(ms: list[dict[str, float]]) -> None:
        rounds.evaluate(None, ms)

    def lookup(m: dict[str, float]) -> Any:
        return rounds.store.get(m, rounds.proxy_kind)

    start = np.asarray(rounds.ranking.mean, dtype=np.float64)
    pool = (rounds.ranking.capability_scores, rounds.ranking.capabilities)
    result, record = run_refinement(config, start, rounds.bounds, mapping, gradients, evaluate, lookup, capabilities,
                                    pool)
    log.info("refinement: measured objective %.6g -> %.6g in %d proposal(s) (%s)", result.start_objective,
             result.best_objective, len(result.steps), result.stopped)
    if result.best_objective > result.start_objective:
        best = best_mixture(config, replace(rounds.ranking, mean=result.best), rounds.fit, token_counts, documents,
                            rounds.summaries, fingerprint, rounds.scoring.fingerprint, mapping)
    best.refinement = record["refinement"]
    best.sensitivity = record["sensitivity"]
    return best
