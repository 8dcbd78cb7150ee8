"""The report of a run: ``report/report.html`` (self-contained, figures embedded as base64 PNG),
``report/report.md`` and ``report/figures/*.png``.

Everything is read from the run directory, so the report can be rebuilt at any time
(``demix report RUN_DIR``):

- ``best_mixture.json``: the chosen mixture, its predicted scores with CV errors, the natural
  (token-proportional) and uniform baselines;
- the store: every evaluated merged proxy (weights, measured scores, round);
- ``search/round_<r>/``: ``cv.json`` (predictor quality per round), ``pool.npz`` and
  ``pareto.csv`` of the last round;
- the base and components (merge-validity audit, :func:`demix.fidelity.audit.audit_components`;
  ``fidelity/audit.json`` is used instead when the fidelity stage wrote one);
- ``fidelity/fidelity.json`` when the fidelity stage ran: its :class:`demix.fidelity.FidelityReport`
  per proxy kind (proxy vs reference scores per capability) and its summary rows (macro rho and
  FLOPs per proxy kind, for rho vs compute);
- ``timings.json``: stage wall times.

Predicted-vs-measured scatter plots use out-of-fold predictions (each proxy predicted by a
predictor that never saw it), recomputed here with :func:`demix.predictors.cross_validate` on the
stored evaluations, with the same folds and seed as the search, so the rho shown is the CV rho
of ``cv.json``.
"""

from __future__ import annotations

import base64
import html
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from demix.config import RunConfig, load_config
from demix.errors import DemixError
from demix.rundir import RunDir, atomic_write_text, read_json

log = logging.getLogger("demix.report")

#: Colours of the three mixtures compared everywhere (colour-blind safe, Okabe-Ito).
COLORS = {"chosen": "#D55E00", "natural": "#0072B2", "uniform": "#009E73"}
ROUND_COLORS = ["#0072B2", "#E69F00", "#CC79A7", "#009E73", "#56B4E9", "#F0E442", "#000000"]
DPI = 110


@dataclass
class Figure:
    """One figure of the report."""

    name: str
    title: str
    caption: str
    path: Path


@dataclass
class ReportFiles:
    """What :func:`write_report` wrote."""

    html: Path
    markdown: Path
    figures: list[Figure] = field(default_factory=list)


# --------------------------------------------------------------------------- reading the run


@dataclass
class RunData:
    """Everything the report shows, read from one run directory."""

    run: RunDir
    config: RunConfig
    best: dict[str, Any]
    evaluations: list[Any]
    cv_rounds: list[dict[str, Any]]
    pool: dict[str, np.ndarray] | None
    pareto: np.ndarray | None
    timings: list[dict[str, Any]]
    audit: dict[str, Any] | None
    audit_error: str | None
    fidelity: dict[str, Any]
    compute: list[dict[str, Any]]
    pareto_over: int | None = None
    """Candidates (best-ranked first) the Pareto front was computed over (selection.json)."""
    fidelity_baselines: dict[str, Any] = field(default_factory=dict)
    """No-model baselines of the fidelity stage (``own_weight``), by name."""

    @property
    def domains(self) -> list[str]:
        return list(self.best["weights"])

    @property
    def capabilities(self) -> list[str]:
        return list(self.best["predicted"]["capabilities"])


