"""Rank statistics of proxies against reference models, with the evidence behind each number.

Per target: Spearman rho, Kendall tau (tau-b), Spearman on the top share of mixtures by
reference score and the Capability Recovery Rate, each as a :class:`Statistic` with the number
of mixtures it rests on; and their values on bootstrap resamples of the mixtures, vectorised
(the bootstrap needs thousands). :mod:`demix.fidelity.metrics` puts them together into a
:class:`~demix.fidelity.metrics.FidelityReport`.

The bootstrap is a seeded paired resampling of mixtures written here rather than
``scipy.stats.bootstrap``: with 8-16 mixtures many resamples are degenerate (constant scores,
so the correlation is undefined) and ``scipy.stats.bootstrap`` turns a single undefined
resample into a NaN interval. Here undefined resamples are dropped and counted, and every
target is resampled with the same mixture indices, so the macro average gets a joint interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

#: Names of the per-target statistics, in report order.
STATISTICS = ("spearman", "kendall", "top_spearman", "crr")

#: Fewest mixtures a rank correlation is reported on (with 2 points rho is always +-1).
MIN_RANK_POINTS = 3

#: Fewest mixtures in the top share for its Spearman to be reported (the reference scripts'
#: top-25% of 16 mixtures is exactly this: 4 points).
MIN_TOP_POINTS = 4


def ratio_score_from_bpb(bits_per_byte: float) -> float:
    """``2 ** -bpb``: the geometric-mean probability the model gives each byte of held-out text.

    A ratio-scale, higher-is-better score in (0, 1] on which CRR is meaningful (bits per byte is
    lower-is-better and a negated bpb is negative, so neither can be summed into a recovery rate).
    """
    return float(2.0 ** (-float(bits_per_byte)))


@dataclass(frozen=True)
class Target:
    """One scored target (a benchmark or a capability) and how to read its scores."""

    name: str
    capability: bool = False
    """True: the target counts in the macro averages."""
    higher_is_better: bool = True
    """Direction of the score: decides which mixtures are the 'top' ones."""
    ratio_scale: bool | None = None
    """Whether CRR is meaningful (non-negative scores where 0 means none of the ability:
    accuracies, pass rates, ``2**-bpb``). None: auto, True when every score lies in [0, 1]."""


@dataclass
class Statistic:
    """One fidelity number with the evidence behind it.

    ``value`` is NaN when the statistic is undefined, and ``reason`` then says why.
    """

    value: float
    n: int
    """Mixtures (data points) the value rests on."""
    ci_low: float = math.nan
    ci_high: float = math.nan
    resamples: int = 0
    """Bootstrap resamples on which the statistic was defined (the interval rests on these)."""
    reason: str | None = None
    over: list[str] = field(default_factory=list)
    """Macro averages only: the capabilities averaged."""
    excluded: dict[str, str] = field(default_factory=dict)
    """Macro averages only: capabilities left out, with the reason."""

    @property
    def defined(self) -> bool:
        return not math.isnan(self.value)

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_number(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Statistic:
        fields: dict[str, Any] = {k: (math.nan if v is None and k in ("value", "ci_low", "ci_high") else v) for k, v in data.items()}
        return cls(**fields)

    def __str__(self) -> str:
        if not self.defined:
            return f"undefined (n={self.n}: {self.reason})"
        ci = f" [{self.ci_low:.3f}, {self.ci_high:.3f}]" if not math.isnan(self.ci_low) else ""
        return f"{self.value:.3f}{ci} (n={self.n})"


def _json_number(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


# --------------------------------------------------------------------------- point statistics


def row_spearman(ref: np.ndarray, proxy: np.ndarray) -> np.ndarray:
    """Spearman rho of each row pair of two (B, n) arrays; NaN where a row is constant.

    Same definition as ``scipy.stats.spearmanr``: Pearson correlation of average ranks.
    """
    rr = stats.rankdata(ref, axis=1)
    rp = stats.rankdata(proxy, axis=1)
    rr = rr - rr.mean(axis=1, keepdims=True)
    rp = rp - rp.mean(axis=1, keepdims=True)
    denom = np.sqrt((rr * rr).sum(axis=1) * (rp * rp).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rr * rp).sum(axis=1) / denom
    rho[denom == 0] = np.nan
    return np.clip(rho, -1.0, 1.0)


def row_kendall(ref: np.ndarray, proxy: np.ndarray, max_elements: int = 8_000_000) -> np.ndarray:
    """Kendall tau-b of each row pair of two (B, n) arrays; NaN where a row is constant.

    Same definition as ``scipy.stats.kendalltau`` (tau-b): over all pairs i < j,
    sum(sx * sy) / sqrt(sum(sx**2) * sum(sy**2)) with sx = sign(x_i - x_j), which is
    (concordant - discordant) / sqrt((n0 - ties_x) * (n0 - ties_y)). Vectorised over rows
    (in chunks bounding memory) because the bootstrap needs it on thousands of resamples.
    """
    b, n = ref.shape
    iu, ju = np.triu_indices(n, k=1)
    out = np.full(b, np.nan)
    step = max(1, max_elements // max(1, len(iu)))
    for s in range(0, b, step):
        sx = np.sign(ref[s : s + step, iu] - ref[s : s + step, ju])
        sy = np.sign(proxy[s : s + step, iu] - proxy[s : s + step, ju])
        denom = np.sqrt((sx * sx).sum(axis=1) * (sy * sy).sum(axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s : s + step] = np.where(denom > 0, (sx * sy).sum(axis=1) / denom, np.nan)
    return np.clip(out, -1.0, 1.0)


def _rank_reason(ref: np.ndarray, proxy: np.ndarray, min_points: int) -> str | None:
    if len(ref) < min_points:
        return f"needs at least {min_points} mixtures, has {len(ref)}"
    if np.ptp(ref) == 0:
        return "reference scores are constant"
    if np.ptp(proxy) == 0:
        return "proxy scores are constant"
    return None


def spearman(ref: np.ndarray, proxy: np.ndarray) -> tuple[float, str | None]:
    """Spearman rho (``scipy.stats.spearmanr``), or NaN and the reason it is undefined."""
    reason = _rank_reason(ref, proxy, MIN_RANK_POINTS)
    if reason:
        return math.nan, reason
    return float(stats.spearmanr(ref, proxy).statistic), None


def kendall(ref: np.ndarray, proxy: np.ndarray) -> tuple[float, str | None]:
    """Kendall tau-b (``scipy.stats.kendalltau``), or NaN and the reason it is undefined."""
    reason = _rank_reason(ref, proxy, MIN_RANK_POINTS)
    if reason:
        return math.nan, reason
    return float(stats.kendalltau(ref, proxy).statistic), None


def top_count(n: int, fraction: float) -> int:
    """How many mixtures make the top ``fraction`` of ``n`` (rounded up: 25% of 16 is 4, of 10 is 3)."""
    return int(math.ceil(fraction * n - 1e-9))


def _top_indices(ref: np.ndarray, k: int, higher_is_better: bool) -> np.ndarray:
    # Ties at the cut are broken by position, and positions follow sorted mixture ids, so the
    # choice never depends on input order.
    key = -ref if higher_is_better else ref
    return np.lexsort((np.arange(len(ref)), key))[:k]


def top_spearman(
    ref: np.ndarray, proxy: np.ndarray, higher_is_better: bool = True, fraction: float = 0.25
) -> tuple[float, int, str | None]:
    """Spearman rho on the top ``fraction`` of mixtures by reference score.

    Returns (rho, points, reason); undefined when the top share holds fewer than
    :data:`MIN_TOP_POINTS` mixtures or is constant.
    """
    k = top_count(len(ref), fraction)
    if k < MIN_TOP_POINTS:
        return math.nan, k, (
            f"the top {fraction:.0%} of {len(ref)} mixtures is {k} point(s); needs at least {MIN_TOP_POINTS}"
        )
    idx = _top_indices(ref, k, higher_is_better)
    rho, reason = spearman(ref[idx], proxy[idx])
    return rho, k, reason


def crr(ref: np.ndarray, proxy: np.ndarray, target: Target) -> tuple[float, bool, str | None]:
    """Capability Recovery Rate sum(proxy) / sum(reference), where it means something.

    Returns (value, ratio_scale resolved, reason). Only computed on higher-is-better,
    non-negative, ratio-scale scores; a ratio of sums of bits per byte or of negated losses is
    not a recovery rate.
    """
    both = np.concatenate([ref, proxy])
    ratio = target.ratio_scale
    if not target.higher_is_better:
        return math.nan, False, "lower-is-better score; convert it first (e.g. 2**-bits_per_byte)"
    if ratio is None:
        ratio = bool(np.all((both >= 0) & (both <= 1)))
        if not ratio:
            return math.nan, False, (
                "scores outside [0, 1]: CRR is computed on accuracies / probabilities; "
                "declare ratio_scale=True for other non-negative ratio-scale scores"
            )
    if not ratio:
        return math.nan, False, "not a ratio-scale score (ratio_scale=False)"
    if np.any(both < 0):
        return math.nan, True, "negative scores: a sum ratio is meaningless"
    if ref.sum() <= 0:
        return math.nan, True, "reference scores sum to 0"
    return float(proxy.sum() / ref.sum()), True, None


# --------------------------------------------------------------------------- bootstrap


def resampled_statistic(
    stat: str, ref: np.ndarray, proxy: np.ndarray, idx: np.ndarray, target: Target, fraction: float
) -> np.ndarray:
    """Statistic ``stat`` (one of :data:`STATISTICS`) on each bootstrap resample of the
    mixtures (row ``b`` of ``idx`` holds the indices of resample ``b``); NaN where undefined."""
    r, p = ref[idx], proxy[idx]
    if stat == "spearman":
        return row_spearman(r, p)
    if stat == "kendall":
        return row_kendall(r, p)
    if stat == "top_spearman":
        k = top_count(ref.size, fraction)
        # Per row: best reference score first, ties broken by mixture position (as for the point value).
        sel = np.lexsort((idx, -r if target.higher_is_better else r), axis=-1)[:, :k]
        rows = np.arange(len(idx))[:, None]
        return row_spearman(r[rows, sel], p[rows, sel])
    if stat == "crr":
        rs = r.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(rs > 0, p.sum(axis=1) / rs, np.nan)
    raise ValueError(stat)


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float, int]:
    """(low, high, resamples): the two-sided ``confidence`` percentile interval of the defined
    (non-NaN) ``samples``, and how many it rests on; NaNs and 0 when none is defined."""
    valid = samples[~np.isnan(samples)]
    if valid.size == 0:
        return math.nan, math.nan, 0
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(valid, [alpha, 1.0 - alpha])
    return float(lo), float(hi), int(valid.size)
