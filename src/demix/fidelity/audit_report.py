"""What the merge-validity audit found: thresholds, per-component delta sizes, findings and
proxy gaps, as records that read and write ``audit.json``.

Torch-free (the measuring is :mod:`demix.fidelity.audit`), so the report and the CLI can read a
stage's audit without importing torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from demix.fidelity._records import nan_to_none, none_to_nan, read_record


@dataclass(frozen=True)
class AuditThresholds:
    """When the audit raises a finding. See docs/fidelity.md for the reasoning."""

    relative_delta: float = 0.5
    """Warn when ``||delta|| / ||base||`` of a tensor group exceeds this: the component has
    moved by half the norm of what pretraining built, far outside the small-update regime in
    which task-vector arithmetic and weight averaging are known to behave linearly."""
    relative_delta_critical: float = 1.0
    """Critical when the delta is as large as the base weights themselves."""
    min_cosine: float = -0.1
    """Warn when two deltas have a whole-model cosine below this. Unrelated high-dimensional
    updates are nearly orthogonal (|cos| ~ 1/sqrt(parameters)), and components sharing a
    general share are usually positively aligned; a clearly negative cosine means they push
    the same weights in opposite directions, so merging cancels them (interference)."""
    duplicate_cosine: float = 0.99
    """Note (info) when two deltas are nearly parallel: their domains cannot be told apart
    through merged proxies."""
    proxy_gap: float = 1.0
    """Warn when ``||proxy - reference|| / ||reference - base||`` reaches this: the merged
    proxy is no closer to the reference model's weights than the base is."""

    @classmethod
    def from_config(cls, fidelity: Any) -> AuditThresholds:
        """Thresholds from a ``FidelityConfig`` (critical: twice the relative-delta warning level)."""
        return cls(
            relative_delta=fidelity.audit_relative_delta,
            relative_delta_critical=2 * fidelity.audit_relative_delta,
            min_cosine=fidelity.audit_min_cosine,
            proxy_gap=fidelity.audit_proxy_gap,
        )


@dataclass
class GroupDelta:
    """Size of one component's delta within one tensor group."""

    delta_norm: float
    base_norm: float
    relative: float
    """delta_norm / base_norm (NaN when the base group is all zeros)."""
    numel: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GroupDelta:
        """The inverse of the entry :meth:`AuditReport.to_dict` writes (None back to NaN)."""
        return cls(none_to_nan(data["delta_norm"]), none_to_nan(data["base_norm"]), none_to_nan(data["relative"]), int(data["numel"]))


@dataclass
class AuditFinding:
    """One thing the report should show: what, how bad, and the number behind it."""

    kind: Literal["large_delta", "zero_delta", "conflicting_deltas", "near_duplicate_deltas", "proxy_gap"]
    severity: Literal["info", "warning", "critical"]
    subject: str
    """The component, the pair 'a|b', or the mixture id it is about."""
    group: str
    """Tensor group, or 'all' for the whole model."""
    value: float
    threshold: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        """``{kind, severity, subject, group, value, threshold, message}`` (NaN as None)."""
        return nan_to_none(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditFinding:
        """The inverse of :meth:`to_dict`."""
        kw = {f.name: data[f.name] for f in fields(cls)}
        kw["value"], kw["threshold"] = none_to_nan(kw["value"]), none_to_nan(kw["threshold"])
        return cls(**kw)


@dataclass
class ProxyGap:
    """Distance between the merged proxy of a mixture and the reference model trained on it."""

    mixture_id: str
    mixture: dict[str, float] | None
    relative_distance: float
    """||proxy - reference|| / ||reference - base|| over the whole model."""
    groups: dict[str, float]
    """The same ratio per tensor group."""
    score_gaps: dict[str, dict[str, float]] = field(default_factory=dict)
    """target -> {proxy, reference, gap = proxy - reference}."""
    findings: list[AuditFinding] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProxyGap:
        """The inverse of the entry :meth:`AuditReport.to_dict` writes (None back to NaN)."""
        return cls(
            mixture_id=data["mixture_id"],
            mixture=data["mixture"],
            relative_distance=none_to_nan(data["relative_distance"]),
            groups={g: none_to_nan(v) for g, v in data["groups"].items()},
            score_gaps={t: dict(v) for t, v in data.get("score_gaps", {}).items()},
            findings=[AuditFinding.from_dict(f) for f in data.get("findings", [])],
        )


@dataclass
class AuditReport:
    """Result of :func:`demix.fidelity.audit.audit_components` (plus any :class:`ProxyGap` added with :meth:`add_gap`)."""

    components: list[str]
    deltas: dict[str, dict[str, GroupDelta]]
    """component -> group (and 'all') -> its delta size."""
    cosine: dict[str, dict[str, dict[str, float]]]
    """group (and 'all') -> component -> component -> cosine of the deltas."""
    thresholds: AuditThresholds
    findings: list[AuditFinding] = field(default_factory=list)
    gaps: list[ProxyGap] = field(default_factory=list)

    def add_gap(self, gap: ProxyGap) -> None:
        self.gaps.append(gap)
        self.findings.extend(gap.findings)

    def warnings(self) -> list[AuditFinding]:
        """Findings of severity warning or critical."""
        return [f for f in self.findings if f.severity != "info"]

    def to_dict(self) -> dict[str, Any]:
        return nan_to_none(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def save(self, path: str | Path) -> None:
        """Write ``audit.json`` atomically."""
        from demix.rundir import atomic_write_text

        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditReport:
        """The inverse of :meth:`to_dict` (None back to NaN)."""
        return cls(
            components=list(data["components"]),
            deltas={d: {g: GroupDelta.from_dict(v) for g, v in per.items()} for d, per in data["deltas"].items()},
            cosine={g: {a: {b: none_to_nan(v) for b, v in row.items()} for a, row in per.items()}
                    for g, per in data["cosine"].items()},
            thresholds=AuditThresholds(**data["thresholds"]),
            findings=[AuditFinding.from_dict(f) for f in data.get("findings", [])],
            gaps=[ProxyGap.from_dict(g) for g in data.get("gaps", [])],
        )

    @classmethod
    def read(cls, path: str | Path) -> AuditReport:
        """The ``audit.json`` :meth:`save` wrote; a missing or garbled file is a DemixError naming it."""
        return read_record(path, "a merge-audit report", cls.from_dict)
