"""Fidelity metrics: do proxies rank mixtures like the reference models trained on them?

Inputs are scores keyed by name, never by position::

    reference = {mixture_id: {target_name: score, ...}, ...}   # reference models (ground truth)
    proxy     = {mixture_id: {target_name: score, ...}, ...}   # merged or trained proxies

A *target* is a benchmark or a capability. Per target, :func:`compare` computes Spearman rho,
Kendall tau (tau-b), Spearman on the top share of mixtures by reference score, and the
Capability Recovery Rate (CRR = sum of proxy scores / sum of reference scores), each with the
number of mixtures it rests on and a percentile bootstrap confidence interval; then macro
averages over the targets marked as capabilities. See ``docs/fidelity.md`` for the caveats.

The bootstrap is a seeded paired resampling of mixtures written here rather than
``scipy.stats.bootstrap``: with 8-16 mixtures many resamples are degenerate (constant scores,
so the correlation is undefined) and ``scipy.stats.bootstrap`` turns a single undefined
resample into a NaN interval. Here undefined resamples are dropped and counted, and every
target is resampled with the same mixture indices, so the macro average gets a joint interval.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from demix.errors import DemixError

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
    def from_dict(cls, data: Mapping[str, Any]) -> "Statistic":
        return cls(**{k: (math.nan if v is None and k in ("value", "ci_low", "ci_high") else v) for k, v in data.items()})

    def __str__(self) -> str:
        if not self.defined:
            return f"undefined (n={self.n}: {self.reason})"
        ci = f" [{self.ci_low:.3f}, {self.ci_high:.3f}]" if not math.isnan(self.ci_low) else ""
        return f"{self.value:.3f}{ci} (n={self.n})"


@dataclass
class TargetFidelity:
    """All statistics of one target, and the paired scores they were computed from."""

    name: str
    capability: bool
    higher_is_better: bool
    ratio_scale: bool
    spearman: Statistic
    kendall: Statistic
    top_spearman: Statistic
    crr: Statistic
    scores: dict[str, list[float]]
    """mixture id -> [reference score, proxy score] (for scatter plots)."""

    def statistic(self, name: str) -> Statistic:
        return getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "capability": self.capability,
            "higher_is_better": self.higher_is_better,
            "ratio_scale": self.ratio_scale,
        }
        out.update({s: self.statistic(s).to_dict() for s in STATISTICS})
        out["scores"] = self.scores
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TargetFidelity":
        kw = dict(data)
        for s in STATISTICS:
            kw[s] = Statistic.from_dict(kw[s])
        return cls(**kw)


@dataclass
class FidelityReport:
    """Fidelity of one kind of proxy against the reference models; JSON-serialisable."""

    proxy_kind: str
    mixtures: list[str]
    """Mixture ids scored by both the reference models and the proxies (sorted)."""
    missing_proxy: list[str]
    """Reference mixtures without a proxy score (left out)."""
    missing_reference: list[str]
    """Proxy mixtures without a reference score (left out)."""
    bootstrap: int
    seed: int
    confidence: float
    top_fraction: float
    targets: dict[str, TargetFidelity]
    macro: dict[str, Statistic]
    """Statistic name -> its mean over the capabilities where it is defined."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "proxy_kind": self.proxy_kind,
            "mixtures": self.mixtures,
            "missing_proxy": self.missing_proxy,
            "missing_reference": self.missing_reference,
            "bootstrap": self.bootstrap,
            "seed": self.seed,
            "confidence": self.confidence,
            "top_fraction": self.top_fraction,
            "targets": {k: t.to_dict() for k, t in self.targets.items()},
            "macro": {k: s.to_dict() for k, s in self.macro.items()},
        }

    def to_json(self) -> str:
        # allow_nan=False: undefined values must already be None, never a bare NaN token.
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FidelityReport":
        kw = dict(data)
        kw["targets"] = {k: TargetFidelity.from_dict(v) for k, v in kw["targets"].items()}
        kw["macro"] = {k: Statistic.from_dict(v) for k, v in kw["macro"].items()}
        return cls(**kw)

    def save(self, path: str | Path) -> None:
        """Write the report as JSON, atomically."""
        from demix.rundir import atomic_write_text

        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "FidelityReport":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def table(self) -> str:
        """A plain-text table: one row per target, then the macro averages."""
        head = f"{'target':<18} {'n':>3}  " + "  ".join(f"{s:<28}" for s in STATISTICS)
        lines = [f"fidelity of {self.proxy_kind} proxies ({len(self.mixtures)} mixtures, "
                 f"{self.confidence:.0%} bootstrap CI, {self.bootstrap} resamples)", head]

        def cell(st: Statistic) -> str:
            if not st.defined:
                return "undefined"
            if math.isnan(st.ci_low):
                return f"{st.value:+.3f} (n={st.n})"
            return f"{st.value:+.3f} [{st.ci_low:+.2f},{st.ci_high:+.2f}] n={st.n}"

        for name, t in self.targets.items():
            label = name + (" *" if t.capability else "")
            lines.append(f"{label:<18} {len(t.scores):>3}  " + "  ".join(f"{cell(t.statistic(s)):<28}" for s in STATISTICS))
        lines.append(f"{'macro (caps)':<18} {len(self.mixtures):>3}  " + "  ".join(f"{cell(self.macro[s]):<28}" for s in STATISTICS))
        lines.append("* capability (in the macro average)")
        return "\n".join(lines)


