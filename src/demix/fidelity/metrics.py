"""Fidelity metrics: do proxies rank mixtures like the reference models trained on them?

Inputs are scores keyed by name, never by position::

    reference = {mixture_id: {target_name: score, ...}, ...}   # reference models (ground truth)
    proxy     = {mixture_id: {target_name: score, ...}, ...}   # merged or trained proxies

A *target* is a benchmark or a capability. Per target, :func:`compare` computes the statistics
of :mod:`demix.fidelity.statistics` (Spearman rho, Kendall tau-b, Spearman on the top share of
mixtures by reference score, the Capability Recovery Rate), each with the number of mixtures it
rests on and a percentile bootstrap confidence interval; then macro averages over the targets
marked as capabilities, in a :class:`FidelityReport`. See ``docs/fidelity.md`` for the caveats.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from demix.errors import DemixError
from demix.fidelity._records import read_record
from demix.fidelity.statistics import (
    STATISTICS,
    Statistic,
    Target,
    crr,
    kendall,
    percentile_interval,
    resampled_statistic,
    row_spearman,
    spearman,
    top_spearman,
)
from demix.proxy_kind import MERGED


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
    def from_dict(cls, data: Mapping[str, Any]) -> TargetFidelity:
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
    group_macro: dict[str, dict[str, Statistic]] = field(default_factory=dict)
    """Group of capabilities (``own``: a training domain's held-out loss; ``transfer``: the
    others, see :func:`demix.fidelity.targets.target_groups`) -> statistic -> its mean over the
    group's capabilities in this report. Empty when the report was made without groups."""

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
            "group_macro": {g: {k: s.to_dict() for k, s in m.items()} for g, m in self.group_macro.items()},
        }

    def to_json(self) -> str:
        # allow_nan=False: undefined values must already be None, never a bare NaN token.
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FidelityReport:
        kw = dict(data)
        kw["targets"] = {k: TargetFidelity.from_dict(v) for k, v in kw["targets"].items()}
        kw["macro"] = {k: Statistic.from_dict(v) for k, v in kw["macro"].items()}
        kw["group_macro"] = {g: {k: Statistic.from_dict(v) for k, v in m.items()}
                             for g, m in kw.get("group_macro", {}).items()}
        return cls(**kw)

    def save(self, path: str | Path) -> None:
        """Write the report as JSON, atomically."""
        from demix.rundir import atomic_write_text

        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> FidelityReport:
        """Read a report :meth:`save` wrote; a missing or garbled file is a DemixError naming it."""
        return read_record(path, "a fidelity report", cls.from_dict)

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
        for group, m in self.group_macro.items():
            lines.append(f"{'macro ' + group:<18} {len(self.mixtures):>3}  " + "  ".join(f"{cell(m[s]):<28}" for s in STATISTICS))
        lines.append("* capability (in the macro average)")
        return "\n".join(lines)


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
    proxy_kind: str = MERGED,
    bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    top_fraction: float = 0.25,
    groups: Mapping[str, Sequence[str]] | None = None,
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
        groups: group name -> capability names: a macro average per group (``group_macro``),
            over the group's capabilities among the targets (a group with none is left out).

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
        per_target[t.name], samples[t.name] = _target_fidelity(t, mixtures, ref, prx, idx, top_fraction, confidence)

    macro = {s: _macro(s, per_target, samples, n, confidence) for s in STATISTICS}
    group_macro = {}
    for group, names in (groups or {}).items():
        members = set(names)
        if any(t.capability and t.name in members for t in per_target.values()):
            group_macro[group] = {s: _macro(s, per_target, samples, n, confidence, members) for s in STATISTICS}
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
        group_macro=group_macro,
    )



