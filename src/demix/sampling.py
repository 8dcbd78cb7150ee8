"""Sampling component weights inside exact bounds.

A sampled mixture is a row of an (n, K) float64 array of *component weights* (the merge
coefficients of a proxy), whose columns follow ``domains``. The bounds a user sets
(``search.bounds``) are on the *data mixture* the proxy stands for, ``data = a @ M``
(:mod:`demix.data_mixture`); :func:`resolve_bounds` maps them exactly onto the component
weights: a box for every domain whose data share is affine in one component weight (the
standard recipe: every domain), and linear rows for the others. Bounds hold exactly (up to
float rounding of ~1e-15): the sampler never clips and rescales.

    w = lower + F * y,   F = 1 - sum(lower),   y on the simplex of the free domains, y_i <= cap_i

y is Dirichlet(alpha) around the prior. Rows that break a cap are redrawn (rejection: exact
truncated Dirichlet); rows still outside after a few redraws (caps that cut off most of the
mass) are drawn by stick-breaking with truncated Beta conditionals, in a random domain order
per row, which is inside the caps by construction. Linear rows are met by rejection: rows of
the box that fail one are dropped and more are drawn.

Why one module of ~540 lines: bounds, their exact mapping from the data mixture and the
sampler that keeps them are one guarantee (every candidate inside the bounds), tested together.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from demix.data_mixture import ComponentSpace, MixtureMap, component_space
from demix.errors import DemixError

if TYPE_CHECKING:  # pragma: no cover
    from demix.config import BoundsConfig, SamplerConfig

log = logging.getLogger("demix.sampling")

#: Bounds are checked with this slack (float rounding of l + F * y).
BOUND_TOLERANCE = 1e-9
#: Redraw rounds of the rejection step before the exact stick-breaking fallback.
REJECTION_ROUNDS = 4
#: With linear rows (rejection), at most this many draws per asked candidate (and at least
#: ROW_DRAWS_MIN in all): an acceptance below 1 / ROW_DRAWS_PER_ROW returns fewer candidates.
ROW_DRAWS_PER_ROW = 50
ROW_DRAWS_MIN = 100_000
#: Largest batch drawn at once under rejection (memory: batch x K floats, a few times over).
ROW_BATCH = 1 << 18


@dataclass(frozen=True)
class Bounds:
    """Exact bounds on the component weights: ``lower[i] <= w[i] <= upper[i]`` (lower == upper:
    fixed), plus the linear rows of ``space`` where a bounded data share mixes several
    component weights. ``data_lower`` / ``data_upper`` are the data-mixture bounds they come
    from (token shares, what ``search.bounds`` says)."""

    domains: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    space: ComponentSpace | None = None
    """The data-mixture bounds mapped onto the component weights (None: the box is all)."""
    data_lower: np.ndarray | None = None
    data_upper: np.ndarray | None = None
    mapping: MixtureMap | None = None
    """Component weights -> data mixture (None: the identity)."""

    @property
    def fixed(self) -> np.ndarray:
        """Domains whose component weight is fixed (a pinned data share, or lower == upper)."""
        return self.upper - self.lower <= 0

    @property
    def has_rows(self) -> bool:
        """Some bound needs a linear row on the component weights (sampled by rejection)."""
        return self.space is not None and self.space.has_rows

    def contains(self, weights: np.ndarray, tol: float = BOUND_TOLERANCE) -> np.ndarray:
        """Boolean per row of component weights: inside the box and every linear row, summing
        to 1 (within ``tol``); their data mixtures are then inside the data-mixture bounds."""
        w = np.atleast_2d(weights)
        ok = (
            np.all(w >= self.lower - tol, axis=1)
            & np.all(w <= self.upper + tol, axis=1)
            & (np.abs(w.sum(axis=1) - 1.0) <= max(tol, 1e-9))
        )
        if self.has_rows:
            assert self.space is not None
            ok &= self.space.rows_hold(w, tol)
        return ok

    def as_dict(self) -> dict[str, dict[str, float]]:
        """Per domain: the component-weight box (``lower`` / ``upper``) and, when known, the
        data-share bounds it comes from (``data_lower`` / ``data_upper``)."""
        out = {d: {"lower": float(lo), "upper": float(hi)} for d, lo, hi in zip(self.domains, self.lower, self.upper)}
        if self.data_lower is not None and self.data_upper is not None:
            for d, lo, hi in zip(self.domains, self.data_lower, self.data_upper):
                out[d].update(data_lower=float(lo), data_upper=float(hi))
        return out


def resolve_bounds(
    domains: Sequence[str],
    config: BoundsConfig | None = None,
    token_counts: Mapping[str, float] | None = None,
    target_tokens: float | None = None,
    mapping: MixtureMap | None = None,
) -> Bounds:
    """Turn ``search.bounds`` (bounds on the DATA MIXTURE: token shares) into exact bounds on
    the component weights, checking feasibility.

    ``lower`` / ``upper`` / ``pinned`` are data shares; ``max_epochs`` caps each data share at
    ``max_epochs * tokens[d] / target_tokens`` (a domain cannot be repeated more often than
    that); ``target_tokens`` defaults to the sum of domain tokens. ``mapping`` (the run's
    :class:`~demix.data_mixture.MixtureMap`) maps them onto the component weights with
    :func:`demix.data_mixture.component_space`; None is the identity (component weights are the
    data mixture), for callers without a run. Raises DemixError for unknown domains, shares
    outside [0, 1], lower > upper, pinned shares outside their bounds, infeasible sets (sum of
    lower bounds > 1, or upper bounds < 1), a bound outside the reachable data mixtures (naming
    the region and the config key), a pinned share that mixes several component weights, and
    bounds that no reachable data mixture meets.
    """
    domains = list(domains)
    if mapping is not None and list(mapping.domains) != domains:
        raise DemixError(
            f"the component mapping is for domains {list(mapping.domains)}, not {domains}", "build it for the run's domains"
        )
    if mapping is not None and mapping.is_identity:
        mapping = None  # component weights are the data mixture: the box is the data-share box
    lower = np.zeros(len(domains))
    upper = np.ones(len(domains))
    if config is None:
        return Bounds(tuple(domains), lower, upper, None, lower.copy(), upper.copy(), mapping)
    for section in ("lower", "upper", "pinned"):
        values: dict[str, float] = getattr(config, section)
        unknown = [d for d in values if d not in domains]
        if unknown:
            raise DemixError(
                f"search.bounds.{section} names unknown domain(s) {unknown}", f"use only the run's domains {domains}"
            )
        bad = {d: v for d, v in values.items() if not (0.0 <= float(v) <= 1.0)}
        if bad:
            raise DemixError(
                f"search.bounds.{section} has data shares outside [0, 1]: {bad}",
                "give token shares of the data mixture between 0 and 1",
            )
    index = {d: i for i, d in enumerate(domains)}
    for d, v in config.lower.items():
        lower[index[d]] = float(v)
    for d, v in config.upper.items():
        upper[index[d]] = float(v)
    epoch_capped: list[str] = []
    if config.max_epochs is not None:
        if token_counts is None:
            raise DemixError("search.bounds.max_epochs needs the domain token counts", "run `demix prepare` first")
        missing = [d for d in domains if d not in token_counts]
        if missing:
            raise DemixError(f"no token count for domain(s) {missing}", "run `demix prepare` first")
        target = float(target_tokens) if target_tokens else float(sum(token_counts[d] for d in domains))
        for d in domains:
            cap = config.max_epochs * float(token_counts[d]) / target
            if cap < upper[index[d]]:
                upper[index[d]] = cap
                epoch_capped.append(d)
    bad_order = [d for d in domains if lower[index[d]] > upper[index[d]] + 1e-12]
    if bad_order:
        raise DemixError(
            f"lower bound above upper bound on the data share of domain(s) {bad_order}: "
            + ", ".join(f"{d}: {lower[index[d]]:.4g} > {upper[index[d]]:.4g}" for d in bad_order),
            "lower search.bounds.lower or raise search.bounds.upper / max_epochs",
        )
    for d, v in config.pinned.items():
        i = index[d]
        if not (lower[i] - 1e-12 <= v <= upper[i] + 1e-12):
            raise DemixError(
                f"pinned data share {v} of domain '{d}' is outside its bounds [{lower[i]:.4g}, {upper[i]:.4g}]",
                "drop the lower/upper bound of a pinned domain, or pin a share inside them",
            )
        lower[i] = upper[i] = float(v)
    if lower.sum() > 1.0 + 1e-9:
        raise DemixError(
            f"infeasible bounds: lower bounds and pinned data shares sum to {lower.sum():.4g} > 1",
            "lower search.bounds.lower / pinned so that they sum to at most 1",
        )
    if upper.sum() < 1.0 - 1e-9:
        hint = "raise search.bounds.upper"
        if epoch_capped:
            hint += f" or search.bounds.max_epochs (it caps {epoch_capped}), or lower search.target_tokens"
        raise DemixError(f"infeasible bounds: upper bounds sum to {upper.sum():.4g} < 1, no data mixture fits", hint)
    if mapping is None:
        return Bounds(tuple(domains), lower, upper, None, lower, upper, None)
    return _component_bounds(domains, lower, upper, mapping, config, epoch_capped)


def _component_bounds(
    domains: list[str], lower: np.ndarray, upper: np.ndarray, mapping: MixtureMap, config: BoundsConfig,
    epoch_capped: Sequence[str],
) -> Bounds:
    """The data-share bounds ``lower`` / ``upper`` on the component weights (``mapping`` not the identity)."""
    for d in config.pinned:
        if mapping.term(domains.index(d)) is None:
            raise DemixError(
                f"search.bounds.pinned.{d}: the data share of '{d}' mixes several component weights (the components' "
                "training mixtures differ in it), so pinning it is an equality on them that sampling cannot meet",
                f"bound it instead with search.bounds.lower.{d} and search.bounds.upper.{d} (an interval, however narrow)",
            )
    # The config key of the bound that would fail, so the reachability error names it.
    names = []
    for j, d in enumerate(domains):
        lo_r, hi_r = mapping.reachable_range(j)
        if d in config.pinned:
            names.append(f"search.bounds.pinned.{d}")
        elif lower[j] > hi_r:
            names.append(f"search.bounds.lower.{d}")
        elif upper[j] < lo_r:
            names.append("search.bounds.max_epochs" if d in epoch_capped and d not in config.upper
                         else f"search.bounds.upper.{d}")
        else:
            names.append(f"search.bounds of '{d}'")
    space = component_space(mapping, lower, upper, names)
    if not space.has_rows and (space.lower.sum() > 1.0 + 1e-9 or space.upper.sum() < 1.0 - 1e-9):
        # Each bound is reachable alone, not together (general >= 0.5 leaves the rest at most 0.5).
        total, side = (space.lower.sum(), "lower") if space.lower.sum() > 1.0 + 1e-9 else (space.upper.sum(), "upper")
        bounded = {d: [float(lower[j]), float(upper[j])] for j, d in enumerate(domains) if lower[j] > 0 or upper[j] < 1}
        raise DemixError(
            f"infeasible bounds: no reachable data mixture meets the data-share bounds {bounded}: the proxies stand for "
            f"{mapping.region()} (as component weights, the {side} bounds sum to {total:.4g}, "
            f"{'> 1' if side == 'lower' else '< 1'})",
            f"loosen search.bounds so that a data mixture inside '{mapping.region()}' meets them",
        )
    return Bounds(tuple(domains), space.lower, space.upper, space, lower, upper, mapping)


def _as_prior(domains: Sequence[str], prior: Any, temperature: float) -> np.ndarray:
    if prior is None:
        p = np.ones(len(domains))
    elif isinstance(prior, Mapping):
        unknown = [d for d in prior if d not in domains]
        if unknown:
            raise DemixError(f"the prior names unknown domain(s) {unknown}", f"use only the run's domains {list(domains)}")
        p = np.array([float(prior.get(d, 0.0)) for d in domains])
    else:
        p = np.asarray(prior, dtype=float).reshape(-1)
        if p.shape[0] != len(domains):
            raise DemixError(f"the prior has {p.shape[0]} values for {len(domains)} domains", "give one value per domain")
    nonpos = [d for d, v in zip(domains, p) if not (np.isfinite(v) and v > 0)]
    if nonpos:
        raise DemixError(
            f"the sampling prior must be positive for every domain, not for {nonpos}",
            "check the domains' token counts (an empty domain cannot be mixed), or use search.sampler.prior: uniform",
        )
    p = p / p.sum()
    # Temperature on the prior: p ** (1/T), renormalised (T > 1 flattens towards uniform).
    p = p ** (1.0 / temperature)
    return p / p.sum()


def _dirichlet_rows(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One Dirichlet draw per row of ``alpha`` (n, k), computed in log space.

    Small concentrations (alpha ~ 1e-3) make plain Gamma draws underflow to 0 and the row 0/0;
    Gamma(a) = Gamma(a + 1) * U ** (1/a) keeps every row finite.
    """
    log_g = np.log(rng.standard_gamma(alpha + 1.0)) + np.log(rng.random(alpha.shape)) / alpha
    log_g -= log_g.max(axis=1, keepdims=True)
    g = np.exp(log_g)
    return g / g.sum(axis=1, keepdims=True)


