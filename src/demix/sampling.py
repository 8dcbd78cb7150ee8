"""Sampling mixtures inside exact bounds.

A sampled mixture is a row of an (n, K) float64 array whose columns follow ``domains``.
Bounds hold exactly (up to float rounding of ~1e-15): the sampler never clips and rescales.

    w = lower + F * y,   F = 1 - sum(lower),   y on the simplex of the free domains, y_i <= cap_i

y is Dirichlet(alpha) around the prior. Rows that break a cap are redrawn (rejection: exact
truncated Dirichlet); rows still outside after a few redraws (caps that cut off most of the
mass) are drawn by stick-breaking with truncated Beta conditionals, in a random domain order
per row, which is inside the caps by construction.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from demix.errors import DemixError

if TYPE_CHECKING:  # pragma: no cover
    from demix.config import BoundsConfig, SamplerConfig

log = logging.getLogger("demix.sampling")

#: Bounds are checked with this slack (float rounding of l + F * y).
BOUND_TOLERANCE = 1e-9
#: Redraw rounds of the rejection step before the exact stick-breaking fallback.
REJECTION_ROUNDS = 4


@dataclass(frozen=True)
class Bounds:
    """Per-domain exact bounds: ``lower[i] <= w[i] <= upper[i]`` (pinned: lower == upper)."""

    domains: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray

    @property
    def fixed(self) -> np.ndarray:
        """Domains whose weight is fixed (pinned, or lower == upper)."""
        return self.upper - self.lower <= 0

    def contains(self, weights: np.ndarray, tol: float = BOUND_TOLERANCE) -> np.ndarray:
        """Boolean per row: inside the bounds and summing to 1 (within ``tol``)."""
        w = np.atleast_2d(weights)
        return (
            np.all(w >= self.lower - tol, axis=1)
            & np.all(w <= self.upper + tol, axis=1)
            & (np.abs(w.sum(axis=1) - 1.0) <= max(tol, 1e-9))
        )

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {d: {"lower": float(lo), "upper": float(hi)} for d, lo, hi in zip(self.domains, self.lower, self.upper)}


def resolve_bounds(
    domains: Sequence[str],
    config: BoundsConfig | None = None,
    token_counts: Mapping[str, float] | None = None,
    target_tokens: float | None = None,
) -> Bounds:
    """Turn the bounds section of the config into exact per-domain bounds, checking feasibility.

    ``max_epochs`` caps each weight at ``max_epochs * tokens[d] / target_tokens`` (a domain cannot
    be repeated more often than that); ``target_tokens`` defaults to the sum of domain tokens.
    Raises DemixError for unknown domains, weights outside [0, 1], lower > upper, pinned weights
    outside their bounds, and infeasible sets (sum of lower bounds > 1, or upper bounds < 1).
    """
    domains = list(domains)
    lower = np.zeros(len(domains))
    upper = np.ones(len(domains))
    if config is None:
        return Bounds(tuple(domains), lower, upper)
    for section in ("lower", "upper", "pinned"):
        values: dict[str, float] = getattr(config, section)
        unknown = [d for d in values if d not in domains]
        if unknown:
            raise DemixError(
                f"search.bounds.{section} names unknown domain(s) {unknown}", f"use only the run's domains {domains}"
            )
        bad = {d: v for d, v in values.items() if not (0.0 <= float(v) <= 1.0)}
        if bad:
            raise DemixError(f"search.bounds.{section} has weights outside [0, 1]: {bad}", "give weights between 0 and 1")
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
            f"lower bound above upper bound for domain(s) {bad_order}: "
            + ", ".join(f"{d}: {lower[index[d]]:.4g} > {upper[index[d]]:.4g}" for d in bad_order),
            "lower search.bounds.lower or raise search.bounds.upper / max_epochs",
        )
    for d, v in config.pinned.items():
        i = index[d]
        if not (lower[i] - 1e-12 <= v <= upper[i] + 1e-12):
            raise DemixError(
                f"pinned weight {v} of domain '{d}' is outside its bounds [{lower[i]:.4g}, {upper[i]:.4g}]",
                "drop the lower/upper bound of a pinned domain, or pin a weight inside them",
            )
        lower[i] = upper[i] = float(v)
    if lower.sum() > 1.0 + 1e-9:
        raise DemixError(
            f"infeasible bounds: lower bounds and pinned weights sum to {lower.sum():.4g} > 1",
            "lower search.bounds.lower / pinned so that they sum to at most 1",
        )
    if upper.sum() < 1.0 - 1e-9:
        hint = "raise search.bounds.upper"
        if epoch_capped:
            hint += f" or search.bounds.max_epochs (it caps {epoch_capped}), or lower search.target_tokens"
        raise DemixError(f"infeasible bounds: upper bounds sum to {upper.sum():.4g} < 1, no mixture fits", hint)
    return Bounds(tuple(domains), lower, upper)


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
    """Round rows to multiples of ``granularity`` keeping the sum at 1 and every bound (largest
    remainder, in integer units of the grid)."""
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
            f"no multiple of granularity {granularity} lies inside the bounds of domain(s) {off}",
            "use bounds / pinned weights that are multiples of search.sampler.granularity, or drop the granularity",
        )
    if lo.sum() > total or hi.sum() < total:
        raise DemixError(
            f"no mixture on the {granularity} grid satisfies the bounds", "use a finer search.sampler.granularity"
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
    """Sample ``n`` mixtures as an (n, K) array (columns in ``domains`` order), all inside ``bounds``.

    Each row is Dirichlet with mean at the (tempered) ``prior`` over the free domains and a
    concentration strength s from a log-spaced range [min_concentration, max_concentration]:
    alpha = s * K_free * prior, so s = 1 with a uniform prior is uniform on the simplex, small s
    gives spiky mixtures, large s mixtures near the prior. Lower bounds and pinned weights are
    set aside first (w = lower + F * y); upper bounds hold exactly (see the module notes).
    ``min_weight`` zeroes small weights (where the lower bound is 0) and renormalises within
    the upper bounds; ``granularity`` rounds to a grid inside the bounds. With ``dedup`` the
    rows are distinct (by the rounding of `mixture_key`); when the grid or the bounds hold fewer
    than ``n`` distinct mixtures, fewer rows are returned.
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
    mass = max(0.0, 1.0 - lower.sum())  # F: the mass left after lower bounds and pinned weights

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
        return w

    out = draw(n)
    if not dedup:
        return out
    out = out[_unique_rows(out)]
    stale = 0
    while out.shape[0] < n and stale < 8:
        more = draw(max(64, 2 * (n - out.shape[0])))
        merged = np.concatenate([out, more])
        merged = merged[_unique_rows(merged)]
        stale = stale + 1 if merged.shape[0] == out.shape[0] else 0
        out = merged
    if out.shape[0] < n:
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