# --------------------------------------------------------------------------- point statistics


def _json_number(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _row_spearman(ref: np.ndarray, proxy: np.ndarray) -> np.ndarray:
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


def _row_kendall(ref: np.ndarray, proxy: np.ndarray, max_elements: int = 8_000_000) -> np.ndarray:
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


def _resampled(
    stat: str, ref: np.ndarray, proxy: np.ndarray, idx: np.ndarray, target: Target, fraction: float
) -> np.ndarray:
    """The statistic on each bootstrap resample (rows of ``idx``); NaN where undefined."""
    r, p = ref[idx], proxy[idx]
    if stat == "spearman":
        return _row_spearman(r, p)
    if stat == "kendall":
        return _row_kendall(r, p)
    if stat == "top_spearman":
        k = top_count(ref.size, fraction)
        # Per row: best reference score first, ties broken by mixture position (as for the point value).
        sel = np.lexsort((idx, -r if target.higher_is_better else r), axis=-1)[:, :k]
        rows = np.arange(len(idx))[:, None]
        return _row_spearman(r[rows, sel], p[rows, sel])
    if stat == "crr":
        rs = r.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(rs > 0, p.sum(axis=1) / rs, np.nan)
    raise ValueError(stat)


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float, int]:
    valid = samples[~np.isnan(samples)]
    if valid.size == 0:
        return math.nan, math.nan, 0
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(valid, [alpha, 1.0 - alpha])
    return float(lo), float(hi), int(valid.size)


# --------------------------------------------------------------------------- comparison


def _check_scores(scores: Mapping[str, Mapping[str, float]], role: str) -> None:
    if not isinstance(scores, Mapping) or not scores:
        raise DemixError(f"no {role} scores were given", f"pass {role} scores as {{mixture_id: {{target: score}}}}")
    for mid, row in scores.items():
        if not isinstance(row, Mapping):
            raise DemixError(
                f"{role} scores of mixture '{mid}' are not a mapping of target name to score",
                "key scores by name: {mixture_id: {target: score}}",
            )


def _resolve_targets(
    reference: Mapping[str, Mapping[str, float]],
    proxy: Mapping[str, Mapping[str, float]],
    mixtures: list[str],
    targets: Sequence[Target | str] | None,
) -> list[Target]:
    if targets is None:
        names = set.intersection(*(set(reference[m]) & set(proxy[m]) for m in mixtures))
        if not names:
            raise DemixError(
                "the reference and proxy scores share no target name",
                "score both with the same benchmarks / capabilities",
            )
        return [Target(n, capability=True) for n in sorted(names)]
    out = [Target(t) if isinstance(t, str) else t for t in targets]
    if not out:
        raise DemixError("no targets to compare", "name at least one benchmark or capability")
    dupes = sorted({t.name for t in out if [u.name for u in out].count(t.name) > 1})
    if dupes:
        raise DemixError(f"targets {dupes} are given more than once", "name each target once")
    for t in out:
        for m in mixtures:
            for role, scores in (("reference", reference), ("proxy", proxy)):
                if t.name not in scores[m]:
                    raise DemixError(
                        f"the {role} scores of mixture '{m}' have no target '{t.name}' "
                        f"(they have {sorted(scores[m])})",
                        f"evaluate the {role} of that mixture on '{t.name}', or leave the target out",
                    )
    return out


