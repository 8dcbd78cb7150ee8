"""Figures of the search: the chosen mixture, predictor checks, the evaluated mixtures, the
candidate pool and its Pareto front. Each takes the run's data and the PNG path, and returns
the :class:`Figure` it drew, or None when the run has nothing to show."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from demix.report.data import RunData, out_of_fold
from demix.report.plotting import COLORS, ROUND_COLORS, Figure, capability_axis, capability_unit, grid, pyplot, save


def fig_weights(data: RunData, path: Path) -> Figure:
    """Bars of the chosen data mixture (top-k spread as error bars) beside the baseline data
    mixtures; the component weights are in the table above it. A file of demix < 0.2 knows no
    data mixture: its component weights are drawn, labelled so."""
    plt = pyplot()
    data_mixtures = data.data_mixtures
    mixtures = data_mixtures if data_mixtures is not None else data.component_weights
    kind = "data mixture" if data_mixtures is not None else "component weights"
    spread: dict[str, float | None] = (
        data.data_spread if data_mixtures is not None else {d: s.get("std") for d, s in data.top_k.spread.items()}
    )
    domains = data.domains
    fig, ax = plt.subplots(figsize=(max(7.5, 1.6 * len(domains) + 2), 4.4))
    width = 0.8 / len(mixtures)
    x = np.arange(len(domains))
    baselines = data.best.baselines
    labels = {"chosen": f"chosen (top-{data.top_k.k} mean, ±1 std)", "natural": "natural (token-proportional)"}
    unreachable: list[str] = []
    for i, (name, w) in enumerate(mixtures.items()):
        vals = [w[d] for d in domains]
        err = None
        if name == "chosen" and spread and all(spread.get(d) is not None for d in domains):
            err = [spread[d] for d in domains]
        target = None
        if data_mixtures is not None and name in baselines and baselines[name].reachable is False:
            target = baselines[name].data_target
            unreachable.append(name)
        label = labels.get(name, name) + (", nearest reachable" if name in unreachable else "")
        pos = x + (i - (len(mixtures) - 1) / 2) * width
        bars = ax.bar(pos, vals, width, yerr=err, capsize=3, label=label, color=COLORS[name])
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in vals], fontsize=9, padding=2)
        if target is not None:  # the baseline as defined, which no proxy stands for
            ax.scatter(pos, [target.get(d, 0.0) for d in domains], marker="_", s=300, linewidths=2.5, color="black",
                       zorder=4, label=f"{name} as defined (not reachable)")
    ax.set_xticks(x, domains)
    ax.set_xlabel("domain")
    ax.set_ylabel("data share (token share)" if data_mixtures is not None else "component weight (merge coefficient)")
    # Headroom above the tallest bar (and its error bar) so the legend, above the axes, hides nothing.
    tallest = max([max(w.values()) for w in mixtures.values()]
                  + [max((baselines[n].data_target or {}).values(), default=0.0) for n in unreachable])
    ax.set_ylim(0, min(1.05, tallest * 1.3 + 0.05))
    # Bars first, in mixture order, then the markers of the baselines as defined (a second row).
    handles, names = ax.get_legend_handles_labels()
    order = sorted(range(len(names)), key=lambda i: names[i].endswith("(not reachable)"))
    ncol = len(mixtures) if not unreachable else 2  # a 2 x 2 grid reads better than 3 + 1
    ax.set_title(f"Chosen {kind} vs natural vs uniform", pad=30 if not unreachable else 44)
    ax.legend([handles[i] for i in order], [names[i] for i in order], loc="lower center", bbox_to_anchor=(0.5, 1.0),
              ncol=ncol, fontsize=9, frameon=False)
    save(fig, path)
    if data_mixtures is None:
        caption = ("Component weights (merge coefficients) of the chosen mixture (mean of the top-k candidates; error "
                   "bars: their standard deviation) beside the natural and uniform mixtures. This best_mixture.json "
                   "was written by demix < 0.2: no data mixture is known.")
    else:
        region = (data.best.mapping or {}).get("region")
        caption = ("Data mixture (token shares of the training data) of the chosen mixture (mean of the top-k "
                   "candidates; error bars: their standard deviation) beside the natural (token-proportional) and "
                   "uniform data mixtures. Their component weights are in the table above."
                   + (f" The proxies stand for {region}." if region else "")
                   + (" A baseline that is not reachable is drawn at its nearest reachable data mixture, with the "
                      "baseline as defined marked in black." if unreachable else ""))
    return Figure("weights", f"Chosen {kind}", caption, path)


def fig_predicted_vs_measured(data: RunData, path: Path) -> Figure | None:
    """Out-of-fold predicted vs measured score of every evaluated proxy, one panel per capability."""
    oof = out_of_fold(data)
    if not oof:
        return None
    caps = list(oof)
    plt, fig, axes = grid(len(caps))
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
    save(fig, path)
    return Figure("predicted_vs_measured", "Predicted vs measured", "Each point is one evaluated merged proxy; its "
                  "predicted score comes from a predictor fitted without it (k-fold cross-validation, same folds and "
                  "seed as the search). Scores are sign-corrected so higher is better (held-out bits per byte are "
                  "negated).", path)


def fig_cv(data: RunData, path: Path) -> Figure | None:
    """Cross-validated Spearman rho of every predictor, one bar per round."""
    if not data.cv_rounds:
        return None
    plt = pyplot()
    last = data.cv_rounds[-1]
    targets = [("capabilities", t) for t in last.capabilities] + [("benchmarks", t) for t in last.benchmarks]
    n_rounds = len(data.cv_rounds)
    fig, ax = plt.subplots(figsize=(9.5, 0.28 * len(targets) * n_rounds + 2.4))
    height = 0.8 / n_rounds
    y = np.arange(len(targets))
    for r, cv in enumerate(data.cv_rounds):
        vals, notes = [], []
        for kind, t in targets:
            rep = getattr(cv, kind).get(t)
            rho = rep.spearman if rep else None
            n = "?" if rep is None else rep.n
            vals.append(rho if rho is not None else 0.0)
            notes.append(f"{rho:.2f} (n={n})" if rho is not None else f"undefined (n={n})")
        pos = y + (r - (n_rounds - 1) / 2) * height
        ax.barh(pos, vals, height, color=ROUND_COLORS[r % len(ROUND_COLORS)],
                label=f"after round {r} (n={cv.n})")
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
    save(fig, path)
    return Figure("cv_quality", "Predictor quality", "Cross-validated Spearman rho of each predictor (capabilities and "
                  "single benchmarks), after each round, with the number of evaluated proxies n behind it.", path)


def fig_weight_histograms(data: RunData, path: Path) -> Figure | None:
    """Per domain, the weights of the evaluated mixtures stacked by round."""
    if not data.evaluations:
        return None
    domains = data.domains
    # The store keys proxies by their component weights: the histograms are of those.
    W = np.array([[e.weights.get(d, 0.0) for d in domains] for e in data.evaluations])
    rounds = np.array([e.round if e.round is not None else -1 for e in data.evaluations])
    mixtures = data.component_weights
    from matplotlib.ticker import MaxNLocator

    plt, fig, axes = grid(len(domains), max_cols=4, size=(3.9, 3.3))
    bins = np.linspace(0, 1, 21)
    labels = sorted(set(rounds.tolist()))
    for ax, (k, d) in zip(axes, enumerate(domains)):
        ax.hist([W[rounds == r, k] for r in labels], bins=bins, stacked=True,
                color=[ROUND_COLORS[r % len(ROUND_COLORS)] for r in labels],
                label=[f"round {r}" if r >= 0 else "other" for r in labels])
        if "chosen" in mixtures:
            ax.axvline(mixtures["chosen"][d], color=COLORS["chosen"], lw=2, label="chosen")
        if "natural" in mixtures:
            ax.axvline(mixtures["natural"][d], color=COLORS["natural"], lw=2, ls="--", label="natural")
        ax.set_title(d)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"component weight of {d}")
        ax.set_ylabel("evaluated proxies")
    axes[0].legend(fontsize=9)
    fig.suptitle(f"Component weights of the {len(W)} evaluated proxies, per domain and round", fontsize=12)
    save(fig, path)
    return Figure("weight_histograms", "Evaluated mixtures", "Per domain, the component weights (merge coefficients) "
                  "of the evaluated merged proxies, stacked by search round (later rounds sample the predicted top "
                  "region); lines: the chosen and natural mixtures' component weights.", path)


def fig_pool(data: RunData, path: Path) -> Figure | None:
    """Histograms of the objective and of each predicted capability over the last round's pool."""
    pool = data.pool
    if pool is None:
        return None
    caps = pool.capabilities
    obj = pool.objective
    feasible = np.isfinite(obj)
    top = pool.top_k
    preds = data.predicted
    plt, fig, axes = grid(len(caps) + 1)
    ax = axes[0]
    ax.hist(obj[feasible], bins=60, color="#999999")
    if top.size:
        cut = float(obj[top].min())
        ax.axvline(cut, color=COLORS["chosen"], lw=2, label=f"top-{top.size} cut-off")
        ax.legend(loc="upper left")
    ax.set_title(f"objective ({data.objective.kind}) over {obj.size:,} candidates")
    ax.set_xlabel("objective (higher is better)")
    ax.set_ylabel("candidates")
    for ax, (j, c) in zip(axes[1:], enumerate(caps)):
        vals = pool.capability_scores[feasible, j]
        _, bins, _ = ax.hist(vals, bins=60, color="#BBBBBB", label="candidate pool")
        if top.size:
            tv = pool.capability_scores[top, j]
            ax.axvspan(float(tv.min()), float(tv.max()), color=COLORS["chosen"], alpha=0.12, label="range of the top-k")
            ax.hist(tv, bins=bins, color=COLORS["chosen"], alpha=0.9, label=f"top-{top.size}")
        for name, p in preds.items():
            if c in p:
                ax.axvline(p[c], color=COLORS.get(name, "black"), lw=2, ls="-" if name == "chosen" else "--", label=name)
        ax.set_title(f"predicted {c}")
        ax.set_xlabel(capability_axis(data, c, "predicted "))
        ax.set_ylabel("candidates")
    axes[1].legend(loc="upper left", fontsize=9)
    fig.suptitle("Candidate pool: distribution of predicted scores, last round (higher is better)", fontsize=13)
    save(fig, path)
    return Figure("pool_scores", "Candidate pool", "Histograms of the composite objective and of each predicted "
                  "capability over the last round's candidate pool; the top-k candidates (averaged into the chosen "
                  "mixture) are highlighted; vertical lines mark the chosen, natural and uniform mixtures' predicted "
                  "scores.", path)


