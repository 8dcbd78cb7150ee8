"""Fidelity: how well proxies rank mixtures against reference models, what each approach costs,
and whether the components are fit to be merged.

- :mod:`demix.fidelity.statistics`: Spearman, Kendall, top-share Spearman, Capability Recovery
  Rate with n, and their bootstrap resamples; :class:`Statistic`, :class:`Target`.
- :mod:`demix.fidelity.metrics`: :func:`compare` (per target and macro, with intervals) and
  :class:`FidelityReport`; :func:`paired_difference`.
- :mod:`demix.fidelity.compute`: tokens and FLOPs of DeMix and of the training-based baseline.
- :mod:`demix.fidelity.audit`: delta sizes, delta cosines, proxy-vs-reference gaps (imports
  torch); its records in :mod:`demix.fidelity.audit_report` (torch-free).
- The stage (``demix fidelity``): :mod:`~demix.fidelity.references` (reference mixtures),
  :mod:`~demix.fidelity.models` (trained and merged models, scored once and stored),
  :mod:`~demix.fidelity.targets` (what is compared, the no-model baseline),
  :mod:`~demix.fidelity.stage` (:func:`run_fidelity`) and :mod:`~demix.fidelity.files` (the
  files it writes, each with its reader: :class:`FidelityResults` is ``fidelity.json``).

``import demix.fidelity`` stays light: everything past the metrics is imported on first use.
"""

from __future__ import annotations

from typing import Any

from demix._lazy import lazy_attribute
from demix.fidelity.metrics import FidelityReport, TargetFidelity, compare, paired_difference
from demix.fidelity.statistics import Statistic, Target, ratio_score_from_bpb

__all__ = [
    "FidelityReport",
    "Statistic",
    "Target",
    "TargetFidelity",
    "compare",
    "paired_difference",
    "ratio_score_from_bpb",
    "AuditReport",
    "AuditThresholds",
    "audit_components",
    "proxy_gap",
    "ComputeBudget",
    "ParamCount",
    "count_parameters",
    "demix_budget",
    "trained_budget",
    "FidelityResults",
    "FidelityScores",
    "SummaryRow",
    "FidelityResult",
    "run_fidelity",
]

_LAZY = {
    "AuditReport": "demix.fidelity.audit_report",
    "AuditThresholds": "demix.fidelity.audit_report",
    "audit_components": "demix.fidelity.audit",
    "proxy_gap": "demix.fidelity.audit",
    "ComputeBudget": "demix.fidelity.compute",
    "ParamCount": "demix.fidelity.compute",
    "count_parameters": "demix.fidelity.compute",
    "demix_budget": "demix.fidelity.compute",
    "trained_budget": "demix.fidelity.compute",
    "FidelityResults": "demix.fidelity.files",
    "FidelityScores": "demix.fidelity.files",
    "SummaryRow": "demix.fidelity.files",
    "FidelityResult": "demix.fidelity.stage",
    "run_fidelity": "demix.fidelity.stage",
}


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY, name)
