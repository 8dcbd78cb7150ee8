"""Objectives over a candidate pool: which predicted mixture is best.

Inputs are predicted capability scores, an (n, C) array on the higher-is-better scale with the
capability names in column order, and the pool's component weights (n, K) (the merge
coefficients the predictors were fitted on; their data mixtures are ``weights @ M``,
:mod:`demix.data_mixture`).

- ``rank_mean`` (the DeMix paper's objective): for each capability the percentile rank of every
  candidate within the pool (0..1, ties share their mean rank), then the (weighted) mean over
  capabilities. Scale-free: capabilities in different units count equally.
- ``weighted``: the weighted mean of the raw capability scores (the user chooses the scales).

Constraints filter candidates before ranking. Grammar: ``LEFT OP RIGHT`` where LEFT is a
capability name, ``weight.<domain>`` (the domain's token share in the candidate's DATA MIXTURE,
what a model trained on it sees) or ``component.<domain>`` (the candidate's component weight),
OP one of ``>= <= > <``, RIGHT a number, ``natural`` (the natural baseline's value of LEFT: its
predicted capability, its data share or its component weight) or ``uniform``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from demix.data_mixture import MixtureMap
from demix.errors import DemixError

OBJECTIVES = ("rank_mean", "weighted")
#: Prefixes of a constraint's left side: a data share, a component weight.
DATA_PREFIX = "weight."
COMPONENT_PREFIX = "component."
#: How to write a constraint (every parsing error says it).
CONSTRAINT_FORMS = (
    "write CAPABILITY OP VALUE, weight.DOMAIN OP VALUE (the domain's token share in the data mixture) or "
    "component.DOMAIN OP VALUE (its component weight), with OP one of >= <= > < and VALUE a number, 'natural' or "
    "'uniform' (e.g. 'math >= natural', 'weight.general >= 0.6', 'component.code <= 0.5')"
)
_CONSTRAINT = re.compile(r"^\s*([A-Za-z0-9_.:-]+)\s*(>=|<=|>|<)\s*([A-Za-z_]+|[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*$")


def capability_weights(capabilities: Sequence[str], weights: Mapping[str, float] | None) -> np.ndarray:
    """Weights of the capabilities in the objective (empty: equal), normalised to sum 1."""
    if not weights:
        return np.full(len(capabilities), 1.0 / max(1, len(capabilities)))
    unknown = [c for c in weights if c not in capabilities]
    if unknown:
        raise DemixError(
            f"search.capability_weights names unknown capability(ies) {unknown}",
            f"use the capabilities the evaluation reports: {list(capabilities)}",
        )
    w = np.array([float(weights.get(c, 0.0)) for c in capabilities])
    if np.any(w < 0) or w.sum() <= 0:
        raise DemixError(f"search.capability_weights must be non-negative with a positive sum, got {dict(weights)}")
    return w / w.sum()


def percentile_ranks(values: np.ndarray) -> np.ndarray:
    """Column-wise percentile ranks in (0, 1] (ties share their average rank)."""
    from scipy.stats import rankdata

    values = np.atleast_2d(values)
    return rankdata(values, axis=0, method="average") / values.shape[0]


def rank_mean(scores: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The paper's composite: weighted mean over capabilities of the pool percentile ranks."""
    ranks = percentile_ranks(scores)
    w = weights if weights is not None else np.full(ranks.shape[1], 1.0 / ranks.shape[1])
    return ranks @ w