def _front_scores(data: RunData, capabilities: list[str]) -> np.ndarray:
    """The Pareto front's predicted scores, one column per capability in ``capabilities``' order."""
    if data.pareto is None:
        return np.zeros((0, len(capabilities)))
    return data.pareto.capability_scores[:, [data.pareto.capabilities.index(c) for c in capabilities]]


def fig_pareto(data: RunData, path: Path) -> Figure | None:
    """Predicted capability pairs over the pool, with the Pareto front, the top-k and the compared mixtures."""
    pool = data.pool
    if pool is None or len(pool.capabilities) < 2:
        return None
    caps = pool.capabilities
    pairs = [(i, j) for i in range(len(caps)) for j in range(i + 1, len(caps))]
    scores = pool.capability_scores
    rng = np.random.default_rng(0)
    shown = rng.choice(scores.shape[0], size=min(4000, scores.shape[0]), replace=False)
    preds = data.predicted
    front_scores = _front_scores(data, caps)
    plt, fig, axes = grid(len(pairs), size=(4.4, 4.0))
    for ax, (i, j) in zip(axes, pairs):
        ax.scatter(scores[shown, i], scores[shown, j], s=4, color="#BBBBBB", label="candidates (sample)", rasterized=True)
        if len(front_scores):
            front = front_scores[rng.choice(len(front_scores), size=min(1500, len(front_scores)), replace=False)]
            over = data.pareto_over or scores.shape[0]
            ax.scatter(front[:, i], front[:, j], s=5, color="#333333", alpha=0.5, rasterized=True,
                       label=f"Pareto front ({len(front_scores):,} among the {over:,} best-ranked)")
        if pool.top_k.size:
            t = pool.top_k
            ax.scatter(scores[t, i], scores[t, j], s=10, color=COLORS["chosen"], alpha=0.6, label=f"top-{t.size}")
        for name, p in preds.items():
            ax.scatter([p[caps[i]]], [p[caps[j]]], s=140, marker="*" if name == "chosen" else "D",
                       color=COLORS.get(name, "black"), edgecolors="white", zorder=5, label=name)
        ax.set_xlabel(capability_axis(data, caps[i], "predicted "))
        ax.set_ylabel(capability_axis(data, caps[j], "predicted "))
        ax.set_title(f"{caps[i]} vs {caps[j]}")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), markerscale=1.5, frameon=False)
    fig.suptitle("Trade-offs between capabilities (predicted, last round's pool)", fontsize=12)
    save(fig, path, rect=(0, 0.07, 1, 1))
    return Figure("pareto", "Pareto front", "Predicted capability pairs over a sample of the candidate pool (higher is "
                  "better on both axes). Dark points are the Pareto front across all capabilities among the best-ranked "
                  "candidates (no candidate is better on every capability), so a point may look dominated in one pair "
                  "of axes.", path)
