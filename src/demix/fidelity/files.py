"""The files the fidelity stage writes into ``<run>/fidelity/`` (paths: :class:`demix.rundir.FidelityFiles`),
each with one writer and one reader. docs/fidelity.md ("Files") says what each holds.

- ``fidelity.json``: :class:`FidelityResults` (mixtures, reports, baselines, summary rows,
  audit warnings, notes): what the report reads;
- ``scores.json``: :class:`FidelityScores`, the raw scores of every model per mixture and kind;
- ``mixtures.json``: :func:`write_mixtures` / :func:`read_mixtures`, written before any training;
- ``compute.json``: :func:`write_compute` (:func:`demix.fidelity.compute.compute_accounting`);
- ``<kind>.json``: :meth:`demix.fidelity.metrics.FidelityReport.save` / ``load``;
- ``audit.json``: :meth:`demix.fidelity.audit_report.AuditReport.save` / ``read``.

Readers raise a DemixError naming the file when it is missing or garbled. Files of format 1
(demix before 0.2) are read by migration: their ``weights`` were the component weights of the
merged proxy and the data mixture of its reference model at once (pairing ``component_weights``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demix import proxy_kind
from demix.errors import DemixError
from demix.fidelity._records import nan_to_none, read_record
from demix.fidelity.audit_report import AuditFinding
from demix.fidelity.metrics import FidelityReport
from demix.fidelity.references import COMPONENT_WEIGHTS, DATA_MIXTURE, PAIRINGS, ReferenceMixture
from demix.fidelity.statistics import STATISTICS, Statistic
from demix.rundir import write_json

#: Version of the files this stage writes (bumped when their layout changes): 2 pairs each
#: mixture's component weights with the data mixture its reference model was trained on.
FORMAT_VERSION = 2


def _version(data: Mapping[str, Any]) -> int:
    """The format of a record; a newer one than this demix writes is refused by name."""
    version = int(data.get("version", 1))
    if version > FORMAT_VERSION:
        raise DemixError(f"the fidelity file has format version {version}; this demix reads up to {FORMAT_VERSION}",
                         "upgrade demix, or run `demix fidelity CONFIG` again to rewrite it")
    return version


def _pairing(data: Mapping[str, Any]) -> str:
    """The pairing a record was made under: format 1 knew only component_weights."""
    pairing = str(data.get("pairing", COMPONENT_WEIGHTS if _version(data) < 2 else DATA_MIXTURE))
    if pairing not in PAIRINGS:
        raise ValueError(f"unknown pairing {pairing!r} (known: {', '.join(PAIRINGS)})")
    return pairing


# --------------------------------------------------------------------------- mixtures.json


@dataclass(frozen=True)
class MixturesFile:
    """``mixtures.json``: what the stage set out to train, written before any training."""

    mixtures: list[ReferenceMixture]
    trained_proxy_budgets: list[int]
    pairing: str
    """``fidelity.pairing`` of the stage that wrote it."""
    mapping: dict[str, Any]
    """The run's map from component weights to data mixtures (empty in format 1 files)."""


def write_mixtures(
    path: Path,
    mixtures: Sequence[ReferenceMixture],
    budgets: Sequence[int],
    pairing: str = DATA_MIXTURE,
    mapping: Mapping[str, Any] | None = None,
) -> None:
    """``mixtures.json``: the reference mixtures (component weights and data mixture of each),
    the trained-proxy budgets, the pairing and the map from component weights to data mixtures."""
    write_json(path, {
        "version": FORMAT_VERSION,
        "pairing": pairing,
        "mapping": dict(mapping or {}),
        "mixtures": [m.to_dict() for m in mixtures],
        "trained_proxy_budgets": list(budgets),
    })


def read_mixtures_file(path: str | Path) -> MixturesFile:
    """The whole ``mixtures.json`` (format 1 files migrated: pairing component_weights)."""
    def parse(data: Any) -> MixturesFile:
        return MixturesFile([ReferenceMixture.from_dict(m) for m in data["mixtures"]],
                            [int(b) for b in data.get("trained_proxy_budgets", [])], _pairing(data),
                            dict(data.get("mapping", {})))

    return read_record(path, "a fidelity mixtures file", parse)


def read_mixtures(path: str | Path) -> list[ReferenceMixture]:
    """The reference mixtures of a ``mixtures.json``."""
    return read_mixtures_file(path).mixtures


# --------------------------------------------------------------------------- compute.json


def write_compute(path: Path, compute: Mapping[str, Any]) -> None:
    """``compute.json``: the versioned content of :func:`demix.fidelity.compute.compute_accounting`."""
    write_json(path, {"version": FORMAT_VERSION, **compute})


# --------------------------------------------------------------------------- scores.json


@dataclass(frozen=True)
class Scores:
    """The stored scores of one model: benchmark and capability name -> score (capabilities
    sign-corrected, higher is better; not the ``2 **`` form the reports compare)."""

    benchmarks: dict[str, float]
    capabilities: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"benchmarks": self.benchmarks, "capabilities": self.capabilities}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scores:
        return cls(dict(data["benchmarks"]), dict(data["capabilities"]))


