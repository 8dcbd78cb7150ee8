"""Ranking: predict a candidate pool of component weights, apply the constraints and the
objective, take the mean of the top-k as the chosen mixture, and find the Pareto front among
the best-ranked candidates. The baselines (natural, uniform) are data mixtures, predicted at
the component weights that stand for them (:func:`demix.data_mixture.baseline_mixtures`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from demix.config import RunConfig
from demix.data_mixture import MixtureMap, baseline_mixtures
from demix.errors import DemixError
from demix.objectives import feasible, objective_values, pareto_front, parse_constraints, select_top_k
from demix.rundir import RoundFiles
from demix.search.files import RERUN
from demix.search.fitting import Fit
from demix.search.round_files import COMPONENT_WEIGHTS_UNIT, CandidatePool, ParetoFront, Selection

PARETO_CANDIDATES = 5000
"""pareto.csv holds the Pareto-optimal candidates among this many best-ranked ones."""


@dataclass
class Ranking:
    """A ranked candidate pool."""

    weights: np.ndarray
    """(n, K) candidates' component weights (what is ranked)."""
    capability_scores: np.ndarray
    """(n, C) predicted capabilities, higher is better."""
    capabilities: list[str]
    objective: np.ndarray
    """(n,), -inf where a constraint fails."""
    order: np.ndarray
    """Feasible candidates, best first."""
    top_k: np.ndarray
    """Indices of the top-k, best first."""
    mean: np.ndarray
    """(K,) mean of the top-k component weights: the chosen mixture."""
    spread: dict[str, np.ndarray]
    """std, min and max of the top-k component weights, (K,) each."""
    baselines: dict[str, dict[str, float]]
    """Baselines (natural, uniform): predicted capabilities, ``weight.<domain>`` (their data
    mixture) and ``component.<domain>`` (the component weights standing for it), what
    constraints such as ``math >= natural`` compare with (empty in a ranking read back from its
    files: only ranking the pool needs them)."""
    objective_mean: np.ndarray | None = None
    """(n,) the bootstrap ensemble's mean objective (:mod:`demix.search.acquisition`); None
    without ``search.predictor_intervals``."""
    objective_std: np.ndarray | None = None
    """(n,) the ensemble's spread of the objective: what the ucb planner plans by."""

    def pareto(self) -> np.ndarray:
        """Indices of the Pareto front among the best :data:`PARETO_CANDIDATES` candidates."""
        # The front among the best-ranked candidates is the pool's front restricted to them (up
        # to ties at the cut): both objectives are monotone in every capability, so whatever
        # dominates a candidate ranks at least as high. The whole pool would cost O(n x front),
        # and with smooth predictors half of a 200k pool can be on the front (tens of minutes).
        head = self.order[:PARETO_CANDIDATES]
        front = pareto_front(self.capability_scores[head]) if head.size else np.zeros(0, dtype=int)
        return head[front]

    def write(
        self, files: RoundFiles, domains: Sequence[str], evaluations: int, settings: dict[str, str | None] | None = None
    ) -> Selection:
        """The round's ``pool.npz``, ``pareto.csv`` and ``selection.json`` (last, recording
        ``settings``: the round is finished once it exists); returns the selection."""
        CandidatePool(list(domains), self.capabilities, self.weights, self.capability_scores, self.objective,
                      self.top_k, self.objective_mean, self.objective_std).write(files.pool)
        idx = self.pareto()
        ParetoFront(list(domains), self.capabilities, self.weights[idx], self.capability_scores[idx],
                    self.objective[idx]).write(files.pareto)
        selection = Selection(
            weights=dict(zip(domains, map(float, self.mean))),
            spread={d: {k: float(v[j]) for k, v in self.spread.items()} for j, d in enumerate(domains)},
            top_k=int(self.top_k.size),
            pool_size=int(self.weights.shape[0]),
            feasible=int(self.order.size),
            pareto_size=int(idx.size),
            pareto_over=int(min(self.order.size, PARETO_CANDIDATES)),
            evaluations=evaluations,
            settings=settings,
            unit=COMPONENT_WEIGHTS_UNIT,
        )
        selection.write(files.selection)
        return selection

    @classmethod
    def read(cls, files: RoundFiles, domains: Sequence[str], selection: Selection) -> Ranking:
        """The ranking a finished round wrote: the pool from ``pool.npz``, the chosen mixture and
        its spread from ``selection.json`` (the same floats, so what follows from it is the same)."""
        pool = CandidatePool.read(files.pool)
        if pool.domains != list(domains) or set(selection.weights) != set(domains):
            raise DemixError(f"'{files.pool}' ranks mixtures over {pool.domains}, not {list(domains)}", RERUN)
        feasible_idx = np.flatnonzero(np.isfinite(pool.objective))
        order = feasible_idx[np.argsort(-pool.objective[feasible_idx], kind="stable")]
        mean = np.array([selection.weights[d] for d in domains])
        spread = {k: np.array([selection.spread[d][k] for d in domains]) for k in ("std", "min", "max")}
        return cls(pool.weights, pool.capability_scores, pool.capabilities, pool.objective, order, pool.top_k, mean,
                   spread, {}, pool.objective_mean, pool.objective_std)


def identity_map(domains: Sequence[str]) -> MixtureMap:
    """The map of components trained on their domain alone: component weights are the data mixture."""
    return MixtureMap.standard(list(domains), list(domains)[0], 0.0)


def rank_pool(
    pool: np.ndarray,
    fit: Fit,
    config: RunConfig,
    token_counts: Mapping[str, float] | None,
    mapping: MixtureMap | None = None,
) -> Ranking:
    """Predict, constrain and rank a candidate pool of component weights; the top-k mean is the
    chosen mixture. ``mapping`` gives the data mixtures ``weight.<domain>`` constraints and the
    baselines read (None: the identity)."""
    s = config.search
    domains = config.data.domain_names
    mapping = mapping or identity_map(domains)
    caps = fit.capabilities.targets
    constraints = parse_constraints(s.constraints, caps, domains)
    scores = fit.capabilities.predict_matrix(pool, caps)
    baselines: dict[str, dict[str, float]] = {}
    for name, b in baseline_mixtures(mapping, token_counts).items():
        a = np.array([b.component_weights[d] for d in domains])
        pred = fit.capabilities.predict_matrix(a[None, :], caps)[0]
        baselines[name] = {
            **{c: float(v) for c, v in zip(caps, pred)},
            **{f"weight.{d}": float(b.data_mixture[d]) for d in domains},
            **{f"component.{d}": float(b.component_weights[d]) for d in domains},
        }
    if any(c.right == "natural" for c in constraints) and "natural" not in baselines:
        raise DemixError("a constraint compares with 'natural' but the domain token counts are unknown", "run `demix prepare` first")
    values = objective_values(s.objective, scores, caps, s.capability_weights)
    ok = feasible(constraints, pool, scores, caps, domains, baselines, mapping)
    if not ok.any():
        raise DemixError(
            f"no candidate of the pool satisfies the constraints {s.constraints}",
            "relax search.constraints (or widen search.bounds)",
        )
    values = np.where(ok, values, -np.inf)
    mean, spread, top = select_top_k(pool, values, s.top_k)
    feasible_idx = np.flatnonzero(ok)
    order = feasible_idx[np.argsort(-values[feasible_idx], kind="stable")]
    return Ranking(pool, scores, caps, values, order, top, mean, spread, baselines)
