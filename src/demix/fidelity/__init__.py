"""Fidelity: how well proxies rank mixtures against reference models, what each approach costs,
and whether the components are fit to be merged.

- :mod:`demix.fidelity.metrics`: Spearman, Kendall, top-share Spearman, Capability Recovery
  Rate with n and bootstrap intervals; :class:`FidelityReport`.
- :mod:`demix.fidelity.compute`: tokens and FLOPs of DeMix and of the training-based baseline.
- :mod:`demix.fidelity.audit`: delta sizes, delta cosines, proxy-vs-reference gaps (imports torch).

``import demix.fidelity`` stays light: the audit (torch) is imported on first use.
"""

from __future__ import annotations

from typing import Any

from demix.fidelity.metrics import (
    FidelityReport,
    Statistic,
    Target,
    TargetFidelity,
    compare,
    paired_difference,
    ratio_score_from_bpb,
)

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
]

_LAZY = {
    "AuditReport": "demix.fidelity.audit",
    "AuditThresholds": "demix.fidelity.audit",
    "audit_components": "demix.fidelity.audit",
    "proxy_gap": "demix.fidelity.audit",
    "ComputeBudget": "demix.fidelity.compute",
    "ParamCount": "demix.fidelity.compute",
    "count_parameters": "demix.fidelity.compute",
    "demix_budget": "demix.fidelity.compute",
    "trained_budget": "demix.fidelity.compute",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'demix.fidelity' has no attribute {name!r}")