def _read_fidelity(run: RunDir) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """The fidelity stage's reports by proxy kind, its summary rows (proxy kind, FLOPs, macro
    statistics) and its no-model baselines, from ``fidelity/fidelity.json``; empty when the
    stage has not run."""
    from demix.fidelity import FidelityReport

    path = run.fidelity / "fidelity.json"
    if not path.is_file():
        return {}, [], {}
    try:
        data = read_json(path)
        reports = {k: FidelityReport.from_dict(v) for k, v in data.get("reports", {}).items()}
        baselines = {k: FidelityReport.from_dict(v) for k, v in data.get("baselines", {}).items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("report: cannot read %s (%s); fidelity left out", path, exc)
        return {}, [], {}
    summary = [r for r in data.get("summary", []) if isinstance(r, dict) and "flops" in r]
    return reports, summary, baselines


def _audit(config: RunConfig, run: RunDir) -> tuple[dict[str, Any] | None, str | None]:
    """The merge-validity audit of the run's components: fidelity/audit.json, else computed now."""
    saved = run.fidelity / "audit.json"
    if saved.is_file():
        try:
            return read_json(saved), None
        except (OSError, ValueError):
            pass
    # Paths as demix.training resolves them, without importing it (transformers' Trainer costs
    # tens of seconds to import on a busy 2-core machine).
    base = Path(config.model.base_path) if config.model.base_path else run.base
    comps = {
        d: Path(config.train.components.paths[d]) if d in config.train.components.paths else run.component(d)
        for d in config.data.domain_names
    }
    comps = {d: p for d, p in comps.items() if d in config.train.components.paths or (p / "demix.json").is_file()}
    if not comps:
        return None, "no finished components"
    try:
        from demix.fidelity.audit import AuditThresholds, audit_components

        report = audit_components(base, comps, thresholds=AuditThresholds.from_config(config.fidelity))
        return report.to_dict(), None
    except DemixError as exc:
        return None, exc.what


def load_run(run: RunDir, config: RunConfig | None = None) -> RunData:
    """Read what the report needs; a clear error when the run has no search result yet."""
    if not run.root.is_dir():
        raise DemixError(f"run directory '{run.root}' does not exist", "pass the output_dir of a run (e.g. runs/demo)")
    if config is None:
        if not run.config.is_file():
            raise DemixError(f"'{run.root}' is not a demix run directory (no config.yaml)", "pass the output_dir of a run")
        config = load_config(run.config)
    if not run.best_mixture.is_file():
        raise DemixError(
            f"run '{run.root}' has no chosen mixture yet ({run.best_mixture.name} is missing)",
            "finish the search first: `demix run CONFIG` (or `demix search CONFIG`)",
        )
    best = read_json(run.best_mixture)
    from demix.store import Store

    with Store(config.store.url or run.store_url) as store:
        evaluations = store.evaluations_done("merged")
    cv_rounds = []
    r = 0
    while (run.round_dir(r) / "cv.json").is_file():
        cv_rounds.append(read_json(run.round_dir(r) / "cv.json"))
        r += 1
    pool = pareto = pareto_over = None
    if r:
        last = run.round_dir(r - 1)
        if (last / "selection.json").is_file():
            pareto_over = read_json(last / "selection.json").get("pareto_over")
        if (last / "pool.npz").is_file():
            with np.load(last / "pool.npz") as z:
                pool = {k: z[k] for k in z.files}
        if (last / "pareto.csv").is_file():
            import csv

            with open(last / "pareto.csv") as fh:
                rows = list(csv.DictReader(fh))
            caps = [c for c in best["predicted"]["capabilities"]]
            pareto = np.array([[float(row[f"pred_{c}"]) for c in caps] for row in rows]) if rows else np.zeros((0, len(caps)))
    from demix.pipeline import read_timings

    audit, audit_error = _audit(config, run)
    fidelity, compute, baselines = _read_fidelity(run)
    return RunData(run, config, best, evaluations, cv_rounds, pool, pareto, read_timings(run), audit, audit_error,
                   fidelity, compute, pareto_over, baselines)


def out_of_fold(data: RunData) -> dict[str, dict[str, Any]]:
    """Out-of-fold predictions of every capability for the stored proxies:
    ``{capability: {measured, predicted, round, spearman, n}}`` (same folds and seed as the search)."""
    from demix.predictors import cross_validate
    from demix.search import resolve_directions, training_data

    evals = data.evaluations
    if len(evals) < 2:
        return {}
    s = data.config.search
    directions = resolve_directions(evals, data.config)
    X, caps, _ = training_data(evals, data.domains, directions)
    cv = cross_validate(X, caps, s.predictor, s.cv_folds, s.seed)
    rounds = np.array([e.round if e.round is not None else -1 for e in evals])
    out = {}
    for c, rep in cv.items():
        if "predictions" not in rep:
            continue
        out[c] = {"measured": caps[c], "predicted": np.array(rep["predictions"]), "round": rounds,
                  "spearman": rep["spearman"], "n": rep["n"], "rmse": rep["rmse"]}
    return out


# --------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        # Sizes chosen for a 3-panel figure shrunk to the ~1100 px column of report.html.
        "font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12, "legend.fontsize": 11,
        "xtick.labelsize": 11, "ytick.labelsize": 11, "axes.spines.top": False, "axes.spines.right": False,
        "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": DPI,
    })
    return plt


def _grid(n: int, max_cols: int = 3, size: tuple[float, float] = (4.6, 3.8)):
    plt = _plt()
    cols = 2 if (n == 4 and max_cols == 3) else min(max_cols, max(1, n))  # 2 x 2 beats 3 + 1
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return plt, fig, list(axes.flat[:n])


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=DPI)
    tmp.replace(path)
    import matplotlib.pyplot as plt

    plt.close(fig)