def _vector(scores: Mapping[str, Mapping[str, float]], mixtures: list[str], name: str, role: str) -> np.ndarray:
    vec = np.array([float(scores[m][name]) for m in mixtures], dtype=np.float64)
    bad = [m for m, v in zip(mixtures, vec) if not math.isfinite(v)]
    if bad:
        raise DemixError(
            f"{role} score '{name}' is not finite for mixture(s) {bad}",
            "re-evaluate those models; a NaN score usually means diverged weights",
        )
    return vec


def compare(
    reference: Mapping[str, Mapping[str, float]],
    proxy: Mapping[str, Mapping[str, float]],
    targets: Sequence[Target | str] | None = None,
    *,
    proxy_kind: str = "merged",
    bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    top_fraction: float = 0.25,
) -> FidelityReport:
    """Compare proxy scores against reference scores, per target and macro over capabilities.

    Args:
        reference: ``{mixture_id: {target: score}}`` of the reference models.
        proxy: the same for the proxies (merged or trained) of the same mixtures.
        targets: which targets to compare and how to read them. None: every target name both
            sides share, each a higher-is-better capability. A plain string is a
            higher-is-better benchmark (not in the macro average).
        proxy_kind: label of the proxies (merged, trained, trained@200000, ...).
        bootstrap: paired bootstrap resamples of the mixtures (0: no intervals).
        seed: seed of the resampling.
        confidence: two-sided level of the percentile intervals.
        top_fraction: share of mixtures (best by reference score) for ``top_spearman``.

    Only mixtures present on both sides are compared; the others are listed in the report.
    Raises DemixError when no mixture is shared, a target is missing for a mixture, or a
    score is not finite.
    """
    _check_scores(reference, "reference")
    _check_scores(proxy, "proxy")
    if not 0 < confidence < 1:
        raise DemixError(f"confidence must lie in (0, 1), got {confidence}", "use e.g. 0.95")
    if not 0 < top_fraction <= 1:
        raise DemixError(f"top_fraction must lie in (0, 1], got {top_fraction}", "use e.g. 0.25")
    mixtures = sorted(set(reference) & set(proxy))
    if not mixtures:
        raise DemixError(
            "no mixture id has both a reference score and a proxy score",
            "key both by the same mixture ids (demix.mixtures.mixture_key)",
        )
    resolved = _resolve_targets(reference, proxy, mixtures, targets)
    n = len(mixtures)
    # One index matrix for all targets: the macro average is resampled jointly.
    idx = np.random.default_rng(seed).integers(0, n, size=(bootstrap, n)) if bootstrap > 0 and n > 0 else None

    per_target: dict[str, TargetFidelity] = {}
    samples: dict[str, dict[str, np.ndarray]] = {}
    for t in resolved:
        ref = _vector(reference, mixtures, t.name, "reference")
        prx = _vector(proxy, mixtures, t.name, "proxy")
        rho, rho_reason = spearman(ref, prx)
        tau, tau_reason = kendall(ref, prx)
        top, k, top_reason = top_spearman(ref, prx, t.higher_is_better, top_fraction)
        rec, ratio, crr_reason = crr(ref, prx, t)
        points = {"spearman": (rho, n, rho_reason), "kendall": (tau, n, tau_reason),
                  "top_spearman": (top, k, top_reason), "crr": (rec, n, crr_reason)}
        built: dict[str, Statistic] = {}
        samples[t.name] = {}
        for s, (value, npts, reason) in points.items():
            st = Statistic(value=value, n=npts, reason=reason)
            if idx is not None and st.defined:
                draws = _resampled(s, ref, prx, idx, t, top_fraction)
                st.ci_low, st.ci_high, st.resamples = _interval(draws, confidence)
                samples[t.name][s] = draws
            built[s] = st
        per_target[t.name] = TargetFidelity(
            name=t.name, capability=t.capability, higher_is_better=t.higher_is_better, ratio_scale=ratio,
            scores={m: [float(a), float(b)] for m, a, b in zip(mixtures, ref, prx)}, **built,
        )

    macro = {s: _macro(s, per_target, samples, n, confidence) for s in STATISTICS}
    return FidelityReport(
        proxy_kind=proxy_kind,
        mixtures=mixtures,
        missing_proxy=sorted(set(reference) - set(proxy)),
        missing_reference=sorted(set(proxy) - set(reference)),
        bootstrap=bootstrap,
        seed=seed,
        confidence=confidence,
        top_fraction=top_fraction,
        targets=per_target,
        macro=macro,
    )