def weighted(scores: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted mean of the raw capability scores."""
    scores = np.atleast_2d(scores)
    w = weights if weights is not None else np.full(scores.shape[1], 1.0 / scores.shape[1])
    return scores @ w


def objective_values(
    kind: str, scores: np.ndarray, capabilities: Sequence[str], weights: Mapping[str, float] | None = None
) -> np.ndarray:
    """Objective of every candidate (higher is better) for ``kind`` in :data:`OBJECTIVES`."""
    if kind not in OBJECTIVES:
        raise DemixError(f"unknown objective '{kind}'", f"use one of {', '.join(OBJECTIVES)}")
    w = capability_weights(capabilities, weights)
    return rank_mean(scores, w) if kind == "rank_mean" else weighted(scores, w)


@dataclass(frozen=True)
class Constraint:
    """One parsed constraint: ``left op right``; left is a capability, ``weight.<domain>`` (a
    data share) or ``component.<domain>`` (a component weight)."""

    text: str
    left: str
    op: str
    right: str | float

    @property
    def on_data(self) -> bool:
        """LEFT is a token share of the candidate's data mixture (``weight.<domain>``)."""
        return self.left.startswith(DATA_PREFIX)

    @property
    def on_component(self) -> bool:
        """LEFT is a component weight of the candidate (``component.<domain>``)."""
        return self.left.startswith(COMPONENT_PREFIX)

    @property
    def domain(self) -> str | None:
        """The domain of a ``weight.`` / ``component.`` constraint (None for a capability)."""
        for prefix in (DATA_PREFIX, COMPONENT_PREFIX):
            if self.left.startswith(prefix):
                return self.left[len(prefix):]
        return None

    def threshold(self, baselines: Mapping[str, Mapping[str, float]]) -> float:
        """The right-hand side as a number; ``natural`` / ``uniform`` looked up in ``baselines``
        ({"natural": {left: value}, ...})."""
        if isinstance(self.right, float):
            return self.right
        return float(baselines[self.right][self.left])

    def holds(self, values: np.ndarray, baselines: Mapping[str, Mapping[str, float]]) -> np.ndarray:
        """Boolean per candidate."""
        t = self.threshold(baselines)
        return {">=": values >= t, "<=": values <= t, ">": values > t, "<": values < t}[self.op]


def parse_constraint(text: str, capabilities: Sequence[str], domains: Sequence[str]) -> Constraint:
    """Parse ``math >= natural``, ``code >= 0.4``, ``weight.general >= 0.6`` (a data share),
    ``component.code <= 0.5`` (a component weight); unknown names are errors."""
    m = _CONSTRAINT.match(text)
    if not m:
        raise DemixError(f"cannot parse constraint '{text}'", CONSTRAINT_FORMS)
    left, op, raw = m.groups()
    prefix = next((p for p in (DATA_PREFIX, COMPONENT_PREFIX) if left.startswith(p)), None)
    if prefix is not None:
        domain = left[len(prefix) :]
        if domain not in domains:
            raise DemixError(
                f"constraint '{text}' names unknown domain '{domain}'",
                f"use one of the run's domains {list(domains)} after weight. (data share) or component. (component weight)",
            )
    elif left not in capabilities:
        raise DemixError(
            f"constraint '{text}' names unknown capability '{left}'",
            f"use a capability ({list(capabilities)}), weight.<domain> (a data share) or component.<domain> "
            "(a component weight)",
        )
    try:
        right: str | float = float(raw)
    except ValueError:
        if raw not in ("natural", "uniform"):
            raise DemixError(f"constraint '{text}': unknown value '{raw}'", "use a number, 'natural' or 'uniform'") from None
        right = raw
    return Constraint(text, left, op, right)


def reads_data_mixture(text: str) -> bool:
    """True when constraint ``text`` depends on the map from component weights to the data
    mixture: it reads a data share (``weight.<domain>``) or compares with a baseline (``natural``,
    ``uniform``: data mixtures). A text that does not parse counts as True (it is refused later)."""
    m = _CONSTRAINT.match(text)
    if not m:
        return True
    left, _, right = m.groups()
    return left.startswith(DATA_PREFIX) or right in ("natural", "uniform")


def parse_constraints(texts: Sequence[str], capabilities: Sequence[str], domains: Sequence[str]) -> list[Constraint]:
    """Parse every constraint of ``search.constraints``."""
    return [parse_constraint(t, capabilities, domains) for t in texts]


def feasible(
    constraints: Sequence[Constraint],
    weights: np.ndarray,
    scores: np.ndarray,
    capabilities: Sequence[str],
    domains: Sequence[str],
    baselines: Mapping[str, Mapping[str, float]] | None = None,
    mapping: MixtureMap | None = None,
) -> np.ndarray:
    """Boolean per candidate: every constraint holds. ``weights`` are the candidates' component
    weights; ``weight.<domain>`` reads their data mixtures ``weights @ mapping.matrix`` (None:
    the identity, component weights are the data mixture), ``component.<domain>`` the weights
    themselves. ``baselines`` holds, for the ``natural`` and ``uniform`` baselines, the predicted
    capabilities, ``weight.<domain>`` (their data mixture) and ``component.<domain>`` (their
    component weights) ({name: {key: value}})."""
    domains = list(domains)
    if mapping is not None and list(mapping.domains) != domains:
        raise DemixError(f"the component mapping is for domains {list(mapping.domains)}, not {domains}",
                         "build it for the run's domains")
    ok = np.ones(len(weights), dtype=bool)
    data: np.ndarray | None = None
    for c in constraints:
        if c.on_data:
            if data is None:  # computed once, only when a constraint reads it
                data = mapping.to_data(weights) if mapping is not None else np.asarray(weights, dtype=np.float64)
            values = data[:, domains.index(c.left[len(DATA_PREFIX):])]
        elif c.on_component:
            values = weights[:, domains.index(c.left[len(COMPONENT_PREFIX):])]
        else:
            values = scores[:, list(capabilities).index(c.left)]
        ok &= c.holds(values, baselines or {})
    return ok


def pareto_front(scores: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated rows of ``scores`` (n, C), higher is better on every column.

    A row is dominated when another is >= on every column and > on one. Equal rows do not
    dominate each other, so they are all kept. Cost is O(n x front) with numpy sweeps.
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    # Visit rows by decreasing sum: a row can only be dominated by one with a larger or equal sum.
    order = np.argsort(-scores.sum(axis=1), kind="stable")
    cand = scores[order]
    idx = order
    i = 0
    while i < len(cand):
        row = cand[i]
        dominated = np.all(cand <= row, axis=1) & np.any(cand < row, axis=1)
        keep = ~dominated
        i = int(keep[:i].sum()) + 1
        cand, idx = cand[keep], idx[keep]
    return np.sort(idx)


def select_top_k(weights: np.ndarray, values: np.ndarray, k: int) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """The chosen mixture: the mean of the component weights of the ``k`` candidates with the
    highest objective (its data mixture is the mean of theirs: the map is linear).

    Returns (mean weights (K,), spread {"std", "min", "max"} per domain, indices of the top-k,
    best first). Candidates with a non-finite objective (infeasible) are never chosen.
    """
    values = np.asarray(values, dtype=float)
    ok = np.flatnonzero(np.isfinite(values))
    if ok.size == 0:
        raise DemixError("no candidate satisfies the constraints", "relax search.constraints or widen search.bounds")
    k = min(k, ok.size)
    part = ok[np.argpartition(-values[ok], k - 1)[:k]] if k < ok.size else ok
    top = part[np.argsort(-values[part], kind="stable")]
    chosen = weights[top]
    mean = chosen.mean(axis=0)
    mean = mean / mean.sum()
    spread = {"std": chosen.std(axis=0), "min": chosen.min(axis=0), "max": chosen.max(axis=0)}
    return mean, spread, top