def _mixtures(data: RunData) -> dict[str, dict[str, float]]:
    out = {"chosen": data.best["weights"]}
    for name in ("natural", "uniform"):
        if name in data.best.get("baselines", {}):
            out[name] = data.best["baselines"][name]["weights"]
    return out


def _predicted_caps(data: RunData) -> dict[str, dict[str, float]]:
    out = {"chosen": {c: v["value"] for c, v in data.best["predicted"]["capabilities"].items()}}
    for name, b in data.best.get("baselines", {}).items():
        out[name] = {c: v["value"] for c, v in b["predicted"]["capabilities"].items()}
    return out


def capability_unit(data: RunData, capability: str) -> str:
    """What a capability's score is, for axis labels: e.g. "-bits per byte" for held-out loss."""
    try:
        from demix.evaluation import resolve_benchmarks, resolve_capabilities

        benches = {b.name: b for b in resolve_benchmarks(data.config)}
        cap = next(c for c in resolve_capabilities(data.config, list(benches.values())) if c.name == capability)
        metrics = {(benches[n].metric, benches[n].higher_is_better) for n in cap.weights}
    except (DemixError, StopIteration, KeyError):
        return "score"
    if len(metrics) != 1:
        return "weighted score"
    metric, hib = metrics.pop()
    name = (metric or "score").replace("_", " ")
    return name if hib else f"-{name}"


def _cap_axis(data: RunData, capability: str, prefix: str = "") -> str:
    return f"{prefix}{capability} ({capability_unit(data, capability)})"


def fig_weights(data: RunData, path: Path) -> Figure:
    plt = _plt()
    mixtures = _mixtures(data)
    domains = data.domains
    fig, ax = plt.subplots(figsize=(max(6.5, 1.6 * len(domains) + 2), 4.2))
    width = 0.8 / len(mixtures)
    x = np.arange(len(domains))
    spread = data.best.get("top_k", {}).get("spread", {})
    for i, (name, w) in enumerate(mixtures.items()):
        vals = [w[d] for d in domains]
        err = [spread[d]["std"] for d in domains] if name == "chosen" and spread else None
        label = {"chosen": f"chosen (top-{data.best['top_k']['k']} mean, ±1 std)", "natural": "natural (token-proportional)"}.get(name, name)
        bars = ax.bar(x + (i - (len(mixtures) - 1) / 2) * width, vals, width, yerr=err, capsize=3, label=label, color=COLORS[name])
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in vals], fontsize=9, padding=2)
    ax.set_xticks(x, domains)
    ax.set_xlabel("domain")
    ax.set_ylabel("weight (token share)")
    # Headroom above the tallest bar (and its error bar) so the legend, above the axes, hides nothing.
    ax.set_ylim(0, min(1.05, max(max(w.values()) for w in mixtures.values()) * 1.3 + 0.05))
    ax.set_title("Mixture weights: chosen vs natural vs uniform", pad=30)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(mixtures), fontsize=9, frameon=False)
    _save(fig, path)
    return Figure("weights", "Chosen mixture", "Weight of each domain in the chosen mixture (mean of the top-k "
                  "candidates; error bars: their standard deviation) beside the natural (token-proportional) and "
                  "uniform mixtures.", path)


def fig_predicted_vs_measured(data: RunData, oof: dict[str, dict[str, Any]], path: Path) -> Figure | None:
    if not oof:
        return None
    caps = list(oof)
    plt, fig, axes = _grid(len(caps))
    for ax, c in zip(axes, caps):
        o = oof[c]
        for r in sorted(set(o["round"].tolist())):
            m = o["round"] == r
            ax.scatter(o["measured"][m], o["predicted"][m], s=22, alpha=0.8, color=ROUND_COLORS[r % len(ROUND_COLORS)],
                       label=f"round {r}" if r >= 0 else "other")
        lo = float(min(o["measured"].min(), o["predicted"].min()))
        hi = float(max(o["measured"].max(), o["predicted"].max()))
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=1, ls="--", label="predicted = measured")
        rho = "undefined" if o["spearman"] is None else f"{o['spearman']:.2f}"
        ax.set_title(f"{c}: Spearman ρ = {rho}, n = {o['n']}")
        unit = capability_unit(data, c)
        ax.set_xlabel(f"measured ({unit})")
        ax.set_ylabel(f"predicted, out-of-fold ({unit})")
    axes[0].legend(loc="upper left", fontsize=9)
    fig.suptitle("Predictor check: out-of-fold predicted vs measured proxy scores (higher is better)", fontsize=12)
    _save(fig, path)
    return Figure("predicted_vs_measured", "Predicted vs measured", "Each point is one evaluated merged proxy; its "
                  "predicted score comes from a predictor fitted without it (k-fold cross-validation, same folds and "
                  "seed as the search). Scores are sign-corrected so higher is better (held-out bits per byte are "
                  "negated).", path)


