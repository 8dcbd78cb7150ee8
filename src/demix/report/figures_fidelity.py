"""Figures of the fidelity stage: proxy vs reference-model scores, and rho vs compute. Each
returns None when the fidelity stage has not run (or left nothing to plot)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from demix.proxy_kind import MERGED
from demix.report.data import RunData
from demix.report.plotting import COLORS, ROUND_COLORS, Figure, pyplot, save


def fig_fidelity(data: RunData, path: Path) -> Figure | None:
    """Proxy vs reference score per mixture: one row per proxy kind, one column per capability
    (per benchmark when no target is a capability)."""
    reports = data.fidelity.reports if data.fidelity is not None else {}
    panels = [(kind, name, t) for kind, rep in reports.items() for name, t in rep.targets.items() if t.capability]
    if not panels:
        panels = [(kind, name, t) for kind, rep in reports.items() for name, t in rep.targets.items()]
    if not panels:
        return None
    # One row per proxy kind, one column per capability: titles stay short and rows compare at a glance.
    kinds = list(dict.fromkeys(p[0] for p in panels))
    names = list(dict.fromkeys(p[1] for p in panels))
    plt = pyplot()
    fig, axes = plt.subplots(len(kinds), len(names), figsize=(3.9 * len(names), 3.4 * len(kinds) + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for kind, name, t in panels:
        ax = axes[kinds.index(kind), names.index(name)]
        ax.set_visible(True)
        pts = np.array(list(t.scores.values()), dtype=float).reshape(-1, 2)
        ax.scatter(pts[:, 0], pts[:, 1], s=28, color=COLORS["chosen"] if kind == MERGED else COLORS["natural"])
        if len(pts):
            lo, hi = float(np.nanmin(pts)), float(np.nanmax(pts))
            ax.plot([lo, hi], [lo, hi], color="grey", ls="--", lw=1)
        rho = f"ρ = {t.spearman.value:.2f}" if t.spearman.defined else "ρ undefined"
        ax.set_title(f"{name}: {rho}, n = {t.spearman.n}", fontsize=11)
        ax.tick_params(labelsize=9)
        ax.set_xlabel("reference model score", fontsize=10)
        if names.index(name) == 0:
            ax.set_ylabel(f"{kind}\nproxy score", fontsize=10)
    fig.suptitle("Fidelity: proxy vs reference-model scores per mixture (rows: proxy kind; dashed: equal scores)",
                 fontsize=12)
    save(fig, path)
    return Figure("fidelity_scatter", "Fidelity", "Scores of proxies against reference models really trained on the "
                  "same mixtures; Spearman rho measures how well the proxies rank mixtures.", path)


def fig_fidelity_compute(data: RunData, path: Path) -> Figure | None:
    """Macro Spearman rho of each proxy kind against the FLOPs it cost, with the free own-weight line."""
    if data.fidelity is None:
        return None
    points = [r for r in data.fidelity.summary if r.flops and "spearman" in r.macro and r.macro["spearman"].defined]
    if not points:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, row in enumerate(points):
        rho = row.macro["spearman"]
        ax.scatter([row.flops], [rho.value], s=80, color=ROUND_COLORS[i % len(ROUND_COLORS)],
                   label=f"{row.proxy_kind} (n={rho.n})")
    ax.set_xscale("log")
    own = data.fidelity.baselines.get("own_weight")
    if own is not None and own.macro["spearman"].defined:
        # Free: what ranking by each domain's own weight already achieves on these benchmarks.
        ax.axhline(own.macro["spearman"].value, color="grey", linestyle="--",
                   label=f"own weight, no model (n={own.macro['spearman'].n})")
    ax.set_xlabel("compute (FLOPs, log scale)")
    ax.set_ylabel("macro Spearman ρ vs reference models")
    ax.set_title("Fidelity vs compute")
    ax.legend()
    save(fig, path)
    return Figure("fidelity_compute", "Fidelity vs compute", "Macro-averaged Spearman rho against reference models "
                  "versus the compute each approach spent.", path)
