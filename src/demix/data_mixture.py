"""Component weights and the data mixture they stand for.

A merged proxy ``base + sum_i a_i (component_i - base)`` is built from *component weights* ``a``
(what the search samples and the predictors are fitted on). Under DeMix's linear approximation
it stands for a model trained on the *data mixture* ``data = sum_i a_i m_i``, where ``m_i`` is
the training mixture (token shares) of component i. With the standard recipe (every component
but the general one trained on ``s`` general data plus its domain)::

    data[general] = a[general] + s * (1 - a[general])
    data[d]       = (1 - s) * a[d]

so only data mixtures with ``general >= s`` are reachable (DeMix, Appendix A). What a user
trains on, epochs, bounds, exports and reference models are data mixtures.

    m = MixtureMap.standard(["general", "math"], "general", 0.5)
    m.data_of({"general": 0.2, "math": 0.8})        # {"general": 0.6, "math": 0.4}
    m.components_of({"general": 0.6, "math": 0.4})  # {"general": 0.2, "math": 0.8}
    m.region()                                        # "data mixtures with general >= 0.5"

Rows of arrays are mixtures whose columns follow ``domains``; the matrix ``M`` has one row per
component (the component of domain i is row i) and one column per domain, so ``data = a @ M``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from demix.errors import DemixError

#: Float slack of the mapping (a reachable data mixture maps to weights >= -TOLERANCE).
TOLERANCE = 1e-9

#: How a component's training mixture is known, strongest first.
RECORDED = "recorded"
"""Read from the component's demix.json (demix trained it)."""
DECLARED = "declared"
"""Given in the config (``train.components.mixtures``) for a component trained elsewhere."""
RECIPE = "recipe"
"""Not trained yet: the run's recipe (``train.components.general_share``) will train it so."""
ASSUMED = "assumed"
"""A component trained elsewhere without a declared mixture: the recipe's, assumed (a warning says so)."""
SOURCES = (RECORDED, DECLARED, RECIPE, ASSUMED)


@dataclass(frozen=True)
class DomainTerm:
    """How one domain's data share depends on the component weights on the simplex:
    ``data[domain] = offset + slope * a[component]`` (one component), or a constant
    (``component`` None, ``slope`` 0), or ``None`` from :meth:`MixtureMap.term` when it mixes
    several component weights."""

    component: int | None
    offset: float
    slope: float