def fig_pool(data: RunData, path: Path) -> Figure | None:
    pool = data.pool
    if pool is None:
        return None
    caps = [str(c) for c in pool["capabilities"]]
    obj = pool["objective"]
    feasible = np.isfinite(obj)
    top = pool["top_k"]
    preds = _predicted_caps(data)
    plt, fig, axes = _grid(len(caps) + 1)
    ax = axes[0]
    ax.hist(obj[feasible], bins=60, color="#999999")
    if top.size:
        cut = float(obj[top].min())
        ax.axvline(cut, color=COLORS["chosen"], lw=2, label=f"top-{top.size} cut-off")
        ax.legend(loc="upper left")
    ax.set_title(f"objective ({data.best['objective']['kind']}) over {obj.size:,} candidates")
    ax.set_xlabel("objective (higher is better)")
    ax.set_ylabel("candidates")
    for ax, (j, c) in zip(axes[1:], enumerate(caps)):
        vals = pool["capability_scores"][feasible, j]
        _, bins, _ = ax.hist(vals, bins=60, color="#BBBBBB", label="candidate pool")
        if top.size:
            tv = pool["capability_scores"][top, j]
            ax.axvspan(float(tv.min()), float(tv.max()), color=COLORS["chosen"], alpha=0.12, label="range of the top-k")
            ax.hist(tv, bins=bins, color=COLORS["chosen"], alpha=0.9, label=f"top-{top.size}")
        for name, p in preds.items():
            if c in p:
                ax.axvline(p[c], color=COLORS.get(name, "black"), lw=2, ls="-" if name == "chosen" else "--", label=name)
        ax.set_title(f"predicted {c}")
        ax.set_xlabel(_cap_axis(data, c, "predicted "))
        ax.set_ylabel("candidates")
    axes[1].legend(loc="upper left", fontsize=9)
    fig.suptitle("Candidate pool: distribution of predicted scores, last round (higher is better)", fontsize=13)
    _save(fig, path)
    return Figure("pool_scores", "Candidate pool", "Histograms of the composite objective and of each predicted "
                  "capability over the last round's candidate pool; the top-k candidates (averaged into the chosen "
                  "mixture) are highlighted; vertical lines mark the chosen, natural and uniform mixtures' predicted "
                  "scores.", path)


def fig_pareto(data: RunData, path: Path) -> Figure | None:
    pool = data.pool
    if pool is None or len(pool["capabilities"]) < 2:
        return None
    caps = [str(c) for c in pool["capabilities"]]
    pairs = [(i, j) for i in range(len(caps)) for j in range(i + 1, len(caps))]
    scores = pool["capability_scores"]
    rng = np.random.default_rng(0)
    shown = rng.choice(scores.shape[0], size=min(4000, scores.shape[0]), replace=False)
    preds = _predicted_caps(data)
    plt, fig, axes = _grid(len(pairs), size=(4.4, 4.0))
    for ax, (i, j) in zip(axes, pairs):
        ax.scatter(scores[shown, i], scores[shown, j], s=4, color="#BBBBBB", label="candidates (sample)", rasterized=True)
        if data.pareto is not None and len(data.pareto):
            front = data.pareto[rng.choice(len(data.pareto), size=min(1500, len(data.pareto)), replace=False)]
            over = data.pareto_over or scores.shape[0]
            ax.scatter(front[:, i], front[:, j], s=5, color="#333333", alpha=0.5, rasterized=True,
                       label=f"Pareto front ({len(data.pareto):,} among the {over:,} best-ranked)")
        if pool["top_k"].size:
            t = pool["top_k"]
            ax.scatter(scores[t, i], scores[t, j], s=10, color=COLORS["chosen"], alpha=0.6, label=f"top-{t.size}")
        for name, p in preds.items():
            ax.scatter([p[caps[i]]], [p[caps[j]]], s=140, marker="*" if name == "chosen" else "D",
                       color=COLORS.get(name, "black"), edgecolors="white", zorder=5, label=name)
        ax.set_xlabel(_cap_axis(data, caps[i], "predicted "))
        ax.set_ylabel(_cap_axis(data, caps[j], "predicted "))
        ax.set_title(f"{caps[i]} vs {caps[j]}")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), markerscale=1.5, frameon=False)
    fig.suptitle("Trade-offs between capabilities (predicted, last round's pool)", fontsize=12)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path.with_name(f".{path.name}.tmp.png"), dpi=DPI)
    path.with_name(f".{path.name}.tmp.png").replace(path)
    plt.close(fig)
    return Figure("pareto", "Pareto front", "Predicted capability pairs over a sample of the candidate pool (higher is "
                  "better on both axes). Dark points are the Pareto front across all capabilities among the best-ranked "
                  "candidates (no candidate is better on every capability), so a point may look dominated in one pair "
                  "of axes.", path)