def _target_fidelity(
    t: Target, mixtures: list[str], ref: np.ndarray, prx: np.ndarray, idx: np.ndarray | None,
    top_fraction: float, confidence: float,
) -> tuple[TargetFidelity, dict[str, np.ndarray]]:
    """Every statistic of one target, and its values on the bootstrap resamples (rows of ``idx``)
    for the macro averages."""
    n = len(mixtures)
    rho, rho_reason = spearman(ref, prx)
    tau, tau_reason = kendall(ref, prx)
    top, k, top_reason = top_spearman(ref, prx, t.higher_is_better, top_fraction)
    rec, ratio, crr_reason = crr(ref, prx, t)
    points = {"spearman": (rho, n, rho_reason), "kendall": (tau, n, tau_reason),
              "top_spearman": (top, k, top_reason), "crr": (rec, n, crr_reason)}
    built: dict[str, Statistic] = {}
    samples: dict[str, np.ndarray] = {}
    for s, (value, npts, reason) in points.items():
        st = Statistic(value=value, n=npts, reason=reason)
        if idx is not None and st.defined:
            draws = resampled_statistic(s, ref, prx, idx, t, top_fraction)
            st.ci_low, st.ci_high, st.resamples = percentile_interval(draws, confidence)
            samples[s] = draws
        built[s] = st
    fidelity = TargetFidelity(
        name=t.name, capability=t.capability, higher_is_better=t.higher_is_better, ratio_scale=ratio,
        scores={m: [float(a), float(b)] for m, a, b in zip(mixtures, ref, prx)}, **built,
    )
    return fidelity, samples


def _macro(
    stat: str, per_target: dict[str, TargetFidelity], samples: dict[str, dict[str, np.ndarray]],
    n: int, confidence: float, members: set[str] | None = None,
) -> Statistic:
    caps = [t for t in per_target.values() if t.capability and (members is None or t.name in members)]
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
        st.ci_low, st.ci_high, st.resamples = percentile_interval(joint, confidence)
    return st


def paired_difference(
    a: FidelityReport,
    b: FidelityReport,
    *,
    bootstrap: int | None = None,
    seed: int | None = None,
    confidence: float | None = None,
    same_references: bool = True,
    over: Sequence[str] | None = None,
) -> Statistic:
    """Macro Spearman rho of proxies ``a`` minus that of proxies ``b``, with a paired bootstrap
    interval: both are recomputed on the same resamples of the mixtures, so the mixtures both
    rank well or badly cancel out. Is ``a`` *ahead* of ``b``? Yes where the interval lies above 0.

    Over the capabilities where both reports define Spearman; the reports must share their
    mixtures and, unless ``same_references`` is False, their reference scores (two proxy kinds
    of one fidelity run). ``same_references=False`` compares two fidelity runs on the same
    mixture ids against different reference models (the merged proxies of one set of component
    weights against references trained under the two ``fidelity.pairing`` options). Defaults:
    ``a``'s bootstrap count, seed and confidence. ``over``: only these capabilities (a group,
    e.g. the transfer targets); None: every capability.
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
            and n in b.targets and b.targets[n].spearman.defined and (over is None or n in over)]
    n = len(a.mixtures)
    if not caps:
        return Statistic(math.nan, n, reason="no capability has Spearman defined for both")
    refs, refs_b, pa, pb = [], [], [], []
    for c in caps:
        ra = np.array([a.targets[c].scores[m][0] for m in a.mixtures])
        rb = np.array([b.targets[c].scores[m][0] for m in a.mixtures])
        if same_references and not np.allclose(ra, rb, rtol=1e-9, atol=0):
            raise DemixError(f"{a.proxy_kind} and {b.proxy_kind} have other reference scores for '{c}'",
                             "compare two proxy kinds of the same fidelity run (or pass same_references=False)")
        refs.append(ra)
        refs_b.append(rb)
        pa.append(np.array([a.targets[c].scores[m][1] for m in a.mixtures]))
        pb.append(np.array([b.targets[c].scores[m][1] for m in a.mixtures]))
    value = float(np.mean([a.targets[c].spearman.value - b.targets[c].spearman.value for c in caps]))
    st = Statistic(value, n, over=caps)
    if bootstrap > 0:
        # Seeded like compare(), so these are the very resamples behind each report's own interval.
        idx = np.random.default_rng(seed).integers(0, n, size=(bootstrap, n))
        diffs = np.mean(np.stack([row_spearman(r[idx], x[idx]) - row_spearman(q[idx], y[idx])
                                  for r, q, x, y in zip(refs, refs_b, pa, pb)]), axis=0)
        st.ci_low, st.ci_high, st.resamples = percentile_interval(diffs, confidence)
    return st