@dataclass(frozen=True)
class MixtureMap:
    """The linear map from component weights to the data mixture: ``data = a @ matrix``."""

    domains: tuple[str, ...]
    matrix: np.ndarray
    """(K, K) float64: row i is the training mixture (token shares) of domain i's component."""
    sources: dict[str, str] = field(default_factory=dict)
    """Domain -> how its component's training mixture is known (:data:`SOURCES`)."""

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_mixtures(
        cls, domains: Sequence[str], mixtures: Mapping[str, Mapping[str, float]], sources: Mapping[str, str] | None = None
    ) -> MixtureMap:
        """The map of components whose training mixtures are ``mixtures`` ({component domain:
        {domain: token share}}); every domain needs one, shares must be non-negative, name only
        the run's domains and sum to 1."""
        domains = tuple(domains)
        missing = [d for d in domains if d not in mixtures]
        if missing:
            raise DemixError(f"no training mixture for the component(s) of {missing}", "give one per domain")
        rows = []
        for d in domains:
            m = mixtures[d]
            unknown = [x for x in m if x not in domains]
            if unknown:
                raise DemixError(
                    f"the training mixture of component '{d}' names unknown domain(s) {unknown}",
                    f"use only the run's domains {list(domains)}",
                )
            row = np.array([float(m.get(x, 0.0)) for x in domains])
            if not np.all(np.isfinite(row)) or np.any(row < 0) or abs(row.sum() - 1.0) > 1e-6:
                raise DemixError(
                    f"the training mixture of component '{d}' ({dict(m)}) is not non-negative token shares summing to 1",
                    "give token shares that sum to 1, e.g. {general: 0.5, " + d + ": 0.5}",
                )
            rows.append(row / row.sum())
        src = {d: (sources or {}).get(d, RECIPE) for d in domains}
        return cls(domains, np.vstack(rows), src)

    @classmethod
    def standard(cls, domains: Sequence[str], general: str, share: float) -> MixtureMap:
        """The standard recipe: the general component pure general, every other ``share``
        general + its domain (share 0: data mixture == component weights)."""
        return cls.from_mixtures(domains, {d: standard_mixture(d, general, share) for d in domains})

    # ------------------------------------------------------------------ the mapping

    @property
    def is_identity(self) -> bool:
        """Every component trained on its domain alone: component weights are the data mixture."""
        return bool(np.allclose(self.matrix, np.eye(len(self.domains)), atol=TOLERANCE, rtol=0))

    def to_data(self, weights: np.ndarray) -> np.ndarray:
        """Data mixtures of component-weight rows ((n, K) or (K,)); exact in float64."""
        return np.asarray(weights, dtype=np.float64) @ self.matrix

    def data_of(self, weights: Mapping[str, float]) -> dict[str, float]:
        """The data mixture of a ``{domain: component weight}`` mapping."""
        return dict(zip(self.domains, map(float, self.to_data(self._row(weights, "component weights")))))

    def to_components(self, data: np.ndarray) -> np.ndarray | None:
        """The component weights whose data mixture is ``data`` (a (K,) row), or None when no
        point of the simplex maps there (the data mixture is not reachable)."""
        target = np.asarray(data, dtype=np.float64)
        try:
            a = np.linalg.solve(self.matrix.T, target)
        except np.linalg.LinAlgError:  # two components with one training mixture: take the nearest
            a, _ = self._nearest(target)
        if np.any(a < -TOLERANCE) or np.abs(self.to_data(a) - target).max() > 1e-7 or abs(a.sum() - 1) > 1e-7:
            return None
        a = np.clip(a, 0.0, None)
        return a / a.sum()

    def components_of(self, data: Mapping[str, float]) -> dict[str, float] | None:
        """:meth:`to_components` of a ``{domain: token share}`` mapping."""
        a = self.to_components(self._row(data, "data mixture"))
        return None if a is None else dict(zip(self.domains, map(float, a)))

    def nearest_reachable(self, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(component weights, data mixture) of the reachable data mixture nearest to ``data``
        (Euclidean distance of token shares): ``data`` itself when it is reachable."""
        exact = self.to_components(data)
        if exact is not None:
            return exact, self.to_data(exact)
        return self._nearest(np.asarray(data, dtype=np.float64))

    def _nearest(self, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # min ||a @ M - target||^2 over the simplex, as non-negative least squares with the
        # sum-to-1 row weighted heavily (NNLS is an exact active-set method), then renormalised.
        from scipy.optimize import nnls

        k = len(self.domains)
        lam = 1e4
        design = np.vstack([self.matrix.T, lam * np.ones((1, k))])
        a, _ = nnls(design, np.concatenate([target, [lam]]), maxiter=50 * k)
        a = a / a.sum()
        return a, self.to_data(a)

    def term(self, j: int) -> DomainTerm | None:
        """How domain j's data share depends on the component weights on the simplex: through
        one component weight (affine), not at all (constant), or through several (None).

        ``data[j] = sum_i M[i, j] a_i``; with ``sum_i a_i = 1`` any constant c can be taken out:
        ``c + sum_i (M[i, j] - c) a_i``, so when all but one entry of column j are equal the
        share is affine in that one weight (the standard recipe: every column)."""
        col = self.matrix[:, j]
        if np.ptp(col) <= TOLERANCE:
            return DomainTerm(None, float(col[0]), 0.0)
        for i in (int(np.argmin(col)), int(np.argmax(col))):
            rest = np.delete(col, i)
            if np.ptp(rest) <= TOLERANCE:
                c = float(rest.mean())
                return DomainTerm(i, c, float(col[i] - c))
        return None

    def reachable_range(self, j: int) -> tuple[float, float]:
        """Smallest and largest data share of domain j over the reachable data mixtures."""
        col = self.matrix[:, j]
        return float(col.min()), float(col.max())

    def region(self) -> str:
        """The reachable data mixtures in words, e.g. ``data mixtures with general >= 0.5``."""
        if self.is_identity:
            return "every data mixture (each component was trained on its domain alone)"
        limits = []
        for j, d in enumerate(self.domains):
            lo, hi = self.reachable_range(j)
            if lo > TOLERANCE:
                limits.append(f"{d} >= {lo:.4g}")
            elif hi < 1 - TOLERANCE and not self._implied_upper(j):
                limits.append(f"{d} <= {hi:.4g}")
        exact = all(self.term(j) is not None for j in range(len(self.domains)))
        text = "data mixtures with " + ", ".join(limits) if limits else "data mixtures"
        return text if exact else text + " inside the convex hull of the components' training mixtures"

    def _implied_upper(self, j: int) -> bool:
        """Domain j's upper limit follows from the other domains' lower limits (general >= 0.5
        implies math <= 0.5): it need not be stated."""
        others = sum(self.reachable_range(i)[0] for i in range(len(self.domains)) if i != j)
        return abs((1 - others) - self.reachable_range(j)[1]) <= 1e-9

    # ------------------------------------------------------------------ records

    def training_mixtures(self) -> dict[str, dict[str, float]]:
        """{component domain: {domain: token share}}, zero shares left out."""
        return {
            d: {x: float(v) for x, v in zip(self.domains, row) if v > 0} for d, row in zip(self.domains, self.matrix)
        }

    def to_dict(self) -> dict[str, Any]:
        """``{"region": ..., "components": {domain: {"mixture": {...}, "source": ...}}}``: the
        mapping as ``best_mixture.json`` records it."""
        mixtures = self.training_mixtures()
        return {
            "formula": "data_mixture = sum over components of component_weight x the component's training mixture",
            "region": self.region(),
            "components": {d: {"mixture": mixtures[d], "source": self.sources.get(d, RECIPE)} for d in self.domains},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MixtureMap:
        """The inverse of :meth:`to_dict`."""
        comps = data["components"]
        return cls.from_mixtures(
            list(comps), {d: c["mixture"] for d, c in comps.items()}, {d: str(c.get("source", RECIPE)) for d, c in comps.items()}
        )

    def _row(self, mixture: Mapping[str, float], what: str) -> np.ndarray:
        unknown = [d for d in mixture if d not in self.domains]
        if unknown:
            raise DemixError(f"the {what} name unknown domain(s) {unknown}", f"use only the run's domains {list(self.domains)}")
        return np.array([float(mixture.get(d, 0.0)) for d in self.domains])


def standard_mixture(domain: str, general: str, share: float) -> dict[str, float]:
    """The standard recipe's training mixture of ``domain``'s component: pure general for the
    general domain, else ``share`` general + ``1 - share`` the domain."""
    if domain == general or share <= 0:
        return {domain: 1.0}
    return {general: float(share), domain: 1.0 - float(share)}


@dataclass(frozen=True)
class ComponentSpace:
    """Bounds on the data mixture, mapped exactly onto the component weights: a box
    ``lower <= a <= upper`` and, where a domain's share mixes several component weights, linear
    rows ``row_lower <= a @ rows.T <= row_upper`` (empty for the standard recipe)."""

    lower: np.ndarray
    upper: np.ndarray
    rows: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    row_lower: np.ndarray = field(default_factory=lambda: np.zeros(0))
    row_upper: np.ndarray = field(default_factory=lambda: np.zeros(0))
    row_names: tuple[str, ...] = ()
    """The domain each linear row bounds."""

    @property
    def has_rows(self) -> bool:
        return bool(self.rows.size)

    def rows_hold(self, weights: np.ndarray, tol: float = 1e-9) -> np.ndarray:
        """Boolean per row of ``weights``: every linear row holds (True without rows)."""
        w = np.atleast_2d(weights)
        if not self.has_rows:
            return np.ones(w.shape[0], dtype=bool)
        v = w @ self.rows.T
        return np.all((v >= self.row_lower - tol) & (v <= self.row_upper + tol), axis=1)


def component_space(
    mapping: MixtureMap, lower: np.ndarray, upper: np.ndarray, names: Sequence[str] | None = None
) -> ComponentSpace:
    """Map data-mixture bounds ``lower <= data <= upper`` ((K,) each) onto the component weights,
    exactly: a domain whose share is affine in one component weight gives a box bound on it (the
    standard recipe: every domain); one that mixes several gives a linear row, and the box is
    then tightened to the smallest that holds the polytope (by linear programming), so that the
    sampler draws inside it and rejects the rest. A bound outside the reachable data mixtures is
    a DemixError naming the region; ``names`` are the config keys of the bounds, per domain."""
    k = len(mapping.domains)
    names = list(names) if names is not None else [f"the bound of {d}" for d in mapping.domains]
    a_lo, a_hi = np.zeros(k), np.ones(k)
    rows, r_lo, r_hi, r_names = [], [], [], []
    for j, d in enumerate(mapping.domains):
        lo, hi = float(lower[j]), float(upper[j])
        reach_lo, reach_hi = mapping.reachable_range(j)
        if lo > reach_hi + TOLERANCE or hi < reach_lo - TOLERANCE:
            side = f">= {lo:.4g}" if lo > reach_hi + TOLERANCE else f"<= {hi:.4g}"
            raise DemixError(
                f"{names[j]}: a data share of '{d}' {side} is not reachable: the proxies stand for {mapping.region()} "
                f"(each component's training mixture: `mapping` in best_mixture.json)",
                f"bound '{d}' inside [{reach_lo:.4g}, {reach_hi:.4g}], or train components with another "
                "train.components.general_share",
            )
        if lo <= reach_lo + TOLERANCE and hi >= reach_hi - TOLERANCE:
            continue  # no restriction
        t = mapping.term(j)
        if t is not None and t.component is not None:
            i = t.component
            x, y = (lo - t.offset) / t.slope, (hi - t.offset) / t.slope
            a_lo[i] = max(a_lo[i], min(x, y))
            a_hi[i] = min(a_hi[i], max(x, y))
        elif t is None:
            rows.append(mapping.matrix[:, j].copy())
            r_lo.append(lo)
            r_hi.append(hi)
            r_names.append(d)
    a_lo, a_hi = np.clip(a_lo, 0.0, 1.0), np.clip(a_hi, 0.0, 1.0)
    # A bound met exactly at the edge can leave -1e-17 on one side: no real interval is lost.
    a_hi = np.maximum(a_hi, np.minimum(a_lo, a_hi + 1e-12))
    if not rows:
        return ComponentSpace(a_lo, a_hi)
    space = ComponentSpace(a_lo, a_hi, np.vstack(rows), np.array(r_lo), np.array(r_hi), tuple(r_names))
    return _tighten(space, mapping)


def _tighten(space: ComponentSpace, mapping: MixtureMap) -> ComponentSpace:
    """The smallest box around {a on the simplex, in the box, rows hold}: 2K linear programs."""
    from scipy.optimize import linprog

    k = len(mapping.domains)
    a_ub = np.vstack([space.rows, -space.rows])
    b_ub = np.concatenate([space.row_upper, -space.row_lower])
    lo, hi = space.lower.copy(), space.upper.copy()
    for i in range(k):
        for sign in (1.0, -1.0):
            c = np.zeros(k)
            c[i] = sign
            res = linprog(c, A_ub=a_ub, b_ub=b_ub, A_eq=np.ones((1, k)), b_eq=[1.0],
                          bounds=list(zip(space.lower, space.upper)), method="highs")
            if res.status == 2:
                raise DemixError(
                    f"no component weights give a data mixture inside the bounds on {list(space.row_names)}: the "
                    f"proxies stand for {mapping.region()}",
                    "widen search.bounds (or max_epochs) for those domains",
                )
            if res.status != 0:
                raise DemixError(f"the data-mixture bounds could not be mapped onto component weights ({res.message})",
                                 "simplify search.bounds")
            if sign > 0:
                lo[i] = max(lo[i], float(res.x[i]))
            else:
                hi[i] = min(hi[i], float(res.x[i]))
    return ComponentSpace(lo, np.maximum(hi, lo), space.rows, space.row_lower, space.row_upper, space.row_names)


@dataclass(frozen=True)
class BaselineMixture:
    """A baseline data mixture (natural: token-proportional; uniform) and the component weights
    that stand for it: exactly when it is reachable, else the nearest reachable one."""

    name: str
    data_target: dict[str, float]
    """The baseline as defined (token shares)."""
    reachable: bool
    component_weights: dict[str, float]
    data_mixture: dict[str, float]
    """What the component weights stand for: ``data_target`` when reachable, else the nearest reachable."""


def baseline_mixtures(mapping: MixtureMap, token_counts: Mapping[str, float] | None) -> dict[str, BaselineMixture]:
    """The baseline data mixtures: uniform and, when the token counts are known, natural
    (token-proportional), each with the component weights standing for it (nearest reachable
    data mixture when it is not reachable)."""
    k = len(mapping.domains)
    targets = {"uniform": np.full(k, 1.0 / k)}
    if token_counts:
        counts = np.array([float(token_counts.get(d, 0.0)) for d in mapping.domains])
        if counts.sum() > 0:
            targets["natural"] = counts / counts.sum()
    out = {}
    for name, target in targets.items():
        exact = mapping.to_components(target)
        a, data = (exact, target) if exact is not None else mapping.nearest_reachable(target)
        out[name] = BaselineMixture(
            name,
            dict(zip(mapping.domains, map(float, target))),
            exact is not None,
            dict(zip(mapping.domains, map(float, a))),
            dict(zip(mapping.domains, map(float, data))),
        )
    return out
