"""Rows of the report's tables, as strings: a table is ``(head, rows)``, rendered by
:mod:`demix.report.render` as HTML or Markdown."""

from __future__ import annotations

import math
from typing import Any

from demix.report.data import BASELINES, RunData
from demix.search import BestMixture, comparison_rows

Table = tuple[list[str], list[list[str]]]

#: The two mixtures of best_mixture.json, in words (the CLI summary and the report say it alike).
MIXTURES_IN_WORDS = (
    "component weights: the merge coefficients of the proxies (what the search ranked); "
    "data mixture: the token shares of the training data they stand for (what to train on; `demix export` writes it)"
)


def fmt(v: Any, digits: int = 4) -> str:
    """A table cell: '-' for a missing value, thousands separators for integers."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _short(mixture: dict[str, float] | None) -> str:
    return "{" + ", ".join(f"{d} {w:.3f}" for d, w in (mixture or {}).items()) + "}"


def mixture_notes(best: BestMixture) -> list[str]:
    """What the mixtures shown are, one sentence each: the two kinds, the data mixtures the
    proxies can stand for, and each baseline shown at its nearest reachable data mixture because
    it is not reachable itself. A file of demix < 0.2 holds component weights only: it says so."""
    if best.legacy:
        return [
            "This best_mixture.json was written by demix < 0.2: its weights are component weights (the merge "
            "coefficients of the proxies) and no data mixture is known; rerun `demix search` on the run directory "
            "(nothing is evaluated again) to record the data mixture to train on."
        ]
    notes = [MIXTURES_IN_WORDS[0].upper() + MIXTURES_IN_WORDS[1:] + "."]
    region = (best.mapping or {}).get("region")
    if region:
        notes.append(f"The proxies stand for {region}.")
    for name in BASELINES:
        b = best.baselines.get(name)
        if b is not None and b.reachable is False:
            notes.append(f"The {name} data mixture {_short(b.data_target)} is not reachable: it is shown at its nearest "
                         f"reachable data mixture {_short(b.data_mixture)}.")
    return notes


def summary_rows(data: RunData) -> Table:
    """Chosen vs natural vs uniform: data mixture and component weights (a row block each),
    then predicted capabilities with CV error."""
    head, rows = comparison_rows(data.best)
    # The report names what the natural mixture is; rows and other columns are the search's own.
    names = {"natural": "natural (token-proportional)", "natural (nearest reachable)": "natural (token-proportional, nearest reachable)"}
    return [names.get(h, h) for h in head], rows


def plan_rows(data: RunData) -> Table:
    """The chosen mixture as a training plan, per domain: its data mixture (what tokens and
    epochs are computed from), its component weights and their top-k spread."""
    b = data.best
    tokens, epochs, domain_tokens = b.tokens or {}, b.epochs or {}, b.domain_tokens or {}
    if b.legacy:  # demix < 0.2 computed them from the component weights, as if they were token shares
        tokens, epochs = {}, {}
    data_mixture, weights = b.data_mixture or {}, b.component_weights or {}
    head = ["domain", "data mixture", "component weight", "top-k std (component weight)", "tokens", "epochs",
            "domain tokens"]
    rows = [[d, fmt(data_mixture.get(d)), fmt(weights.get(d)), fmt(data.top_k.spread.get(d, {}).get("std")),
             fmt(tokens.get(d)), fmt(epochs.get(d), 2), fmt(domain_tokens.get(d))] for d in data.domains]
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