@dataclass
class FidelityScores:
    """``scores.json``: every model's scores, per reference mixture and proxy kind."""

    higher_is_better: dict[str, bool]
    """Benchmark -> its direction."""
    ratio_scale_capabilities: list[str]
    """Capabilities compared as ``2 ** score`` (see :func:`demix.fidelity.targets.ratio_scale_capabilities`)."""
    component_weights: dict[str, dict[str, float]]
    """Mixture key -> the component weights of its merged proxy."""
    data_mixtures: dict[str, dict[str, float]]
    """Mixture key -> the data mixture its reference model and trained proxies were trained on."""
    scores: dict[str, dict[str, Scores]]
    """Mixture key -> proxy kind (reference, merged, trained@<tokens>) -> scores."""

    def of(self, key: str, kind: str) -> Scores:
        """The scores of the ``kind`` model of mixture ``key``."""
        try:
            return self.scores[key][kind]
        except KeyError:
            raise DemixError(f"scores.json has no {kind} scores of mixture {key}",
                             f"pick one of the mixtures {sorted(self.scores)}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "higher_is_better": dict(self.higher_is_better),
            "ratio_scale_capabilities": list(self.ratio_scale_capabilities),
            "component_weights": self.component_weights,
            "data_mixtures": self.data_mixtures,
            "scores": {key: {kind: s.to_dict() for kind, s in per.items()} for key, per in self.scores.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FidelityScores:
        # Format 1: one ``weights`` per mixture, the component weights and the references' data at once.
        old = _version(data) < 2
        weights = data["weights"] if old else data["component_weights"]
        return cls(
            higher_is_better={b: bool(v) for b, v in data["higher_is_better"].items()},
            ratio_scale_capabilities=list(data["ratio_scale_capabilities"]),
            component_weights={k: dict(w) for k, w in weights.items()},
            data_mixtures={k: dict(w) for k, w in (weights if old else data["data_mixtures"]).items()},
            scores={key: {kind: Scores.from_dict(s) for kind, s in per.items()} for key, per in data["scores"].items()},
        )

    def write(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def read(cls, path: str | Path) -> FidelityScores:
        return read_record(path, "a fidelity scores file", cls.from_dict)


# --------------------------------------------------------------------------- fidelity.json


@dataclass
class SummaryRow:
    """One proxy kind in one line: its macro statistics and the compute of a search with it
    (the rho-vs-compute plot's data)."""

    proxy_kind: str
    flops: float
    """FLOPs of one search with these proxies (:mod:`demix.fidelity.compute`)."""
    train_tokens: int
    eval_tokens: int
    n: int
    """Mixtures compared."""
    macro: dict[str, Statistic]
    """Statistic name (spearman, kendall, top_spearman, crr) -> its macro average."""
    per_capability: dict[str, dict[str, Statistic]]
    """Capability -> {spearman, crr}."""
    merged_minus_this: Statistic | None = None
    """Trained kinds only: macro rho of merged proxies minus this kind's, paired bootstrap interval."""
    groups: dict[str, dict[str, Statistic]] = field(default_factory=dict)
    """Target group (own, transfer) -> ``spearman`` (the group's macro rho) and, for trained kinds,
    ``merged_minus_this`` over the group's capabilities."""

    @classmethod
    def of(
        cls, kind: str, report: FidelityReport, budget: Mapping[str, Any], difference: Statistic | None = None,
        group_differences: Mapping[str, Statistic] | None = None,
    ) -> SummaryRow:
        """The row of proxies ``kind`` from their report and the budget (a ``ComputeBudget`` dict) of its approach."""
        return cls(
            proxy_kind=kind, flops=budget["flops"], train_tokens=budget["train_tokens"],
            eval_tokens=budget["eval_tokens"], n=len(report.mixtures), macro=dict(report.macro),
            per_capability={name: {"spearman": t.spearman, "crr": t.crr}
                            for name, t in report.targets.items() if t.capability},
            merged_minus_this=difference,
            groups={g: {"spearman": m["spearman"],
                        **({"merged_minus_this": group_differences[g]} if group_differences and g in group_differences
                           else {})}
                    for g, m in report.group_macro.items()},
        )

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON row: ``proxy_kind, flops, train_tokens, eval_tokens, n``, one key per
        macro statistic, ``merged_minus_this`` (trained kinds), ``per_capability``."""
        row: dict[str, Any] = {"proxy_kind": self.proxy_kind, "flops": self.flops, "train_tokens": self.train_tokens,
                               "eval_tokens": self.eval_tokens, "n": self.n}
        for stat, st in self.macro.items():
            row[stat] = st.to_dict()
        if self.merged_minus_this is not None:
            row["merged_minus_this"] = self.merged_minus_this.to_dict()
        row["per_capability"] = {name: {s: st.to_dict() for s, st in per.items()}
                                 for name, per in self.per_capability.items()}
        row["groups"] = {g: {s: st.to_dict() for s, st in per.items()} for g, per in self.groups.items()}
        return row

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SummaryRow:
        diff = data.get("merged_minus_this")
        return cls(
            proxy_kind=str(data["proxy_kind"]), flops=float(data["flops"]), train_tokens=int(data["train_tokens"]),
            eval_tokens=int(data["eval_tokens"]), n=int(data["n"]),
            macro={s: Statistic.from_dict(data[s]) for s in STATISTICS if s in data},
            per_capability={name: {s: Statistic.from_dict(st) for s, st in per.items()}
                            for name, per in data["per_capability"].items()},
            merged_minus_this=Statistic.from_dict(diff) if diff is not None else None,
            groups={g: {s: Statistic.from_dict(st) for s, st in per.items()} for g, per in data.get("groups", {}).items()},
        )


@dataclass
class FidelityResults:
    """``fidelity.json``: what the fidelity stage found, as the report reads it.

    Read it with ``FidelityResults.read(run.fidelity_files.results)``; the raw scores behind it
    are in :class:`FidelityScores` (``scores.json``)."""

    mixtures: list[ReferenceMixture]
    reports: dict[str, FidelityReport]
    """Proxy kind (merged, trained@<tokens>) -> its fidelity against the reference models."""
    baselines: dict[str, FidelityReport] = field(default_factory=dict)
    """No-model baselines (``own_weight``), absent when they do not apply."""
    summary: list[SummaryRow] = field(default_factory=list)
    audit_warnings: list[AuditFinding] = field(default_factory=list)
    """The merge audit's findings of severity warning or critical."""
    notes: list[str] = field(default_factory=list)
    pairing: str = DATA_MIXTURE
    """``fidelity.pairing``: what the reference models were trained on (component_weights in
    format 1 files, the only pairing then)."""
    mapping: dict[str, Any] = field(default_factory=dict)
    """The run's map from component weights to data mixtures
    (:meth:`demix.data_mixture.MixtureMap.to_dict`; empty in format 1 files)."""
    groups: dict[str, list[str]] = field(default_factory=dict)
    """Target group (own: a training domain's held-out loss; transfer: the others) -> capabilities."""
    rules: dict[str, str] = field(default_factory=dict)
    """Target -> the single linear rule of the ``linear_rule`` baseline chosen most often."""
    version: int = FORMAT_VERSION

    @property
    def proxy_kinds(self) -> list[str]:
        """The proxy kinds compared, in report order."""
        return list(self.reports)

    @property
    def merged(self) -> FidelityReport | None:
        """The merged proxies' report (None when the stage compared none)."""
        return self.reports.get(proxy_kind.MERGED)

    def row(self, kind: str) -> SummaryRow | None:
        """The summary row of proxy kind ``kind``."""
        return next((r for r in self.summary if r.proxy_kind == kind), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "pairing": self.pairing,
            "mapping": dict(self.mapping),
            "mixtures": [m.to_dict() for m in self.mixtures],
            "proxy_kinds": self.proxy_kinds,
            "reports": {k: r.to_dict() for k, r in self.reports.items()},
            "baselines": {k: r.to_dict() for k, r in self.baselines.items()},
            "summary": [r.to_dict() for r in self.summary],
            "audit_warnings": [w.to_dict() for w in self.audit_warnings],
            "notes": list(self.notes),
            "groups": {g: list(n) for g, n in self.groups.items()},
            "rules": dict(self.rules),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FidelityResults:
        return cls(
            mixtures=[ReferenceMixture.from_dict(m) for m in data["mixtures"]],
            reports={k: FidelityReport.from_dict(v) for k, v in data["reports"].items()},
            baselines={k: FidelityReport.from_dict(v) for k, v in data.get("baselines", {}).items()},
            summary=[SummaryRow.from_dict(r) for r in data.get("summary", [])],
            audit_warnings=[AuditFinding.from_dict(w) for w in data.get("audit_warnings", [])],
            notes=[str(n) for n in data.get("notes", [])],
            pairing=_pairing(data),
            mapping=dict(data.get("mapping", {})),
            groups={str(g): [str(n) for n in names] for g, names in data.get("groups", {}).items()},
            rules={str(k): str(v) for k, v in data.get("rules", {}).items()},
            # Read by migration: in memory (and when written again) it is the current format.
            version=FORMAT_VERSION,
        )

    def write(self, path: Path) -> None:
        """Write ``fidelity.json`` atomically (undefined statistics as null)."""
        write_json(path, nan_to_none(self.to_dict()))

    @classmethod
    def read(cls, path: str | Path) -> FidelityResults:
        """The ``fidelity.json`` at ``path``; a DemixError naming it when missing or garbled."""
        return read_record(path, "a fidelity results file", cls.from_dict, fix="run `demix fidelity CONFIG` to write it")
