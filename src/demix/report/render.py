"""The report's text: its sections (title, intro, tables and figures), rendered as one
self-contained HTML page (figures inlined as base64 PNG) or as Markdown linking ``figures/``."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from demix.report.chosen import chosen_check_rows, chosen_check_text, reference_agreement_text
from demix.report.data import RunData
from demix.report.plotting import Figure
from demix.report.tables import (
    AUDIT_FINDINGS_HEAD,
    FIDELITY_HEAD,
    Table,
    audit_rows,
    fidelity_rows,
    mixture_notes,
    plan_rows,
    summary_rows,
    timing_rows,
)

Block = Table | Figure | None
"""A table, a figure, or None for a figure the run has no data for (left out)."""
Section = tuple[str, str, list[Block]]
"""(title, intro text, blocks)."""

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;margin:2em auto;\
padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.92em}
th,td{border:1px solid #ccc;padding:4px 9px;text-align:right} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
td.msg{text-align:left;max-width:600px}
figure{margin:1em 0 2em} figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.92em;margin-top:.3em}
.meta{color:#555} .warn{color:#a40} code{background:#f5f5f5;padding:1px 4px}
"""


# --------------------------------------------------------------------------- sections


def _chosen_section(data: RunData, figures: dict[str, Figure]) -> Section:
    top_k, objective, predictor = data.top_k, data.objective, data.predictor
    intro = (f"Mean of the top {top_k.k:,} of {top_k.pool_size:,} candidates ranked by the {objective.kind} "
             f"objective, after {len(data.best.rounds)} rounds and {predictor.n} evaluated merged proxies "
             f"({predictor.kind} predictors). Predicted scores are higher-is-better.")
    if objective.constraints:
        intro += f" Constraints: {', '.join(objective.constraints)}."
    intro += " " + " ".join(mixture_notes(data.best))
    # Predicted against measured (and against the reference models, where the fidelity stage has them).
    intro += " " + chosen_check_text(data)
    agreement = reference_agreement_text(data)
    if agreement:
        intro += " " + agreement
    return "Chosen mixture", intro, [summary_rows(data), chosen_check_rows(data), plan_rows(data), figures.get("weights")]


def _audit_section(data: RunData) -> Section:
    head, rows, findings = audit_rows(data)
    if data.audit is None or not rows:
        return "Merge-validity audit", f"Not available: {data.audit_error}.", []
    th = data.audit.thresholds
    warn = [f for f in findings if f[0] != "info"]
    text = (f"Merging assumes small updates from a shared base. Size of each component's delta relative to the "
            f"base (warning above {th.relative_delta}) and cosine between deltas (warning below "
            f"{th.min_cosine}). {len(warn)} warning(s).")
    blocks: list[Block] = [(head, rows)]
    if findings:
        blocks.append((AUDIT_FINDINGS_HEAD, findings))
    return "Merge-validity audit", text, blocks


def _fidelity_section(data: RunData, figures: dict[str, Figure]) -> Section:
    text = "Proxies against reference models trained on the same mixtures (n = mixtures)."
    if data.fidelity is not None and data.fidelity.baselines:
        text += (" 'own weight (no model)' ranks each domain's held-out score by that domain's share of the "
                 "mixture, at no cost: a proxy tells more than the weights only where it beats that row.")
    return "Fidelity", text, [(FIDELITY_HEAD, fidelity_rows(data)), figures.get("fidelity_scatter"),
                              figures.get("fidelity_compute")]


def sections(data: RunData, figures: dict[str, Figure]) -> list[Section]:
    """The report's sections in order; the fidelity and stage-time sections only when the run has them."""
    out: list[Section] = [
        _chosen_section(data, figures),
        ("Predictors", "How well the predictors rank proxies they were not fitted on.",
         [figures.get("predicted_vs_measured"), figures.get("cv_quality")]),
        ("Search", "Where the search looked and what it found.",
         [figures.get("weight_histograms"), figures.get("pool_scores"), figures.get("pareto")]),
        _audit_section(data),
    ]
    if data.fidelity is not None and data.fidelity.reports:
        out.append(_fidelity_section(data, figures))
    t_head, t_rows = timing_rows(data)
    if t_rows:
        out.append(("Stage times", "Wall time of each stage (latest run of it), from timings.json.", [(t_head, t_rows)]))
    return out


# --------------------------------------------------------------------------- html and markdown


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _img_b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _html_block(blk: Table | Figure) -> str:
    if isinstance(blk, Figure):
        return (f"<figure><img alt='{html.escape(blk.title)}' src='data:image/png;base64,{_img_b64(blk.path)}'>"
                f"<figcaption>{html.escape(blk.caption)}</figcaption></figure>")
    table = _html_table(*blk)
    if blk[0] and blk[0][-1] == "message":
        table = table.replace("<td>", "<td class='msg'>")  # long audit messages wrap left-aligned
    return table


def render_html(data: RunData, figures: dict[str, Figure]) -> str:
    """The self-contained HTML report (figures inlined as data: URIs)."""
    c = data.config
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>demix report: {html.escape(c.name)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>DeMix report: {html.escape(c.name)}</h1>",
             f"<p class='meta'>run directory <code>{html.escape(str(data.run.root))}</code> · domains "
             f"{html.escape(', '.join(data.domains))} · {len(data.evaluations)} evaluated merged proxies · "
             f"merge method {html.escape(c.merge.method)}</p>"]
    for title, intro, blocks in sections(data, figures):
        parts.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(intro)}</p>")
        parts += [_html_block(blk) for blk in blocks if blk is not None]
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(data: RunData, figures: dict[str, Figure]) -> str:
    """The Markdown report (figures linked from ``figures/``)."""
    c = data.config
    lines = [f"# DeMix report: {c.name}", "",
             f"Run directory `{data.run.root}`; domains {', '.join(data.domains)}; {len(data.evaluations)} evaluated "
             f"merged proxies; merge method {c.merge.method}.", ""]
    for title, intro, blocks in sections(data, figures):
        lines += [f"## {title}", "", intro, ""]
        for blk in blocks:
            if blk is None:
                continue
            if isinstance(blk, Figure):
                lines += [f"![{blk.title}](figures/{blk.path.name})", "", f"*{blk.caption}*", ""]
            else:
                lines += [_md_table(*blk), ""]
    return "\n".join(lines)
