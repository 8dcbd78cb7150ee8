"""Rows of the report's tables, as strings: a table is ``(head, rows)``, rendered by
:mod:`demix.report.render` as HTML or Markdown."""

from __future__ import annotations

import math
from typing import Any

from demix.report.data import RunData
from demix.search import comparison_rows

Table = tuple[list[str], list[list[str]]]


def fmt(v: Any, digits: int = 4) -> str:
    """A table cell: '-' for a missing value, thousands separators for integers."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def summary_rows(data: RunData) -> Table:
    """Chosen vs natural vs uniform: weights and predicted capabilities, with CV error."""
    head, rows = comparison_rows(data.best)
    # The report names what the natural mixture is; rows and other columns are the search's own.
    return [{"natural": "natural (token-proportional)"}.get(h, h) for h in head], rows


def plan_rows(data: RunData) -> Table:
    """Tokens and epochs per domain of the chosen mixture."""
    b = data.best
    tokens, epochs, domain_tokens = b.tokens or {}, b.epochs or {}, b.domain_tokens or {}
    head = ["domain", "weight", "top-k std", "tokens", "epochs", "domain tokens"]
    rows = [[d, f"{w:.4f}", fmt(data.top_k.spread.get(d, {}).get("std")), fmt(tokens.get(d)), fmt(epochs.get(d), 2),
             fmt(domain_tokens.get(d))] for d, w in b.weights.items()]
    return head, rows


AUDIT_FINDINGS_HEAD = ["severity", "finding", "subject", "group", "message"]


def _defined(v: float | None) -> float | None:
    """None for an undefined (NaN) audit number, so the cell reads '-' as in audit.json's null."""
    return None if v is None or math.isnan(v) else v


def audit_rows(data: RunData) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """Relative delta size per component (whole model) and the audit's findings."""
    a = data.audit
    if not a:
        return [], [], []
    head = ["component", "||delta|| / ||base||", *[f"cos with {c}" for c in a.components]]
    rows = [[c, fmt(_defined(a.deltas[c]["all"].relative), 3),
             *[fmt(_defined(a.cosine["all"][c][o]), 2) for o in a.components]] for c in a.components]
    findings = [[f.severity, f.kind, f.subject, f.group, f.message] for f in a.findings]
    return head, rows, findings


FIDELITY_HEAD = ["proxy", "target", "Spearman", "top-25% Spearman", "CRR"]


def fidelity_rows(data: RunData) -> list[list[str]]:
    """Per proxy kind and no-model baseline: the statistics of every target and their macro means."""
    if data.fidelity is None:
        return []
    rows = []
    for kind, rep in data.fidelity.reports.items():
        for name, t in rep.targets.items():
            rows.append([kind, name, str(t.spearman), str(t.top_spearman), str(t.crr)])
        for stat, st in rep.macro.items():
            rows.append([kind, f"macro {stat}", str(st), "", ""])
    for kind, rep in data.fidelity.baselines.items():
        label = f"{kind.replace('_', ' ')} (no model)"
        for name, t in rep.targets.items():
            rows.append([label, name, str(t.spearman), str(t.top_spearman), "-"])
        rows.append([label, "macro spearman", str(rep.macro["spearman"]), "", ""])
    return rows


def timing_rows(data: RunData) -> Table:
    """Stage wall times of the latest invocation that ran each stage."""
    rows = [[s.stage, f"{s.seconds:.1f}", s.started] for s in data.stage_times]
    if rows:
        rows.append(["total", f"{sum(s.seconds for s in data.stage_times):.1f}", ""])
    return ["stage", "seconds", "run started"], rows
