"""Uncertainty for the search: a bootstrap ensemble of the capability predictors
(``search.predictor_intervals``), its out-of-fold interval coverage in ``cv.json``, and the
objective's ensemble mean and spread over a round's pool, from which the ``ucb`` planner
(``search.planner: ucb``, :func:`ucb_picks`) chooses the next round's proxies.

Why an ensemble of the objective, not of each capability: the objective the search ranks by
(``rank_mean``: pool percentile ranks) is not linear in the capabilities, so the spread of the
objective is computed per member (each member's predicted capabilities over the whole pool,
then its objective) and taken across members. Its mean and spread are saved in the round's
``pool.npz`` (:class:`~demix.search.round_files.CandidatePool`), so a resumed search plans from
the same numbers without refitting anything.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from demix.config import RunConfig
from demix.mixtures import mixture_key, mixtures_to_rows
from demix.objectives import objective_values
from demix.predictors import Ensemble, fit_ensemble, interval_report
from demix.search.fitting import Fit
from demix.search.ranking import Ranking
from demix.store import Evaluation


def capability_rows(
    evaluations: Sequence[Evaluation], domains: Sequence[str], capabilities: Sequence[str]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Component weights and capability scores of the evaluations that have every one of
    ``capabilities`` (a capability added since older rows were scored is not in those rows)."""
    rows = [e for e in evaluations if all(c in e.capabilities for c in capabilities)]
    X = mixtures_to_rows(domains, [e.weights for e in rows]).reshape(len(rows), len(domains))
    return X, {c: np.array([float(e.capabilities[c]) for e in rows]) for c in capabilities}


def fit_capability_ensemble(
    evaluations: Sequence[Evaluation], fit: Fit, config: RunConfig, folds: int | None = None
) -> Ensemble:
    """The bootstrap ensemble of the capability predictors (``search.predictor_intervals``
    members of ``search.predictor``), and, in place, each capability's out-of-fold interval
    calibration in ``fit.cv`` (``interval``: coverage of the nominal ``search.interval_level``
    intervals, their mean width, the ensemble mean's RMSE, the n behind them)."""
    from sklearn.model_selection import KFold

    s = config.search
    domains = config.data.domain_names
    caps = list(fit.capabilities.targets)
    X, Y = capability_rows(evaluations, domains, caps)
    k = min(folds or s.cv_folds, X.shape[0])
    if k >= 2:
        splits = list(KFold(n_splits=k, shuffle=True, random_state=s.seed).split(X))
        for c in caps:
            report = interval_report(X, Y[c], splits, s.predictor, s.predictor_intervals, s.interval_level, s.seed)
            fit.cv.capabilities[c].interval = report
    return fit_ensemble(X, Y, s.predictor, s.predictor_intervals, domains, s.seed, s.interval_level)


def objective_spread(ensemble: Ensemble, ranking: Ranking, config: RunConfig) -> tuple[np.ndarray, np.ndarray]:
    """The objective's mean and spread (std across members) at every candidate of the ranked
    pool, each member's objective computed over the whole pool as the ranking's is; -inf mean
    and 0 spread where a constraint fails (the ranking's objective is -inf there)."""
    s = config.search
    caps = ranking.capabilities
    per_member = np.stack([
        objective_values(s.objective, m.predict_matrix(ranking.weights, caps), caps, s.capability_weights)
        for m in ensemble.members
    ])
    ok = np.isfinite(ranking.objective)
    mean = np.where(ok, per_member.mean(axis=0), -np.inf)
    std = np.where(ok, per_member.std(axis=0, ddof=1), 0.0)
    return mean, std


def ucb_picks(
    ranking: Ranking, n: int, domains: Sequence[str], done: set[str], evaluated: np.ndarray, beta: float,
    min_distance: float, candidates: int | None = None,
) -> np.ndarray:
    """Up to ``n`` candidates of the ranked pool (component-weight rows), best upper confidence
    bound ``mean + beta * spread`` on the objective first, skipping every mixture whose key is
    in ``done`` (the store's finished mixtures: never planned again) and every candidate closer
    than ``min_distance`` (Euclidean) to a pick or to an ``evaluated`` row (m, K). When fewer
    than ``n`` are that far apart, the distance is halved and the scan repeated (picks kept):
    a bound is a preference for spread, never a reason to plan fewer proxies. Deterministic:
    the same ranking, ``done`` and ``evaluated`` give the same picks (ties in stable order).

    Only the ``candidates`` best bounds are scanned (default ``max(2000, 100 n)``): the picks
    come from the top, and the distances of a 200k pool to every evaluation would cost
    gigabytes."""
    if ranking.objective_mean is None or ranking.objective_std is None:
        from demix.errors import DemixError

        raise DemixError("the round's pool has no ensemble spread to plan by (search.planner: ucb)",
                         "set search.predictor_intervals >= 2; the finished rounds are then ranked again")
    bound = ranking.objective_mean + beta * ranking.objective_std
    order = np.argsort(-bound, kind="stable")
    order = order[np.isfinite(bound[order])][: candidates or max(2000, 100 * n)]
    cand = ranking.weights[order]
    keys = [mixture_key(dict(zip(domains, map(float, w)))) for w in cand]
    fresh = np.array([k not in done for k in keys], dtype=bool)
    near = np.full(len(order), np.inf)
    if evaluated.size:
        for lo in range(0, len(order), 4096):  # chunks: (chunk, m, K) stays small
            block = cand[lo : lo + 4096]
            near[lo : lo + 4096] = np.min(np.linalg.norm(block[:, None, :] - evaluated[None, :, :], axis=2), axis=1)
    picked: list[int] = []
    taken = np.zeros(len(order), dtype=bool)
    d = min_distance
    while len(picked) < n:
        for j in range(len(order)):
            if len(picked) == n:
                break
            if taken[j] or not fresh[j] or near[j] < d:
                continue
            picked.append(j)
            # Every candidate of the same key is taken with it: a plan never holds a mixture twice.
            taken |= np.array([k == keys[j] for k in keys])
            near = np.minimum(near, np.linalg.norm(cand - cand[j], axis=1))
        if d == 0.0 or not (fresh & ~taken).any():
            break
        # Below a micro-weight, distance means nothing: the last pass takes any fresh candidate.
        d = d / 2 if d > 1e-6 else 0.0
    return ranking.weights[order[picked]] if picked else np.zeros((0, len(domains)))