def fig_weight_histograms(data: RunData, path: Path) -> Figure | None:
    if not data.evaluations:
        return None
    domains = data.domains
    W = np.array([[e.weights.get(d, 0.0) for d in domains] for e in data.evaluations])
    rounds = np.array([e.round if e.round is not None else -1 for e in data.evaluations])
    mixtures = _mixtures(data)
    from matplotlib.ticker import MaxNLocator

    plt, fig, axes = _grid(len(domains), max_cols=4, size=(3.9, 3.3))
    bins = np.linspace(0, 1, 21)
    labels = sorted(set(rounds.tolist()))
    for ax, (k, d) in zip(axes, enumerate(domains)):
        ax.hist([W[rounds == r, k] for r in labels], bins=bins, stacked=True,
                color=[ROUND_COLORS[r % len(ROUND_COLORS)] for r in labels],
                label=[f"round {r}" if r >= 0 else "other" for r in labels])
        ax.axvline(mixtures["chosen"][d], color=COLORS["chosen"], lw=2, label="chosen")
        if "natural" in mixtures:
            ax.axvline(mixtures["natural"][d], color=COLORS["natural"], lw=2, ls="--", label="natural")
        ax.set_title(d)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"weight of {d}")
        ax.set_ylabel("evaluated proxies")
    axes[0].legend(fontsize=9)
    fig.suptitle(f"Weights of the {len(W)} evaluated mixtures, per domain and round", fontsize=12)
    _save(fig, path)
    return Figure("weight_histograms", "Evaluated mixtures", "Per domain, the weights of the mixtures whose merged "
                  "proxies were evaluated, stacked by search round (later rounds sample the predicted top region).",
                  path)


def fig_cv(data: RunData, path: Path) -> Figure | None:
    if not data.cv_rounds:
        return None
    plt = _plt()
    targets: list[tuple[str, str]] = [("capabilities", t) for t in data.cv_rounds[-1].get("capabilities", {})]
    targets += [("benchmarks", t) for t in data.cv_rounds[-1].get("benchmarks", {})]
    n_rounds = len(data.cv_rounds)
    fig, ax = plt.subplots(figsize=(9.5, 0.28 * len(targets) * n_rounds + 2.4))
    height = 0.8 / n_rounds
    y = np.arange(len(targets))
    for r, cv in enumerate(data.cv_rounds):
        vals, notes = [], []
        for kind, t in targets:
            rep = cv.get(kind, {}).get(t, {})
            rho = rep.get("spearman")
            vals.append(rho if rho is not None else 0.0)
            notes.append(f"{rho:.2f} (n={rep.get('n', '?')})" if rho is not None else f"undefined (n={rep.get('n', '?')})")
        pos = y + (r - (n_rounds - 1) / 2) * height
        ax.barh(pos, vals, height, color=ROUND_COLORS[r % len(ROUND_COLORS)], label=f"after round {r} (n={cv.get('n', '?')})")
        for p, v, note in zip(pos, vals, notes):
            ax.text(max(v, 0) + 0.01, p, note, va="center", fontsize=8)
    ax.set_yticks(y, [f"{t} ({'capability' if k == 'capabilities' else 'benchmark'})" for k, t in targets])
    ax.invert_yaxis()
    ax.set_xlim(min(0.0, ax.get_xlim()[0]), 1.25)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("cross-validated Spearman ρ (out-of-fold predictions vs measured)")
    ax.set_title(f"Predictor quality per target ({data.config.search.cv_folds}-fold CV)", pad=30)
    # Legend between title and bars: inside the bars it hides the rho labels.
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=n_rounds, fontsize=10, frameon=False)
    _save(fig, path)
    return Figure("cv_quality", "Predictor quality", "Cross-validated Spearman rho of each predictor (capabilities and "
                  "single benchmarks), after each round, with the number of evaluated proxies n behind it.", path)


