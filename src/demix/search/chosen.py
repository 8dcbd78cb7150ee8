"""What the search knows of its chosen mixture beyond the single fit's prediction: the
bootstrap ensemble's intervals there (``intervals`` in ``best_mixture.json``) and its merged
proxy as measured (``measured``), side by side with the predicted objective.

Why measure it: the chosen mixture is the mean of the top-k candidates, a mixture no round
evaluated; the predictors ranked it on the strength of the proxies they were fitted on. Its
measured objective beside the predicted one shows whether the search's objective overfits the
proxies (a predicted score well above the measured one), and whether the measured scores fall
inside the predicted intervals.

The objective of a score row is computed as the ranking computes a candidate's:
``weighted``, the weighted sum of the capabilities; ``rank_mean``, their percentile ranks among
the last pool's predicted capabilities (the row appended to the pool), so a measured
``rank_mean`` says where the measured scores would rank among the candidates.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from demix.config import RunConfig
from demix.mixtures import mixture_key
from demix.objectives import capability_weights, objective_values
from demix.search.files import BestMixture, ChosenIntervals, Interval, MeasuredChoice
from demix.search.ranking import Ranking

log = logging.getLogger("demix.search")

MEASURE_CHOSEN = "search.measure_chosen"
REFINE = "search.refine"
STORE = "store"


def objective_of_row(config: RunConfig, row: Mapping[str, float], ranking: Ranking) -> float:
    """The objective of one row of capability scores ``{capability: score}`` (higher is
    better), computed as the ranking computes a candidate's (see the module docstring)."""
    s = config.search
    caps = ranking.capabilities
    x = np.array([[float(row[c]) for c in caps]])
    scores = x if s.objective == "weighted" else np.vstack([ranking.capability_scores, x])
    return float(objective_values(s.objective, scores, caps, s.capability_weights)[-1])


def chosen_intervals(
    config: RunConfig, evaluations: Sequence[Any], ranking: Ranking, weights: np.ndarray
) -> ChosenIntervals:
    """The ``search.predictor_intervals`` ensemble at component weights ``weights`` (K,): per
    capability and for the objective. The ensemble is fitted on ``evaluations`` (the last
    round's) with the rounds' seed, so it is the one the last round planned and reported by."""
    from scipy.stats import norm

    from demix.predictors import fit_ensemble
    from demix.search.acquisition import capability_rows

    s = config.search
    domains = config.data.domain_names
    caps = list(ranking.capabilities)
    X, Y = capability_rows(evaluations, domains, caps)
    ens = fit_ensemble(X, Y, s.predictor, s.predictor_intervals, domains, s.seed, s.interval_level)
    a = np.asarray(weights, dtype=np.float64)[None, :]
    per_cap = ens.predict(a, caps)
    intervals = {c: Interval(*(float(per_cap[c][k][0]) for k in ("mean", "std", "lower", "upper"))) for c in caps}
    if s.objective == "weighted":
        coef = dict(zip(caps, map(float, capability_weights(caps, s.capability_weights))))
        comb = ens.combination(a, coef)
        objective = Interval(*(float(comb[k][0]) for k in ("mean", "std", "lower", "upper")))
        noise = True
    else:
        # Ranks within the pool: each member ranks the chosen mixture among its own predictions of the pool.
        rows = np.vstack([ranking.weights, a])
        per_member = np.array([objective_values(s.objective, m.predict_matrix(rows, caps), caps, s.capability_weights)[-1]
                               for m in ens.members])
        mean, std = float(per_member.mean()), float(per_member.std(ddof=1))
        half = float(norm.ppf(0.5 + s.interval_level / 2)) * std
        objective, noise = Interval(mean, std, mean - half, mean + half), False
    kind = ens.members[0].kind
    return ChosenIntervals(s.interval_level, len(ens.members), int(X.shape[0]), kind, intervals, objective, s.objective,
                           noise)


def measured_choice(
    config: RunConfig, best: BestMixture, row: Any, source: str, ranking: Ranking
) -> MeasuredChoice:
    """The record of the chosen mixture's stored evaluation ``row`` beside ``best``'s predictions."""
    assert best.predicted is not None and best.component_weights is not None
    caps = {c: float(v) for c, v in row.capabilities.items()}
    predicted = {c: p.value for c, p in best.predicted.capabilities.items()}
    measured_obj = objective_of_row(config, caps, ranking)
    inside: dict[str, bool] | None = None
    if best.intervals is not None:
        iv = best.intervals
        inside = {c: bool(iv.capabilities[c].lower <= caps[c] <= iv.capabilities[c].upper)
                  for c in iv.capabilities if c in caps}
        inside["objective"] = bool(iv.objective.lower <= measured_obj <= iv.objective.upper)
    return MeasuredChoice(mixture_key(best.component_weights), source, caps,
                          {b: float(v) for b, v in row.benchmarks.items()}, measured_obj,
                          objective_of_row(config, predicted, ranking), config.search.objective, inside)


def record_chosen(config: RunConfig, rounds: Any, best: BestMixture) -> BestMixture:
    """``best`` with ``intervals`` (when ``search.predictor_intervals`` is on) and ``measured``
    (when the chosen mixture's proxy is in the store: refinement measured it, another stage
    stored it, or ``search.measure_chosen`` evaluates it now, once, through the store like any
    proxy, outside every round's plan). ``rounds`` is the search's round state (its store, last
    ranking, planned mixtures and ``evaluate``)."""
    s = config.search
    ranking = rounds.ranking
    assert ranking is not None and best.component_weights is not None
    domains = config.data.domain_names
    a = np.array([best.component_weights[d] for d in domains], dtype=np.float64)
    if s.predictor_intervals:
        best.intervals = chosen_intervals(config, rounds.fitted_evaluations(), ranking, a)
    mixture = dict(best.component_weights)
    row = rounds.store.get(mixture, rounds.proxy_kind)
    # The same label on a resume (the row is then already stored): what made the search measure it.
    source = REFINE if best.refinement is not None else MEASURE_CHOSEN if s.measure_chosen else STORE
    if row is None and s.measure_chosen:
        rounds.evaluate(None, [mixture])
        row = rounds.store.get(mixture, rounds.proxy_kind)
    if row is not None and not set(ranking.capabilities) <= set(row.capabilities):
        log.warning("chosen mixture: its stored evaluation lacks capability(ies) %s; not recorded as measured",
                    sorted(set(ranking.capabilities) - set(row.capabilities)))
        row = None
    if row is not None:
        best.measured = measured_choice(config, best, row, source, ranking)
        m = best.measured
        log.info("chosen mixture: predicted objective %.6g, measured %.6g (%s)", m.predicted_objective, m.objective,
                 m.source)
    return best