def _stick_breaking_truncated(alpha: np.ndarray, caps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw y on the simplex with ``y <= caps`` (row-wise), exact in bounds by construction.

    Domains are visited in a random order per row; each takes a share of the remaining mass r from
    the Dirichlet's Beta(a_j, sum of later a) conditional, truncated to the interval that keeps the
    rest feasible: [max(0, r - sum of later caps), min(cap_j, r)]. Without active caps this is the
    Dirichlet itself.
    """
    from scipy import special

    m, k = alpha.shape
    order = np.argsort(rng.random((m, k)), axis=1)
    a = np.take_along_axis(alpha, order, axis=1)
    c = np.take_along_axis(caps, order, axis=1)
    a_after = np.cumsum(a[:, ::-1], axis=1)[:, ::-1] - a  # sum of a over later positions
    c_after = np.cumsum(c[:, ::-1], axis=1)[:, ::-1] - c
    r = np.ones(m)
    out = np.zeros((m, k))
    for j in range(k):
        lo = np.maximum(0.0, r - c_after[:, j])
        hi = np.minimum(c[:, j], r)
        if j == k - 1:
            x = r.copy()
        else:
            b = np.where(a_after[:, j] > 0, a_after[:, j], 1.0)
            x = r * rng.beta(a[:, j], b)
            # Only rows whose interval cuts the Beta need the (slower) inverse CDF.
            cut = np.flatnonzero(((lo > 0) | (hi < r)) & (r > 0))
            if cut.size:
                aj, bj, rc = a[cut, j], b[cut], r[cut]
                f_lo = special.betainc(aj, bj, np.clip(lo[cut] / rc, 0, 1))
                f_hi = special.betainc(aj, bj, np.clip(hi[cut] / rc, 0, 1))
                u = f_lo + rng.random(cut.size) * (f_hi - f_lo)
                xc = special.betaincinv(aj, bj, u) * rc
                x[cut] = np.where(np.isfinite(xc), xc, lo[cut])
        # Float rounding only (inverse CDF far in a tail): the interval is already feasible.
        x = np.clip(x, lo, hi)
        out[:, j] = x
        r = np.maximum(r - x, 0.0)
    y = np.empty_like(out)
    np.put_along_axis(y, order, out, axis=1)
    return y


def _free_simplex(alpha: np.ndarray, caps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dirichlet(alpha) rows conditioned on y <= caps: rejection, then the exact fallback."""
    y = _dirichlet_rows(alpha, rng)
    if np.all(caps >= 1.0):
        return y
    bad = np.flatnonzero(np.any(y > caps, axis=1))
    for _ in range(REJECTION_ROUNDS):
        if bad.size == 0:
            return y
        redraw = _dirichlet_rows(alpha[bad], rng)
        ok = ~np.any(redraw > caps[bad], axis=1)
        y[bad[ok]] = redraw[ok]
        bad = bad[~ok]
    if bad.size:
        y[bad] = _stick_breaking_truncated(alpha[bad], caps[bad], rng)
    return y


def _apply_min_weight(w: np.ndarray, bounds: Bounds, min_weight: float) -> np.ndarray:
    """Zero weights below ``min_weight`` (where the lower bound allows 0) and give the freed mass
    to the remaining domains in proportion to their weights, never past an upper bound
    (water-filling). Rows where the surviving domains cannot reach 1 are left unchanged."""
    can_zero = (bounds.lower <= 0) & ~bounds.fixed
    small = (w < min_weight) & (w > 0) & can_zero
    rows = np.flatnonzero(small.any(axis=1))
    if rows.size == 0:
        return w
    out = w[rows].copy()
    out[small[rows]] = 0.0
    upper = np.broadcast_to(bounds.upper, out.shape)
    feasible = np.where(out > 0, upper, 0.0).sum(axis=1) >= 1.0 - 1e-12
    for _ in range(w.shape[1] + 1):
        deficit = 1.0 - out.sum(axis=1)
        if np.all(deficit <= 1e-15):
            break
        growable = (out > 0) & (out < upper)
        mass = np.where(growable, out, 0.0).sum(axis=1)
        factor = np.where(mass > 0, 1.0 + np.maximum(deficit, 0) / np.where(mass > 0, mass, 1.0), 1.0)
        out = np.where(growable, np.minimum(out * factor[:, None], upper), out)
    keep = feasible & (np.abs(out.sum(axis=1) - 1.0) <= 1e-9)
    w = w.copy()
    w[rows[keep]] = out[keep]
    return w


def _round_to_grid(w: np.ndarray, bounds: Bounds, granularity: float) -> np.ndarray:
    """Round rows of component weights to multiples of ``granularity`` keeping the sum at 1 and
    every box bound (largest remainder, in integer units of the grid); linear rows are checked
    after (:func:`sample_mixtures` drops the rows that fail one)."""
    total = int(round(1.0 / granularity))
    if abs(total * granularity - 1.0) > 1e-9:
        raise DemixError(
            f"search.sampler.granularity {granularity} does not divide 1", "use a granularity such as 0.1, 0.05, 0.01"
        )
    lo = np.ceil(bounds.lower / granularity - 1e-9).astype(np.int64)
    hi = np.floor(bounds.upper / granularity + 1e-9).astype(np.int64)
    off = [d for d, a, b in zip(bounds.domains, lo, hi) if a > b]
    if off:
        raise DemixError(
            f"no multiple of granularity {granularity} lies inside the component-weight bounds of domain(s) {off} "
            f"({_box_text(bounds, off)}; the grid is on the component weights)",
            "use bounds / pinned data shares whose component weights are multiples of search.sampler.granularity, "
            "or drop the granularity",
        )
    if lo.sum() > total or hi.sum() < total:
        raise DemixError(
            f"no component weights on the {granularity} grid satisfy the bounds", "use a finer search.sampler.granularity"
        )
    x = w / granularity
    units = np.clip(np.floor(x + 1e-9).astype(np.int64), lo, hi)
    rest = x - units
    for _ in range(total + 1):
        need = total - units.sum(axis=1)
        if not np.any(need):
            break
        # Add a unit where the remainder is largest (room below hi), or remove where it is smallest.
        add_key = np.where(units < hi, rest, -np.inf)
        sub_key = np.where(units > lo, -rest, -np.inf)
        key = np.where((need > 0)[:, None], add_key, np.where((need < 0)[:, None], sub_key, -np.inf))
        rank = np.argsort(np.argsort(-key, axis=1, kind="stable"), axis=1, kind="stable")
        step = (rank < np.abs(need)[:, None]) & np.isfinite(key)
        units = units + np.sign(need)[:, None] * step
        rest = x - units
    return units * granularity


def _box_text(bounds: Bounds, domains: Sequence[str]) -> str:
    """The component-weight interval of each of ``domains``, e.g. ``math in [0.26, 0.26]``."""
    idx = [list(bounds.domains).index(d) for d in domains]
    return ", ".join(f"{bounds.domains[i]} in [{bounds.lower[i]:.4g}, {bounds.upper[i]:.4g}]" for i in idx)


def _unique_rows(w: np.ndarray) -> np.ndarray:
    """Indices of first occurrences of rows, by the rounding `mixture_key` uses (6 decimals).

    Rows are compared through a 64-bit hash of their rounded integer form (np.unique on rows
    sorts them lexicographically and is several times slower); a collision, about n^2 / 2^65,
    would only drop one candidate.
    """
    q = np.round(w * 1e6).astype(np.int64).view(np.uint64)
    mult = np.random.default_rng(12345).integers(1, 2**63, size=w.shape[1], dtype=np.uint64) | np.uint64(1)
    h = (q * mult).sum(axis=1, dtype=np.uint64)
    h ^= h >> np.uint64(29)
    _, first = np.unique(h, return_index=True)
    return np.sort(first)


def sample_mixtures(
    domains: Sequence[str],
    n: int,
    prior: Mapping[str, float] | Sequence[float] | np.ndarray | None = None,
    sampler: SamplerConfig | None = None,
    bounds: Bounds | None = None,
    rng: np.random.Generator | int | None = None,
    dedup: bool = True,
) -> np.ndarray:
    """Sample ``n`` component-weight rows as an (n, K) array (columns in ``domains`` order), all
    inside ``bounds`` (so their data mixtures are inside the data-mixture bounds).

    Each row is Dirichlet with mean at the (tempered) ``prior`` over the free domains and a
    concentration strength s from a log-spaced range [min_concentration, max_concentration]:
    alpha = s * K_free * prior, so s = 1 with a uniform prior is uniform on the simplex, small s
    gives spiky mixtures, large s mixtures near the prior. Lower bounds and fixed weights are
    set aside first (w = lower + F * y); upper bounds hold exactly (see the module notes).
    ``min_weight`` zeroes small weights (where the lower bound is 0) and renormalises within
    the upper bounds; ``granularity`` rounds to a grid inside the bounds. Where the bounds have
    linear rows (a data share that mixes several component weights), rows failing one, after
    min_weight and granularity, are dropped and more are drawn, at most
    ``ROW_DRAWS_PER_ROW * n`` in all: fewer than ``n`` come back (with a warning) when few pass,
    and a DemixError says so when none does. With ``dedup`` the rows are distinct (by the
    rounding of `mixture_key`); when the grid or the bounds hold fewer than ``n`` distinct
    mixtures, fewer rows are returned.
    """
    from demix.config import SamplerConfig

    sampler = sampler or SamplerConfig()
    domains = list(domains)
    k = len(domains)
    if n <= 0:
        raise DemixError(f"cannot sample {n} mixtures", "ask for at least one")
    bounds = bounds or Bounds(tuple(domains), np.zeros(k), np.ones(k))
    if list(bounds.domains) != domains:
        raise DemixError(f"bounds are for domains {list(bounds.domains)}, not {domains}", "resolve bounds for these domains")
    if sampler.min_concentration > sampler.max_concentration:
        raise DemixError(
            f"search.sampler.min_concentration {sampler.min_concentration} > max_concentration {sampler.max_concentration}",
            "swap them",
        )
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    p = _as_prior(domains, prior, sampler.temperature)
    free = ~bounds.fixed
    lower = bounds.lower
    mass = max(0.0, 1.0 - lower.sum())  # F: the mass left after lower bounds and fixed weights
    space = bounds.space if bounds.has_rows else None

    def draw(m: int) -> np.ndarray:
        w = np.tile(lower, (m, 1))
        kf = int(free.sum())
        if kf and mass > 0:
            pf = p[free] / p[free].sum()
            strength = np.geomspace(sampler.min_concentration, sampler.max_concentration, m)
            rng.shuffle(strength)
            alpha = strength[:, None] * kf * pf[None, :]
            caps = np.broadcast_to((bounds.upper[free] - lower[free]) / mass, (m, kf))
            y = _free_simplex(alpha, np.ascontiguousarray(caps), rng)
            w[:, free] = np.minimum(lower[free] + mass * y, bounds.upper[free])
        if sampler.min_weight > 0:
            w = _apply_min_weight(w, bounds, sampler.min_weight)
        if sampler.granularity is not None:
            w = _round_to_grid(w, bounds, sampler.granularity)
        if space is not None:  # rejection: the box holds the polytope, the rows cut it
            w = w[space.rows_hold(w, BOUND_TOLERANCE)]
        return w

    budget = max(ROW_DRAWS_PER_ROW * n, ROW_DRAWS_MIN) if space is not None else None
    out = draw(n)
    drawn, accepted = n, out.shape[0]
    if not dedup and space is None:
        return out
    if dedup:
        out = out[_unique_rows(out)]
    stale = 0
    while out.shape[0] < n and stale < 8 and (budget is None or drawn < budget):
        need = n - out.shape[0]
        size = max(64, 2 * need)
        if budget is not None:
            # Enough draws for the missing rows at the acceptance seen so far, within the budget.
            rate = accepted / drawn
            size = max(size, int(np.ceil(1.2 * need / rate)) if rate > 0 else ROW_BATCH)
            size = int(min(size, ROW_BATCH, budget - drawn))
        more = draw(size)
        drawn, accepted = drawn + size, accepted + more.shape[0]
        merged = np.concatenate([out, more])
        if dedup:
            merged = merged[_unique_rows(merged)]
        # Stale: a batch that passed the bounds but brought nothing new (the grid is exhausted).
        stale = stale + 1 if merged.shape[0] == out.shape[0] and more.shape[0] else 0
        out = merged
    if space is not None and out.shape[0] == 0:
        raise DemixError(
            f"no sampled component weights give a data mixture inside the bounds on the data shares of "
            f"{list(space.row_names)} ({drawn} drawn, none accepted): so few do that sampling cannot find one",
            f"widen search.bounds for {list(space.row_names)}",
        )
    if out.shape[0] < n:
        if space is not None and accepted < n:
            log.warning(
                "only %d candidates found for %d asked: %d of %d drawn met the data-mixture bounds on %s (acceptance "
                "%.3g%%); widen those bounds for a full pool", out.shape[0], n, accepted, drawn, list(space.row_names),
                100.0 * accepted / drawn,
            )
        else:
            log.warning("only %d distinct mixtures found for %d asked (bounds or granularity leave few)", out.shape[0], n)
    return out[:n]


def clip_and_rescale_sample(
    n: int, prior: np.ndarray, bounds: Bounds, strength: float = 1.0, rng: np.random.Generator | None = None
) -> np.ndarray:
    """The public DeMix scripts' bounded sampler, kept only to show its defect in tests and benchmarks:
    clip a Dirichlet draw into the bounds, then rescale to sum 1, which pushes weights back out."""
    rng = rng or np.random.default_rng(0)
    w = rng.dirichlet(np.asarray(prior) * strength * len(prior), size=n)
    w = np.clip(w, bounds.lower, bounds.upper)
    return w / w.sum(axis=1, keepdims=True)