def fig_fidelity(data: RunData, path: Path) -> Figure | None:
    if not data.fidelity:
        return None
    panels = [(kind, rep, name, t) for kind, rep in data.fidelity.items() for name, t in rep.targets.items() if t.capability]
    if not panels:
        panels = [(kind, rep, name, t) for kind, rep in data.fidelity.items() for name, t in rep.targets.items()]
    if not panels:
        return None
    # One row per proxy kind, one column per capability: titles stay short and rows compare at a glance.
    kinds = list(dict.fromkeys(p[0] for p in panels))
    names = list(dict.fromkeys(p[2] for p in panels))
    plt = _plt()
    fig, grid = plt.subplots(len(kinds), len(names), figsize=(3.9 * len(names), 3.4 * len(kinds) + 0.6), squeeze=False)
    for ax in grid.flat:
        ax.set_visible(False)
    for kind, rep, name, t in panels:
        ax = grid[kinds.index(kind), names.index(name)]
        ax.set_visible(True)
        pts = np.array(list(t.scores.values()), dtype=float).reshape(-1, 2)
        ax.scatter(pts[:, 0], pts[:, 1], s=28, color=COLORS["chosen"] if kind == "merged" else COLORS["natural"])
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
    _save(fig, path)
    return Figure("fidelity_scatter", "Fidelity", "Scores of proxies against reference models really trained on the "
                  "same mixtures; Spearman rho measures how well the proxies rank mixtures.", path)


def fig_fidelity_compute(data: RunData, path: Path) -> Figure | None:
    points = []
    for row in data.compute:
        rho = row.get("spearman") or {}
        if rho.get("value") is None or not row.get("flops"):
            continue
        points.append((str(row.get("proxy_kind")), float(row["flops"]), float(rho["value"]), rho.get("n", "?")))
    if not points:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (label, flops, rho, n) in enumerate(points):
        ax.scatter([flops], [rho], s=80, color=ROUND_COLORS[i % len(ROUND_COLORS)], label=f"{label} (n={n})")
    ax.set_xscale("log")
    own = data.fidelity_baselines.get("own_weight")
    if own is not None and own.macro["spearman"].defined:
        # Free: what ranking by each domain's own weight already achieves on these benchmarks.
        ax.axhline(own.macro["spearman"].value, color="grey", linestyle="--",
                   label=f"own weight, no model (n={own.macro['spearman'].n})")
    ax.set_xlabel("compute (FLOPs, log scale)")
    ax.set_ylabel("macro Spearman ρ vs reference models")
    ax.set_title("Fidelity vs compute")
    ax.legend()
    _save(fig, path)
    return Figure("fidelity_compute", "Fidelity vs compute", "Macro-averaged Spearman rho against reference models "
                  "versus the compute each approach spent.", path)


# --------------------------------------------------------------------------- tables


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def summary_rows(data: RunData) -> tuple[list[str], list[list[str]]]:
    """Chosen vs natural vs uniform: weights and predicted capabilities, with CV error."""
    mixtures = _mixtures(data)
    preds = _predicted_caps(data)
    names = list(mixtures)
    head = ["", *[{"natural": "natural (token-proportional)"}.get(n, n) for n in names], "CV RMSE", "CV Spearman (n)"]
    rows = [[f"weight {d}", *[f"{mixtures[n][d]:.3f}" for n in names], "", ""] for d in data.domains]
    for c, p in data.best["predicted"]["capabilities"].items():
        rho = p.get("cv_spearman")
        rows.append([f"predicted {c}", *[_fmt(preds[n].get(c)) for n in names], _fmt(p.get("cv_rmse")),
                     f"{'undefined' if rho is None else f'{rho:.2f}'} ({p.get('cv_n', '?')})"])
    return head, rows


def plan_rows(data: RunData) -> tuple[list[str], list[list[str]]]:
    """Tokens and epochs per domain of the chosen mixture."""
    b = data.best
    head = ["domain", "weight", "top-k std", "tokens", "epochs", "domain tokens"]
    rows = []
    for d, w in b["weights"].items():
        rows.append([d, f"{w:.4f}", _fmt(b.get("top_k", {}).get("spread", {}).get(d, {}).get("std")),
                     _fmt(b.get("tokens", {}).get(d)), _fmt(b.get("epochs", {}).get(d), 2), _fmt(b.get("domain_tokens", {}).get(d))])
    return head, rows