def _macro(
    stat: str, per_target: dict[str, TargetFidelity], samples: dict[str, dict[str, np.ndarray]],
    n: int, confidence: float,
) -> Statistic:
    caps = [t for t in per_target.values() if t.capability]
    if not caps:
        return Statistic(math.nan, n, reason="no target is marked as a capability")
    over = [t.name for t in caps if t.statistic(stat).defined]
    excluded = {t.name: str(t.statistic(stat).reason) for t in caps if not t.statistic(stat).defined}
    npts = caps[0].statistic(stat).n
    if not over:
        return Statistic(math.nan, npts, reason="undefined for every capability", excluded=excluded)
    value = float(np.mean([per_target[c].statistic(stat).value for c in over]))
    st = Statistic(value, npts, over=over, excluded=excluded)
    if all(stat in samples[c] for c in over):
        # Mean over capabilities within each resample; a resample where any capability is
        # undefined is dropped (NaN propagates), so every kept resample averages the same set.
        joint = np.mean(np.stack([samples[c][stat] for c in over]), axis=0)
        st.ci_low, st.ci_high, st.resamples = _interval(joint, confidence)
    return st


def paired_difference(
    a: FidelityReport,
    b: FidelityReport,
    *,
    bootstrap: int | None = None,
    seed: int | None = None,
    confidence: float | None = None,
) -> Statistic:
    """Macro Spearman rho of proxies ``a`` minus that of proxies ``b``, with a paired bootstrap
    interval: both are recomputed on the same resamples of the mixtures, so the mixtures both
    rank well or badly cancel out. Is ``a`` *ahead* of ``b``? Yes where the interval lies above 0.

    Over the capabilities where both reports define Spearman; the reports must share their
    mixtures and reference scores (two proxy kinds of one fidelity run). Defaults: ``a``'s
    bootstrap count, seed and confidence.
    """
    bootstrap = a.bootstrap if bootstrap is None else bootstrap
    seed = a.seed if seed is None else seed
    confidence = a.confidence if confidence is None else confidence
    if a.mixtures != b.mixtures:
        raise DemixError(
            f"{a.proxy_kind} and {b.proxy_kind} were compared on different mixtures",
            "compare two proxy kinds of the same fidelity run",
        )
    caps = [n for n, t in a.targets.items() if t.capability and t.spearman.defined
            and n in b.targets and b.targets[n].spearman.defined]
    n = len(a.mixtures)
    if not caps:
        return Statistic(math.nan, n, reason="no capability has Spearman defined for both")
    refs, pa, pb = [], [], []
    for c in caps:
        ra = np.array([a.targets[c].scores[m][0] for m in a.mixtures])
        rb = np.array([b.targets[c].scores[m][0] for m in a.mixtures])
        if not np.allclose(ra, rb, rtol=1e-9, atol=0):
            raise DemixError(f"{a.proxy_kind} and {b.proxy_kind} have other reference scores for '{c}'",
                             "compare two proxy kinds of the same fidelity run")
        refs.append(ra)
        pa.append(np.array([a.targets[c].scores[m][1] for m in a.mixtures]))
        pb.append(np.array([b.targets[c].scores[m][1] for m in a.mixtures]))
    value = float(np.mean([a.targets[c].spearman.value - b.targets[c].spearman.value for c in caps]))
    st = Statistic(value, n, over=caps)
    if bootstrap > 0:
        # Seeded like compare(), so these are the very resamples behind each report's own interval.
        idx = np.random.default_rng(seed).integers(0, n, size=(bootstrap, n))
        diffs = np.mean(np.stack([_row_spearman(r[idx], x[idx]) - _row_spearman(r[idx], y[idx])
                                  for r, x, y in zip(refs, pa, pb)]), axis=0)
        st.ci_low, st.ci_high, st.resamples = _interval(diffs, confidence)
    return st