def audit_rows(data: RunData) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """Relative delta size per component (whole model) and the audit's findings."""
    a = data.audit
    if not a:
        return [], [], []
    head = ["component", "||delta|| / ||base||", *[f"cos with {c}" for c in a["components"]]]
    rows = []
    for c in a["components"]:
        rel = a["deltas"][c]["all"]["relative"]
        rows.append([c, _fmt(rel, 3), *[_fmt(a["cosine"]["all"][c][o], 2) for o in a["components"]]])
    findings = [[f["severity"], f["kind"], f["subject"], f["group"], f["message"]] for f in a.get("findings", [])]
    return head, rows, findings


def timing_rows(data: RunData) -> tuple[list[str], list[list[str]]]:
    """Stage wall times of the latest invocation that ran each stage."""
    latest: dict[str, dict[str, Any]] = {}
    for entry in data.timings:
        for s in entry.get("stages", []):
            if not s.get("skipped"):
                latest[s["stage"]] = {**s, "started": entry.get("started")}
    rows = [[name, f"{s['seconds']:.1f}", s["started"]] for name, s in latest.items()]
    if rows:
        rows.append(["total", f"{sum(s['seconds'] for s in latest.values()):.1f}", ""])
    return ["stage", "seconds", "run started"], rows


# --------------------------------------------------------------------------- rendering


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.92em}
th,td{border:1px solid #ccc;padding:4px 9px;text-align:right} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
td.msg{text-align:left;max-width:600px}
figure{margin:1em 0 2em} figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.92em;margin-top:.3em}
.meta{color:#555} .warn{color:#a40} code{background:#f5f5f5;padding:1px 4px}
"""


def _sections(data: RunData, figures: dict[str, Figure]) -> list[tuple[str, str, list[Any]]]:
    """(title, intro text, blocks) where a block is a table (head, rows) or a Figure."""
    b = data.best
    out: list[tuple[str, str, list[Any]]] = []
    s_head, s_rows = summary_rows(data)
    p_head, p_rows = plan_rows(data)
    intro = (f"Mean of the top {b['top_k']['k']:,} of {b['top_k']['pool_size']:,} candidates ranked by the "
             f"{b['objective']['kind']} objective, after {len(b.get('rounds', []))} rounds and "
             f"{b['predictor']['n']} evaluated merged proxies ({b['predictor']['kind']} predictors). Predicted scores are "
             "higher-is-better.")
    if b.get("objective", {}).get("constraints"):
        intro += f" Constraints: {', '.join(b['objective']['constraints'])}."
    out.append(("Chosen mixture", intro, [(s_head, s_rows), (p_head, p_rows), figures.get("weights")]))
    out.append(("Predictors", "How well the predictors rank proxies they were not fitted on.",
                [figures.get("predicted_vs_measured"), figures.get("cv_quality")]))
    out.append(("Search", "Where the search looked and what it found.",
                [figures.get("weight_histograms"), figures.get("pool_scores"), figures.get("pareto")]))
    a_head, a_rows, findings = audit_rows(data)
    if a_rows:
        th = data.audit.get("thresholds", {})
        warn = [f for f in findings if f[0] != "info"]
        text = (f"Merging assumes small updates from a shared base. Size of each component's delta relative to the "
                f"base (warning above {th.get('relative_delta', '?')}) and cosine between deltas (warning below "
                f"{th.get('min_cosine', '?')}). {len(warn)} warning(s).")
        blocks: list[Any] = [(a_head, a_rows)]
        if findings:
            blocks.append((["severity", "finding", "subject", "group", "message"], findings))
        out.append(("Merge-validity audit", text, blocks))
    else:
        out.append(("Merge-validity audit", f"Not available: {data.audit_error}.", []))
    if data.fidelity:
        rows = []
        for kind, rep in data.fidelity.items():
            for name, t in rep.targets.items():
                rows.append([kind, name, str(t.spearman), str(t.top_spearman), str(t.crr)])
            for stat, st in rep.macro.items():
                rows.append([kind, f"macro {stat}", str(st), "", ""])
        for kind, rep in data.fidelity_baselines.items():
            label = f"{kind.replace('_', ' ')} (no model)"
            for name, t in rep.targets.items():
                rows.append([label, name, str(t.spearman), str(t.top_spearman), "-"])
            rows.append([label, "macro spearman", str(rep.macro["spearman"]), "", ""])
        text = "Proxies against reference models trained on the same mixtures (n = mixtures)."
        if data.fidelity_baselines:
            text += (" 'own weight (no model)' ranks each domain's held-out score by that domain's share of the "
                     "mixture, at no cost: a proxy tells more than the weights only where it beats that row.")
        out.append(("Fidelity", text,
                    [(["proxy", "target", "Spearman", "top-25% Spearman", "CRR"], rows),
                     figures.get("fidelity_scatter"), figures.get("fidelity_compute")]))
    t_head, t_rows = timing_rows(data)
    if t_rows:
        out.append(("Stage times", "Wall time of each stage (latest run of it), from timings.json.", [(t_head, t_rows)]))
    return out


def _img_b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(data: RunData, figures: dict[str, Figure]) -> str:
    """The self-contained HTML report (figures inlined as data: URIs)."""
    c = data.config
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>demix report: {html.escape(c.name)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>DeMix report: {html.escape(c.name)}</h1>",
             f"<p class='meta'>run directory <code>{html.escape(str(data.run.root))}</code> · domains "
             f"{html.escape(', '.join(data.domains))} · {len(data.evaluations)} evaluated merged proxies · "
             f"merge method {html.escape(c.merge.method)}</p>"]
    for title, intro, blocks in _sections(data, figures):
        parts.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(intro)}</p>")
        for blk in blocks:
            if blk is None:
                continue
            if isinstance(blk, Figure):
                parts.append(f"<figure><img alt='{html.escape(blk.title)}' src='data:image/png;base64,{_img_b64(blk.path)}'>"
                             f"<figcaption>{html.escape(blk.caption)}</figcaption></figure>")
            else:
                table = _html_table(*blk)
                if blk[0] and blk[0][-1] == "message":
                    table = table.replace("<td>", "<td class='msg'>")  # long audit messages wrap left-aligned
                parts.append(table)
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(data: RunData, figures: dict[str, Figure]) -> str:
    """The Markdown report (figures linked from ``figures/``)."""
    c = data.config
    lines = [f"# DeMix report: {c.name}", "",
             f"Run directory `{data.run.root}`; domains {', '.join(data.domains)}; {len(data.evaluations)} evaluated "
             f"merged proxies; merge method {c.merge.method}.", ""]
    for title, intro, blocks in _sections(data, figures):
        lines += [f"## {title}", "", intro, ""]
        for blk in blocks:
            if blk is None:
                continue
            if isinstance(blk, Figure):
                lines += [f"![{blk.title}](figures/{blk.path.name})", "", f"*{blk.caption}*", ""]
            else:
                lines += [_md_table(*blk), ""]
    return "\n".join(lines)


def write_report(run: RunDir, config: RunConfig | None = None) -> ReportFiles:
    """Build every figure and write ``report/report.html``, ``report/report.md`` and
    ``report/figures/*.png``. Files are replaced atomically, so a crash leaves the old report."""
    data = load_run(run, config)
    fig_dir = run.report / "figures"
    oof = out_of_fold(data)
    makers = [
        ("weights", lambda p: fig_weights(data, p)),
        ("predicted_vs_measured", lambda p: fig_predicted_vs_measured(data, oof, p)),
        ("cv_quality", lambda p: fig_cv(data, p)),
        ("weight_histograms", lambda p: fig_weight_histograms(data, p)),
        ("pool_scores", lambda p: fig_pool(data, p)),
        ("pareto", lambda p: fig_pareto(data, p)),
        ("fidelity_scatter", lambda p: fig_fidelity(data, p)),
        ("fidelity_compute", lambda p: fig_fidelity_compute(data, p)),
    ]
    figures: dict[str, Figure] = {}
    for name, make in makers:
        fig = make(fig_dir / f"{name}.png")
        if fig is not None:
            figures[name] = fig
    html_path, md_path = run.report / "report.html", run.report / "report.md"
    atomic_write_text(md_path, render_markdown(data, figures))
    atomic_write_text(html_path, render_html(data, figures))
    log.info("report: %d figures -> %s", len(figures), html_path)
    return ReportFiles(html_path, md_path, list(figures.values()))


__all__ = ["Figure", "ReportFiles", "RunData", "load_run", "out_of_fold", "render_html", "render_markdown", "write_report"]
